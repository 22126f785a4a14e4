"""A tiny base model and a dataset with pictures: what one training run needs, for the tests that
train directly through the library (the backends, the accelerate launcher)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from datasets import Dataset, DatasetDict

from loretune.dataset import assemble as ds
from loretune.model import base_models
from loretune.model.tiny_model import build_and_save

SYSTEM = "You are an expert."
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
            max_position_embeddings=256, seed=0)


def make_lore(root: Path) -> dict:
    rng = np.random.default_rng(0)
    features = {f"img{i}": rng.standard_normal(8).astype(np.float32) for i in range(4)}
    pages = [ds.LorePage(doc_id=f"fandom:{i}", title=f"Ninja {name}", text=f"Ninja {name} is of the {clan} clan.",
                         facts={"clan": [clan]}, image=f"img{i}", kind="character")
             for i, (name, clan) in enumerate([("Ayo", "Uzumaki"), ("Bex", "Uchiha"), ("Cal", "Hyuga"), ("Dov", "Nara")])]
    rows = [r for r in ds.training_examples(pages, SYSTEM, max_answer_chars=200) if r["kind"] != "prose"]
    DatasetDict({"train": Dataset.from_list(rows * 4), "validation": Dataset.from_list(rows[:4])}).save_to_disk(
        str(root / "data" / "sft"))
    build_and_save([m["content"] for r in rows for m in r["messages"]] * 5, root / "base", vocab_size=300, **TINY)
    base_models.prepare_chat(root / "base", None, "tiny")  # as the model stage leaves it: the image token saved
    return {"dataset_dir": root / "data", "features": features, "clip_dim": 8, "base_model": str(root / "base"),
            "image_tokens": 2}
