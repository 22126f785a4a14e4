"""General chat data mixed in with the lore: ShareGPT and Alpaca files as chat examples.

The projects loretune grew from trained on FineTome / The Tome (ShareGPT: `conversations` of
`{from, value}` turns) and Alpaca (`instruction`, `input`, `output`) beside their own data, so a
model keeps its general manners while it learns the lore. `datasets` reads the files (JSON, JSONL,
parquet) or a Hugging Face dataset id where a hub answers; this module only maps their roles onto
the chat format and takes the configured number of rows, seeded.

Each source's content hash (`describe`) is part of the dataset stage's version, so an edited file
is a new dataset while a moved one is not.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import numpy as np

from loretune.hashing import file_sha256

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant",
         "bard": "assistant", "bing": "assistant", "model": "assistant", "system": "system"}
READERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}
# pyarrow's JSON reader, which `datasets` reads JSON with, recurses once per level of nesting and
# crashes the whole process (a segmentation fault, nothing to catch) somewhere below 20,000 levels.
# Chat rows nest four or five deep, and past about 1,000 `datasets`' own fallback readers (ujson,
# Python's json) refuse a file anyway: a deeper file is refused before it reaches pyarrow.
MAX_JSON_DEPTH = 1000
JSON_STRING = re.compile(rb'"[^"\\\n]*(?:\\.[^"\\\n]*)*"')
SCAN_CHUNK_BYTES = 8 * 1024 * 1024


class MixError(ValueError):
    """A mixed-in source cannot be used; the message names it and says what is wrong."""


def describe(path: str, relative_to: Path | None = None) -> dict[str, Any]:
    """Where a source is and what it holds, for the version: a local file's sha256, or the hub id."""
    local = Path(path).expanduser()
    if not local.is_absolute() and relative_to is not None and (relative_to / local).exists():
        local = relative_to / local
    if local.exists():
        if local.suffix not in READERS:
            raise MixError(f"dataset.mix {path!r}: expected a .json, .jsonl or .parquet file")
        return {"kind": "file", "path": str(local.resolve()), "sha256": file_sha256(local)}
    if "/" in path and not path.startswith((".", "/", "~")) and not local.suffix:  # owner/name
        return {"kind": "hub", "path": path}
    raise MixError(f"dataset.mix {path!r}: no such file")


def name(source: dict[str, Any]) -> str:
    """How reports and the card name a source: a file's name, or the hub id."""
    return Path(source["path"]).name if source["kind"] == "file" else source["path"]


def load_conversations(source: dict[str, Any], fmt: str, split: str = "train") -> list[list[dict[str, str]]]:
    """Every row of one source as chat messages; a row that does not fit the shape is an error
    naming the source, the row and what is missing."""
    rows = _read(source, split)
    convert = {"sharegpt": _sharegpt, "alpaca": _alpaca}[fmt]
    conversations = []
    for i, row in enumerate(rows):
        try:
            messages = convert(row)
        except (KeyError, TypeError, ValueError) as exc:
            raise MixError(f"dataset.mix {source['path']!r} row {i}: not {fmt} ({exc})") from None
        if messages:
            conversations.append(messages)
    if not conversations:
        raise MixError(f"dataset.mix {source['path']!r}: no usable {fmt} rows")
    return conversations


def take(conversations: list[Any], n: int, seed: int) -> list[Any]:
    """`n` rows, seeded; all of them, in a seeded order, when fewer are there (never repeated)."""
    rng = random.Random(seed)
    return rng.sample(conversations, min(n, len(conversations)))


def _read(source: dict[str, Any], split: str) -> list[dict[str, Any]]:
    from datasets import load_dataset

    if source["kind"] == "file" and READERS[Path(source["path"]).suffix] == "json":
        depth = json_depth(Path(source["path"]))
        if depth > MAX_JSON_DEPTH:
            raise MixError(f"dataset.mix {source['path']!r}: cannot be read (JSON nested {depth} levels deep, "
                           f"over the {MAX_JSON_DEPTH} a chat file could need)")
    import datasets

    # A local file needs nothing from the hub, but `datasets` would still report a download count
    # for its builder to huggingface.co, which offline stalls a read by seconds (seen in the fuzz test).
    datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = False
    try:
        if source["kind"] == "file":
            reader = READERS[Path(source["path"]).suffix]
            data = load_dataset(reader, data_files=source["path"], split="train", keep_in_memory=True)
        else:
            data = load_dataset(source["path"], split=split)
        # Inside the `try`: pyarrow's JSON reader keeps a string's invalid UTF-8 unchecked, and only
        # turning the rows into Python strings finds it (UnicodeDecodeError).
        return data.to_list()
    except MixError:
        raise
    except Exception as exc:  # unreadable JSON, invalid UTF-8, no hub, unknown id: one message naming the source
        raise MixError(f"dataset.mix {source['path']!r}: cannot be read ({type(exc).__name__}: "
                       f"{str(exc).splitlines()[0][:300] if str(exc) else ''})") from None


def json_depth(path: Path) -> int:
    """How deep a JSON or JSON Lines file's arrays and objects nest, brackets inside strings not
    counted; it stops counting once past MAX_JSON_DEPTH. The file is read in chunks cut at line
    ends (a JSON string cannot hold a raw line break, so no string spans two); an unclosed quote,
    invalid JSON anyway, only makes the depth look larger."""
    depth = deepest = 0
    pending: list[bytes] = []
    with open(path, "rb") as stream:
        while deepest <= MAX_JSON_DEPTH:
            block = stream.read(SCAN_CHUNK_BYTES)
            cut = block.rfind(b"\n") + 1
            if block and not cut:
                pending.append(block)
                continue
            text = JSON_STRING.sub(b"", b"".join(pending) + block[:cut] if block else b"".join(pending))
            pending = [block[cut:]]
            for start in range(0, len(text), SCAN_CHUNK_BYTES):
                codes = np.frombuffer(text, np.uint8, count=min(SCAN_CHUNK_BYTES, len(text) - start), offset=start)
                depths = np.cumsum(np.isin(codes, (0x5B, 0x7B)).astype(np.int32) - np.isin(codes, (0x5D, 0x7D))) + depth
                if depths.size:
                    deepest, depth = max(deepest, int(depths.max())), int(depths[-1])
            if not block:
                break
    return deepest


def _sharegpt(row: dict[str, Any]) -> list[dict[str, str]]:
    turns = row["conversations"]
    messages = []
    for turn in turns:
        role = ROLES.get(str(turn["from"]).lower())
        if role is None:
            raise ValueError(f"unknown speaker {turn['from']!r}")
        messages.append({"role": role, "content": str(turn["value"]).strip()})
    return _trim(messages)


def _alpaca(row: dict[str, Any]) -> list[dict[str, str]]:
    prompt = str(row["instruction"]).strip()
    if str(row.get("input") or "").strip():
        prompt = f"{prompt}\n\n{str(row['input']).strip()}"
    return _trim([{"role": "user", "content": prompt}, {"role": "assistant", "content": str(row["output"]).strip()}])


def _trim(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """A conversation that ends on the assistant's answer (the turn training learns); none if it has none."""
    while messages and messages[-1]["role"] != "assistant":
        messages.pop()
    if not any(m["role"] == "user" for m in messages) or not messages or not messages[-1]["content"]:
        return []
    return messages
