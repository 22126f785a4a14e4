"""Each source's builders: what example each makes from a document, and what it skips and why.

The unit tests use hand-made pages; the last test runs the sample snapshot's real documents (all
four sources, through ingest against the sample sources server) through every builder."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from loretune.config import load_config
from loretune.dataset import assemble as ds
from loretune.dataset import builders as b
from loretune.ingest import sources
from loretune.samples.server import sample_overrides

NARUTO = Path(__file__).resolve().parents[1] / "deployments" / "naruto.yaml"


def page(source: str, title: str = "T", text: str = "", meta: dict | None = None, images=(), facts=None):
    return ds.LorePage(doc_id=f"{source}:1", title=title, text=text, facts=facts or {}, image=None,
                       provenance={"source": source}, images=list(images), meta=meta or {})


def made(builder, p, max_chars: int = 400):
    out = list(builder(p, max_chars))
    return [d for d in out if isinstance(d, b.Draft)], Counter(s.reason for s in out if isinstance(s, b.Skipped))


def comment(cid, body, score, parent="", by_author=False):
    return {"id": cid, "parent": parent, "body": body, "score": score, "by_author": by_author}


GOURD = "The gourd holds sand soaked in his chakra for years, so it obeys him faster than loose sand."
QUESTION = page("reddit", "Why does Gaara carry a gourd?", "I never understood it.\n\n" + GOURD, meta={"comments": [
    comment("a", GOURD, 500),
    comment("f", "Does he still carry it after the One-Tail is taken out of him?", 90, parent="a"),
    comment("g", "He does, because the sand control was trained into his own chakra, not only Shukaku's.", 80,
            parent="f"),
    comment("j", "He just really likes gourds, obviously.", 40),  # a joke, far below the best answer
    comment("s", "Chakra.", 300),  # too short to teach
    comment("o", "Thanks all, that makes sense now, I will keep watching.", 200, by_author=True),  # the poster
    comment("r", "Sand in a gourd is a recurring design in the Hidden Sand village, as is the desert armour.", 260),
]})


def test_a_question_post_is_taught_with_its_best_answers_not_jokes_short_replies_or_the_posters_own():
    drafts, skipped = made(b.reddit_answers, QUESTION)
    assert [d.turns for d in drafts] == [
        ("Why does Gaara carry a gourd?\n\nI never understood it.", GOURD),
        ("Why does Gaara carry a gourd?\n\nI never understood it.",
         "Sand in a gourd is a recurring design in the Hidden Sand village, as is the desert armour.")]
    assert not skipped and {d.kind for d in drafts} == {"answer"}


def test_a_thread_goes_on_where_a_follow_up_question_was_answered():
    (thread,), _ = made(b.reddit_threads, QUESTION)
    assert thread.turns[1:] == (GOURD, "Does he still carry it after the One-Tail is taken out of him?",
                                "He does, because the sand control was trained into his own chakra, not only Shukaku's.")
    no_follow_up = page("reddit", QUESTION.title, QUESTION.text, meta={"comments": QUESTION.meta["comments"][:1]})
    assert made(b.reddit_threads, no_follow_up) == ([], Counter({"no answered follow-up": 1}))


@pytest.mark.parametrize("title, comments, reason", [
    ("Kakashi's eye cost him more than chakra", [comment("a", GOURD, 500)], "not a question"),
    ("Why does Gaara carry a gourd?", [], "no answer"),
    ("Why does Gaara carry a gourd?", [comment("a", "Because the ramen was free that day, I think.", 2)],
     "no answer with 5+ votes and 6+ words"),
])
def test_reddit_posts_without_a_good_answer_are_skipped_with_the_reason(title, comments, reason):
    assert made(b.reddit_answers, page("reddit", title, meta={"comments": comments})) == ([], Counter({reason: 1}))


def test_documents_ingested_without_the_sources_structure_are_skipped_and_say_so():
    assert made(b.reddit_answers, page("reddit", "Why?"))[1] == Counter({"no comment tree": 1})
    assert made(b.video_transcript, page("youtube"))[1] == Counter({"no transcript by chapter": 1})
    assert made(b.video_transcript, page("youtube", meta={"transcript_chapters": []}))[1] == Counter(
        {"no transcript": 1})
    assert made(b.article_sections, page("sportskeeda"))[1] == Counter({"no sections": 1})


def test_a_video_is_asked_what_it_says_in_each_chapter_in_answer_sized_parts():
    long_text = " ".join(f"Sentence {i} about the fox and the seal holds eleven words here." for i in range(6))
    video = page("youtube", "Kurama, explained", meta={"transcript_chapters": [
        {"title": "Who Kurama is", "start_time": 0.0, "text": "Kurama is the strongest of the nine tailed beasts."},
        {"title": "Sealed", "start_time": 95.0, "text": long_text},
        {"title": "Outro", "start_time": 300.0, "text": "Thanks for watching!"}]})
    drafts, skipped = made(b.video_transcript, video, max_chars=200)
    asks = [d.turns[0] for d in drafts]
    assert asks[0] == 'What does the video "Kurama, explained" say in its chapter "Who Kurama is"?'
    sealed = 'What does the video "Kurama, explained" say in its chapter "Sealed"?'
    assert asks[1:] == [sealed, f"{sealed} (part 2)"]  # 372 characters in parts of at most 200
    assert " ".join(d.turns[1] for d in drafts[1:]) == long_text
    assert skipped == Counter({"too short": 1})  # "Thanks for watching!" teaches nothing


def test_an_article_is_asked_what_each_section_explains():
    article = page("sportskeeda", "Rasengan vs Chidori", meta={"sections": [
        {"heading": "", "text": "Both techniques were made by a genius of the Hidden Leaf and both are lightning fast."},
        {"heading": "So which one wins?", "text": "The Rasengan wins in a long fight because it needs no eye to aim."},
        {"heading": "The history", "text": "Minato made the Rasengan after studying the Tailed Beast Ball for years."}]})
    drafts, _ = made(b.article_sections, article)
    assert [d.turns[0] for d in drafts] == ['What does the article "Rasengan vs Chidori" explain?',
                                            "So which one wins?",
                                            'In "Rasengan vs Chidori", what does the part "The history" explain?']


def test_every_picture_of_a_gallery_is_an_example_tied_to_its_post():
    gallery = page("reddit", "Sketchbook: the three Sannin", meta={"subreddit": "Naruto", "comments": []},
                   images=["sha1", "sha2", "sha3"])
    drafts, _ = made(b.document_images, gallery)
    assert [(d.image, d.turns[1]) for d in drafts] == [
        (f"sha{n}", f'It is the picture {n} of 3 in post "Sketchbook: the three Sannin" on r/Naruto.')
        for n in (1, 2, 3)]
    assert made(b.document_images, page("youtube", "Kurama", images=["t"]))[0][0].turns[1] == (
        'It is the thumbnail of the YouTube video "Kurama".')
    assert made(b.document_images, page("sportskeeda"))[1] == Counter({"no fetched image": 1})


def test_rows_alternate_roles_after_the_system_prompt_and_carry_their_builder():
    rows = ds.training_examples([QUESTION], "Lore.", max_answer_chars=400)
    thread = next(r for r in rows if r["builder"] == "reddit_threads")
    assert [m["role"] for m in thread["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    assert {r["builder"] for r in rows} == {"reddit_answers", "reddit_threads"}


def test_the_sample_snapshot_makes_examples_from_every_source_and_counts_what_it_skipped(samples, tmp_path):
    cfg = load_config(NARUTO, {**sample_overrides(samples.base_url), "sources.youtube.videos":
                               ["kR9mTlFx3aQ", "Uc7hMnq2LsE", "Pz4wQe8RtYk"]})
    docs, reports = sources.collect(sources.settings(cfg.sources.model_dump()), cfg.http.model_dump(), log=lambda _: None, cache_dir=tmp_path / "http")
    assert {name: r.status for name, r in reports.items()} == dict.fromkeys(
        ("fandom", "reddit", "youtube", "sportskeeda"), "ok")
    images = {url: f"sha-{i}" for i, url in enumerate(sorted({u for d in docs for u in d.image_urls}))}
    skipped: Counter = Counter()
    rows = ds.training_examples(ds.pages_from_documents(docs, images), "Lore.", 600, skipped)
    made_by = Counter(f"{r['source']} / {r['builder']}" for r in rows)
    for key in ("fandom / infobox_facts", "fandom / prose_chunks", "reddit / reddit_answers", "reddit / reddit_threads",
                "reddit / document_images", "youtube / video_transcript", "sportskeeda / article_sections"):
        assert made_by[key] > 0, (key, made_by)
    answers = {r["doc_id"]: r for r in rows if r["builder"] == "reddit_answers"}
    assert set(answers) == {"reddit:1hna09"}  # the one question with a good answer
    assert "soaked in his chakra" in answers["reddit:1hna09"]["messages"][2]["content"]
    assert skipped[("reddit / reddit_answers", "no answer with 5+ votes and 6+ words")] == 1  # 1hna10
    assert skipped[("reddit / reddit_answers", "not a question")] == 4
    gallery = [r for r in rows if r["doc_id"] == "reddit:1hna04" and r["builder"] == "document_images"]
    assert [r["messages"][2]["content"][:20] for r in gallery] == ["It is the picture 1 ", "It is the picture 2 "]
    chapters = [r["messages"][1]["content"] for r in rows if r["doc_id"] == "youtube:kR9mTlFx3aQ"
                and r["builder"] == "video_transcript"]
    assert any('chapter "Sealed inside Naruto"' in ask for ask in chapters)
    assert skipped[("youtube / video_transcript", "no transcript")] == 1  # Pz4wQe8RtYk: description only
