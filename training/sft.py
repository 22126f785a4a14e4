"""LoRA fine-tuning with PEFT + TRL's SFTTrainer, images fused into the input embeddings.

TRL owns the loop (optimiser, schedule, checkpointing every `save_steps`, resuming). Examples go in
tokenised (`tokenized_splits`): the loss on every assistant turn, so a conversation that packs a
page's questions teaches every answer, cut to `max_length`, and examples left with nothing to learn
dropped. `FusionSFTTrainer.compute_loss` swaps each image's placeholder tokens for the projector's
soft tokens, then computes the loss at labelled positions only (`training/loss.py`). On a CPU with
native bf16 it runs under bf16 autocast (`model.loading.training_precision`).
The projector trains and saves with the adapter through PEFT's `modules_to_save`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from datasets import Dataset, DatasetDict, concatenate_datasets
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback
from trl import SFTConfig, SFTTrainer

from loretune.failpoints import failpoint
from loretune.model.chat_format import IGNORE, ChatFormat, add_image_token, encode_chat
from loretune.model.checkpoints import COMPLETE_MARKER, MULTIMODAL_FILE, Checkpoint, list_checkpoints
from loretune.model.collator import FusionCollator
from loretune.model.loading import default_device, load_base, training_precision
from loretune.multimodal.fusion import PROJECTOR_NAME, attach_projector, feature_stats, fuse, projector_parameters
from loretune.training import loss
from loretune.training.backends import resolve_backend
from loretune.training.lora_targets import resolve_targets
from loretune.training.recipe import Recipe

LABELS_FILE = "label_check.json"
# The backend, quantisation and batch the run really trained with (out-of-memory back-offs included).
TRAINING_RUN_FILE = "training_run.json"


class FusionSFTTrainer(SFTTrainer):
    """TRL's trainer with images fused in, and the loss at labelled positions only (`training/loss.py`)."""

    labelled_only = True  # False: TRL's own loss (`bench/cpu_training.py` measures both)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # Under several processes `model` is DDP's wrapper: the images fuse on the model inside it,
        # and the loss is TRL's, through the wrapper's forward. The labelled-only loss calls the
        # backbone directly, which would bypass DDP's gradient sync (and TRL's scaling by the
        # number of processes, whose tokens `num_items_in_batch` counts).
        inner = self.accelerator.unwrap_model(model)
        fused = fuse(
            inner,
            inputs["input_ids"],
            inputs["attention_mask"],
            inputs["image_features"],
            inputs["labels"],
        )
        if return_outputs or not self.labelled_only or inner is not model or not loss.supports(model):
            return super().compute_loss(model, fused, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        labels = fused.pop("labels")
        # accelerate applies mixed precision by wrapping the model's forward, which this loss
        # bypasses (it calls the backbone): the same autocast, entered here.
        with self.accelerator.autocast():
            value, correct, count = loss.labelled_loss(model, fused, labels, num_items_in_batch)
        mode = "train" if model.training else "eval"
        self._metrics[mode]["mean_token_accuracy"].append((correct / count.clamp(min=1)).item())
        if mode == "train":
            self._total_train_tokens += int(inputs["attention_mask"].sum())
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        return value


class ProgressLog(TrainerCallback):
    """One line per logging step, so long runs show progress in the Prefect UI's logs; and the
    step reached, for a caller that shows a progress bar (the task: a Prefect progress artifact)."""

    def __init__(self, log: Callable[[str], None], progress: Callable[[int, int], None] | None = None):
        self.log = log
        self.progress = progress

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs:
            shown = ", ".join(f"{k} {v:.4g}" for k, v in logs.items() if isinstance(v, (int, float)))
            self.log(f"train: step {state.global_step}/{state.max_steps}: {shown}")
        if self.progress:
            self.progress(state.global_step, state.max_steps)

    def on_save(self, args, state, control, **kwargs):
        failpoint("training:after-checkpoint")  # crash tests: a kill right after a checkpoint is saved

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress:  # the last step need not be a logging step
            self.progress(state.global_step, state.max_steps)


def plot_losses(trainer_state: Path, path: Path, title: str) -> None:
    """Training and validation loss per step, from the trainer's own log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = json.loads(trainer_state.read_text()).get("log_history", [])
    fig, ax = plt.subplots(figsize=(6, 3.4), dpi=100)
    for key, style in (("loss", "-"), ("eval_loss", "o--")):
        points = [(h["step"], h[key]) for h in history if key in h]
        if points:
            ax.plot(*zip(*points), style, label=key)
    ax.set(xlabel="training step", ylabel="loss", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def lora_config(cfg: Recipe) -> LoraConfig:
    return LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        use_rslora=cfg.lora.use_rslora,
        target_modules=list(cfg.lora.target_modules),
        modules_to_save=[PROJECTOR_NAME, *cfg.lora.modules_to_save],
        task_type="CAUSAL_LM",
    )


def tokenized_splits(dataset_dir: Path, tokenizer: Any, fmt: ChatFormat, features: dict[str, np.ndarray],
                     image_tokens: int, max_length: int) -> DatasetDict:
    """Both splits as token ids and labels in the model's chat format (`encode_chat`: the loss on
    every answer of a conversation), an image's placeholder in the user turn where its features
    exist. TRL takes tokenised rows as they are; tokenising here is what lets a conversation that
    packs several questions about one page teach all its answers, not only the last."""
    # In memory: `map` would otherwise write cache files into the (immutable) dataset artifact,
    # and so would TRL's own pass over the result.
    splits = DatasetDict.load_from_disk(str(dataset_dir / "sft"), keep_in_memory=True)

    def convert(row: dict[str, Any]) -> dict[str, Any]:
        image = row["image_sha256"] or ""
        messages = fmt.with_image(row["messages"], image_tokens) if image in features else row["messages"]
        return {**encode_chat(tokenizer, messages, max_length, fmt), "image_sha256": image}

    return splits.map(convert, remove_columns=splits["train"].column_names, keep_in_memory=True)


def check_labels(rows: Any, max_length: int) -> dict[str, Any]:
    """The label check on the very rows training will see (see `label_check`)."""
    return label_check(list(rows["labels"]), list(rows["truncated"]), max_length)


def label_check(labels: list[list[int]], truncated: list[bool], max_length: int) -> dict[str, Any]:
    """Before the first step: how many examples teach nothing, and how many lose part of their answer.

    Training that would learn nothing (no example with a trainable token) is refused here, with the
    numbers, instead of running for hours on padding.
    """
    n = len(labels)
    empty = sum(all(label == IGNORE for label in row) for row in labels)
    cut = sum(bool(t) for t in truncated)
    if not n or empty == n:
        raise ValueError(f"training would learn nothing: {empty} of {n} examples have no answer tokens "
                         f"within training.max_length={max_length}; raise max_length or shorten the prompts")
    return {"examples": n, "no_trainable_tokens": empty, "truncated_answers": cut, "max_length": max_length,
            "no_trainable_share": empty / n, "truncated_share": cut / n}


MAX_OOM_BACKOFFS = 2


class OutOfMemory(RuntimeError):
    """Training ran out of GPU memory at the smallest batch the back-off allows; the message says
    what was tried and what to change."""


def is_out_of_memory(exc: BaseException) -> bool:
    """A CUDA allocation failure, as torch raises it (or as older code paths word it)."""
    return isinstance(exc, torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "CUDA out of memory" in str(exc))


def prepare_model(base_model: str, cfg: Recipe, backend: str, load_in_4bit: bool, device: str,
                  clip_dim: int, image_tokens: int, stats: dict[str, Any], scratch: Path) -> tuple[Any, Any, Any]:
    """Tokenizer, the LoRA-wrapped model with the image projector trainable, and the projector."""
    if backend == "unsloth":
        from loretune.training import unsloth_lora  # the worker process imported unsloth first

        tokenizer, model = unsloth_lora.load(base_model, cfg, load_in_4bit, view=scratch / "unsloth_model")
    else:
        tokenizer, model = load_base(base_model, device, cfg.attn_implementation, load_in_4bit)
        if load_in_4bit:  # fp32 norms, input grads and checkpointing set up as QLoRA needs
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    projector = attach_projector(model, clip_dim, image_tokens, seed=cfg.seed, stats=stats,
                                 image_token_id=add_image_token(tokenizer))
    targets = tuple(resolve_targets(model, cfg.lora.target_modules))
    cfg = dataclasses.replace(cfg, lora=dataclasses.replace(cfg.lora, target_modules=targets))
    torch.manual_seed(cfg.seed)
    if backend == "unsloth":
        model = unsloth_lora.wrap(model, cfg, extra_modules=[PROJECTOR_NAME])
    else:
        model = get_peft_model(model, lora_config(cfg))
    return tokenizer, model, projector


def train(
    *,
    dataset_dir: Path,
    features: dict[str, np.ndarray],
    clip_dim: int,
    base_model: str,
    output_dir: Path,
    cfg: Recipe,
    image_tokens: int,
    log: Callable[[str], None] = print,
    progress: Callable[[int, int], None] | None = None,
    clip: dict[str, Any] | None = None,
    backend: str | None = None,
    load_in_4bit: bool = False,
    callbacks: Sequence[TrainerCallback] = (),
    extra_train: Sequence[list[dict[str, str]]] = (),
) -> list[Checkpoint]:
    """Train, saving a checkpoint every `save_steps` into `output_dir`; resumes if it holds any.

    `clip` (model, pretrained, seed) names the CLIP the features came from, recorded with the
    projector so whoever feeds it a new picture (the chat UI) embeds it with the same CLIP.
    `backend` is the resolved backend (`backends.resolve_backend`); `unsloth` only in a process
    that imported unsloth first (`training/worker.py` runs it so).

    A CUDA out-of-memory error retries with half the per-device batch and twice the gradient
    accumulation, the same effective batch, at most `MAX_OOM_BACKOFFS` times, from the last
    checkpoint; what happened is in `TRAINING_RUN_FILE`.

    In one of several processes `accelerate launch` started (`training/launch.py`), the Trainer
    trains data-parallel and saves checkpoints from process 0, which alone writes the run's files;
    an out-of-memory error there is not retried (the processes would have to back off together).
    """
    rank, processes = process_rank()
    backend = backend or resolve_backend(cfg.backend, log)
    device = default_device()
    precision = training_precision(device, cfg.precision)
    fmt = ChatFormat.load(Path(base_model))
    stats = feature_stats(np.stack(list(features.values())) if features else np.zeros((0, clip_dim)))
    tokenizer, model, projector = prepare_model(base_model, cfg, backend, load_in_4bit, device, clip_dim,
                                                image_tokens, stats, scratch=output_dir)
    trainable, total = model.get_nb_trainable_parameters()
    log(f"train: {backend} backend{' (4-bit base)' if load_in_4bit else ''} on {device}, {precision}"
        f"{' autocast' if precision == 'bf16' and device == 'cpu' else ''}: {trainable:,} trainable "
        f"of {total:,} parameters (LoRA r={cfg.lora.r} + image projector "
        f"{sum(p.numel() for p in projector.parameters()):,})")

    data = tokenized_splits(dataset_dir, tokenizer, fmt, features, image_tokens, cfg.max_length)
    if extra_train:
        extra = Dataset.from_list([{**encode_chat(tokenizer, messages, cfg.max_length, fmt), "image_sha256": ""}
                                   for messages in extra_train])
        data["train"] = concatenate_datasets([data["train"], extra.cast(data["train"].features)])
        log(f"train: {len(extra)} retention examples join the training split")
    labels = check_labels(data["train"], cfg.max_length)
    data = data.filter(lambda row: any(label != IGNORE for label in row["labels"]), keep_in_memory=True)
    data = data.remove_columns("truncated")
    log(f"train: label check: {labels['no_trainable_tokens']} of {labels['examples']} examples teach nothing, "
        f"{labels['truncated_answers']} lose part of their answer to max_length={cfg.max_length}")
    has_validation = "validation" in data and len(data["validation"]) > 0
    log(f"train: {len(data['train'])} training and {len(data['validation']) if has_validation else 0} validation examples")
    output_dir.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        (output_dir / LABELS_FILE).write_text(json.dumps(labels, indent=2))
        (output_dir / MULTIMODAL_FILE).write_text(json.dumps(
            {"clip_dim": clip_dim, "image_tokens": image_tokens, "projector_seed": cfg.seed,
             "projector_parameters": projector_parameters(clip_dim, projector.hidden_size, image_tokens),
             "feature_stats": stats, "base_model": base_label(base_model), **({"clip": clip} if clip else {})}
        ))

    def make_trainer(batch_size: int, accumulation: int) -> FusionSFTTrainer:
        args = SFTConfig(
            output_dir=str(output_dir),
            max_steps=cfg.max_steps,
            save_strategy="steps",
            save_steps=cfg.save_steps,
            eval_strategy="steps" if has_validation else "no",
            eval_steps=cfg.save_steps,
            logging_steps=max(1, min(20, cfg.save_steps // 2)),
            train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
            per_device_train_batch_size=batch_size,
            per_device_eval_batch_size=batch_size,
            gradient_accumulation_steps=accumulation,
            learning_rate=cfg.learning_rate,
            lr_scheduler_type=cfg.lr_scheduler,
            warmup_steps=cfg.warmup_ratio,
            seed=cfg.seed,
            data_seed=cfg.seed,
            max_length=cfg.max_length,
            packing=cfg.packing,
            # TRL defaults bf16=True and gradient checkpointing on: both set here, from the config.
            # unsloth checkpoints in its own way (`unsloth_lora.wrap`), so the Trainer must not too.
            # bf16 on a CPU is autocast over the fp32 weights (`training_precision`).
            bf16=precision == "bf16",
            fp16=False,
            gradient_checkpointing=cfg.gradient_checkpointing and backend == "hf",
            report_to="none",
            disable_tqdm=True,
            use_cpu=device == "cpu",
            dataloader_pin_memory=False,
            remove_unused_columns=False,
            completion_only_loss=True,
            # Validation needs the loss only. Without this the Trainer gathers every validation
            # example's logits (examples x length x vocabulary: 5 GB for SmolLM2's 49k vocabulary).
            prediction_loss_only=True,
        )
        trainer = FusionSFTTrainer(
            model=model,
            args=args,
            train_dataset=data["train"],
            eval_dataset=data["validation"] if has_validation else None,
            processing_class=tokenizer,
            data_collator=FusionCollator(tokenizer.pad_token_id, features, clip_dim),
            callbacks=[ProgressLog(log, progress), *callbacks],
        )
        trainer.remove_callback(PrinterCallback)  # it prints raw dicts to stdout; ProgressLog logs them
        return trainer

    # What a retry after an out-of-memory error starts from when no checkpoint was saved yet: the
    # adapter and projector as initialised (a checkpoint, when there is one, overwrites them).
    initial = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    record = {"backend": backend, "load_in_4bit": load_in_4bit, "device": device, "precision": precision,
              "images": "fused", "processes": processes,
              "batch_size": cfg.batch_size, "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
              "effective_batch": cfg.batch_size * cfg.gradient_accumulation_steps * processes, "oom_backoffs": []}
    batch_size, accumulation = cfg.batch_size, cfg.gradient_accumulation_steps
    while True:
        trainer = make_trainer(batch_size, accumulation)
        if not record["oom_backoffs"] and len(trainer.train_dataset) != labels["examples"] - labels["no_trainable_tokens"]:
            log(f"train: warning: TRL kept {len(trainer.train_dataset)} examples, the label check expected "
                f"{labels['examples'] - labels['no_trainable_tokens']}")
        for partial in discard_incomplete(output_dir) if rank == 0 else ():  # the launcher did it for DDP
            log(f"train: removed {partial}, left half-written by an interrupted save")
        last = list_checkpoints(output_dir)
        if last and last[-1].step >= cfg.max_steps:
            # A run killed after it trained and before its checkpoints were published. Resumed at its
            # last step, transformers' Trainer would still take one step more (checkpoint-<max + 1>),
            # so the re-run would publish another model than the run that was never killed.
            log(f"train: {last[-1].path.name} is step {cfg.max_steps} of {cfg.max_steps}: trained already")
            if rank == 0 and not (output_dir / TRAINING_RUN_FILE).exists():  # killed before it wrote this
                record.update(trainable_parameters=trainable, parameters=total, resumed_from_step=last[-1].step,
                              train_runtime_s=None, tokens=None, tokens_per_s=None, final_batch_size=batch_size,
                              final_gradient_accumulation_steps=accumulation)
                (output_dir / TRAINING_RUN_FILE).write_text(json.dumps(record, indent=2))
            return last
        if last:
            log(f"train: resuming from {last[-1].path.name} (step {last[-1].step} of {cfg.max_steps})")
        try:
            started = last[-1].step if last else 0
            output = trainer.train(resume_from_checkpoint=str(last[-1].path) if last else None)
            break
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            if processes > 1:
                raise OutOfMemory(f"training ran out of GPU memory at step {trainer.state.global_step} in one of "
                                  f"{processes} processes, with batch {batch_size} x accumulation {accumulation}; "
                                  "lower training.batch_size (raise gradient_accumulation_steps to keep the "
                                  "effective batch) or training.max_length, or set training.gradient_checkpointing: "
                                  "true") from exc
            step = trainer.state.global_step
            tried = f"batch {batch_size} x accumulation {accumulation}"
            if len(record["oom_backoffs"]) >= MAX_OOM_BACKOFFS or batch_size < 2 or batch_size % 2:
                why = (f"after {MAX_OOM_BACKOFFS} back-offs" if len(record["oom_backoffs"]) >= MAX_OOM_BACKOFFS
                       else f"batch {batch_size} cannot be halved with the same effective batch")
                raise OutOfMemory(f"training ran out of GPU memory at step {step} with {tried} ({why}); lower "
                                  "training.max_length or training.batch_size (raise gradient_accumulation_steps "
                                  "to keep the effective batch), set training.gradient_checkpointing: true or "
                                  "model.load_in_4bit: true") from exc
            del trainer
            release_memory(model, initial)
            batch_size, accumulation = batch_size // 2, accumulation * 2
            record["oom_backoffs"].append({"at_step": step, "batch_size": batch_size,
                                           "gradient_accumulation_steps": accumulation})
            log(f"train: CUDA out of memory at step {step} with {tried}; retrying with batch {batch_size} x "
                f"accumulation {accumulation} (the same effective batch {batch_size * accumulation})")
    record.update(final_batch_size=batch_size, final_gradient_accumulation_steps=accumulation)
    # What training cost, for the comparison of bases: tokens per second only for a run that went
    # uninterrupted from step 0 (a resumed run's clock starts at the resume, its tokens do not).
    tokens = max((h.get("num_tokens", 0) for h in trainer.state.log_history), default=0)
    runtime = output.metrics.get("train_runtime")
    record.update(trainable_parameters=trainable, parameters=total, resumed_from_step=started,
                  train_runtime_s=round(runtime, 2) if runtime else None, tokens=int(tokens),
                  tokens_per_s=round(tokens / runtime, 1) if runtime and tokens and not started else None)
    if rank == 0:
        (output_dir / TRAINING_RUN_FILE).write_text(json.dumps(record, indent=2))
    return list_checkpoints(output_dir)


def process_rank() -> tuple[int, int]:
    """This process's rank and how many train together: (0, 1) unless torchrun (which `accelerate
    launch` uses) started it as one of several."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def release_memory(model: Any, initial: dict[str, torch.Tensor]) -> None:
    """After an out-of-memory error: free what the failed attempt held, and put the trainable
    weights back as initialised, so a retry without a checkpoint starts where the first one did."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in initial:
                param.copy_(initial[name])
        for param in model.parameters():
            param.grad = None


# What only resuming needs (and what names the training machine's paths): it stays in the
# resumable scratch folder and is not published.
RESUME_ONLY = frozenset({"optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin", "README.md"})


def resume_only(name: str) -> bool:
    """`RESUME_ONLY`, and the per-process random states a run of several processes saves instead of
    `rng_state.pth` (`rng_state_<rank>.pth`)."""
    return name in RESUME_ONLY or (name.startswith("rng_state_") and name.endswith(".pth"))


def base_label(base_model: str) -> str:
    """How a checkpoint names its base: the model artifact's store-relative name, never a machine path."""
    folder = Path(base_model)
    return f"model/{folder.name}" if folder.is_absolute() or folder.exists() else base_model


def publish_checkpoints(output_dir: Path, out: Path) -> list[Checkpoint]:
    """Copy what evaluation and export need (adapter, projector, tokenizer, trainer state) into `out`.

    adapter_config.json is rewritten canonically, its lists sorted (PEFT saves `target_modules`
    from a set, in an order that changes from process to process) and its base named by
    `base_label`, so the same inputs give byte-identical checkpoints wherever the store lies.
    """
    published = []
    for checkpoint in list_checkpoints(output_dir):
        target = out / checkpoint.path.name
        target.mkdir()
        for path in sorted(checkpoint.path.iterdir()):
            if not resume_only(path.name):
                (shutil.copytree if path.is_dir() else shutil.copy2)(path, target / path.name)
        config_file = target / "adapter_config.json"
        config = json.loads(config_file.read_text())
        config["base_model_name_or_path"] = base_label(config.get("base_model_name_or_path") or "")
        config = {k: sorted(v) if isinstance(v, list) and all(isinstance(x, str) for x in v) else v
                  for k, v in config.items()}
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True))
        published.append(Checkpoint(checkpoint.step, target))
    for name in (MULTIMODAL_FILE, LABELS_FILE, TRAINING_RUN_FILE):
        if (output_dir / name).exists():  # runs from before the training record have none
            shutil.copy(output_dir / name, out / name)
    return published


def discard_incomplete(output_dir: Path) -> list[str]:
    """Remove checkpoint folders a kill left half-written, so a retry resumes from the last whole one."""
    removed = []
    for path in sorted(output_dir.glob("checkpoint-*")):
        if path.is_dir() and not (path / COMPLETE_MARKER).is_file():
            shutil.rmtree(path)
            removed.append(path.name)
    return removed
