"""Generated answers cached by content: what a model said, keyed by everything that decides it.

Evaluation asks every checkpoint the open sets at every decoding point; training asks the base
model general questions once for its retention share. Both key a set of answers on the model's
identity (an artifact version and the runtime), the questions, the decoding, the system prompt, the
batch size and a code version, so the same question to the same weights is generated once.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


class AnswerCache:
    """Finished cells' answers, one JSON file per cell key; written whole or not at all, so a
    killed run leaves no half cell behind. `folder=None` caches nothing."""

    def __init__(self, folder: Path | None):
        self.folder = Path(folder) if folder else None

    @staticmethod
    def key(**parts: Any) -> str:
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()

    def get(self, key: str) -> list[dict[str, Any]] | None:
        path = self.folder / f"{key}.json" if self.folder else None
        if path is None or not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None  # unreadable: generate it again

    def put(self, key: str, rows: list[dict[str, Any]]) -> None:
        if self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
        with os.fdopen(handle, "w") as out:
            json.dump(rows, out)
        os.replace(tmp, self.folder / f"{key}.json")
