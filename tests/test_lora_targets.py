"""LoRA targets resolved against the model: all-linear by architecture, names checked, errors that list."""

from __future__ import annotations

import json

import pytest
from transformers import LlamaConfig, LlamaForCausalLM

from loretune.config import TrainingConfig
from loretune.multimodal.fusion import attach_projector
from loretune.tasks.training import resolve_recipe
from loretune.training.lora_targets import LoraTargetError, linear_layer_names, resolve_targets

PROJECTIONS = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


@pytest.fixture(scope="module")
def model():
    config = LlamaConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    attach_projector(model, 8, 1, seed=0, stats=None, image_token_id=64)
    return model


def test_all_linear_is_every_projection_but_not_the_head_or_the_image_projector(model):
    assert linear_layer_names(model) == PROJECTIONS
    assert resolve_targets(model, ["all-linear"]) == PROJECTIONS


def test_names_the_model_has_pass_through_unchanged(model):
    assert resolve_targets(model, ["q_proj", "v_proj"]) == ["q_proj", "v_proj"]


def test_a_name_the_model_lacks_is_an_error_that_lists_what_it_has(model):
    with pytest.raises(LoraTargetError) as error:
        resolve_targets(model, ["q_proj", "c_attn"])
    message = str(error.value)
    assert "'c_attn' name no module of LlamaForCausalLM" in message and "q_proj" not in message.split(";")[0]
    assert ", ".join(PROJECTIONS) in message and "all-linear" in message


def test_all_linear_does_not_mix_with_names(model):
    with pytest.raises(LoraTargetError, match="stands alone"):
        resolve_targets(model, ["all-linear", "q_proj"])


def test_a_pretrained_base_gets_no_retention_share(tmp_path):
    (tmp_path / "build_report.json").write_text(json.dumps({"train": 200, "exposures": {"field": {"mean": 8.0}}}))
    params = TrainingConfig(retention=0.1, exposures=3, batch_size=4)
    _, _, instruct = resolve_recipe(params, tmp_path, instruct=True)
    recipe, _, pretrained = resolve_recipe(params, tmp_path, instruct=False)
    assert instruct == 20 and pretrained == 0
    assert recipe.max_steps == 19, "the step budget counts only the lore's examples: 3/8 of 200, by 4"
