"""Batches for a causal LM with images: padded ids and labels, each row's CLIP features by sha256.

Training, evaluation and the export's parity check batch the same way, so it lives with the model.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from loretune.model.chat_format import IGNORE


class FusionCollator:
    """Pads token ids and labels, and looks up each row's CLIP features by image sha256.

    Written here rather than taken from TRL: its collator knows nothing of image features."""

    def __init__(self, pad_id: int, features: dict[str, np.ndarray], clip_dim: int):
        self.pad_id = pad_id
        self.features = features
        self.clip_dim = clip_dim

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)

        def pad(seq: list[int], value: int) -> list[int]:
            return list(seq) + [value] * (width - len(seq))

        batch = {
            "input_ids": torch.tensor([pad(r["input_ids"], self.pad_id) for r in rows]),
            "attention_mask": torch.tensor([pad([1] * len(r["input_ids"]), 0) for r in rows]),
            "image_features": torch.zeros(len(rows), self.clip_dim),
        }
        if "labels" in rows[0]:
            batch["labels"] = torch.tensor([pad(r["labels"], IGNORE) for r in rows])
        for i, row in enumerate(rows):
            vector = self.features.get(row.get("image_sha256") or "")
            if vector is not None:
                batch["image_features"][i] = torch.tensor(vector, dtype=torch.float32)
        return batch
