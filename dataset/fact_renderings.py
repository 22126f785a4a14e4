"""Every fact the lore states, taught many ways, in sentences, packed by page.

Why this shape (issue 22, from what the field measured): a fine-tuned model can *retrieve* a fact
for a differently worded question only when training saw it in many varied forms (Allen-Zhu & Li,
"Physics of Language Models 3.1"); "A is B" does not teach "B is A" (Berglund et al.); and a model
taught bare values answers everything with a bare lore noun. So:

- A fact is a page's infobox field with its values, and, for a field with several values, each
  value on its own as well (the evaluation asks entry by entry).
- Each fact gets `exposures` question/answer turns per epoch, the questions and answers drawn from
  template pools (the subject first and last, the field named differently), cycling through each
  pool in a seeded order, so no wording repeats before every other one has been used. Answers are
  sentences that name the subject and the value, never a bare value or a pronoun.
- Where a value belongs to one subject only (in that field), some turns ask in reverse ("Whose
  teacher is Jiraiya?"); they replace forward turns, so every fact keeps the same count.
- Each page gets `paragraphs` summaries that state all its facts in a shuffled order, and its
  opening sentence (the lore's own introduction of the subject) `lead_exposures` times.
- A page's turns go into multi-turn conversations of `turns_per_example` questions each: the
  system prompt and the chat template cost once per conversation, and every answer is labelled.

Every fact is exposed exactly `exposures + paragraphs` times per epoch (`exposure_counts` checks
it). None of these wordings is an evaluation set's: `HELD_OUT` lists those, and a test keeps every
pool below the near-duplicate threshold of each.
"""

from __future__ import annotations

import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Iterator, Sequence

from loretune.dataset.builders import Builder, Built, Draft, Skipped
from loretune.dataset.evalsets import entity_kinds, related, sentences

if TYPE_CHECKING:
    from loretune.dataset.assemble import LorePage

# Questions about a field's whole value (one value, or the whole list).
WHOLE_QUESTIONS = (
    "What is the {field} of {subject}?",
    "Name the {field} of {subject}.",
    "{subject}: {field}?",
    "Tell me the {field} of {subject}.",
    "What is {subject}'s {field}?",
    "What {field} does {subject} have?",
    "Do you know the {field} listed for {subject}?",
    "For {subject}, what is the {field}?",
    "Give me {subject}'s {field}, please.",
    "I want to know the {field} of {subject}.",
    "What does the {field} entry of {subject} say?",
    "{field} of {subject}?",
)
# Answers naming the subject and the value(s); {verb} is "is" for one value, "are" for several.
# Some lead with the value, a direct answer set off by a colon or a full stop; none says "{value}
# is the {field} of {subject}", which a model that starts with the subject turns into "Gaara is the
# village of Gaara". (No filler such as "the recorded X": a model taught it says it everywhere.)
WHOLE_ANSWERS = (
    "The {field} of {subject} {verb} {value}.",
    "{subject}'s {field} {verb} {value}.",
    "For {subject}, the {field} {verb} {value}.",
    "{subject} has {value} as {field}.",
    "{value}: that is {subject}'s {field}.",
    "{value}. The {field} of {subject} {verb} {value}.",
)
# One value of a field that has several.
ENTRY_QUESTIONS = (
    "Name one {field} of {subject}.",
    "Give one of the {field} of {subject}.",
    "What is one {field} listed for {subject}?",
    "Tell me a {field} of {subject}.",
    "{subject} has several {field}; name one.",
    "Can you name any {field} of {subject}?",
)
ENTRY_ANSWERS = (
    "One {field} of {subject} is {value}.",
    "The {field} of {subject} include {value}.",
    "Among the {field} of {subject} is {value}.",
    "{value}: it is one of the {field} of {subject}.",
)
# Reversed: the value asks for its subject (only where one subject has that value in that field).
REVERSED_QUESTIONS = (
    "Whose {field} is {value}?",
    "Who or what has {value} as {field}?",
    "{value} is the {field} of whom or what?",
    "Name the one whose {field} is {value}.",
)
REVERSED_ANSWERS = (
    "{value} is the {field} of {subject}.",
    "{subject} has {value} as {field}.",
    "It is {subject}: {subject}'s {field} is {value}.",
)
# Reversed, for one entry of a list: the value is one of several the subject has.
REVERSED_ENTRY_QUESTIONS = (
    "Whose {field} include {value}?",
    "Who or what counts {value} among the {field}?",
)
REVERSED_ENTRY_ANSWERS = (
    "{value} is one of the {field} of {subject}.",
    "{value} is among the {field} of {subject}.",
)
PARAGRAPH_QUESTIONS = (
    "Sum up the facts known about {subject}.",
    "Give me a short profile of {subject}.",
    "List what is on record about {subject}.",
)
# The page's opening sentence ("Gaara is a shinobi of Sunagakure, ..."): what the lore says its
# subject is, the answer to "who is X?". Worded unlike the probes a user asks ("Who is X?").
LEAD_QUESTIONS = (
    "Introduce {subject} in a sentence.",
    "Describe {subject} briefly.",
    "Give me a one-line summary of {subject}.",
    "What should a newcomer know first about {subject}?",
    "Sketch {subject} for me in one sentence.",
    "In a nutshell, what about {subject}?",
)
REVERSED_SHARE = 3  # at most one turn in this many asks in reverse, where the fact allows it


@dataclass(frozen=True)
class Fact:
    """One thing the lore states about a subject: a field's whole value, or one entry of a list."""

    doc_id: str
    subject: str
    field: str
    values: tuple[str, ...]
    entry: bool = False  # one entry of a multi-valued field

    @property
    def key(self) -> str:
        return f"{self.doc_id}|{self.field}|{' | '.join(self.values)}{' (entry)' if self.entry else ''}"

    def statement(self, template: str) -> str:
        return template.format(field=self.field, subject=self.subject, value=joined(self.values),
                               verb="is" if len(self.values) == 1 else "are")


@dataclass(frozen=True)
class Turn:
    question: str
    answer: str
    facts: tuple[str, ...]  # the keys of the facts the answer states
    kind: str  # fact, entry, reversed, paragraph, lead, relation


def joined(values: Sequence[str]) -> str:
    return values[0] if len(values) == 1 else f"{', '.join(values[:-1])} and {values[-1]}"


def page_facts(page: LorePage) -> list[Fact]:
    """The page's facts: every field whole, and each value of a multi-valued field on its own."""
    facts = []
    for field, values in page.facts.items():
        facts.append(Fact(page.doc_id, page.title, field, tuple(values)))
        if len(values) > 1:
            facts += [Fact(page.doc_id, page.title, field, (value,), entry=True) for value in values]
    return facts


def reversible(pages: Sequence[LorePage]) -> set[tuple[str, str]]:
    """(field, value) pairs exactly one subject holds: only there does "whose X is V?" have one answer."""
    holders: dict[tuple[str, str], set[str]] = defaultdict(set)
    for page in pages:
        for field, values in page.facts.items():
            for value in values:
                holders[(field, value)].add(page.title)
    return {pair for pair, subjects in holders.items() if len(subjects) == 1}


class Pool:
    """Templates drawn in a seeded cycle: every template once, in a shuffled order, then again."""

    def __init__(self, templates: Sequence[str], rng: random.Random):
        self.templates, self.rng, self.queue = tuple(templates), rng, []

    def draw(self) -> str:
        if not self.queue:
            self.queue = self.rng.sample(self.templates, len(self.templates))
        return self.queue.pop()


def fact_turns(page: LorePage, one_subject: set[tuple[str, str]], exposures: int, paragraphs: int,
               rng: random.Random) -> list[Turn]:
    """Every fact of the page `exposures` times as a question/answer turn, plus `paragraphs` summaries."""
    pools = {name: Pool(templates, rng) for name, templates in (
        ("whole_q", WHOLE_QUESTIONS), ("whole_a", WHOLE_ANSWERS), ("entry_q", ENTRY_QUESTIONS),
        ("entry_a", ENTRY_ANSWERS), ("reversed_q", REVERSED_QUESTIONS), ("reversed_a", REVERSED_ANSWERS),
        ("reversed_entry_q", REVERSED_ENTRY_QUESTIONS), ("reversed_entry_a", REVERSED_ENTRY_ANSWERS),
        ("paragraph_q", PARAGRAPH_QUESTIONS))}
    facts = page_facts(page)
    turns = []
    for fact in facts:
        reverse = len(fact.values) == 1 and (fact.field, fact.values[0]) in one_subject
        n_reversed = exposures // REVERSED_SHARE if reverse else 0
        for i in range(exposures):
            if i < n_reversed:
                ask, say = ("reversed_entry_q", "reversed_entry_a") if fact.entry else ("reversed_q", "reversed_a")
                turns.append(Turn(fact.statement(pools[ask].draw()), fact.statement(pools[say].draw()),
                                  (fact.key,), "reversed"))
            elif fact.entry:
                turns.append(Turn(fact.statement(pools["entry_q"].draw()), fact.statement(pools["entry_a"].draw()),
                                  (fact.key,), "entry"))
            else:
                turns.append(Turn(fact.statement(pools["whole_q"].draw()), fact.statement(pools["whole_a"].draw()),
                                  (fact.key,), "fact"))
    whole = [f for f in facts if not f.entry]
    for _ in range(paragraphs if whole else 0):
        order = rng.sample(whole, len(whole))
        text = " ".join(fact.statement(pools["whole_a"].draw()) for fact in order)
        turns.append(Turn(pools["paragraph_q"].draw().format(subject=page.title), text,
                          tuple(f.key for f in facts), "paragraph"))
    return turns


def lead_sentence(page: LorePage) -> str | None:
    """The prose's first sentence, if it names the page's subject: the lore's own introduction."""
    found = sentences(page.text)
    first = found[0] if found else ""
    return first if " ".join(page.text.split()).startswith(first) and page.title in first else None


def lead_key(page: LorePage, lead: str) -> str:
    return f"{page.doc_id}|lead|{lead}"


def lead_turns(page: LorePage, exposures: int, rng: random.Random) -> list[Turn]:
    """The lead sentence `exposures` times, each asked a different way: a page read once teaches
    its introduction once, and "who is X?" is the first thing anyone asks."""
    lead = lead_sentence(page) if exposures else None
    if lead is None:
        return []
    pool = Pool(LEAD_QUESTIONS, rng)
    key = lead_key(page, lead)
    return [Turn(pool.draw().format(subject=page.title), lead, (key,), "lead") for _ in range(exposures)]


# A sentence of the page's prose that names something else the lore knows, asked about by name.
RELATION_QUESTIONS = (
    "How is {name} connected to {subject}?",
    "What links {subject} with {name}?",
    "Tell me how {subject} relates to {name}.",
    "Where does {name} come up in {subject}?",
)


def relation_turns(page: LorePage, names: Sequence[str], exposures: int, rng: random.Random) -> list[Turn]:
    """Each sentence of the page's prose that mentions a name the lore knows (a page title or an
    infobox value, not the page's own subject), asked `exposures` ways, answered by the sentence.
    The prose chunks teach the text; these teach it as answers to questions, in sentences."""
    pool = Pool(RELATION_QUESTIONS, rng)
    subject = page.title if page.kind or page.doc_id.startswith("fandom:") else f'"{page.title}"'
    turns = []
    for sentence in sentences(page.text):
        asked: list[str] = []
        for name in names:  # longest first: "Naruto Uzumaki" is asked about, not "Uzumaki" again
            if related(name, page.title) or any(related(name, other) for other in asked) \
                    or not re.search(rf"(?<!\w){re.escape(name)}(?!\w)", sentence):
                continue
            asked.append(name)
            key = f"{page.doc_id}|{name}|{sentence}"
            turns += [Turn(pool.draw().format(subject=subject, name=name), sentence, (key,), "relation")
                      for _ in range(exposures)]
    return turns


def conversations(turns: Sequence[Turn], per_example: int, rng: random.Random) -> Iterator[list[Turn]]:
    """The page's question turns shuffled into conversations of `per_example`; a paragraph alone."""
    questions = [t for t in turns if t.kind != "paragraph"]
    questions = rng.sample(questions, len(questions))
    for start in range(0, len(questions), per_example):
        yield questions[start:start + per_example]
    for turn in turns:
        if turn.kind == "paragraph":
            yield [turn]


def exposure_counts(keys: Iterable[str]) -> Counter:
    """How many answers state each fact, from the fact keys of every statement (a turn's, a row's)."""
    return Counter(keys)


@dataclass(frozen=True)
class Teaching:
    """How many ways each fact is taught per epoch (the dataset config's `teaching` section)."""

    exposures: int = 8  # question/answer turns per fact
    paragraphs: int = 2  # shuffled summaries per page, each stating every fact once more
    turns_per_example: int = 4  # questions per packed conversation
    relation_exposures: int = 2  # wordings per prose sentence that names something the lore knows
    lead_exposures: int = 4  # wordings per page of its opening sentence (Fandom pages with an infobox)


def lore_builders(pages: Sequence[LorePage], teaching: Teaching, seed: int) -> dict[str, tuple[Builder, ...]]:
    """Builders (page, max_chars) -> drafts that need the whole lore: which values one subject
    alone holds (for reversed questions), and which names the lore knows (for prose relations).
    Each page's renderings are seeded by the dataset's seed and the page, not by page order."""
    one_subject = reversible(pages)
    names = sorted(entity_kinds(pages), key=lambda n: (-len(n), n))

    def infobox_facts(page: LorePage, max_chars: int) -> Built:
        if not page.facts:
            yield Skipped("no infobox")
            return
        rng = random.Random(f"{seed}:facts:{page.doc_id}")
        turns = fact_turns(page, one_subject, teaching.exposures, teaching.paragraphs, rng)
        turns += lead_turns(page, teaching.lead_exposures, rng)
        yield from _drafts(conversations(turns, teaching.turns_per_example, rng))

    def prose_relations(page: LorePage, max_chars: int) -> Built:
        rng = random.Random(f"{seed}:relations:{page.doc_id}")
        turns = relation_turns(page, names, teaching.relation_exposures, rng) if teaching.relation_exposures else []
        if not turns:
            yield Skipped("no sentence names another subject")
            return
        yield from _drafts(conversations(turns, teaching.turns_per_example, rng))

    relations = (prose_relations,)
    return {"fandom": (infobox_facts, *relations), "youtube": relations, "sportskeeda": relations}


def _drafts(packed: Iterator[list[Turn]]) -> Built:
    for conversation in packed:
        kinds = {t.kind for t in conversation}
        yield Draft(tuple(text for t in conversation for text in (t.question, t.answer)),
                    kinds.pop() if len(kinds) == 1 else "fact",
                    facts=tuple(key for t in conversation for key in t.facts))


# Every question wording training uses for facts and prose relations (the held-out test reads it).
TRAIN_QUESTION_TEMPLATES = (WHOLE_QUESTIONS + ENTRY_QUESTIONS + REVERSED_QUESTIONS + REVERSED_ENTRY_QUESTIONS
                            + PARAGRAPH_QUESTIONS + RELATION_QUESTIONS + LEAD_QUESTIONS)
