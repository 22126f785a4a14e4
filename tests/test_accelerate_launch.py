"""Training across processes: `training.launcher: accelerate` runs the hf backend under `accelerate
launch` (DDP; gloo on this CPU machine) into the checkpoint layout a single process writes, and
the unsloth backend, which trains on one GPU, is refused before any work.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file
from training_fixtures import make_lore

from loretune.config import TrainingConfig
from loretune.training import launch, sft, worker
from loretune.training.recipe import Recipe


@pytest.fixture(scope="module")
def lore(tmp_path_factory):
    """A tiny base model and a dataset with pictures (tests/training_fixtures.py)."""
    return make_lore(tmp_path_factory.mktemp("lore"))


def config(**changes) -> Recipe:
    return Recipe.from_dict(TrainingConfig(**{"max_steps": 4, "save_steps": 2, "batch_size": 4, "learning_rate": 5e-3,
                                            "warmup_ratio": 0.0, "max_length": 64, "backend": "hf",
                                            **changes}).model_dump())


def layout(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def test_the_config_s_launcher_reaches_the_recipe():
    cfg = config(launcher="accelerate", num_processes=3)
    assert (cfg.launcher, cfg.num_processes) == ("accelerate", 3)
    assert Recipe.from_dict(TrainingConfig().model_dump()).launcher == "single"


def test_unsloth_under_accelerate_is_refused_before_any_work(lore, tmp_path):
    with pytest.raises(launch.LauncherUnavailable,
                       match="the unsloth backend trains on one GPU; use training.backend: hf with launcher: accelerate"):
        worker.train_checkpoints(backend="unsloth", output_dir=tmp_path / "run", cfg=config(launcher="accelerate"),
                                 log=lambda m: None, **lore)
    assert not (tmp_path / "run").exists(), "refused before anything was written"
    launch.check_launcher("unsloth", "single")  # one GPU, one process: as before
    launch.check_launcher("hf", "accelerate")
    with pytest.raises(launch.LauncherUnavailable, match="load_in_4bit"):
        launch.check_launcher("hf", "accelerate", load_in_4bit=True)


def test_the_launch_command_is_accelerate_s_own_with_every_setting_named(tmp_path):
    command = launch.launch_command(2, tmp_path / "train_request.json", port=29999, python="python")
    assert command[:3] == ["python", "-m", "accelerate.commands.launch"]
    assert command[command.index("--num_processes") + 1] == "2" and "--multi_gpu" in command
    assert command[command.index("--main_process_port") + 1] == "29999"
    assert command[-3:] == ["-m", "loretune.training.worker", str((tmp_path / "train_request.json").resolve())]
    assert "--multi_gpu" not in launch.launch_command(1, tmp_path / "r.json", port=1), "accelerate wants 2 for it"


@pytest.mark.slow
def test_two_gloo_processes_train_into_the_single_process_layout(lore, tmp_path):
    lines, steps = [], []
    started = time.perf_counter()
    ddp = worker.train_checkpoints(backend="hf", output_dir=tmp_path / "ddp", cfg=config(launcher="accelerate"),
                                   log=lines.append, progress=lambda step, total: steps.append((step, total)), **lore)
    ddp_s = time.perf_counter() - started
    started = time.perf_counter()
    single = worker.train_checkpoints(backend="hf", output_dir=tmp_path / "single", cfg=config(), log=lambda m: None,
                                      **lore)
    single_s = time.perf_counter() - started
    print(f"\ntwo processes: {ddp_s:.1f} s, one process: {single_s:.1f} s")

    assert [c.step for c in ddp] == [c.step for c in single] == [2, 4], "max_steps and save_steps: the Trainer's steps"
    assert steps[-1] == (4, 4), "progress comes back from process 0"
    assert any("2 processes" in line for line in lines) and any("hf backend" in line for line in lines)
    assert sum("hf backend" in line for line in lines) == 1, "process 0 speaks for both"

    # Scratch: the same files, except the per-process random states only resuming reads.
    for a, b in zip(ddp, single):
        extra = layout(a.path) - layout(b.path)
        assert extra == {"rng_state_0.pth", "rng_state_1.pth"} and layout(b.path) - layout(a.path) == {"rng_state.pth"}
        assert all(sft.resume_only(name) for name in extra)
        assert load_file(str(a.path / "adapter_model.safetensors")).keys() == \
            load_file(str(b.path / "adapter_model.safetensors")).keys()
    # Published: exactly the same layout.
    (tmp_path / "ddp-out").mkdir()
    (tmp_path / "single-out").mkdir()
    sft.publish_checkpoints(tmp_path / "ddp", tmp_path / "ddp-out")
    sft.publish_checkpoints(tmp_path / "single", tmp_path / "single-out")
    assert layout(tmp_path / "ddp-out") == layout(tmp_path / "single-out")

    run = json.loads((tmp_path / "ddp" / sft.TRAINING_RUN_FILE).read_text())
    one = json.loads((tmp_path / "single" / sft.TRAINING_RUN_FILE).read_text())
    assert run["processes"] == 2 and one["processes"] == 1
    assert run["effective_batch"] == 2 * one["effective_batch"] == 2 * 4, "batch x accumulation x processes"
    state = json.loads((ddp[-1].path / "trainer_state.json").read_text())
    losses = [h["loss"] for h in state["log_history"] if "loss" in h]
    assert losses and all(math.isfinite(x) for x in losses)
    assert state["global_step"] == 4


SYNC_CHECK = """
import json, os, sys
from pathlib import Path
import numpy as np
from transformers import TrainerCallback
from loretune.training import sft
from loretune.training.recipe import Recipe

args = json.loads(Path(sys.argv[1]).read_text())

class Weights(TrainerCallback):
    def on_train_end(self, _args, state, control, model=None, **kwargs):
        sums = {n: float(p.detach().double().sum()) for n, p in model.named_parameters() if p.requires_grad}
        Path(args["out"], f"weights-{os.environ['RANK']}.json").write_text(json.dumps(sums))

features = {k: np.asarray(v, dtype=np.float32) for k, v in args["features"].items()}
sft.train(dataset_dir=Path(args["dataset_dir"]), features=features, clip_dim=args["clip_dim"],
          base_model=args["base_model"], output_dir=Path(args["out"], "run"), cfg=Recipe.from_dict(args["cfg"]),
          image_tokens=args["image_tokens"], log=lambda m: None, callbacks=[Weights()])
"""


@pytest.mark.slow
def test_the_processes_end_with_the_same_weights(lore, tmp_path):
    """The gradients are averaged across the processes, the image projector's included (its images
    are fused outside the model's forward). A loss that called the model under DDP's wrapper
    directly would train each process on its own shard, apart: this failed with the labelled-only
    loss (checksums 0.8 apart after 4 steps)."""
    import dataclasses

    script = tmp_path / "sync_check.py"
    script.write_text(SYNC_CHECK)
    request = tmp_path / "args.json"
    request.write_text(json.dumps({**{k: str(v) if isinstance(v, Path) else v for k, v in lore.items()},
                                   "features": {k: v.tolist() for k, v in lore["features"].items()},
                                   "cfg": dataclasses.asdict(config()), "out": str(tmp_path)}))
    command = launch.launch_command(2, request, launch.free_port())[:-3] + [str(script), str(request)]
    worker.relay(command, tmp_path, log=lambda m: None, progress=None, what="sync check", env={"OMP_NUM_THREADS": "1"})
    first, second = (json.loads((tmp_path / f"weights-{rank}.json").read_text()) for rank in (0, 1))
    assert first.keys() == second.keys() and any("image_projector" in name for name in first)
    assert all(first[name] == pytest.approx(second[name], abs=1e-6) for name in first)


@pytest.mark.slow
def test_a_failing_process_is_one_error_that_says_which_and_why(lore, tmp_path):
    broken = {**lore, "dataset_dir": tmp_path / "no-such-dataset"}
    with pytest.raises(worker.TrainingFailed, match=r"accelerate launch \(2 processes\).*\nin process \d: "
                                                    r"FileNotFoundError:.*no-such-dataset"):
        worker.train_checkpoints(backend="hf", output_dir=tmp_path / "run", cfg=config(launcher="accelerate"),
                                 log=lambda m: None, **broken)
