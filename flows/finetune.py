"""`finetune`: lore in, evaluated checkpoints out. Deployed as finetune/<domain>."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from loretune.flows.stages import ledger_markdown, prepare_data, resolve_config, run_stage
from loretune.tasks.evaluation import evaluate_checkpoints, read_table
from loretune.tasks.training import build_base_model, train


@flow(name="finetune")
def finetune(config: str = "deployments/naruto.yaml", overrides: dict[str, Any] | None = None,
             sample_sources: str | None = None) -> dict[str, Any]:
    """Every stage, each a versioned artifact; stages whose inputs did not change are Cached.

    `overrides` takes dotted config keys, e.g. {"training.max_steps": 30}; `sample_sources` is
    the base URL of the offline sample sources server, which then stands in for the real sites.
    """
    cfg = resolve_config(config, overrides, sample_sources)
    store, ledger = cfg.store_uri(), {}
    common = dict(store=store, domain=cfg.domain)
    data = prepare_data(cfg, ledger)
    base = run_stage(build_base_model, ledger, **common, dataset_ref=data["dataset"], params=cfg.model)
    checkpoints = run_stage(train, ledger, **common, dataset_ref=data["dataset"], features=data["features"],
                            base=base, params=cfg.training, image_tokens=cfg.model.image_tokens)
    evaluation = run_stage(evaluate_checkpoints, ledger, **common, checkpoints=checkpoints,
                           dataset_ref=data["dataset"], features=data["features"], base=base,
                           params=cfg.evaluation, max_length=cfg.training.max_length)
    table = read_table(evaluation)
    create_markdown_artifact(key=f"{cfg.domain}-run", markdown=ledger_markdown(cfg.domain, ledger, store)
                             + "\n" + _table_markdown(table), description="stage versions of this run")
    return {"store": store, "stages": ledger, "evaluation": table}


def _table_markdown(table: list[dict[str, Any]]) -> str:
    columns = ["step", "accuracy", "accuracy_fact", "accuracy_image", "eval_loss"]
    def cell(v: Any) -> str:
        return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in table]
    return "\n".join(lines) + "\n"
