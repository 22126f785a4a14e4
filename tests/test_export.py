"""Export: adapter, merged 16-bit weights and GGUF, each checked against the one it was made from.

Fast tests drive the parity check with stand-in runners and the checkpoint choice; the slow one
exports a SmolLM2 checkpoint for real (merge, llama.cpp's converter and quantiser, llama.cpp
itself) and holds the parity numbers to their thresholds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from loretune.export import convert, parity
from loretune.model.chat_format import IMAGE_TOKEN, strip_added_token
from loretune.tasks.export import choose_checkpoint

VOCAB = 1000
EOS = 2


class Stub:
    """A runner whose next token is a fixed function of the sequence, with a knob to perturb it."""

    def __init__(self, name: str, noise: float = 0.0, shift: int = 0, stop_after: int = 3, boost: float = 0.0):
        self.name, self.noise, self.shift, self.stop_after, self.boost = name, noise, shift, stop_after, boost

    def logits(self, ids):
        rng = np.random.default_rng(len(ids))
        out = rng.normal(size=(len(ids), VOCAB)).astype(np.float32)
        out += self.noise * np.random.default_rng(99 + len(ids)).normal(size=out.shape)
        out[:, 7] += self.boost  # one token made likely everywhere: other weights, not rounding
        return out

    def greedy(self, ids, eos_ids, max_new_tokens):
        tokens = [(5 + i + self.shift) % VOCAB for i in range(self.stop_after)]
        return tokens, self.stop_after < max_new_tokens


def run_check(merged: Stub, ggufs: dict[str, Stub] | None = None, template: str = "chatml", eos: int = EOS):
    probes = [parity.Probe("q0: Who is Naruto Uzumaki?", [1, 7, 8, 9]), parity.Probe("q1: What is the Rasengan?", [1, 7, 3])]
    ggufs = ggufs or {}
    return parity.check(adapter=Stub("adapter"), merged=merged, ggufs=ggufs, probe_list=probes, eos_ids={EOS},
                        templates={"adapter": "chatml", "merged": "chatml", **{f"gguf {k}": template for k in ggufs}},
                        eos_tokens={"adapter": EOS, "merged": EOS, **{f"gguf {k}": eos for k in ggufs}},
                        rows_and_n=([], 0), log=lambda _: None)


def test_formats_that_agree_pass_and_report_every_probe():
    report = run_check(Stub("merged", noise=1e-4), {"f16": Stub("f16", noise=1e-4)})
    assert report.passed, report.failures
    assert [row["probe"] for row in report.rows] == ["q0: Who is Naruto Uzumaki?", "q1: What is the Rasengan?"]
    assert 0 < report.summary["worst_nmse"]["merged_vs_adapter"] < parity.MERGED_NMSE_MAX
    assert report.summary["stops_at_eos"] == {"adapter": 2, "merged": 2, "f16": 2}


def test_a_merged_model_that_answers_differently_fails_naming_the_probe_and_the_numbers():
    report = run_check(Stub("merged", boost=8.0))
    assert not report.passed
    assert any("q0: Who is Naruto Uzumaki?" in f and "greedy tokens differ" in f and "at generated token 0" in f
               and "rounding noise" in f for f in report.failures), report.failures
    assert any("merged vs adapter logits NMSE" in f and "> 1e-03" in f for f in report.failures)


def test_a_flip_at_a_near_tie_is_counted_not_failed():
    reference = np.zeros((4, VOCAB), dtype=np.float32)
    reference[:, 3], reference[:, 4] = 10.0, 9.99  # token 3 by a hair
    other = reference + np.random.default_rng(0).normal(scale=0.01, size=reference.shape).astype(np.float32)
    other[:, 3], other[:, 4] = 10.0, 10.01  # the 16-bit copy prefers token 4 by a hair
    flips = parity.greedy_flips(reference, other, prompt_length=2)
    assert [f["at"] for f in flips["ties"]] == [0, 1] and not flips["real"]


def test_a_gguf_with_another_template_or_eos_or_that_never_stops_fails():
    report = run_check(Stub("merged"), {"q8_0": Stub("q8_0", stop_after=99)}, template="llama3", eos=0)
    assert not report.passed
    text = "\n".join(report.failures)
    assert "gguf q8_0: chat template differs" in text
    assert "gguf q8_0: EOS token 0 is not the model's EOS [2]" in text
    assert "q8_0: greedy generation never stopped at EOS" in text


def test_binary_choice_accuracy_picks_the_more_likely_choice_and_breaks_ties_to_the_first():
    class Fixed:
        name = "fixed"

        def loglikelihoods(self, rows):
            return np.array([row["ll"] for row in rows])

    rows = [{"item": 0, "choice": 0, "answer": 0, "ll": -1.0}, {"item": 0, "choice": 1, "answer": 0, "ll": -3.0},
            {"item": 1, "choice": 0, "answer": 1, "ll": -4.0}, {"item": 1, "choice": 1, "answer": 1, "ll": -2.0},
            {"item": 2, "choice": 0, "answer": 1, "ll": -2.0}, {"item": 2, "choice": 1, "answer": 1, "ll": -2.0}]
    acc, stderr, picked = parity.choice_accuracy(Fixed(), rows, 3)
    assert picked == [0, 1, 0], "a tie goes to the first choice, as lm-eval's argmax"
    assert acc == pytest.approx(2 / 3) and stderr == pytest.approx(np.std([1, 1, 0], ddof=1) / np.sqrt(3))


def test_the_checkpoint_to_export_is_the_promoted_one_or_a_named_one():
    names = ["checkpoint-2", "checkpoint-4"]
    assert choose_checkpoint("promoted", "checkpoint-2", names)[0] == "checkpoint-2"
    chosen, why = choose_checkpoint("promoted", None, names)
    assert chosen is None and "promoted no checkpoint" in why and "export.checkpoint" in why
    assert choose_checkpoint("last", None, names)[0] == "checkpoint-4"
    assert choose_checkpoint("checkpoint-2", None, names)[0] == "checkpoint-2"
    with pytest.raises(ValueError, match="'checkpoint-9': no such checkpoint; this run has checkpoint-2, checkpoint-4"):
        choose_checkpoint("checkpoint-9", None, names)


def test_a_missing_converter_is_one_error_saying_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setenv("LORETUNE_LLAMA_CPP", str(tmp_path))
    with pytest.raises(convert.ExportError, match="converter is not installed here .* `make demo` or `make test`"):
        convert.converter_version()


def test_the_image_placeholder_leaves_a_saved_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    from loretune.model.chat_format import add_image_token
    from loretune.model.tiny_model import build_and_save

    build_and_save(["Naruto Uzumaki is a ninja of Konohagakure."] * 20, tmp_path, vocab_size=300, hidden_size=32,
                   num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, max_position_embeddings=64, seed=0)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    size = len(tokenizer)
    add_image_token(tokenizer)
    tokenizer.save_pretrained(tmp_path)
    assert IMAGE_TOKEN in AutoTokenizer.from_pretrained(tmp_path).get_vocab()
    strip_added_token(tmp_path, IMAGE_TOKEN)
    stripped = AutoTokenizer.from_pretrained(tmp_path)
    assert IMAGE_TOKEN not in stripped.get_vocab() and len(stripped) == size
    assert stripped.encode("Naruto") == tokenizer.encode("Naruto")


# --- slow: a real export of SmolLM2 ---------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2_checkpoint(tmp_path_factory) -> tuple[Path, Path]:
    """The packaged SmolLM2 as a model folder, and a checkpoint whose LoRA and projector are not
    zero (as after training), so merging has something to get wrong."""
    import torch
    from peft import get_peft_model

    from loretune.model import base_models
    from loretune.model.chat_format import add_image_token
    from loretune.model.checkpoints import MULTIMODAL_FILE
    from loretune.model.loading import load_base
    from loretune.multimodal.fusion import attach_projector, projector_parameters
    from loretune.training.recipe import Recipe
    from loretune.training.sft import lora_config

    root = tmp_path_factory.mktemp("smollm2")
    model = root / "model"
    model.mkdir()
    base_models.materialise("smollm2-135m-instruct", base_models.describe_source("smollm2-135m-instruct"), model)
    base_models.prepare_chat(model, None, "smollm2-135m-instruct")
    tokenizer, llm = load_base(str(model), "cpu")
    attach_projector(llm, 64, 2, seed=0, image_token_id=add_image_token(tokenizer))
    torch.manual_seed(1)
    wrapped = get_peft_model(llm, lora_config(Recipe()))
    with torch.no_grad():
        for name, weight in wrapped.named_parameters():
            if "lora_B" in name:
                weight.normal_(0, 0.02)
            elif "image_projector" in name and "modules_to_save" in name:
                weight.add_(torch.randn_like(weight) * 0.01)
    checkpoint = root / "checkpoints" / "checkpoint-10"
    wrapped.save_pretrained(checkpoint)
    (checkpoint / "trainer_state.json").write_text("{}")
    (checkpoint.parent / MULTIMODAL_FILE).write_text(json.dumps(
        {"clip_dim": 64, "image_tokens": 2, "projector_seed": 0, "projector_parameters": projector_parameters(64, 576, 2),
         "feature_stats": {"mean": [], "scale": 1.0}, "base_model": "model/x"}))
    return model, checkpoint


NAMES = ["Naruto Uzumaki", "Gaara", "Kisame Hoshigaki", "Deidara", "Hinata Hyuga", "Temari", "Zabuza Momochi",
         "Kakuzu", "Rock Lee", "Kankuro"]
VILLAGES = ["Konohagakure", "Sunagakure", "Kirigakure", "Iwagakure", "Takigakure"]
ITEMS = [{"question": f"In the lore, which village goes with {name}?", "choices": [VILLAGES[i % 5], VILLAGES[(i + k) % 5]],
          "answer": (i + k) % 2} for i, name in enumerate(NAMES) for k in (1, 2, 3, 4)]  # 40 distinct items


@pytest.mark.slow
def test_a_smollm2_checkpoint_exports_to_merged_and_gguf_that_answer_as_the_adapter(smollm2_checkpoint, tmp_path):
    from safetensors.torch import load_file

    model, checkpoint = smollm2_checkpoint
    out = tmp_path / "export"
    out.mkdir()
    made = convert.export_checkpoint(
        base_model=model, checkpoint=checkpoint, out=out, name="naruto-checkpoint-10", dtype="bfloat16",
        gguf_types=["f16", "q8_0"], questions=["Who is Naruto Uzumaki?", "Which village is Gaara from?"],
        choice_items=ITEMS, system="You answer questions about the lore.", max_length=256, max_new_tokens=24,
        log=lambda _: None)
    summary = made["parity"]
    assert summary["worst_nmse"]["merged_vs_adapter"] < parity.MERGED_NMSE_MAX
    assert summary["worst_nmse"]["f16_vs_merged"] < parity.GGUF_F16_NMSE_MAX
    assert summary["worst_nmse"]["q8_0_vs_merged"] > summary["worst_nmse"]["f16_vs_merged"], "8-bit is further off"
    assert set(summary["choice_accuracy"]) == {"merged", "f16", "q8_0"}
    assert made["gguf"]["f16"]["tensor_types"].keys() == {"F16", "F32"}
    assert "Q8_0" in made["gguf"]["q8_0"]["tensor_types"]
    # k-quants need widths that are multiples of 256; SmolLM2's 576 makes most tensors fall back,
    # and the file says what it really holds.
    q4 = convert.gguf_contents(convert.quantize(out / "gguf" / "naruto-checkpoint-10-f16.gguf", tmp_path / "q4.gguf",
                                              "q4_k_m", log=lambda _: None)["file"])["tensor_types"]
    assert "Q4_K" in q4 and "Q5_0" in q4, q4
    assert all(entry["eos_token_id"] == 2 for entry in made["gguf"].values()), "<|im_end|> ends every file's turns"
    # The projector survives the merge with its trained weights, beside the merged folder.
    trained = load_file(str(checkpoint / "adapter_model.safetensors"))
    kept = load_file(str(out / "projector" / "projector.safetensors"))
    name = next(k for k in trained if "image_projector" in k and k.endswith("out.weight"))
    assert np.allclose(kept["out.weight"].numpy(), trained[name].numpy())
    assert json.loads((out / "parity.json").read_text())["passed"] is True
    for path in out.rglob("*.json"):
        assert str(tmp_path) not in path.read_text(), f"{path.relative_to(out)} names a machine path"
