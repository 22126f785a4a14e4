"""The `loretune` command: run flows locally and look into the artifact store.

`run` and `ingest` execute the same Prefect flows a deployment runs, in this process (against the
Prefect server in PREFECT_API_URL if set, else a temporary local one). `--offline` starts the
sample sources server in-process and points every source at it.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, Iterator, Optional

import typer

from loretune.config import ConfigError, load_config, parse_overrides, state_dir
from loretune.dataset.evalsets import EvalSetError
from loretune.model.base_models import ModelSourceError

# Before Prefect is imported: keep its database in the project's state folder, not the home
# directory, and give its temporary local server time to start on a busy 2-core machine.
os.environ.setdefault("PREFECT_HOME", str(state_dir() / "prefect"))
os.makedirs(os.environ["PREFECT_HOME"], exist_ok=True)  # Prefect creates only the last level
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
# As the stack does: no telemetry from an offline tool. Its heartbeat also raced the temporary
# server's SQLite at start-up and printed a "database is locked" traceback on every run.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.splitlines()[0])
store_app = typer.Typer(no_args_is_help=True, help="Inspect the versioned artifact store.")
app.add_typer(store_app, name="store")

CONFIG = typer.Option("deployments/naruto.yaml", "--config", "-c", help="domain config (YAML)")
STORE = typer.Option(None, "--store", help="artifact store path or fsspec URL (overrides the config)")
SET = typer.Option([], "--set", help="override a config key: --set training.max_steps=30 (value is YAML)")
OFFLINE = typer.Option(False, "--offline", help="serve the sample sources (on LORETUNE_SAMPLES_PORT, default 8765) and use them")
SAMPLES = typer.Option(None, "--sample-sources", help="base URL of a running sample sources server")


def _overrides(store: str | None, sets: list[str]) -> dict[str, Any]:
    overrides = parse_overrides(sets)
    if store:
        overrides["store"] = store
    return overrides


@contextlib.contextmanager
def _sample_sources(offline: bool, url: str | None) -> Iterator[str | None]:
    """The sample sources' base URL; `--offline` serves them here unless that port already does.

    The port is fixed (not random) because document URLs contain it: a new port would be new
    content, and every stage after ingest would recompute.
    """
    if not offline:
        yield url
        return
    from loretune.samples.server import SampleSourcesServer, is_serving

    port = int(os.environ.get("LORETUNE_SAMPLES_PORT", "8765"))
    base_url = f"http://127.0.0.1:{port}"
    if is_serving(base_url):
        yield base_url
        return
    with SampleSourcesServer(port=port) as server:
        yield server.base_url


def _fail(message: str) -> None:
    typer.secho(message, fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _run_flow(flow_name: str, config: str, store: str | None, sets: list[str], offline: bool, samples: str | None) -> dict:
    overrides = _overrides(store, sets)
    try:  # validate before Prefect starts, so a bad config or evaluation set is one clear line
        cfg = load_config(config, overrides)
        if flow_name == "finetune":
            from loretune.flows.stages import preflight

            preflight(config, cfg)
    except (ConfigError, EvalSetError, ModelSourceError) as exc:
        _fail(str(exc))
    if flow_name == "finetune":
        from loretune.flows.finetune import finetune as flow
    else:
        from loretune.flows.refresh import ingest as flow
    with _sample_sources(offline, samples) as base_url:
        return flow(config=config, overrides=overrides, sample_sources=base_url)


def _grid(text: str | None, config: str, overrides: dict[str, Any]) -> dict[str, list[Any]]:
    """The grid as YAML, every point checked like an override before any run starts."""
    import yaml

    from loretune.evaluation import sweep as grids

    try:
        grid = yaml.safe_load(text) if text else grids.DEFAULT_GRID
        if not isinstance(grid, dict) or not all(isinstance(v, list) for v in grid.values()):
            raise ValueError("expected a mapping of dotted config keys to lists of values")
        for point in grids.points(grid):
            load_config(config, {**overrides, **point})
    except (yaml.YAMLError, ValueError) as exc:  # ConfigError is a ValueError
        _fail(f"--grid {text!r}: {exc}")
    return grid


@app.command()
def run(config: str = CONFIG, store: Optional[str] = STORE, set: list[str] = SET,
        offline: bool = OFFLINE, sample_sources: Optional[str] = SAMPLES) -> None:
    """Run the finetune flow (every stage) locally; no deployment needed."""
    result = _run_flow("finetune", config, store, set, offline, sample_sources)
    _print_stages(result)
    typer.echo("")
    _print_evaluation(result["evaluation"], result["baselines"], result["promotion"], result.get("generation") or [])
    _print_before_after(result.get("before_after"))
    _print_export(result.get("export"))


@app.command()
def ingest(config: str = CONFIG, store: Optional[str] = STORE, set: list[str] = SET,
           offline: bool = OFFLINE, sample_sources: Optional[str] = SAMPLES) -> None:
    """Run the ingest stage only: ask every source, publish documents if they changed."""
    _print_stages(_run_flow("ingest", config, store, set, offline, sample_sources))


@app.command()
def sweep(config: str = CONFIG, store: Optional[str] = STORE, set: list[str] = SET,
          grid: Optional[str] = typer.Option(None, "--grid", help="YAML mapping of dotted keys to values, e.g. "
                                             "'{training.lora.r: [8, 16]}' (default: dataset.fraction 0.25 / 0.5 / 1.0)"),
          offline: bool = OFFLINE, sample_sources: Optional[str] = SAMPLES) -> None:
    """Run the sweep flow locally: finetune once per grid point (cached), then one comparison."""
    overrides = _overrides(store, set)
    try:
        load_config(config, overrides)
    except ConfigError as exc:
        _fail(str(exc))
    points = _grid(grid, config, overrides)
    from loretune.flows.sweep import sweep as flow

    with _sample_sources(offline, sample_sources) as base_url:
        result = flow(config=config, grid=points, overrides=overrides, sample_sources=base_url)
    columns = list(dict.fromkeys(k.rsplit(".", 1)[-1] for k in points))
    _print_rows([*columns, "set", "checkpoint", "acc", "step 0", "vs step 0 (95% CI)", "best baseline"],
                [(*(r[c] for c in columns), r["set"], r["checkpoint"] + (" (promoted)" if r["promoted"] else ""),
                  _pm(r["acc"], r["acc_stderr"]), _cell(r["step0_acc"]),
                  "-" if r["delta_acc"] is None else
                  f"{r['delta_acc']:+.3f} [{r['delta_ci_low']:+.3f}, {r['delta_ci_high']:+.3f}]",
                  _cell(r["best_baseline"])) for r in result["rows"]])


@app.command()
def compare(config: str = CONFIG, store: Optional[str] = STORE, set: list[str] = SET,
            bases: Optional[str] = typer.Option(None, "--bases", help="comma-separated base models, e.g. "
                                                "smollm2-135m-instruct,gemma3-270m (default: the config's compare.bases)"),
            per_base: Optional[str] = typer.Option(None, "--per-base", help="YAML mapping of a base to its own "
                                                   "overrides, e.g. '{gemma3-270m: {training.learning_rate: 0.001}}'"),
            offline: bool = OFFLINE, sample_sources: Optional[str] = SAMPLES) -> None:
    """Run the compare flow locally: finetune once per base (cached), then one table of them all."""
    import yaml

    from loretune.evaluation import compare as bases_table

    overrides = _overrides(store, set)
    try:
        cfg = load_config(config, overrides)
        listed = [b.strip() for b in bases.split(",") if b.strip()] if bases else list(cfg.compare.bases)
        own = yaml.safe_load(per_base) if per_base else dict(cfg.compare.per_base)
        if not isinstance(own, dict):
            raise ValueError("--per-base: expected a mapping of a base to its overrides")
        for point in bases_table.points(listed, own):  # a bad key fails here; a base with no hub, in its row
            load_config(config, {**overrides, **point})
    except (ConfigError, ValueError, yaml.YAMLError) as exc:
        _fail(str(exc))
    from loretune.flows.compare import compare as flow

    with _sample_sources(offline, sample_sources) as base_url:
        result = flow(config=config, bases=listed, per_base=own, overrides=overrides, sample_sources=base_url)
    _print_rows(["base", "set", "checkpoint", "acc", "step 0", "vs step 0 (95% CI)", "best baseline", "instruct",
                 "trainable", "tokens/s", "train s", "wall s"],
                [(r["base"], "-", "-", "error: " + r["error"], "", "", "", "", "", "", "", _cell(r["wall_s"]))
                 if r.get("error") else
                 (r["base"], r["set"], r["checkpoint"] + (" (promoted)" if r["promoted"] else ""),
                  _pm(r["acc"], r["acc_stderr"]), _cell(r["step0_acc"]),
                  "-" if r["delta_acc"] is None else
                  f"{r['delta_acc']:+.3f} [{r['delta_ci_low']:+.3f}, {r['delta_ci_high']:+.3f}]",
                  _cell(r["best_baseline"]), {True: "yes", False: "no"}.get(r["instruct"], "unknown"),
                  f"{r['trainable']:,}" if r.get("trainable") else "-", _cell(r["tokens_per_s"]), _cell(r["train_s"]), _cell(r["wall_s"]))
                 for r in result["rows"]])
    if result["open_rows"]:
        typer.echo("")
        _print_rows(["base", "set", "metric", "value", "step 0", "vs step 0 (95% CI)"],
                    [(r["base"], r["set"], r["metric"], _pm(r["value"], r["stderr"]), _cell(r["step0"]),
                      "-" if r["delta"] is None else
                      f"{r['delta']:+.3f} [{r['delta_ci_low']:+.3f}, {r['delta_ci_high']:+.3f}]")
                     for r in result["open_rows"]])


@store_app.command("ls")
def store_ls(config: str = CONFIG, store: Optional[str] = STORE, set: list[str] = SET,
             stage: Optional[str] = typer.Option(None, help="only this stage")) -> None:
    """Stages, versions, created_at and sizes, oldest first."""
    from loretune.store import ArtifactStore

    try:
        root = load_config(config, _overrides(store, set)).store_uri()
    except ConfigError as exc:
        _fail(str(exc))
    artifacts = ArtifactStore(root)
    typer.echo(f"store: {root}")
    rows = [(m["stage"], m["version"], m["created_at"], _size(m["counts"].get("bytes", 0)), m["counts"].get("files", 0))
            for s in ([stage] if stage else artifacts.stages()) for m in artifacts.versions(s)]
    _print_rows(["stage", "version", "created_at", "size", "files"], rows)


@app.command()
def report(flow_run: str = typer.Option(..., "--flow-run", help="flow run id")) -> None:
    """The stage versions and per-checkpoint evaluation table of a finetune flow run."""
    from loretune.flows.stages import read_ledger
    from loretune.store import ArtifactRef
    from loretune.tasks.evaluation import read_baselines, read_before_after, read_generation, read_promotion, read_table

    ledger = read_ledger(flow_run)
    stages = {row["stage"]: row for row in ledger}
    if "evaluation" not in stages:
        _fail(f"flow run {flow_run} published no evaluation (did it fail? see its logs in the Prefect UI)")
    store = stages["evaluation"]["store"]
    _print_stages({"store": store, "stages": stages})
    typer.echo("")
    ref = ArtifactRef(store, "evaluation", stages["evaluation"]["version"])
    _print_evaluation(read_table(ref), read_baselines(ref), read_promotion(ref), read_generation(ref))
    _print_before_after(read_before_after(ref))
    if "export" in stages:
        from loretune.tasks.export import read_export

        _print_export(read_export(ArtifactRef(store, "export", stages["export"]["version"])))


@app.command()
def chat(config: str = CONFIG, store: Optional[str] = STORE,
         host: str = typer.Option("127.0.0.1", help="address to serve on (the default is this machine only)"),
         port: int = typer.Option(7860, help="port to serve on")) -> None:
    """The Gradio chat UI over every model in the store: the base and each export, newest first."""
    try:
        cfg = load_config(config, _overrides(store, []))
    except ConfigError as exc:
        _fail(str(exc))
    from loretune.chat.app import launch

    typer.echo(f"chat: http://{host}:{port} over the store {cfg.store_uri()} (Ctrl-C stops it)")
    # The domain's name biases speech recognition towards it (tiny.en hears "Naruto" as common words).
    launch(cfg.store_uri(), host=host, port=port, hotwords=cfg.domain.replace("-", " ").title())


def _print_export(exported: dict | None) -> None:
    if not exported:
        return
    if not exported["exported"]:
        typer.echo(f"\nexport: {exported['reason']}")
        return
    from loretune.export.convert import describe

    typer.echo(f"\nexport: {exported['checkpoint']} as {', '.join(exported['formats'])} in {exported['folder']}")
    if exported.get("gguf_skipped"):
        typer.echo(f"  no GGUF: {exported['gguf_skipped']}")
    typer.echo(f"  parity passed: {describe(exported['parity'])}")
    typer.echo("  talk to it: loretune chat (or make chat)")


def _print_before_after(compared: dict | None) -> None:
    """The base's and the fine-tuned checkpoint's answers to the probe questions."""
    if not compared:
        return
    typer.echo(f"\nbefore / after ({compared['checkpoint']}{'' if compared['promoted'] else ', not promoted'}):")
    for answer in compared["answers"]:
        typer.echo(f"  Q: {answer['question']}\n     base:       {answer['base']}\n     fine-tuned: {answer['tuned']}")


def _print_stages(result: dict) -> None:
    typer.echo(f"artifacts: {result['store']}")
    _print_rows(["stage", "version", "state"], [(s, v["version"], v["state"]) for s, v in result["stages"].items()])


def _print_evaluation(table: list[dict], baselines: dict, promotion: dict, generation: list[dict] = ()) -> None:
    """Per set: what no knowledge scores, then every checkpoint ± its standard error; the open sets
    next; the gate last."""
    for name in dict.fromkeys(r["set"] for r in table):
        rows = [r for r in table if r["set"] == name]
        shown = ", ".join(f"{k} {_pm(v['value'], v['stderr'])}" for k, v in baselines.get(name, {}).items())
        typer.echo(f"set {name} (n={rows[0]['n']}, dropped {rows[0]['dropped']}); no-knowledge baselines: {shown}")
        header = ["step", "checkpoint", "acc", "acc_norm", "vs step 0 (95% CI)", "mcnemar_p", "eval_loss"]
        _print_rows(header, [(r["step"], r["checkpoint"], _pm(r["acc"], r["acc_stderr"]),
                              _pm(r["acc_norm"], r["acc_norm_stderr"]), _delta(r) if r["step"] else "-",
                              _cell(r["mcnemar_p"]) if r["step"] else "-", _cell(r.get("eval_loss"))) for r in rows])
        typer.echo("")
    _print_generation(generation)
    typer.echo(f"promoted: {promotion['promoted']}" if promotion["promoted"] else "promoted: none")
    typer.echo(f"  {promotion['reason']}")
    served = (promotion.get("decoding") or {}).get(promotion["promoted"] or "")
    if served:
        typer.echo(f"  serve it with decoding {served['name']}: {served['why']}")


OPEN_COLUMNS = ("answer_match", "rougeL", "bleu", "chrf", "bertscore_f1", "answer_tokens", "stopped")


def _print_generation(table: list[dict]) -> None:
    """Per open set: every checkpoint at every decoding point, mean over seeds ± standard error
    (± the seeds' spread where a point samples), and the change from step 0 in ROUGE-L."""
    aggregate = [r for r in table if r["seed"] is None and r["set"] != "probes"]  # probes: the before / after
    for name in dict.fromkeys(r["set"] for r in aggregate):
        cells: dict[tuple, dict] = {}
        for r in (r for r in aggregate if r["set"] == name):
            cells.setdefault((r["step"], r["checkpoint"], r["decoding"]), {})[r["metric"]] = r
        n = next(iter(cells.values()))["rougeL"]["n"] if "rougeL" in next(iter(cells.values())) else "?"
        typer.echo(f"open set {name} (n={n}): mean over seeds ± standard error [± seeds' std]")
        shown = [m for m in OPEN_COLUMNS if any(m in c for c in cells.values())]
        header = ["step", "checkpoint", "decoding", *shown, "rougeL vs step 0 (95% CI)"]
        rows = []
        for (step, checkpoint, decoding), metrics in cells.items():
            delta = metrics.get("rougeL")
            rows.append((step, checkpoint, decoding, *(_open_cell(metrics.get(m)) for m in shown),
                         f"{delta['delta']:+.3f} [{delta['delta_ci_low']:+.3f}, {delta['delta_ci_high']:+.3f}]"
                         if step and delta and delta["delta_ci_low"] is not None else "-"))
        _print_rows(header, rows)
        typer.echo("")


def _open_cell(row: dict | None) -> str:
    if row is None:
        return "-"
    text = _pm(row["value"], row["stderr"] if row["stderr"] is not None else float("nan"))
    return text + (f" [±{row['seed_std']:.3f}]" if (row.get("seeds") or 1) > 1 and row.get("seed_std") is not None
                   else "")


def _pm(value: Any, stderr: Any) -> str:
    return "-" if value is None else f"{value:.3f} ± {stderr:.3f}"


def _delta(row: dict) -> str:
    return f"{row['delta_acc']:+.3f} [{row['delta_acc_ci_low']:+.3f}, {row['delta_acc_ci_high']:+.3f}]"


def _cell(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def _print_rows(header: list[str], rows: list[tuple]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)] if rows else [len(h) for h in header]
    for row in [tuple(header), *rows]:
        typer.echo("  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip())


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def main() -> None:
    app(prog_name="loretune")


if __name__ == "__main__":
    sys.exit(main())
