"""The export stage: the promoted checkpoint as adapter, merged weights and GGUF, checked for parity."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from loretune.config import ExportConfig
from loretune.dataset.evalsets import load_eval_sets
from loretune.dataset.layout import system_prompt
from loretune.evaluation.table import table_score
from loretune.export import convert, layout
from loretune.fingerprint import stage_code_version
from loretune.model.base_models import TINY
from loretune.model.checkpoints import list_checkpoints
from loretune.store import ArtifactRef
from loretune.tasks.stage import StageCache, announce, publish_stage

EXPORT = StageCache(stage="export", code=stage_code_version(__name__))
TEXT_SETS = ("facts", "synthetic")  # GGUF files take no image: the pictures set is not a probe


def choose_checkpoint(wanted: str, promoted: str | None, names: list[str]) -> tuple[str | None, str]:
    """Which checkpoint to export, or None and why not."""
    if wanted == "promoted":
        if promoted is None:
            return None, ("nothing to export: the evaluation promoted no checkpoint (export.checkpoint: promoted); "
                          "set export.checkpoint to last or a checkpoint name to export one anyway")
        return promoted, f"{promoted}, promoted by the evaluation gate"
    chosen = names[-1] if wanted == "last" else wanted
    if chosen not in names:
        raise ValueError(f"export.checkpoint {wanted!r}: no such checkpoint; this run has {', '.join(names)}")
    return chosen, f"{chosen}, named by export.checkpoint ({wanted})"


def select(evaluation: ArtifactRef, checkpoints: ArtifactRef, wanted: str) -> dict[str, Any]:
    """What the export stage keys on from the evaluation: the chosen checkpoint and its scores, not
    the evaluation's version, so scoring a new user set that changes no decision exports nothing anew."""
    decision = evaluation.manifest()["details"]["promotion"]
    chosen, why = choose_checkpoint(wanted, decision["promoted"],
                                    [c.path.name for c in list_checkpoints(checkpoints.local_path())])
    return {"checkpoint": chosen, "why": why, "promoted": chosen is not None and chosen == decision["promoted"],
            "score": table_score(evaluation.local_path(), decision, chosen) if chosen else None,
            "base_score": table_score(evaluation.local_path(), decision),
            "decoding": (decision.get("decoding") or {}).get(chosen) if chosen else None}


@task(name="export", cache_policy=EXPORT, persist_result=True)
def export_model(store: str, domain: str, checkpoints: ArtifactRef, selection: dict, base: ArtifactRef,
                 dataset_ref: ArtifactRef, params: ExportConfig, probe_questions: list[str], max_length: int,
                 runtime: dict, tools: dict) -> ArtifactRef:
    """`selection` (from `select`) says which checkpoint; `tools` (llama-cpp-python's version, the
    converter's sha256) and `runtime` are part of the version: a new llama.cpp converts anew, and
    the manifest says with what."""
    logger = get_run_logger()

    def build(out: Path) -> dict:
        chosen, why = selection["checkpoint"], selection["why"]
        if chosen is None:  # a version all the same: the next unchanged run is a cache hit
            logger.warning("export: %s", why)
            (out / layout.NOT_EXPORTED_FILE).write_text(json.dumps({"domain": domain, **selection}, indent=2))
            return {"exported": False, "reason": why}
        logger.info("export: %s", why)
        tiny = base.manifest()["details"].get("base") == TINY
        sets, _ = load_eval_sets(dataset_ref.local_path(), [], None, 0)
        questions = list(probe_questions) + [item["question"] for name in TEXT_SETS
                                             for item in sets.get(name, [])[:params.parity.questions_per_set]]
        choice_items = [item for name in TEXT_SETS for item in sets.get(name, [])[:params.parity.choice_items]]
        try:
            made = convert.export_checkpoint(
                base_model=base.local_path(), checkpoint=checkpoints.local_path() / chosen, out=out,
                name=f"{domain}-{chosen}", dtype=params.dtype, gguf_types=list(params.gguf), questions=questions,
                choice_items=choice_items, system=system_prompt(dataset_ref.local_path()),
                max_length=max_length, max_new_tokens=params.parity.max_new_tokens, decoding=selection.get("decoding"),
                gguf_skip_reason=("the tiny model's tokenizer is trained on the corpus, and llama.cpp's converter "
                                  "knows only published pre-tokenizers; merged and adapter exports only") if tiny else None,
                log=logger.info)
        except convert.ParityFailed as failed:
            publish_parity(domain, failed.report.rows, failed.report.summary, passed=False)
            raise
        info = {"domain": domain, **selection, "base": f"model/{base.version}",
                "checkpoints": f"checkpoints/{checkpoints.version}", "converter": tools,
                "gguf": made["gguf"], "gguf_skipped": made["gguf_skipped"], "merged": made["merged"]}
        (out / layout.EXPORT_FILE).write_text(json.dumps(info, indent=2, sort_keys=True))
        return {"exported": True, "checkpoint": chosen, "formats": ["adapter", "merged", *made["gguf"]],
                "merged_bytes": made["merged"]["bytes"], "adapter_bytes": made["adapter_bytes"],
                **{f"gguf_{kind}_bytes": entry["bytes"] for kind, entry in made["gguf"].items()},
                "merged_dtype": params.dtype, "timings": made["timings"], "parity": made["parity"],
                "gguf_types": made["gguf"], "gguf_skipped": made["gguf_skipped"], "converter": tools}

    ref = publish_stage(EXPORT, build, announce_manifest=False)
    publish_report(domain, ref)
    return ref


def publish_parity(domain: str, rows: list[dict[str, Any]], summary: dict[str, Any], passed: bool) -> None:
    table = [{k: (f"{v:.2e}" if k.startswith("nmse") else v) for k, v in row.items()} for row in rows]
    for kind, acc in summary.get("choice_accuracy", {}).items():
        table.append({"probe": f"binary choice: {kind}", "acc": round(acc["acc"], 4),
                      "acc_stderr": round(acc["stderr"], 4), "n": acc["n"]})
    create_table_artifact(key=f"{domain}-parity", table=table,
                          description=f"export parity {'passed' if passed else 'FAILED'}: adapter vs merged vs GGUF")


def publish_report(domain: str, ref: ArtifactRef) -> None:
    manifest = ref.manifest()
    details = manifest["details"]
    if not details.get("exported"):
        create_markdown_artifact(key=f"{domain}-export", markdown=f"### {domain}: export\n\n{details['reason']}",
                                 description="nothing exported")
        return
    report = json.loads((ref.local_path() / layout.PARITY_FILE).read_text())
    publish_parity(domain, report["rows"], report["summary"], passed=True)
    counts = manifest["counts"]
    lines = [f"| adapter (+ projector) | `adapter/` | {counts['adapter_bytes'] / 2**20:.1f} MiB | |",
             f"| merged, {details['merged_dtype']} | `merged/` (+ `projector/`) | {counts['merged_bytes'] / 2**20:.0f} MiB | |"]
    for kind, entry in details["gguf_types"].items():
        types = ", ".join(f"{t} {n}" for t, n in entry["tensor_types"].items())
        lines.append(f"| GGUF {kind} | `{entry['file']}` | {entry['bytes'] / 2**20:.0f} MiB | {types} |")
    skipped = f"\n\nNo GGUF: {details['gguf_skipped']}" if details.get("gguf_skipped") else ""
    announce(domain, manifest, extra_markdown=(
        f"\n**{details['checkpoint']}** exported; parity passed.\n\n| format | where | size | tensor types |\n"
        f"|---|---|---|---|\n" + "\n".join(lines) + skipped))


def read_export(ref: ArtifactRef) -> dict[str, Any]:
    """What `loretune run` and the demo print of the export: where, what, and parity's numbers."""
    details = ref.manifest()["details"]
    return {"folder": str(ref.local_path()), **{k: details.get(k) for k in (
        "exported", "reason", "checkpoint", "formats", "gguf_skipped", "parity")}}
