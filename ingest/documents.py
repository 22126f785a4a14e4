"""The documents table: one normalised record per page, post, video or article, as Parquet.

Downstream stages key on content, not on when it was fetched, so both the per-document
`content_hash` and the table's `corpus_hash` leave `fetched_at` out: a nightly re-fetch of unchanged
sources yields the same hashes, the same documents version, and no downstream work.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("id", pa.string()),
        ("url", pa.string()),
        ("title", pa.string()),
        ("text", pa.string()),
        ("image_urls", pa.list_(pa.string())),
        ("license", pa.string()),
        ("attribution", pa.string()),
        ("fetched_at", pa.string()),
        ("content_hash", pa.string()),
        ("meta", pa.string()),
    ]
)
COLUMNS = SCHEMA.names


@dataclass(frozen=True)
class Document:
    source: str
    id: str
    url: str
    title: str
    text: str
    image_urls: list[str] = field(default_factory=list)
    license: str = ""
    attribution: str = ""
    fetched_at: str = ""  # ISO 8601 UTC
    meta: dict[str, Any] = field(default_factory=dict)  # JSON-serialisable

    @property
    def content_hash(self) -> str:
        """sha256 of every field but fetched_at, so re-fetching unchanged content changes nothing."""
        fields = asdict(self)
        del fields["fetched_at"]
        return _sha256(_canonical_json(fields))


def write_documents(docs: Iterable[Document], path: str | Path) -> int:
    """Write `docs` sorted by (source, id), so equal corpora give equal files; returns the row count.

    A repeated (source, id) is refused: it means a crawler stored one page twice, and silently
    keeping either copy would hide that bug.
    """
    docs = sorted(docs, key=lambda d: (d.source, d.id))
    for before, after in zip(docs, docs[1:]):
        if (before.source, before.id) == (after.source, after.id):
            raise ValueError(f"document {after.source}/{after.id} appears twice")
    rows = [_row(doc) for doc in docs]
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    pq.write_table(table, str(path))
    return len(rows)


def read_documents(path: str | Path) -> list[Document]:
    table = pq.read_table(str(path), columns=COLUMNS)
    return [
        Document(
            source=row["source"],
            id=row["id"],
            url=row["url"],
            title=row["title"],
            text=row["text"],
            image_urls=list(row["image_urls"] or []),
            license=row["license"],
            attribution=row["attribution"],
            fetched_at=row["fetched_at"],
            meta=json.loads(row["meta"]),
        )
        for row in table.to_pylist()
    ]


def corpus_hash(docs: Iterable[Document]) -> str:
    """One hash for a whole corpus, independent of document order and of fetch times."""
    keys = sorted((doc.source, doc.id, doc.content_hash) for doc in docs)
    return _sha256(_canonical_json(keys))


def _row(doc: Document) -> dict[str, Any]:
    row = asdict(doc)
    row["content_hash"] = doc.content_hash
    row["meta"] = _canonical_json(doc.meta)
    return row


def _canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
