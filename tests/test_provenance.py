"""Every training example and evaluation item says where it came from; the dataset has a card."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from datasets import DatasetDict

from loretune.dataset import assemble as ds
from loretune.dataset import mix

SHAREGPT = Path(mix.__file__).resolve().parents[1] / "loretune" / "samples" / "mix" / "sharegpt_sample.jsonl"

CLANS = [("Ayo", "Uzumaki", "Genin"), ("Bex", "Uchiha", "Chunin"), ("Cal", "Hyuga", "Jonin"), ("Dov", "Nara", "Genin")]


def documents():
    docs = [SimpleNamespace(source="fandom", id=name, url=f"https://naruto.fandom.com/wiki/{name}", title=f"Ninja {name}",
                            text=f"Ninja {name} is of the {clan} clan. {name} is a {rank}.", image_urls=[],
                            license="CC BY-SA 3.0", attribution=f"Naruto Wiki contributors, {name}",
                            meta={"revid": 100 + i, "infobox": {"clan": clan, "rank": rank}, "infobox_type": "character"})
            for i, (name, clan, rank) in enumerate(CLANS)]
    docs.append(SimpleNamespace(source="reddit", id="1hna02", url="https://www.reddit.com/r/Naruto/comments/1hna02/",
                                title="Kakashi's eye", text="Kakashi's Sharingan cost him more than chakra.",
                                image_urls=[], license="Reddit User Agreement", attribution="r/Naruto contributors",
                                meta={"created_utc": 1764550800.0}))
    return docs


def test_revisions_in_each_sources_own_terms():
    assert ds.revision("fandom", "Gaara", {"revid": 4242}) == "revid 4242"
    assert ds.revision("reddit", "1hna02", {"created_utc": 1764550800.0}) == "1hna02, created 2025-12-01T01:00:00+00:00"
    assert ds.revision("youtube", "abc", {"upload_date": "20251101"}) == "abc, uploaded 20251101"
    assert ds.revision("sportskeeda", "naruto-x", {"published": "2025-11-02"}) == "naruto-x, published 2025-11-02"
    assert ds.revision("other", "id7", {}) == "id7"


def test_every_example_and_item_is_traceable_and_the_card_says_what_the_dataset_holds(tmp_path):
    pages = ds.pages_from_documents(documents(), {})
    source = {**mix.describe(str(SHAREGPT)), "format": "sharegpt", "count": 3, "weight": None, "split": "train"}
    report = ds.build_dataset(pages, tmp_path, domain="naruto", system_prompt="Lore of {domain}.", max_answer_chars=200,
                              val_fraction=0.1, seed=0, near_duplicate_threshold=0.8, mix=[source])
    splits = DatasetDict.load_from_disk(str(tmp_path / "sft"))
    rows = [r for split in splits.values() for r in split.to_list()]
    for row in rows:
        assert all(row[k] for k in ("source", "url", "revision", "builder", "doc_id")), row
        if row["source"] != "mix":
            assert row["license"] and row["attribution"], row
    fact = next(r for r in rows if r["builder"] == "infobox_facts" and r["doc_id"] == "fandom:Ayo")
    assert (fact["url"], fact["revision"], fact["license"]) == (
        "https://naruto.fandom.com/wiki/Ayo", "revid 100", "CC BY-SA 3.0")
    assert {r["builder"] for r in rows if r["source"] == "mix"} == {"mix.sharegpt"}
    assert report.examples["fandom / infobox_facts"] == sum(
        r["source"] == "fandom" and r["builder"] == "infobox_facts" for r in rows)

    items = [json.loads(line) for line in (tmp_path / "eval" / "facts.jsonl").read_text().splitlines()]
    assert items and all(i["source"] == "fandom" and i["revision"].startswith("revid ") and i["url"] for i in items)

    card = (tmp_path / "README.md").read_text()
    assert card.startswith("---\npretty_name: loretune naruto lore")
    for needle in ("| fandom | 4 | CC BY-SA 3.0 |", "| reddit | 1 | Reddit User Agreement |",
                   f"| fandom / infobox_facts | {report.examples['fandom / infobox_facts']} |",
                   "| sharegpt_sample.jsonl | sharegpt | 3 |", "## Dropped", "| facts |"):
        assert needle in card, needle
