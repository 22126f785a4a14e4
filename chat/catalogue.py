"""Every model in a store that can be talked to: what the chat UI's dropdown offers.

The base models and every export, newest first, each labelled with its evaluation score. It reads
the export layout (`export/layout.py`) and the evaluation table, never the training loop.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from loretune.evaluation.table import score_label, table_score
from loretune.export.layout import EXPORT_FILE, MERGED_DIR, PROJECTOR_DIR, PROJECTOR_WEIGHTS
from loretune.store import ArtifactStore


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
    decoding: dict | None = None  # the evaluation's recommended decoding point for an export

    @property
    def accepts_images(self) -> bool:
        return self.projector is not None

    def starting_settings(self) -> tuple[float, float, str]:
        """The chat's temperature and top-p to start with, and a note: the recommended point's when
        the evaluation named one (greedy: temperature 0), else greedy. The chat streams one answer,
        so a recommended beam search starts greedy and says so."""
        point = self.decoding
        if not point:
            return 0.0, 0.9, ""
        if point.get("do_sample"):
            return (float(point.get("temperature") or 1.0), float(point.get("top_p") or 1.0),
                    f"Decoding starts at the evaluation's recommendation, {point['name']}.")
        if int(point.get("num_beams") or 1) > 1:
            return 0.0, 0.9, (f"The evaluation recommends {point['name']} (beam search); the chat streams one "
                              "answer, so it decodes greedily.")
        return 0.0, 0.9, f"Decoding starts at the evaluation's recommendation, {point['name']}."


def list_models(store_root: str | Path) -> list[ServableModel]:
    """Every export's merged model and GGUF files, newest export first, then the base models.

    Reads manifests and `export.json` only; a version without one (an export that chose nothing) or
    with an unreadable one adds nothing. A base model is labelled with its step-0 score from the
    newest export made from it, else from the newest evaluation of it.
    """
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
                                       folder / MERGED_DIR, projector, manifest["created_at"], score,
                                       info.get("decoding")))
        for quant, entry in sorted(info.get("gguf", {}).items()):
            found.append(ServableModel(f"{name} · GGUF {quant} (llama.cpp) · {score} · {when}", "gguf",
                                       folder / entry["file"], None, manifest["created_at"], score,
                                       info.get("decoding")))
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
