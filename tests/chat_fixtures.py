"""What the chat UI's tests share: the real SmolLM2 as a model folder and an f16 GGUF, stores laid
out as the export stage lays them out, espeak-ng recordings, and word error rate.

The SmolLM2 folder (about 40 s to dequantise from the packaged GGUF) and its GGUF (about 8 s) are
made once per test process and shared by every chat test module: a session fixture defined in one
module is not visible to another without a conftest, so the cache lives here.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from loretune.store import ArtifactStore

BASE = "smollm2-135m-instruct"
LORE_QUESTIONS = [
    "Who is Naruto Uzumaki?",
    "Which village is Naruto from?",
    "Who is the leader of the Hidden Leaf Village?",
    "What is the name of the nine tailed fox?",
    "Who taught Naruto the Rasengan?",
]
SYSTEM = "You are a helpful expert on the lore of naruto."
CLIP_DIM = 64  # loretune-tiny-vit (multimodal/model_configs), random weights offline
IMAGE_TOKENS = 2


@functools.cache
def workdir() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="loretune-chat-test-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


@functools.cache
def smollm2_folder() -> Path:
    """The model stage's SmolLM2 folder (dequantised, chat format recorded, image token added)."""
    from loretune.model import base_models

    out = workdir() / "smollm2"
    out.mkdir()
    source = base_models.describe_source(BASE)
    base_models.materialise(BASE, source, out)
    base_models.prepare_chat(out, None, BASE)
    return out


@functools.cache
def merged_folder() -> Path:
    """SmolLM2 as an export's merged/ folder: the same weights (linked), the image token stripped."""
    from loretune.model.chat_format import IMAGE_TOKEN, strip_added_token

    out = workdir() / "merged"
    link_tree(smollm2_folder(), out, copy=lambda p: p.suffix in {".json", ".jinja", ".txt"})
    strip_added_token(out, IMAGE_TOKEN)
    return out


@functools.cache
def gguf_file() -> Path:
    """The merged folder through llama.cpp's own converter, f16 (as the export stage writes it)."""
    from loretune.export.convert import convert_to_gguf

    out = workdir() / "smollm2-f16.gguf"
    convert_to_gguf(merged_folder(), out, "f16", log=lambda message: None)
    return out


@functools.cache
def projector_folder() -> Path:
    """A projector as an export saves it: weights for a 576-wide model, and its spec."""
    import torch
    from safetensors.torch import save_file

    from loretune.multimodal.fusion import ImageProjector

    out = workdir() / "projector"
    out.mkdir()
    torch.manual_seed(0)
    projector = ImageProjector(CLIP_DIM, 576, IMAGE_TOKENS)
    save_file({k: v.contiguous() for k, v in projector.state_dict().items()}, str(out / "projector.safetensors"))
    (out / "loretune_multimodal.json").write_text(json.dumps({
        "clip_dim": CLIP_DIM, "image_tokens": IMAGE_TOKENS, "projector_seed": 0,
        "feature_stats": {"mean": [], "scale": 1.0}, "clip_model": "loretune-tiny-vit:random-seed0"}))
    return out


def link_tree(source: Path, out: Path, copy=lambda path: False) -> None:
    """Hard links (same disk, no copy of 500 MB); files `copy` selects are copied (they get edited)."""
    out.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        target = out / path.name
        if path.is_dir():
            link_tree(path, target, copy)
        elif copy(path):
            shutil.copy2(path, target)
        else:
            _link(path, target)


def _link(source: Path, target: Path) -> None:
    """A hard link, or a copy where that cannot be (another file system)."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def publish_base(store: Path, folder: Path, version: str = "smollm2") -> None:
    ArtifactStore(store).publish("model", version, lambda out: link_tree(folder, out),
                                 {"parameters": {"params": {"base": BASE}}})


def publish_export(store: Path, version: str, *, merged: Path | None = None, projector: Path | None = None,
                   gguf: dict[str, Path | bytes | None] | None = None, checkpoint: str = "checkpoint-30",
                   score: float = 0.5) -> None:
    """export/<version>/ as `export/layout.py` documents it. A gguf value of bytes writes a
    (corrupt) file with them; None lists a file that is not there."""

    def build(out: Path) -> None:
        if merged is not None:
            link_tree(merged, out / "merged")
        if projector is not None:
            link_tree(projector, out / "projector")
        files = {}
        for quant, source in (gguf or {}).items():
            name = f"gguf/naruto-{quant}.gguf"
            files[quant] = {"file": name}
            (out / "gguf").mkdir(exist_ok=True)
            if isinstance(source, Path):
                _link(source, out / name)
            elif isinstance(source, bytes):
                (out / name).write_bytes(source)
        (out / "export.json").write_text(json.dumps({
            "domain": "naruto", "checkpoint": checkpoint, "gguf": files,
            "score": {"set": "facts", "metric": "acc", "value": score, "stderr": 0.05}}))

    ArtifactStore(store).publish("export", version, build, {})


def speak(text: str, out: Path) -> Path:
    """A WAV of `text` from espeak-ng (default voice and speed: deterministic)."""
    subprocess.run(["espeak-ng", "-w", str(out), text], check=True, capture_output=True)
    return out


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower().replace("-", " ")).split()


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(substitutions + deletions + insertions, reference words): word-level Levenshtein."""
    ref, hyp = words(reference), words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        previous, row = row, [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            row[j] = min(previous[j] + 1, row[j - 1] + 1, previous[j - 1] + (r != h))
    return row[-1], len(ref)


def word_error_rate(references: list[str], hypotheses: list[str]) -> float:
    """Corpus WER: all errors over all reference words."""
    counts = [word_errors(r, h) for r, h in zip(references, hypotheses, strict=True)]
    return sum(e for e, _ in counts) / sum(n for _, n in counts)
