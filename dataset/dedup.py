"""Near-duplicates by MinHash LSH (datasketch): training examples across documents, and
evaluation questions against training prompts, with one index type and one similarity.

Similarity is the Jaccard index of two texts' word sets, as before this module; LSH finds the
candidates in about constant time per query instead of comparing every pair, and each candidate
is then checked exactly, so what is dropped is what the pairwise check would drop, less the rare
pair LSH does not propose (its bands are tuned well below the threshold to make that rare).
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any, Iterable, Sequence

from datasketch import MinHash, MinHashLSH

from loretune.dataset import builders

NUM_PERM = 128
SEED = 1
# Builders whose rows are free text, where two alike rows say the same thing twice. Facts and
# pictures are built one per (document, field or image): two documents' facts that read alike
# ("What is the village of Ayo? Konohagakure") are different facts, so they are never compared.
FREE_TEXT_BUILDERS = (*builders.FREE_TEXT, "mix.")
MIN_WORDS = 8  # shorter texts are too alike by chance to call near-duplicates


def words(text: str) -> frozenset[str]:
    return frozenset(re.findall(r"[a-z0-9]+", text.lower()))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 0.0


class NearDuplicateIndex:
    """Word sets under keys; `match` gives a stored key whose set is at least `threshold` alike."""

    def __init__(self, threshold: float):
        self.threshold = threshold
        # The bands are tuned below the threshold and weighted against false negatives: every
        # candidate is checked exactly, so a false positive costs a set comparison, a false
        # negative a missed duplicate.
        self.lsh = MinHashLSH(threshold=threshold * 0.75, num_perm=NUM_PERM, weights=(0.2, 0.8))
        self.sets: dict[str, frozenset[str]] = {}

    def add(self, key: str, tokens: frozenset[str]) -> None:
        if tokens and key not in self.sets:
            self.sets[key] = tokens
            self.lsh.insert(key, _minhash(tokens))

    def matches(self, tokens: frozenset[str]) -> list[str]:
        """Stored keys at least `threshold` alike, most alike first (ties by key: deterministic)."""
        if not tokens:
            return []
        found = [(jaccard(tokens, self.sets[k]), k) for k in self.lsh.query(_minhash(tokens))]
        return [k for score, k in sorted(found, key=lambda x: (-x[0], x[1])) if score >= self.threshold]


def _minhash(tokens: Iterable[str]) -> MinHash:
    m = MinHash(num_perm=NUM_PERM, seed=SEED)
    m.update_batch([t.encode("utf-8") for t in sorted(tokens)])
    return m


def drop_near_duplicate_examples(rows: Sequence[dict[str, Any]], threshold: float
                                 ) -> tuple[list[dict[str, Any]], Counter, list[str]]:
    """Free-text rows that nearly repeat a kept row of another document are dropped, the first
    kept. Returns the kept rows (in order), drops per "dropped source ~ kept source", and a few
    dropped prompts to show."""
    index, kept, pairs, shown = NearDuplicateIndex(threshold), [], Counter(), []
    owner: dict[str, dict[str, Any]] = {}
    for i, row in enumerate(rows):
        if not row.get("builder", "").startswith(FREE_TEXT_BUILDERS):
            kept.append(row)
            continue
        # What the row teaches is its answers: each source asks in its own words ("Tell me about
        # X", "What does the video say ..."), so the same sentence copied between sources would
        # hide behind different questions if those were compared too.
        text = " ".join(m["content"] for m in row["messages"] if m["role"] == "assistant")
        tokens = words(text) | ({f"image:{row['image_sha256']}"} if row.get("image_sha256") else set())
        if len(tokens) < MIN_WORDS:
            kept.append(row)
            continue
        twin = next((owner[k] for k in index.matches(tokens) if owner[k]["doc_id"] != row["doc_id"]), None)
        if twin is not None:
            pairs[f"{row.get('source', '?')} ~ {twin.get('source', '?')}"] += 1
            if len(shown) < 10:
                shown.append(row["messages"][-1]["content"][:120])
            continue
        key = f"{i}"
        owner[key] = row
        index.add(key, tokens)
        kept.append(row)
    return kept, pairs, shown
