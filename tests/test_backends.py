"""The training backends: which one runs, unsloth in a process of its own, the same checkpoints
from both, and the out-of-memory back-off.

There is no GPU here, so the unsloth path runs against a stand-in (tests/fake_unsloth) that
records what it is asked and trains through transformers + PEFT; the real one ran on a lent GPU
(the README's GPU section, bench/train_backends.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from training_fixtures import make_lore

from loretune.config import ModelConfig, TrainingConfig
from loretune.model.chat_format import IMAGE_TOKEN
from loretune.training import backends, sft, worker
from loretune.training.recipe import Recipe

FAKE_UNSLOTH = Path(__file__).parent / "fake_unsloth"
@pytest.fixture(scope="module")
def lore(tmp_path_factory):
    """A tiny base model and a dataset with pictures: what one training run needs."""
    return make_lore(tmp_path_factory.mktemp("lore"))


def config(**changes) -> Recipe:
    return Recipe.from_dict(TrainingConfig(**{"max_steps": 8, "save_steps": 4, "batch_size": 8, "learning_rate": 5e-3,
                                            "warmup_ratio": 0.0, "max_length": 64, **changes}).model_dump())


def adapter(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_file(str(checkpoint / "adapter_model.safetensors"))


# --- which backend --------------------------------------------------------------------------

@pytest.mark.parametrize("cuda, installed, requested, resolved", [
    (False, False, "auto", "hf"), (False, True, "auto", "hf"), (True, False, "auto", "hf"),
    (True, True, "auto", "unsloth"), (True, True, "hf", "hf"), (True, True, "unsloth", "unsloth"),
])
def test_auto_takes_unsloth_only_where_cuda_and_unsloth_are_both_there(monkeypatch, cuda, installed, requested,
                                                                        resolved):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(backends, "unsloth_installed", lambda: installed)
    assert backends.resolve_backend(requested, log=lambda m: None) == resolved


@pytest.mark.parametrize("cuda, installed, reason", [(False, True, "needs a CUDA GPU"),
                                                     (True, False, "unsloth is not installed")])
def test_unsloth_asked_for_where_it_cannot_run_is_one_clear_error(monkeypatch, cuda, installed, reason):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(backends, "unsloth_installed", lambda: installed)
    with pytest.raises(backends.BackendUnavailable, match=reason):
        backends.resolve_backend("unsloth")


def test_the_resolved_backend_and_its_libraries_are_in_the_runtime_the_stages_key_on(monkeypatch):
    cpu = backends.runtime("auto")
    assert cpu["backend"] == "hf" and "unsloth" not in cpu
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(backends, "unsloth_installed", lambda: True)
    gpu = backends.runtime("auto")
    assert gpu["backend"] == "unsloth" and gpu["device"] == "cuda" and gpu["dtype"] == "bfloat16"
    assert {"unsloth", "unsloth_zoo"} <= set(gpu), "a new unsloth must train anew"
    assert gpu != cpu


def test_nothing_on_a_cpu_machine_imports_unsloth():
    import subprocess
    import sys

    code = ("import sys; import loretune.flows.finetune, loretune.tasks.training, loretune.training.worker; "
            "from loretune.training.backends import runtime; runtime('auto'); print('unsloth' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_4bit_is_refused_off_cuda_before_any_work():
    with pytest.raises(backends.BackendUnavailable, match="model.load_in_4bit needs a CUDA GPU"):
        backends.runtime("hf", load_in_4bit=True)
    assert ModelConfig().load_in_4bit is False, "16-bit unless asked"


def test_the_train_task_takes_the_gpu_tag_the_stack_limits():
    from loretune import stack
    from loretune.tasks import training

    assert training.GPU_TAG == stack.GPU_TAG and stack.GPU_SLOTS == 1
    assert stack.GPU_TAG in training.train.tags


# --- unsloth in its own process -------------------------------------------------------------

def fake_unsloth(monkeypatch, tmp_path) -> Path:
    log = tmp_path / "unsloth-calls.jsonl"
    monkeypatch.setenv("PYTHONPATH", f"{FAKE_UNSLOTH}:{Path(sft.__file__).parents[1]}")
    monkeypatch.setenv("FAKE_UNSLOTH_LOG", str(log))
    return log


def test_unsloth_trains_in_its_own_process_imported_first_into_the_same_checkpoints(lore, tmp_path, monkeypatch):
    calls_file = fake_unsloth(monkeypatch, tmp_path)
    cfg = config(gradient_checkpointing=True, lora={"r": 4, "alpha": 8, "use_rslora": True})
    steps, lines = [], []
    fast = worker.train_checkpoints(backend="unsloth", output_dir=tmp_path / "unsloth", cfg=cfg, log=lines.append,
                                    progress=lambda step, total: steps.append((step, total)), **lore)
    plain = sft.train(backend="hf", output_dir=tmp_path / "hf", cfg=cfg, log=lambda m: None, **lore)

    calls = [json.loads(line) for line in calls_file.read_text().splitlines()]
    assert calls[0] == {"event": "import", "imported_before": []}, "unsloth must come before transformers/trl/peft"
    loaded = next(c for c in calls if c["event"] == "from_pretrained")
    assert Path(loaded["model_name"]).is_absolute() and loaded["max_seq_length"] == 64
    assert loaded["dtype"] == "torch.bfloat16" and loaded["load_in_4bit"] is False
    assert loaded["fix_tokenizer"] is False, "unsloth's check would drop the image placeholder token"
    assert IMAGE_TOKEN not in (Path(loaded["model_name"]) / "tokenizer.json").read_text(), \
        "unsloth grows the embeddings to its tokenizer's length: it must not see the placeholder"
    assert loaded["use_gradient_checkpointing"] == "unsloth", "set at load too, where unsloth defaults it on"
    wrapped = next(c for c in calls if c["event"] == "get_peft_model")
    assert (wrapped["r"], wrapped["lora_alpha"], wrapped["lora_dropout"], wrapped["use_rslora"]) == (4, 8, 0.0, True)
    assert wrapped["target_modules"] == sorted(cfg.lora.target_modules)
    assert wrapped["use_gradient_checkpointing"] == "unsloth" and wrapped["random_state"] == cfg.seed
    assert wrapped["modules_to_save"] is None, "the projector is added after unsloth's wrap, which refuses it"

    assert [c.step for c in fast] == [c.step for c in plain] == [4, 8]
    assert steps[-1] == (8, 8), "progress comes back from the worker"
    assert any("unsloth backend" in line for line in lines), "and so do its log lines"
    for a, b in zip(fast, plain):
        assert sorted(p.name for p in a.path.iterdir()) == sorted(p.name for p in b.path.iterdir())
        fast_weights, plain_weights = adapter(a.path), adapter(b.path)
        assert fast_weights.keys() == plain_weights.keys()
        assert any("image_projector" in key for key in fast_weights), "the projector trains with unsloth too"
        for key in fast_weights:  # same init, data and maths: the same adapter, to float noise
            torch.testing.assert_close(fast_weights[key], plain_weights[key], rtol=1e-4, atol=1e-5)
        fast_config = json.loads((a.path / "adapter_config.json").read_text())
        assert "image_projector" in fast_config["modules_to_save"]
    run = json.loads((tmp_path / "unsloth" / sft.TRAINING_RUN_FILE).read_text())
    assert run["backend"] == "unsloth" and run["images"] == "fused" and run["oom_backoffs"] == []


def test_unsloth_checkpoints_only_when_the_config_asks(lore, tmp_path, monkeypatch):
    calls_file = fake_unsloth(monkeypatch, tmp_path)
    worker.train_checkpoints(backend="unsloth", output_dir=tmp_path / "out", cfg=config(max_steps=1, save_steps=1),
                             log=lambda m: None, **lore)
    calls = [json.loads(line) for line in calls_file.read_text().splitlines()]
    assert [c["use_gradient_checkpointing"] for c in calls if c["event"] != "import"] == [False, False]


def test_the_worker_reads_relative_paths_as_its_caller_meant_them(lore, tmp_path, monkeypatch):
    """It runs in the run folder (so a checkout's loretune/ in the caller's cwd cannot shadow the
    installed package, as it did on the GPU machine); the request names absolute paths."""
    fake_unsloth(monkeypatch, tmp_path)
    monkeypatch.chdir(lore["dataset_dir"].parent)
    relative = {**lore, "dataset_dir": Path(lore["dataset_dir"].name)}
    checkpoints = worker.train_checkpoints(backend="unsloth", output_dir=Path("run"), cfg=config(max_steps=1, save_steps=1),
                                           log=lambda m: None, **relative)
    assert [c.step for c in checkpoints] == [1]
    request = json.loads((Path("run") / worker.REQUEST_FILE).read_text())
    assert Path(request["dataset_dir"]).is_absolute()


def test_a_failing_worker_is_an_error_that_carries_its_output(lore, tmp_path, monkeypatch):
    fake_unsloth(monkeypatch, tmp_path)
    monkeypatch.setenv("FAKE_UNSLOTH_FAIL", "1")
    with pytest.raises(worker.TrainingFailed, match="the fake was told to fail"):
        worker.train_checkpoints(backend="unsloth", output_dir=tmp_path / "out", cfg=config(), log=lambda m: None,
                                 **lore)


def test_a_projector_cast_to_bf16_still_fuses():
    """The hf backend's 4-bit path on CUDA left the projector in bf16 while features came in fp32."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from loretune.multimodal.fusion import attach_projector, fuse

    model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2)).to(torch.bfloat16)
    attach_projector(model, clip_dim=8, n_tokens=2, seed=0, image_token_id=49).to(torch.bfloat16)
    ids = torch.tensor([[1, 49, 49, 5, 6]])
    fused = fuse(model, ids, torch.ones_like(ids), torch.randn(1, 8), labels=ids)
    assert fused["inputs_embeds"].dtype == torch.bfloat16
    assert not torch.equal(fused["inputs_embeds"][0, 1], model.get_input_embeddings().weight[0])


# --- out of GPU memory ----------------------------------------------------------------------

def simulate_oom(monkeypatch, at_step: int, above_batch: int) -> list[int]:
    """Every training step at or past `at_step` with a batch above `above_batch` fails as CUDA would."""
    original, seen = sft.FusionSFTTrainer.training_step, []

    def training_step(self, *args, **kwargs):
        seen.append(self.args.per_device_train_batch_size)
        if self.state.global_step >= at_step and self.args.per_device_train_batch_size > above_batch:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(sft.FusionSFTTrainer, "training_step", training_step)
    return seen


def test_out_of_memory_halves_the_batch_keeps_the_effective_batch_and_trains_what_a_clean_run_would(
        lore, tmp_path, monkeypatch):
    clean = sft.train(backend="hf", output_dir=tmp_path / "clean", cfg=config(batch_size=4, gradient_accumulation_steps=2),
                      log=lambda m: None, **lore)
    seen = simulate_oom(monkeypatch, at_step=2, above_batch=4)
    lines = []
    backed_off = sft.train(backend="hf", output_dir=tmp_path / "oom", cfg=config(), log=lines.append, **lore)

    assert 8 in seen and seen[-1] == 4, "it tried batch 8, then went on with 4"
    run = json.loads((tmp_path / "oom" / sft.TRAINING_RUN_FILE).read_text())
    assert run["oom_backoffs"] == [{"at_step": 2, "batch_size": 4, "gradient_accumulation_steps": 2}]
    assert run["effective_batch"] == 8 == run["final_batch_size"] * run["final_gradient_accumulation_steps"]
    assert any("out of memory at step 2" in line for line in lines)
    assert [c.step for c in backed_off] == [4, 8]
    # The failed attempt's two steps left no trace: the retry started from the initial weights.
    for key, value in adapter(clean[-1].path).items():
        torch.testing.assert_close(adapter(backed_off[-1].path)[key], value, rtol=1e-4, atol=1e-5)


def test_out_of_memory_resumes_from_the_last_checkpoint(lore, tmp_path, monkeypatch):
    seen = simulate_oom(monkeypatch, at_step=5, above_batch=4)
    checkpoints = sft.train(backend="hf", output_dir=tmp_path / "oom", cfg=config(), log=lambda m: None, **lore)
    assert [c.step for c in checkpoints] == [4, 8]
    assert seen.count(4) == 4 * 2, "after the OOM past step 5, steps 5-8 ran from checkpoint-4, 2 half batches each"


def test_out_of_memory_gives_up_after_two_back_offs_with_what_to_change(lore, tmp_path, monkeypatch):
    simulate_oom(monkeypatch, at_step=0, above_batch=0)
    with pytest.raises(sft.OutOfMemory, match=r"batch 2 x accumulation 4 \(after 2 back-offs\).*max_length"):
        sft.train(backend="hf", output_dir=tmp_path / "oom", cfg=config(), log=lambda m: None, **lore)


def test_a_run_resumed_at_its_last_step_trains_no_step_more(lore, tmp_path):
    """A kill after training and before publishing: the re-run finds checkpoint-<max_steps> and stops
    there (transformers' Trainer, resumed at its last step, would take one more)."""
    cfg = config(max_steps=4, save_steps=2)
    first = sft.train(backend="hf", output_dir=tmp_path / "run", cfg=cfg, log=lambda m: None, **lore)
    record = (tmp_path / "run" / sft.TRAINING_RUN_FILE).read_text()
    lines: list[str] = []
    again = sft.train(backend="hf", output_dir=tmp_path / "run", cfg=cfg, log=lines.append, **lore)
    assert [c.step for c in again] == [c.step for c in first] == [2, 4]
    assert any("trained already" in line for line in lines), lines
    assert (tmp_path / "run" / sft.TRAINING_RUN_FILE).read_text() == record  # the finished run's own record
    (tmp_path / "run" / sft.TRAINING_RUN_FILE).unlink()  # killed before it was written: written now
    assert [c.step for c in sft.train(backend="hf", output_dir=tmp_path / "run", cfg=cfg, log=lambda m: None,
                                      **lore)] == [2, 4]
    assert json.loads((tmp_path / "run" / sft.TRAINING_RUN_FILE).read_text())["resumed_from_step"] == 4
