"""Documents hash their content (not their fetch time) and round-trip through Parquet."""

from __future__ import annotations

import dataclasses

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from loretune.ingest.documents import Document, corpus_hash, read_documents, write_documents


def doc(id: str, text: str = "Some lore.", fetched_at: str = "2026-01-01T00:00:00Z", source: str = "fandom") -> Document:
    return Document(
        source=source,
        id=id,
        url=f"https://wiki.example/wiki/{id}",
        title=f"Page {id}",
        text=text,
        image_urls=[f"https://img.example/{id}.png"],
        license="CC BY-SA 3.0",
        attribution="Example Wiki contributors",
        fetched_at=fetched_at,
        meta={"pageid": int(id), "infobox": {"rank": ["Genin", "Hokage"]}, "note": "ü"},
    )


def test_content_hash_ignores_fetched_at_but_not_content():
    a = doc("1")
    assert a.content_hash == doc("1", fetched_at="2030-05-05T05:05:05Z").content_hash
    assert a.content_hash != doc("1", text="Other lore.").content_hash
    assert a.content_hash != dataclasses.replace(a, meta={**a.meta, "pageid": 2}).content_hash
    assert a.content_hash != dataclasses.replace(a, image_urls=[]).content_hash


def test_corpus_hash_ignores_order_and_fetch_times():
    docs = [doc("1"), doc("2"), doc("3", source="reddit")]
    refetched = [doc("3", source="reddit", fetched_at="2031-01-01T00:00:00Z"), doc("2"), doc("1")]
    assert corpus_hash(docs) == corpus_hash(refetched)
    assert corpus_hash(docs) != corpus_hash(docs[:2])
    assert corpus_hash(docs) != corpus_hash([doc("1", text="changed"), *docs[1:]])


def test_parquet_round_trip_with_exact_columns_sorted_by_source_and_id(tmp_path):
    docs = [doc("2"), doc("10"), doc("1", source="reddit"), doc("1")]
    path = tmp_path / "documents.parquet"
    assert write_documents(docs, path) == 4
    table = pq.read_table(path)
    assert table.column_names == [
        "source", "id", "url", "title", "text", "image_urls", "license", "attribution", "fetched_at",
        "content_hash", "meta",
    ]
    assert table.schema.field("image_urls").type == pa.list_(pa.string())
    assert table.schema.field("meta").type == pa.string()
    assert list(zip(table["source"].to_pylist(), table["id"].to_pylist())) == [
        ("fandom", "1"), ("fandom", "10"), ("fandom", "2"), ("reddit", "1"),
    ]
    back = read_documents(path)
    assert back == sorted(docs, key=lambda d: (d.source, d.id))
    assert table["content_hash"].to_pylist() == [d.content_hash for d in back]


def test_a_document_stored_twice_is_refused(tmp_path):
    with pytest.raises(ValueError, match="fandom/1"):
        write_documents([doc("1"), doc("1", text="again")], tmp_path / "d.parquet")
