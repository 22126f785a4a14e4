"""The few statistics an evaluation table needs, so a gain inside the noise reads as no gain.

Standard errors follow lm-evaluation-harness (sample standard deviation over sqrt(n)), so our
numbers can be laid beside its. Checkpoints are compared with step 0 on the same items, so the
comparison is paired: a normal interval on the per-item differences, and McNemar's exact test on
the items where the two disagree (scipy's binomial test on the discordant pairs).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy.stats import binomtest

Z95 = 1.959963984540054


def mean_stderr(values: Sequence[float]) -> float:
    """Sample standard deviation over sqrt(n), as lm-evaluation-harness reports a mean's error."""
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return float("nan")
    return float(x.std(ddof=1) / math.sqrt(len(x)))


def paired_difference(after: Sequence[float], before: Sequence[float]) -> tuple[float, float, float]:
    """Mean of after - before over the same items, with its 95% confidence interval."""
    d = np.asarray(after, dtype=float) - np.asarray(before, dtype=float)
    if len(d) == 0:
        return float("nan"), float("nan"), float("nan")
    delta = float(d.mean())
    se = mean_stderr(d) if len(d) > 1 else float("nan")
    return delta, delta - Z95 * se, delta + Z95 * se


def mcnemar_p(after: Sequence[bool], before: Sequence[bool]) -> float:
    """Exact two-sided McNemar p-value: are the items each one alone gets right evenly split?"""
    a, b = np.asarray(after, dtype=bool), np.asarray(before, dtype=bool)
    gained, lost = int((a & ~b).sum()), int((~a & b).sum())
    if gained + lost == 0:
        return 1.0
    return float(binomtest(gained, gained + lost, 0.5).pvalue)
