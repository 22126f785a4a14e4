"""The model's chat format: system role folded where a template refuses it, the date fixed where a
template writes it, the override honoured, and all of it recorded in the model folder."""

from __future__ import annotations

import copy
import datetime

import pytest

from loretune.model import base_models
from loretune.model.chat_format import (
    FIXED_DATE,
    IMAGE_TOKEN,
    ChatFormat,
    ChatTemplateError,
    encode_chat,
    inspect_template,
)
from loretune.model.tiny_model import build_and_save, train_tokenizer

TURNS = ("{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}"
         "{% if add_generation_prompt %}<start_of_turn>assistant\n{% endif %}")
NO_SYSTEM = ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
             + TURNS)
WITH_DATE = ('{%- if not date_string is defined %}{%- if strftime_now is defined %}'
             '{%- set date_string = strftime_now("%d %b %Y") %}{%- else %}{%- set date_string = "26 Jul 2024" %}'
             '{%- endif %}{%- endif %}Today Date: {{ date_string }}\n' + TURNS)
TODAY_ONLY = 'Today: {{ strftime_now("%d %b %Y") }}\n' + TURNS
MESSAGES = [{"role": "system", "content": "You know the lore."}, {"role": "user", "content": "Which clan?"},
            {"role": "assistant", "content": "Uzumaki"}]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(["Which clan? Uzumaki. You know the lore."] * 20, vocab_size=300)


def with_template(tokenizer, template: str):
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.chat_template = template
    return tokenizer


def test_a_template_that_refuses_the_system_role_gets_it_folded_into_the_first_user_turn(tokenizer):
    tokenizer = with_template(tokenizer, NO_SYSTEM)
    with pytest.raises(Exception, match="System role"):
        tokenizer.apply_chat_template(MESSAGES, tokenize=False)
    fmt = inspect_template(tokenizer, "gemma-like")
    assert not fmt.system_role
    rendered = fmt.render(tokenizer, MESSAGES, add_generation_prompt=False)
    assert "<start_of_turn>user\nYou know the lore.\n\nWhich clan?" in rendered
    encoded = encode_chat(tokenizer, MESSAGES, 128, fmt)
    assert tokenizer.decode([t for t, label in zip(encoded["input_ids"], encoded["labels"]) if label != -100]
                            ).startswith("Uzumaki")


def test_a_template_that_writes_todays_date_is_given_a_fixed_one(tokenizer):
    tokenizer = with_template(tokenizer, WITH_DATE)
    today = datetime.date.today().strftime("%d %b %Y")
    assert today in tokenizer.apply_chat_template(MESSAGES, tokenize=False), "the hazard: tokens change daily"
    fmt = inspect_template(tokenizer, "llama-3-like")
    assert fmt.system_role and fmt.template_kwargs == {"date_string": FIXED_DATE}
    rendered = fmt.render(tokenizer, MESSAGES, add_generation_prompt=True)
    assert FIXED_DATE in rendered and (today == FIXED_DATE or today not in rendered)
    row = fmt.as_prompt_completion(MESSAGES)
    assert row["chat_template_kwargs"] == {"date_string": FIXED_DATE}, "TRL renders training rows with it too"


def test_a_date_that_cannot_be_fixed_is_refused_with_the_reason(tokenizer):
    with pytest.raises(ChatTemplateError, match="writes today's date .* model.chat_template"):
        inspect_template(with_template(tokenizer, TODAY_ONLY), "dated")


def test_the_model_folder_records_its_chat_format_and_the_override(tmp_path):
    build_and_save(["Which clan? Uzumaki."] * 20, tmp_path, vocab_size=300, hidden_size=32, num_hidden_layers=1,
                   num_attention_heads=2, intermediate_size=64, max_position_embeddings=128, seed=0)
    fmt = base_models.prepare_chat(tmp_path, NO_SYSTEM, "tiny")
    assert ChatFormat.load(tmp_path) == fmt and not fmt.system_role
    from transformers import AutoTokenizer

    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded.chat_template == NO_SYSTEM, "model.chat_template replaces the model's own, in the artifact"
    assert len(reloaded.encode(IMAGE_TOKEN, add_special_tokens=False)) == 1, "the image placeholder is one token"
