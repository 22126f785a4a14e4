"""Which checkpoint, if any, is good enough to export: a rule that respects the noise.

Picking the highest score among checkpoints picks noise when they are within a standard error of
each other, and training longer then only looks better. So the gate takes the *earliest*
checkpoint within one standard error of the best on the configured set and metric, and promotes it
only if it beats step 0 on the same items beyond the 95% confidence interval of the paired
difference, and its own 95% interval lies above every no-knowledge baseline of the set. Otherwise
nothing is promoted, and the reason says which condition failed, with the numbers.

Binary choice says which option a model prefers, not what it says: a checkpoint that passes the
rule above is still refused if, on an open-question set, it answers worse than step 0 beyond the
paired 95% interval (`open_checks`). The gate also names the decoding point to serve a checkpoint
with (`recommend_decoding`).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from loretune.stats import Z95


def promote(table: Sequence[dict[str, Any]], baselines: dict[str, dict[str, dict[str, float]]],
            set_name: str, metric: str, open_table: Sequence[dict[str, Any]] = (),
            checks: Sequence[dict[str, str]] = (), decoding: str = "greedy") -> dict[str, Any]:
    """{"promoted": checkpoint name or None, "step", "set", "metric", "value", "reason", "open"}.

    The binary-choice rule picks the candidate; the open-question `checks` (on `open_table`, at the
    `decoding` point) can only refuse it: a checkpoint that picks the right option more often but
    talks worse than its base is not promoted, and the reason says so with the numbers."""
    decision = _binary(table, baselines, set_name, metric)
    if decision["step"] is None or not checks:
        return {**decision, "open": []}
    results, failures = open_checks(open_table, decision["step"], checks, decoding)
    decision["open"] = results
    if decision["promoted"] is None:
        return decision
    if failures:
        return {**decision, "promoted": None,
                "reason": f"no checkpoint promoted: {decision['promoted']} passes the binary-choice gate "
                          f"({decision['reason'].removeprefix('promoted ')}), but " + "; and ".join(failures)}
    return {**decision, "reason": f"{decision['reason']}; what it says: {describe_open(results)}"}


def _binary(table: Sequence[dict[str, Any]], baselines: dict[str, dict[str, dict[str, float]]],
            set_name: str, metric: str) -> dict[str, Any]:
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


# --- what the model says: the open-question checks and the recommended decoding point -----------


def open_checks(table: Sequence[dict[str, Any]], step: int, checks: Sequence[dict[str, str]],
                decoding: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Each check (`{set, metric}`) for the checkpoint at `step` at the `decoding` point: its value,
    step 0's, and the paired difference with its 95% interval. Returns the results and the reasons
    it fails: a check fails when the checkpoint is worse than step 0 beyond the interval (the
    interval's top is below zero). A set that was not evaluated (empty, or no such set) is noted,
    not failed: there is nothing to be worse on."""
    results, failures = [], []
    for check in checks:
        name, metric = check["set"], check["metric"]
        row = _aggregate(table, step, name, decoding, metric)
        base = _aggregate(table, 0, name, decoding, metric)
        if row is None or base is None:
            results.append({**check, "decoding": decoding, "evaluated": False})
            continue
        result = {**check, "decoding": decoding, "evaluated": True, "value": row["value"], "stderr": row["stderr"],
                  "base": base["value"], "delta": row["delta"], "ci_low": row["delta_ci_low"],
                  "ci_high": row["delta_ci_high"], "n": row["n"]}
        results.append(result)
        if _finite(result["ci_high"]) and result["ci_high"] < 0:
            failures.append(f"it talks worse than its base: {metric} on {name!r} ({decoding}) {row['value']:.3f} "
                            f"± {row['stderr']:.3f} against step 0's {base['value']:.3f}, {result['delta']:+.3f}, "
                            f"95% CI [{result['ci_low']:+.3f}, {result['ci_high']:+.3f}] (n={row['n']})")
    return results, failures


def describe_open(results: Sequence[dict[str, Any]]) -> str:
    shown = [f"{r['metric']} on {r['set']!r} {r['value']:.3f} vs step 0 {r['base']:.3f} ({r['delta']:+.3f}, "
             f"95% CI [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}])" for r in results if r["evaluated"]]
    missing = [f"{r['set']!r} not evaluated" for r in results if not r["evaluated"]]
    return "; ".join(shown + missing) or "no open-question checks"


def recommend_decoding(table: Sequence[dict[str, Any]], step: int, set_name: str, metric: str,
                       points: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The decoding point to serve the checkpoint at `step` with: the best on `metric` over
    `set_name`, except that plain greedy wins when it is within one standard error of the best
    (cheaper, and the same answer every time). `points`: the grid, as `{name, do_sample, num_beams, ...}`."""
    by_name = {p["name"]: p for p in points}
    rows = [r for name in by_name if (r := _aggregate(table, step, set_name, name, metric)) is not None
            and _finite(r["value"])]
    if not rows:
        return None
    best = max(rows, key=lambda r: r["value"])
    greedy = [r for r in rows if not by_name[r["decoding"]].get("do_sample") and by_name[r["decoding"]].get(
        "num_beams", 1) == 1]
    tolerance = best["stderr"] if _finite(best["stderr"]) else 0.0
    chosen = next((r for r in greedy if r["value"] >= best["value"] - tolerance), best)
    why = (f"best {metric} on {set_name!r}: {best['decoding']} {best['value']:.3f} ± {tolerance:.3f}"
           + (f"; {chosen['decoding']} ({chosen['value']:.3f}) is within one standard error and preferred"
              if chosen is not best else ""))
    return {**by_name[chosen["decoding"]], "set": set_name, "metric": metric, "value": chosen["value"], "why": why}


def _aggregate(table: Sequence[dict[str, Any]], step: int, set_name: str, decoding: str,
               metric: str) -> dict[str, Any] | None:
    return next((r for r in table if r["step"] == step and r["set"] == set_name and r["decoding"] == decoding
                 and r["metric"] == metric and _missing(r["seed"])), None)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
