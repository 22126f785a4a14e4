"""General chat data (ShareGPT, Alpaca) mixed in with the lore."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from loretune.config import DatasetConfig, MixSource
from loretune.dataset import assemble as ds
from loretune.dataset import mix

SAMPLES = Path(mix.__file__).resolve().parents[1] / "loretune" / "samples" / "mix"
SHAREGPT, ALPACA = SAMPLES / "sharegpt_sample.jsonl", SAMPLES / "alpaca_sample.json"


def test_sharegpt_roles_are_standardised_and_conversations_end_on_the_answer():
    conversations = mix.load_conversations(mix.describe(str(SHAREGPT)), "sharegpt")
    assert len(conversations) == 8
    assert conversations[0] == [{"role": "user", "content": "How do I boil an egg so the yolk stays soft?"},
                                {"role": "assistant", "content": conversations[0][1]["content"]}]
    assert conversations[1][0]["role"] == "system"
    assert [m["role"] for m in conversations[2]] == ["user", "assistant", "user", "assistant"]
    assert all(c[-1]["role"] == "assistant" for c in conversations)


def test_alpaca_input_joins_the_instruction():
    conversations = mix.load_conversations(mix.describe(str(ALPACA)), "alpaca")
    assert conversations[1] == [{"role": "user", "content": "Rewrite the sentence in the past tense.\n\nShe walks to the market."},
                                {"role": "assistant", "content": "She walked to the market."}]
    assert conversations[0][0]["content"] == "List three things to pack for a day hike."


def test_parquet_reads_like_json(tmp_path):
    rows = [json.loads(line) for line in SHAREGPT.read_text().splitlines()]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "chat.parquet")
    assert mix.load_conversations(mix.describe(str(tmp_path / "chat.parquet")), "sharegpt") == \
        mix.load_conversations(mix.describe(str(SHAREGPT)), "sharegpt")


def test_the_version_follows_the_content_not_the_place(tmp_path):
    copy = tmp_path / "copy.jsonl"
    copy.write_bytes(SHAREGPT.read_bytes())
    assert mix.describe(str(copy))["sha256"] == mix.describe(str(SHAREGPT))["sha256"]
    copy.write_text(SHAREGPT.read_text().replace("Pebble", "Ash"))
    assert mix.describe(str(copy))["sha256"] != mix.describe(str(SHAREGPT))["sha256"]


@pytest.mark.parametrize("content, fmt, message", [
    ('{"instruction": "x"}\n', "alpaca", "row 0: not alpaca"),
    ('{"conversations": [{"from": "alien", "value": "hi"}]}\n', "sharegpt", "unknown speaker 'alien'"),
    ('{"conversations": [{"from": "human", "value": "hi"}]}\n', "sharegpt", "no usable sharegpt rows"),
    ("not json at all\n", "sharegpt", "cannot be read"),
])
def test_a_bad_file_is_one_error_naming_it(tmp_path, content, fmt, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(mix.MixError, match=message) as caught:
        mix.load_conversations(mix.describe(str(path)), fmt)
    assert str(path) in str(caught.value)


def test_a_missing_file_or_a_wrong_suffix_fails_before_any_work(tmp_path):
    with pytest.raises(mix.MixError, match="no such file"):
        mix.describe("nowhere/finetome.jsonl")
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(mix.MixError, match=r"\.json, \.jsonl or \.parquet"):
        mix.describe(str(tmp_path / "data.csv"))
    assert mix.describe("mlabonne/FineTome-100k") == {"kind": "hub", "path": "mlabonne/FineTome-100k"}


def test_a_mix_entry_takes_a_weight_or_a_count_not_both():
    with pytest.raises(ValueError, match="exactly one of weight or count"):
        MixSource(path="a.jsonl", format="sharegpt")
    with pytest.raises(ValueError, match="exactly one of weight or count"):
        MixSource(path="a.jsonl", format="sharegpt", weight=0.5, count=3)
    assert DatasetConfig().mix == []


def test_mixed_rows_join_the_training_split_counted_and_traceable(tmp_path):
    pages = [ds.LorePage(doc_id=f"fandom:{i}", title=f"Ninja {n}", text=f"Ninja {n} is of the {c} clan.",
                         facts={"clan": [c], "rank": [r]}, image=None, kind="character")
             for i, (n, c, r) in enumerate([("Ayo", "Uzumaki", "Genin"), ("Bex", "Uchiha", "Chunin"),
                                            ("Cal", "Hyuga", "Jonin"), ("Dov", "Nara", "Genin")])]
    sources = [{**mix.describe(str(SHAREGPT)), "format": "sharegpt", "count": 5, "weight": None, "split": "train"},
               {**mix.describe(str(ALPACA)), "format": "alpaca", "count": None, "weight": 0.25, "split": "train"}]
    report = ds.build_dataset(pages, tmp_path, domain="naruto", system_prompt="Lore of {domain}.", max_answer_chars=200,
                              val_fraction=0.0, seed=0, near_duplicate_threshold=0.8, mix=sources)
    from datasets import DatasetDict

    train = DatasetDict.load_from_disk(str(tmp_path / "sft"))["train"].to_list()
    mixed = [r for r in train if r["kind"] == "mix"]
    lore = len(train) - len(mixed)
    available = len(mix.load_conversations(mix.describe(str(ALPACA)), "alpaca"))  # a share never exceeds the file
    assert report.mixed == {"sharegpt_sample.jsonl": 5, "alpaca_sample.json": min(round(0.25 * lore), available)}
    assert len(mixed) == 5 + min(round(0.25 * lore), available)
    assert all(r["doc_id"].startswith("mix:") and r["messages"][0]["role"] == "system" for r in mixed)
    assert all(r["messages"][-1]["role"] == "assistant" for r in mixed)
