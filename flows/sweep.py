"""`sweep`: the finetune stages over a grid of config overrides, compared. Deployed as sweep/<domain>.

Each grid point is one `finetune` subflow run, cached like any run: a point whose inputs match an
earlier run's reuses its stages, and points sharing a prefix of stages (the same documents and
dataset for a LoRA-rank sweep) share them. One table and one plot compare the points.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from loretune.evaluation import sweep as grids
from loretune.flows.points import run_points
from loretune.flows.stages import resolve_config
from loretune.tasks.stage import announce_png


@flow(name="sweep")
def sweep(config: str = "deployments/naruto.yaml", grid: dict[str, list[Any]] | None = None,
          overrides: dict[str, Any] | None = None, sample_sources: str | None = None) -> dict[str, Any]:
    """`grid` maps dotted config keys to values (default: `dataset.fraction` 0.25 / 0.5 / 1.0);
    `overrides` apply to every point, under the point's own."""
    grid = grid or grids.DEFAULT_GRID
    cfg = resolve_config(config, overrides, sample_sources)
    points = grids.points(grid)
    for point in points:  # a bad key or value in any point fails here, before the first run
        resolve_config(config, {**(overrides or {}), **point}, sample_sources)
    logger = get_run_logger()
    rows, open_rows, runs = [], [], []
    logger.info("sweep: %s points on the %s runner: %s", len(points), cfg.runtime.task_runner,
                "; ".join(grids.label(p) for p in points))
    named = [(f"{cfg.domain} sweep: {grids.label(p)}", {**(overrides or {}), **p}) for p in points]
    for point, outcome in zip(points, run_points(cfg.runtime, config, sample_sources, named)):
        if outcome.error is not None:
            raise RuntimeError(f"sweep point {grids.label(point)}: {outcome.error}")
        result = outcome.result
        runs.append({"point": point, "stages": result["stages"], "promoted": result["promotion"]["promoted"]})
        rows += grids.comparison_rows(point, result)
        open_rows += grids.open_comparison_rows(point, result, cfg.evaluation.promote.decoding)
    create_table_artifact(key=f"{cfg.domain}-sweep", table=rows,
                          description=f"sweep over {', '.join(grid)}: each set's chosen checkpoint ± SE, step 0, "
                                      "the change with its 95% interval, the best no-knowledge baseline")
    if open_rows:
        create_table_artifact(key=f"{cfg.domain}-sweep-open", table=open_rows,
                              description=f"sweep over {', '.join(grid)}: what each point's chosen checkpoint says on "
                                          f"the open sets at {cfg.evaluation.promote.decoding}, ± SE, against step 0")
    with tempfile.TemporaryDirectory() as folder:
        png = Path(folder) / "sweep.png"
        grids.plot(rows, png, title=f"{cfg.domain}: sweep over {', '.join(grid)}")
        announce_png(f"{cfg.domain}-sweep-plot", png, "accuracy per grid point", "accuracy ± SE per grid point and set")
    return {"grid": grid, "rows": rows, "open_rows": open_rows, "runs": runs}
