"""What an export artifact holds, and every model in a store that can be talked to.

An export (`<store>/export/<version>/`) is one checkpoint made ready to serve:

- `adapter/`: the PEFT adapter with the image projector (as training saved it), and
  `loretune_multimodal.json`;
- `merged/`: the adapter merged into its base, 16-bit safetensors, with the tokenizer, chat
  template, generation config and `loretune_chat.json`: a plain model folder any tool loads;
- `projector/`: the image projector beside the merged folder (`projector.safetensors` and
  `loretune_multimodal.json`), since merging keeps only what LoRA touched;
- `gguf/<name>-<type>.gguf`: llama.cpp files converted from `merged/` (f16 and quantised types);
- `export.json`: which checkpoint, its evaluation score, each file's real tensor types and size,
  the converter's version, and the parity results (`parity.json` holds every probe's numbers).

`list_models` is what a chat UI offers: the base models and every export, newest first, each
labelled with its evaluation score.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EXPORT_FILE = "export.json"
NOT_EXPORTED_FILE = "not_exported.json"  # what an export version holds when nothing was chosen, and why
PARITY_FILE = "parity.json"
ADAPTER_DIR = "adapter"
MERGED_DIR = "merged"
PROJECTOR_DIR = "projector"
GGUF_DIR = "gguf"
PROJECTOR_WEIGHTS = "projector.safetensors"


@dataclass(frozen=True)
class ServableModel:
    """One entry of a chat UI's dropdown.

    `kind`: `base` (the model stage's folder, transformers), `merged` (an export's merged folder,
    transformers, images through `projector`), or `gguf` (one llama.cpp file; text only).
    """

    label: str
    kind: str
    path: Path
    projector: Path | None
    created_at: str
    score: str

    @property
    def accepts_images(self) -> bool:
        return self.projector is not None


def score_label(score: dict[str, Any] | None) -> str:
    if not score:
        return "not evaluated"
    return f"{score['set']} {score['metric']} {score['value']:.3f} ± {score['stderr']:.3f}"


def table_score(evaluation_dir: Path, decision: dict[str, Any], checkpoint: str | None = None) -> dict[str, Any] | None:
    """A checkpoint's score (step 0's when `checkpoint` is None) on the set and metric the
    evaluation's gate decided on, from the evaluation's table."""
    import csv

    wanted, metric = decision.get("set", "facts"), decision.get("metric", "acc")
    try:
        with open(evaluation_dir / "evaluation.csv", newline="") as handle:  # tasks/evaluation.py TABLE
            row = next((r for r in csv.DictReader(handle) if r["set"] == wanted
                        and (r["step"] == "0" if checkpoint is None else r["checkpoint"] == checkpoint)), None)
    except OSError:
        return None
    if row is None:
        return None
    return {"set": wanted, "metric": metric, "value": float(row[metric]), "stderr": float(row[f"{metric}_stderr"]),
            "n": int(row["n"])}


def list_models(store_root: str | Path) -> list[ServableModel]:
    """Every export's merged model and GGUF files, newest export first, then the base models.

    Reads manifests and `export.json` only; a version without one (an export that chose nothing) or
    with an unreadable one adds nothing. A base model is labelled with its step-0 score from the
    newest export made from it, else from the newest evaluation of it.
    """
    from loretune.store import ArtifactStore

    store = ArtifactStore(store_root)
    found: list[ServableModel] = []
    base_scores: dict[str, str] = {}
    for manifest in reversed(store.versions("export")):
        folder = store.local_path("export", manifest["version"])
        try:
            info = json.loads((folder / EXPORT_FILE).read_text())
        except (OSError, ValueError):  # nothing exported, or an unreadable file: the others still serve
            continue
        base_scores.setdefault(str(info.get("base")), score_label(info.get("base_score")))
        score, when = score_label(info.get("score")), manifest["created_at"][:16].replace("T", " ")
        name = f"{info.get('domain', '?')} {info['checkpoint']}"
        projector = folder / PROJECTOR_DIR if (folder / PROJECTOR_DIR / PROJECTOR_WEIGHTS).exists() else None
        if (folder / MERGED_DIR).is_dir():
            found.append(ServableModel(f"{name} · merged (transformers) · {score} · {when}", "merged",
                                       folder / MERGED_DIR, projector, manifest["created_at"], score))
        for quant, entry in sorted(info.get("gguf", {}).items()):
            found.append(ServableModel(f"{name} · GGUF {quant} (llama.cpp) · {score} · {when}", "gguf",
                                       folder / entry["file"], None, manifest["created_at"], score))
    for manifest in reversed(store.versions("evaluation")):  # bases never exported: their step 0
        base_ref = manifest.get("inputs", {}).get("base", "").replace("@", "/")
        if base_ref and base_ref not in base_scores:
            base_scores[base_ref] = score_label(table_score(store.local_path("evaluation", manifest["version"]),
                                                            manifest.get("details", {}).get("promotion", {})))
    for manifest in reversed(store.versions("model")):
        base = manifest.get("details", {}).get("base", "model")
        score = base_scores.get(f"model/{manifest['version']}", "not evaluated")
        found.append(ServableModel(f"base: {base} ({manifest['version'][:8]}) · {score}", "base",
                                   store.local_path("model", manifest["version"]), None,
                                   manifest["created_at"], score))
    return found
