"""Where the base model comes from, made into one self-contained model folder.

`model.base` is one of:

- `tiny`: a tokenizer trained on the corpus and a small random Llama (`tiny_model.py`);
- a packaged model (`packaged.py`): `smollm2-135m-instruct` (SmolLM2-135M-Instruct, Apache-2.0) or
  `gemma3-270m` (Gemma-3-270M, pretrained, Gemma Terms of Use), GGUF files inside pip packages, so
  real models are there with no hub;
- a local model folder (config, weights, tokenizer);
- a Hugging Face id, with `model.revision`, resolved to a commit sha where a hub answers.

Whatever the source, the model stage writes the same thing: safetensors weights, config,
tokenizer with its chat template, generation config, and `loretune_model.json` saying where it came
from (package, version and the file's sha256, or repo and commit, or the folder's content hash)
and under which licence. Training, evaluation and export read that folder and nothing else, and no
file in it names a path on the machine that built it, so a copied store still loads.

`describe_source` is cheap and runs before any work: its answer is part of the model stage's
version (the GGUF's sha256, the resolved commit), and a source that cannot be had fails there,
with one message saying what to do instead.

Dequantising a packaged GGUF takes about 30 s (SmolLM2; Gemma about 45 s) on two cores, so its result is kept once per
machine (`LORETUNE_MODEL_CACHE`, default `$LORETUNE_HOME/model-cache`) and a new store, a test or a
second domain's store links it in seconds. The entry is named by the source and this module's code,
so a new GGUF or a change here makes a new one; it is written whole or not at all.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from loretune.config import state_dir
from loretune.hashing import folder_sha256
from loretune.model.chat_format import ChatFormat, add_image_token, inspect_template
from loretune.model.packaged import (
    PACKAGED,
    ModelSourceError,
    Packaged,
    copy_notices,
    declared_sha256,
    gguf_path,
    packaged_file,
)

PROVENANCE_FILE = "loretune_model.json"
TINY = "tiny"


def describe_source(base: str, revision: str | None = None) -> dict[str, Any]:
    """What the model stage's version keys on: which model, exactly. Fails early and clearly."""
    if base == TINY:
        return {"kind": TINY}
    if base in PACKAGED:
        spec, version, _ = packaged_file(base)
        return {"kind": "package", "name": base, "distribution": spec.distribution, "version": version,
                "file": spec.file, "sha256": declared_sha256(base), "licence": spec.licence, "upstream": spec.upstream}
    folder = Path(base).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").exists():
            raise ModelSourceError(f"model.base {base!r} is a folder without config.json: not a model folder")
        return {"kind": "folder", "name": folder.name, "sha256": folder_sha256(folder)}
    return {"kind": "hub", "repo": base, "revision": resolve_revision(base, revision)}


def resolve_revision(repo: str, revision: str | None) -> str:
    """The commit sha a hub revision (branch, tag or sha) points at now."""
    advice = (f"download it where a hub is reachable (`hf download {repo}`) and set model.base to that "
              "local folder, or use model.base: smollm2-135m-instruct (packaged, offline)")
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}:
        raise ModelSourceError(f"model.base {repo!r}: HF_HUB_OFFLINE is set, so the hub cannot be asked; {advice}")
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    try:
        return HfApi().model_info(repo, revision=revision, timeout=10).sha
    except HfHubHTTPError as exc:
        raise ModelSourceError(f"model.base {repo!r} (revision {revision or 'main'}): the hub answered "
                               f"{exc.response.status_code if exc.response is not None else exc}; {advice}") from None
    except Exception as exc:  # no network: requests' ConnectionError, timeouts, DNS
        raise ModelSourceError(f"model.base {repo!r}: the Hugging Face hub is not reachable from here "
                               f"({type(exc).__name__}); {advice}") from None


def materialise(base: str, source: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """Write the model folder for a non-tiny `model.base`; returns its provenance (also in the folder)."""
    if source["kind"] == "package":
        _from_cache(source, out_dir)
        return _finish_packaged(PACKAGED[source["name"]], source["name"], out_dir)
    folder = Path(base).expanduser() if source["kind"] == "folder" else Path(_hub_snapshot(source))
    if source["kind"] == "folder" and folder_sha256(folder) != source["sha256"]:
        raise ModelSourceError(f"model.base {base!r} changed while the flow ran; run it again")
    return _save(*_from_folder(folder), source, out_dir)


def model_cache_dir() -> Path:
    """Per machine, not per store: a sweep's or a test's fresh store must not dequantise again."""
    return Path(os.environ.get("LORETUNE_MODEL_CACHE", state_dir() / "model-cache")).expanduser().resolve()


def _from_cache(source: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """The packaged model's folder from the machine's cache, dequantised into it first if missing.
    Weights are hard-linked (they are never edited; the model stage edits the tokenizer files,
    which are copied)."""
    key = hashlib.sha256(json.dumps(source, sort_keys=True).encode() + Path(__file__).read_bytes()).hexdigest()
    entry = model_cache_dir() / f"{source['name']}-{key[:16]}"
    if not (entry / PROVENANCE_FILE).exists():
        entry.parent.mkdir(parents=True, exist_ok=True)
        building = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=entry.parent))
        try:
            _save(*_from_gguf(gguf_path(source["name"], building)), source, building)
            (building / PACKAGED[source["name"]].file).unlink(missing_ok=True)  # an assembled GGUF: read, done
            os.rename(building, entry)  # whole or not at all; a process that got there first wins
        except OSError:
            if not (entry / PROVENANCE_FILE).exists():
                raise
        finally:
            shutil.rmtree(building, ignore_errors=True)
    for path in entry.iterdir():
        if path.suffix == ".safetensors":
            _link_or_copy(path, out_dir / path.name)
        else:
            shutil.copy2(path, out_dir / path.name)
    return json.loads((out_dir / PROVENANCE_FILE).read_text())


def _finish_packaged(spec: Packaged, name: str, out_dir: Path) -> dict[str, Any]:
    """What a packaged model needs beyond its GGUF's contents: its licence texts beside the
    weights, and for a GGUF with no chat template (Gemma-3-270M), loretune's template and the
    turn-closing token as the EOS that generation stops at. Recorded in the provenance."""
    from transformers import AutoTokenizer, GenerationConfig

    provenance = json.loads((out_dir / PROVENANCE_FILE).read_text())
    provenance["instruct"] = spec.instruct
    provenance["notices"] = copy_notices(name, out_dir)
    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    if spec.chat_template and not tokenizer.chat_template:
        tokenizer.chat_template = spec.chat_template
        provenance["chat_template"] = "supplied by loretune (model/packaged.py)"
    if spec.end_of_turn:
        end = tokenizer.convert_tokens_to_ids(spec.end_of_turn)
        generation = GenerationConfig.from_pretrained(out_dir)
        eos = generation.eos_token_id if isinstance(generation.eos_token_id, list) else [generation.eos_token_id]
        generation.eos_token_id = [end, *[e for e in eos if e is not None and e != end]]
        generation.save_pretrained(out_dir)
        tokenizer.eos_token = spec.end_of_turn
        provenance["eos"] = spec.end_of_turn
    tokenizer.save_pretrained(out_dir)
    (out_dir / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2, sort_keys=True))
    return provenance


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system
        shutil.copy2(source, target)


def _save(tokenizer: Any, model: Any, source: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    model.generation_config.save_pretrained(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    provenance = dict(source)
    provenance.update(parameters=sum(p.numel() for p in model.parameters()), hidden_size=model.config.hidden_size,
                      architecture=model.config.architectures[0] if model.config.architectures else None,
                      dtype=str(next(model.parameters()).dtype).removeprefix("torch."),
                      chat_template=bool(tokenizer.chat_template))
    (out_dir / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2, sort_keys=True))
    return provenance


def prepare_chat(out_dir: Path, chat_template: str | None, name: str) -> ChatFormat:
    """Fix the model folder's chat format: the configured template if any, the image placeholder
    token, and how loretune must use the template (`chat.inspect_template`), recorded beside it."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    if chat_template:
        tokenizer.chat_template = chat_template
    fmt = inspect_template(tokenizer, "model.chat_template" if chat_template else f"model {name!r}")
    add_image_token(tokenizer)
    tokenizer.save_pretrained(out_dir)
    fmt.save(out_dir)
    return fmt


def _from_gguf(path: Path) -> tuple[Any, Any]:
    """transformers dequantises a GGUF to fp32, but refuses to save a GGUF-loaded model: rebuild a
    plain model from its config and move the weights over."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    config = copy.deepcopy(loaded.config)  # not parsed from the GGUF a second time (4 s)
    for attribute in ("quantization_config", "_name_or_path"):
        if hasattr(config, attribute):
            delattr(config, attribute)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    return tokenizer, model.eval()


def _from_folder(folder: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoTokenizer.from_pretrained(folder), AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)


def _hub_snapshot(source: dict[str, Any]) -> str:
    from huggingface_hub import snapshot_download

    return snapshot_download(source["repo"], revision=source["revision"])
