"""`finetune`: lore in, evaluated checkpoints out. Deployed as finetune/<domain>."""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.states import Completed

from loretune.export.convert import converter_version
from loretune.flows.stages import preflight, prepare_data, publish_ledger, resolve_config, run_stage, with_runner
from loretune.model.base_models import TINY
from loretune.tasks.evaluation import (
    evaluate_checkpoints,
    read_baselines,
    read_before_after,
    read_generation,
    read_promotion,
    read_table,
)
from loretune.tasks.export import export_model, read_export, select
from loretune.tasks.model import build_base_model
from loretune.tasks.training import train
from loretune.training.backends import runtime
from loretune.training.launch import check_launcher


@flow(name="finetune")
def finetune(config: str = "deployments/naruto.yaml", overrides: dict[str, Any] | None = None,
             sample_sources: str | None = None,
             task_runner: Literal["thread", "dask"] | None = None) -> dict[str, Any]:
    """Every stage, each a versioned artifact; stages whose inputs did not change are Cached.

    `overrides` takes dotted config keys, e.g. {"training.max_steps": 30}; `sample_sources` is
    the base URL of the offline sample sources server, which then stands in for the real sites.
    """
    cfg = resolve_config(config, with_runner(overrides, task_runner), sample_sources)
    checked = preflight(config, cfg)  # a broken set or model fails here, before any work
    tools = converter_version() if cfg.export.enabled else {}  # so does a missing llama.cpp
    maths = runtime(cfg.training.backend, cfg.model.load_in_4bit, cfg.training.precision)  # and a backend this machine lacks
    check_launcher(maths["backend"], cfg.training.launcher, cfg.model.load_in_4bit)  # and a launcher it cannot use
    store, ledger = cfg.store_uri(), {}
    common = dict(store=store, domain=cfg.domain)
    data = prepare_data(cfg, ledger, config)
    base = run_stage(build_base_model, ledger, **common, params=cfg.model, source=checked.model_source,
                     dataset_ref=data["dataset"] if checked.model_source["kind"] == TINY else None)
    checkpoints = run_stage(train, ledger, **common, dataset_ref=data["dataset"], features=data["features"],
                            base=base, params=cfg.training, image_tokens=cfg.model.image_tokens, runtime=maths,
                            load_in_4bit=cfg.model.load_in_4bit)
    evaluation = run_stage(evaluate_checkpoints, ledger, **common, checkpoints=checkpoints,
                           dataset_ref=data["dataset"], features=data["features"], base=base,
                           params=cfg.evaluation, max_length=cfg.training.max_length,
                           attn_implementation=cfg.training.attn_implementation, user_sets=checked.user_sets,
                           open_user_sets=checked.open_user_sets, runtime=maths)
    exported = None
    if cfg.export.enabled:
        selection = select(evaluation, checkpoints, cfg.export.checkpoint)
        exported = run_stage(export_model, ledger, **common, checkpoints=checkpoints, selection=selection,
                             base=base, dataset_ref=data["dataset"], params=cfg.export,
                             probe_questions=cfg.evaluation.probe_questions, max_length=cfg.training.max_length,
                             runtime=maths, tools=tools)
    publish_ledger(f"{cfg.domain}-run", ledger, store)
    promotion = read_promotion(evaluation)
    result = {"store": store, "stages": ledger, "evaluation": read_table(evaluation),
              "baselines": read_baselines(evaluation), "promotion": promotion,
              "generation": read_generation(evaluation),
              "before_after": read_before_after(evaluation),
              "export": read_export(exported) if exported else None}
    if promotion["promoted"] is None:  # cached or not, every run says so: in its log and its state
        get_run_logger().warning("%s", promotion["reason"])
        return Completed(message=promotion["reason"], data=result)
    return result
