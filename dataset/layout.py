"""What a dataset artifact holds, read back by the stages after it: the system prompt, the training text.

Kept apart from the builders so a stage that only reads a dataset (the tiny model's tokenizer, the
evaluation) takes neither their imports nor their code into its version.
"""

from __future__ import annotations

import json
from pathlib import Path

from datasets import DatasetDict

EVAL_DIR = "eval"
SFT_DIR = "sft"
BUILD_REPORT = "build_report.json"


def system_prompt(dataset_dir: Path) -> str:
    return json.loads((dataset_dir / BUILD_REPORT).read_text())["system_prompt"]


def corpus_texts(dataset_dir: Path) -> list[str]:
    """Training text only (never eval questions), e.g. to train the tiny model's tokenizer."""
    train = DatasetDict.load_from_disk(str(dataset_dir / SFT_DIR))["train"]
    return [m["content"] for row in train["messages"] for m in row]
