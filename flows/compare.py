"""`compare`: the finetune stages once per base model, side by side. Deployed as compare/<domain>.

Each base is one `finetune` subflow run, cached like any run: the bases share the documents,
images, features and dataset stages, and a repeated comparison trains nothing. A base that cannot
be had (a hub id with no hub, a model that does not fit) fails its own subflow and becomes a row
with the error; the others still run. One table (binary and open sets, with the noise), one plot.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from loretune.evaluation import compare as bases_table
from loretune.evaluation import sweep as grids
from loretune.flows.points import run_points
from loretune.flows.stages import resolve_config
from loretune.store import ArtifactStore
from loretune.tasks.stage import announce_png


@flow(name="compare")
def compare(config: str = "deployments/naruto.yaml", bases: list[str] | None = None,
            per_base: dict[str, dict[str, Any]] | None = None, overrides: dict[str, Any] | None = None,
            sample_sources: str | None = None) -> dict[str, Any]:
    """`bases` (default: the config's `compare.bases`) are packaged names, local folders or hub ids
    (`id@revision`); `per_base` maps a base to its own overrides, under `overrides`, which apply to all."""
    cfg = resolve_config(config, overrides, sample_sources)
    bases = bases or list(cfg.compare.bases)
    per_base = per_base if per_base is not None else dict(cfg.compare.per_base)
    points = bases_table.points(bases, per_base)
    logger = get_run_logger()
    decoding = cfg.evaluation.promote.decoding
    rows, open_rows, runs = [], [], []
    named = [(f"{cfg.domain} compare: {bases_table.label(p)}", {**(overrides or {}), **p}) for p in points]
    logger.info("compare: %s on the %s runner", ", ".join(bases_table.label(p) for p in points), cfg.runtime.task_runner)
    for point, outcome in zip(points, run_points(cfg.runtime, config, sample_sources, named)):
        name = bases_table.label(point)
        if outcome.error is not None:
            logger.warning("compare: %s could not be compared: %s", name, outcome.error)
            rows.append(bases_table.error_row(point, outcome.error, outcome.seconds))
            runs.append({"base": name, "error": outcome.error})
            continue
        result = outcome.result
        store = ArtifactStore(result["store"])
        cost = bases_table.training_cost(store.local_path("checkpoints", result["stages"]["checkpoints"]["version"]),
                                         store.local_path("model", result["stages"]["model"]["version"]))
        binary, spoken = bases_table.rows_for(point, result, cost, outcome.seconds, decoding)
        rows += binary
        open_rows += spoken
        runs.append({"base": name, "stages": result["stages"], "promoted": result["promotion"]["promoted"]})
    create_table_artifact(key=f"{cfg.domain}-compare", table=rows,
                          description="bases side by side: each set's promoted (else last) checkpoint ± SE, step 0, "
                                      "the change with its 95% interval, the best no-knowledge baseline, and what "
                                      "training the base cost; a base that failed is a row with its error")
    if open_rows:
        create_table_artifact(key=f"{cfg.domain}-compare-open", table=open_rows,
                              description=f"bases side by side on the open sets at {decoding}: value ± SE against "
                                          "step 0, with the paired change's 95% interval")
    scored = [r for r in rows if r.get("error") is None]
    if scored:
        with tempfile.TemporaryDirectory() as folder:
            png = Path(folder) / "compare.png"
            grids.plot(scored, png, title=f"{cfg.domain}: base models compared")
            announce_png(f"{cfg.domain}-compare-plot", png, "accuracy per base", "accuracy ± SE per base and set")
    return {"bases": bases, "rows": rows, "open_rows": open_rows, "runs": runs}
