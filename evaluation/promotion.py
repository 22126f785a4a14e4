"""Which checkpoint, if any, is good enough to export: a rule that respects the noise.

Picking the highest score among checkpoints picks noise when they are within a standard error of
each other, and training longer then only looks better. So the gate takes the *earliest*
checkpoint within one standard error of the best on the configured set and metric, and promotes it
only if it beats step 0 on the same items beyond the 95% confidence interval of the paired
difference, and its own 95% interval lies above every no-knowledge baseline of the set. Otherwise
nothing is promoted, and the reason says which condition failed, with the numbers.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from loretune.stats import Z95


def promote(table: Sequence[dict[str, Any]], baselines: dict[str, dict[str, dict[str, float]]],
            set_name: str, metric: str) -> dict[str, Any]:
    """{"promoted": checkpoint name or None, "step", "set", "metric", "value", "reason"}."""
    decision: dict[str, Any] = {"promoted": None, "step": None, "set": set_name, "metric": metric, "value": None}
    sets = sorted({r["set"] for r in table})
    if set_name not in sets:
        return {**decision, "reason": f"no checkpoint beats the base: the gate's set {set_name!r} was not evaluated "
                                      f"(evaluated: {', '.join(sets) or 'none'})"}
    rows = [r for r in table if r["set"] == set_name and r["step"] > 0 and _finite(r[metric])]
    if not rows:
        return {**decision, "reason": f"no checkpoint beats the base: no checkpoint has a {metric} on {set_name!r}"}
    best = max(rows, key=lambda r: r[metric])
    tolerance = best[f"{metric}_stderr"] if _finite(best[f"{metric}_stderr"]) else 0.0
    chosen = min((r for r in rows if r[metric] >= best[metric] - tolerance), key=lambda r: r["step"])
    value, stderr = chosen[metric], chosen[f"{metric}_stderr"]
    delta, low, high = (chosen[f"delta_{metric}{s}"] for s in ("", "_ci_low", "_ci_high"))
    described = (f"{chosen['checkpoint']} (the earliest within 1 SE of the best, {best['checkpoint']}) has "
                 f"{metric} {value:.3f} ± {stderr:.3f} on {set_name!r} (n={chosen['n']}), "
                 f"{delta:+.3f} over step 0, 95% CI [{low:+.3f}, {high:+.3f}]")
    decision.update(step=chosen["step"], value=value)
    if not (_finite(low) and low > 0):
        return {**decision, "reason": f"no checkpoint beats the base: {described}"}
    floor_name, floor = max(((k, v["value"]) for k, v in baselines.get(set_name, {}).items()),
                            key=lambda kv: kv[1], default=("chance", 0.5))
    if value - Z95 * stderr <= floor:
        return {**decision, "reason": f"no checkpoint beats the no-knowledge baseline: {described}; its 95% interval "
                                      f"reaches down to {value - Z95 * stderr:.3f}, the {floor_name} baseline is {floor:.3f}"}
    return {**decision, "promoted": chosen["checkpoint"], "reason": f"promoted {described}; above the {floor_name} "
                                                                     f"baseline {floor:.3f} beyond its 95% interval"}


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
