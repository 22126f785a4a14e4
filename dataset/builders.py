"""Documents to chat examples: one named builder per kind of example, chosen by the document's source.

Each source says something different, so each gets builders that ask what that source answers:
a wiki page its facts and prose, a Reddit question its best-voted answers (and the follow-ups that
were answered too), a video what it says chapter by chapter, an article what each section explains.
A builder that cannot make a good example from a document yields a `Skipped` with its reason,
so the dataset card can say what was left out and why instead of quietly training on less.

Facts and the relations prose states are taught by `fact_renderings`, whose builders need the
whole lore (which value one subject alone holds, which names the lore knows): `lore_builders`
adds them to these per source.

Builders are plain generators over a page (`dataset.LorePage`: title, text, facts, images, meta and
provenance); the row format, the system prompt and the provenance columns are the dataset's business.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

if TYPE_CHECKING:
    from loretune.dataset.assemble import LorePage

TRAIN_IMAGE_TEMPLATES = (
    "Who or what is shown in this picture?",
    "Name what this image depicts.",
    "What is this a picture of?",
    "Identify the subject of this image.",
)
ABOUT_TEMPLATES = ("Tell me about {title}.", "What else is known about {title}? Part {part}.")

# What makes a Reddit reply an answer worth teaching: enough votes, enough words, and (when a
# post has several) close to the best one's votes, so a joke under a good answer is not taught.
MIN_ANSWER_SCORE = 5
MIN_ANSWER_WORDS = 6
ANSWERS_PER_QUESTION = 2
RUNNER_UP_SHARE = 0.5  # a second answer is kept only with at least half the best one's votes
MIN_CHUNK_WORDS = 8  # a transcript or article piece shorter than this says too little to teach
QUESTION_WORDS = {"who", "what", "why", "how", "when", "where", "which", "whose", "is", "are", "was", "were",
                  "does", "do", "did", "can", "could", "should", "would", "will", "has", "have"}


@dataclass(frozen=True)
class Draft:
    """One example before it becomes a row: alternating user/assistant turns, maybe an image."""

    turns: tuple[str, ...]
    kind: str
    image: str = ""
    facts: tuple[str, ...] = ()  # the facts its answers state, one key per statement (fact_renderings)


@dataclass(frozen=True)
class Skipped:
    reason: str


Built = Iterator["Draft | Skipped"]
Builder = Callable[["LorePage", int], Built]


def chunk_prose(text: str, max_chars: int) -> list[str]:
    """Split prose into answer-sized chunks at sentence boundaries."""
    sentences = re.split(r"(?<=[.!?])\s+", " ".join(text.split()))
    chunks, current = [], ""
    for sentence in sentences:
        if current and len(current) + 1 + len(sentence) > max_chars:
            chunks.append(current)
            current = ""
        current = f"{current} {sentence}".strip()[:max_chars]
    return [c for c in chunks + [current] if c]


def is_question(text: str) -> bool:
    """Reads as a question: ends with "?" or opens with a question word ("Why does ...")."""
    words = re.findall(r"[a-z']+", text.lower())
    return text.strip().endswith("?") or bool(words and words[0] in QUESTION_WORDS)


# --- Fandom ------------------------------------------------------------------------------------


def prose_chunks(page: LorePage, max_chars: int) -> Built:
    chunks = chunk_prose(page.text, max_chars)
    if not chunks:
        yield Skipped("no prose")
    for part, chunk in enumerate(chunks, start=1):
        template = ABOUT_TEMPLATES[0] if part == 1 else ABOUT_TEMPLATES[1]
        yield Draft((template.format(title=page.title, part=part), chunk), "prose")


def page_image(page: LorePage, max_chars: int) -> Built:
    """The page's main image named by the page's title: the wiki's picture of its subject."""
    if not page.image:
        yield Skipped("no fetched image")
        return
    for template in TRAIN_IMAGE_TEMPLATES:
        yield Draft((template, page.title), "image", image=page.image)


# --- Reddit ------------------------------------------------------------------------------------


def reddit_answers(page: LorePage, max_chars: int) -> Built:
    """A question-like post and its best-voted top-level answers, one conversation each."""
    question, answers, reason = _question_and_answers(page, page.meta.get("comments"))
    if reason:
        yield Skipped(reason)
        return
    for answer in answers:
        yield Draft((question, _fit(answer["body"], max_chars)), "answer")


def reddit_threads(page: LorePage, max_chars: int) -> Built:
    """A multi-turn conversation where the replies answer: the question, its best answer, then a
    follow-up question under that answer and the best reply to it, as deep as it goes on."""
    comments = page.meta.get("comments")
    question, answers, reason = _question_and_answers(page, comments)
    if reason:
        yield Skipped(reason)
        return
    children = _children(comments)
    turns, last = [question, _fit(answers[0]["body"], max_chars)], answers[0]
    while True:
        follow_ups = [c for c in children.get(last["id"], []) if c["body"] and is_question(c["body"])]
        follow_up = max(follow_ups, key=lambda c: c["score"], default=None)
        replies = _answers(children.get(follow_up["id"], []) if follow_up else [])
        if not replies:
            break
        turns += [follow_up["body"], _fit(replies[0]["body"], max_chars)]
        last = replies[0]
    if len(turns) < 4:
        yield Skipped("no answered follow-up")
        return
    yield Draft(tuple(turns), "thread")


def _question_and_answers(page: LorePage, comments: Sequence[dict[str, Any]] | None
                          ) -> tuple[str, list[dict[str, Any]], str]:
    """(the question as asked, its answers best first, "") or ("", [], why there is none)."""
    if comments is None:
        return "", [], "no comment tree"
    selftext = page.text.split("\n\n")[0] if page.text and not _starts_with_comment(page, comments) else ""
    if not (is_question(page.title) or is_question(selftext)):
        return "", [], "not a question"
    top = [c for c in comments if not c["parent"]]
    if not any(c["body"] for c in top):
        return "", [], "no answer"
    answers = _answers(top)
    if not answers:
        return "", [], f"no answer with {MIN_ANSWER_SCORE}+ votes and {MIN_ANSWER_WORDS}+ words"
    best = answers[0]["score"]
    answers = [a for a in answers if a["score"] >= RUNNER_UP_SHARE * best][:ANSWERS_PER_QUESTION]
    return "\n\n".join(part for part in (page.title, selftext) if part), answers, ""


def _answers(replies: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Replies good enough to teach, best-voted first (ties by id: deterministic); the poster's own
    replies are clarifications, not answers."""
    good = [c for c in replies if c["body"] and not c.get("by_author") and c["score"] >= MIN_ANSWER_SCORE
            and len(c["body"].split()) >= MIN_ANSWER_WORDS]
    return sorted(good, key=lambda c: (-c["score"], c["id"]))


def _children(comments: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    children: dict[str, list[dict[str, Any]]] = {}
    for comment in comments:
        children.setdefault(comment["parent"], []).append(comment)
    return children


def _starts_with_comment(page: LorePage, comments: Sequence[dict[str, Any]]) -> bool:
    """A post with no selftext: its document text opens with the first comment instead."""
    first = next((c["body"] for c in comments if c["body"]), None)
    return first is not None and page.text.startswith(first)


# --- YouTube -----------------------------------------------------------------------------------


def video_transcript(page: LorePage, max_chars: int) -> Built:
    """What the video says, chapter by chapter, asked by the video's title and the chapter's."""
    chapters = page.meta.get("transcript_chapters")
    if not chapters:
        yield Skipped("no transcript" if chapters is not None else "no transcript by chapter")
        return
    for chapter in chapters:
        name = chapter.get("title")
        ask = (f'What does the video "{page.title}" say in its chapter "{name}"?' if name
               else f'What does the video "{page.title}" say?')
        yield from _pieces(ask, chapter["text"], max_chars, "transcript")


# --- Sportskeeda -------------------------------------------------------------------------------


def article_sections(page: LorePage, max_chars: int) -> Built:
    """What the article explains, section by section: a heading that is a question is asked as
    it is, any other heading in the article's terms."""
    sections = page.meta.get("sections")
    if not sections:
        yield Skipped("no sections" if sections is None else "no text")
        return
    for section in sections:
        heading = section["heading"]
        if not heading:
            ask = f'What does the article "{page.title}" explain?'
        elif is_question(heading):
            ask = heading
        else:
            ask = f'In "{page.title}", what does the part "{heading}" explain?'
        yield from _pieces(ask, section["text"], max_chars, "article")


def _pieces(ask: str, text: str, max_chars: int, kind: str) -> Built:
    chunks = chunk_prose(text, max_chars)
    for part, chunk in enumerate(chunks, start=1):
        if len(chunk.split()) < MIN_CHUNK_WORDS:
            yield Skipped("too short")
            continue
        yield Draft((ask if part == 1 else f"{ask} (part {part})", chunk), kind)


# --- pictures outside the wiki -----------------------------------------------------------------


def document_images(page: LorePage, max_chars: int) -> Built:
    """Every fetched picture of a post, video or article (a gallery's each), tied to where it
    appeared: such a picture shows what its post is about, not a subject the title names."""
    if not page.images:
        yield Skipped("no fetched image")
        return
    where = _where(page)
    for n, image in enumerate(page.images, start=1):
        place = f"picture {n} of {len(page.images)} in {where}" if len(page.images) > 1 else where
        yield Draft(("Where is this picture from?", f"It is the {place}."), "image", image=image)


def _where(page: LorePage) -> str:
    source = source_of(page)
    if source == "reddit":
        return f'post "{page.title}" on r/{page.meta.get("subreddit") or "?"}'
    if source == "youtube":
        return f'thumbnail of the YouTube video "{page.title}"'
    if source == "sportskeeda":
        return f'Sportskeeda article "{page.title}"'
    return f'page "{page.title}"'


# Which builders make examples from which source's documents, in this order.
SOURCE_BUILDERS: dict[str, tuple[Builder, ...]] = {
    "fandom": (prose_chunks, page_image),  # + infobox_facts and prose_relations (`fact_renderings`)
    "reddit": (reddit_answers, reddit_threads, document_images),
    "youtube": (video_transcript, document_images),
    "sportskeeda": (article_sections, document_images),
}
DEFAULT_BUILDERS = SOURCE_BUILDERS["fandom"]  # any other source: a wiki-like page
# Builders whose examples are free text, where two alike examples say the same thing twice.
FREE_TEXT = ("prose_chunks", "reddit_answers", "reddit_threads", "video_transcript", "article_sections")


def source_of(page: LorePage) -> str:
    """The page's source; pages made without provenance (tests, old callers) carry it in doc_id."""
    return page.provenance.get("source") or page.doc_id.split(":")[0]


def builders_for(page: LorePage) -> tuple[Builder, ...]:
    return SOURCE_BUILDERS.get(source_of(page), DEFAULT_BUILDERS)


def _fit(answer: str, max_chars: int) -> str:
    """An answer as long as the prose chunks: cut at a sentence end, never mid-word."""
    return answer if len(answer) <= max_chars else chunk_prose(answer, max_chars)[0]
