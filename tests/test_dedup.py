"""Near-duplicates by MinHash LSH: across documents, per source pair, and the eval leakage check."""

from __future__ import annotations

import random

from loretune.dataset import assemble as ds
from loretune.dataset import dedup

SYSTEM = {"role": "system", "content": "Lore."}


def row(doc_id: str, source: str, answer: str, builder: str = "prose_chunks", image: str = "",
        prompt: str = "Tell me about it.") -> dict:
    return {"messages": [SYSTEM, {"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
            "doc_id": doc_id, "source": source, "builder": builder, "image_sha256": image}


def test_the_index_finds_what_the_pairwise_check_finds():
    rng = random.Random(0)
    vocabulary = [f"w{i}" for i in range(60)]
    stored = [frozenset(rng.sample(vocabulary, 20)) for _ in range(80)]
    index = dedup.NearDuplicateIndex(0.8)
    for i, tokens in enumerate(stored):
        index.add(str(i), tokens)
    for i, tokens in enumerate(stored[:40]):  # near copies: two of twenty words swapped
        query = frozenset(list(tokens)[:18] + ["x1", "x2"]) if i % 2 else tokens
        brute = {str(j) for j, other in enumerate(stored) if dedup.jaccard(query, other) >= 0.8}
        assert set(index.matches(query)) == brute


SENTENCE = "Kakashi Hatake copied a thousand techniques with the Sharingan his friend Obito gave him on the battlefield"


def test_free_text_repeated_by_another_document_is_dropped_and_counted_by_source_pair():
    rows = [row("fandom:Kakashi", "fandom", SENTENCE),
            row("reddit:1", "reddit", SENTENCE.replace("the battlefield", "a battlefield")),
            row("youtube:v", "youtube", SENTENCE + "."),
            row("fandom:Kakashi", "fandom", SENTENCE + " again", prompt="What else is known? Part 2."),
            row("sportskeeda:a", "sportskeeda", "Gaara carries sand in a gourd on his back wherever he travels today")]
    kept, pairs, shown = dedup.drop_near_duplicate_examples(rows, 0.8)
    assert [r["doc_id"] for r in kept] == ["fandom:Kakashi", "fandom:Kakashi", "sportskeeda:a"]
    assert pairs == {"reddit ~ fandom": 1, "youtube ~ fandom": 1}
    assert len(shown) == 2


def test_the_same_answer_to_a_differently_worded_question_is_a_near_duplicate():
    rows = [row("fandom:Kakashi", "fandom", SENTENCE, prompt="Tell me about Kakashi Hatake."),
            row("reddit:1", "reddit", SENTENCE + "!", builder="reddit_answers",
                prompt="Serious question: how did Kakashi end up knowing so many jutsu from other villages?")]
    kept, pairs, _ = dedup.drop_near_duplicate_examples(rows, 0.8)
    assert [r["doc_id"] for r in kept] == ["fandom:Kakashi"] and pairs == {"reddit ~ fandom": 1}


def test_facts_pictures_and_short_rows_are_never_compared():
    facts = [row(f"fandom:{n}", "fandom", "Konohagakure, Anbu, Root, Akatsuki, Team Seven, Sannin",
                 builder="infobox_facts", prompt=f"What is the affiliation of {n}?") for n in ("Ayo", "Bex")]
    pictures = [row(f"{s}:{i}", s, "Naruto Uzumaki", builder="page_image", image=f"sha{i}",
                    prompt="Who or what is shown in this picture?") for i, s in enumerate(("fandom", "youtube"))]
    short = [row(f"reddit:{i}", "reddit", "Yes, indeed.") for i in range(2)]
    kept, pairs, _ = dedup.drop_near_duplicate_examples(facts + pictures + short, 0.8)
    assert len(kept) == 6 and not pairs


def test_the_dataset_reports_and_the_card_shows_what_was_dropped(tmp_path):
    page = dict(facts={"clan": ["Hatake"], "rank": ["Jonin"]}, image=None, kind="character")
    pages = [ds.LorePage(doc_id="fandom:Kakashi", title="Kakashi", text=SENTENCE + ".",
                         provenance={"source": "fandom", "url": "u", "revision": "r", "license": "l", "attribution": "a"},
                         **page),
             # a Reddit question whose best answer copies the wiki's sentence: asked differently, same answer
             ds.LorePage(doc_id="reddit:1", title="How did Kakashi learn so many techniques?", text=SENTENCE + "!",
                         facts={}, image=None,
                         meta={"comments": [{"id": "c1", "parent": "", "body": SENTENCE + "!", "score": 50}]},
                         provenance={"source": "reddit", "url": "u", "revision": "r", "license": "l", "attribution": "a"}),
             *[ds.LorePage(doc_id=f"fandom:{n}", title=n, text=f"{n} is a ninja of the {c} clan.",
                           facts={"clan": [c], "rank": [r]}, image=None, kind="character",
                           provenance={"source": "fandom", "url": "u", "revision": "r", "license": "l",
                                       "attribution": "a"})
               for n, c, r in (("Ayo", "Uzumaki", "Genin"), ("Bex", "Uchiha", "Chunin"), ("Cal", "Hyuga", "Jonin"))]]
    report = ds.build_dataset(pages, tmp_path, domain="naruto", system_prompt="Lore of {domain}.", max_answer_chars=300,
                              val_fraction=0.0, seed=0, near_duplicate_threshold=0.8)
    assert report.near_duplicate_examples == {"reddit ~ fandom": 1}
    assert "1 training examples that nearly repeat another document's" in (tmp_path / "README.md").read_text()
    assert "reddit ~ fandom 1" in (tmp_path / "README.md").read_text()
    # what a builder made nothing from is counted, with why, in the report and on the card
    assert report.skipped["reddit / reddit_threads"] == {"no answered follow-up": 1}
    assert "| reddit / reddit_threads | no answered follow-up | 1 |" in (tmp_path / "README.md").read_text()
