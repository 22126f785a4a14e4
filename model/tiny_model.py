"""The default model: a tokenizer trained on the corpus and a small, randomly initialised Llama.

It exists so the whole pipeline (tokenisation, chat template, LoRA, image fusion, evaluation) runs
for real in seconds on a CPU with nothing downloaded. Real models are a config value away and go
through the same code; only this builder is tiny-specific.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

BOS, EOS, PAD = "<|begin|>", "<|end|>", "<|pad|>"
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]

# Each turn is "<|role|>\ncontent<|end|>\n". The {% generation %} markers let transformers (and
# TRL) find the assistant tokens if a caller asks for an assistant mask.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}"
    "{% else %}{{ message['content'] + eos_token }}{% endif %}"
    "{{ '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE on the corpus, so lore names become few tokens and nothing is unknown."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS, *ROLE_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        chat_template=CHAT_TEMPLATE,
        model_max_length=4096,
    )


def build_tiny_llama(
    tokenizer: PreTrainedTokenizerFast,
    *,
    hidden_size: int,
    num_hidden_layers: int,
    num_attention_heads: int,
    intermediate_size: int,
    max_position_embeddings: int,
    seed: int,
) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_attention_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        # 1/sqrt(d), not Llama's 0.02: that value is tuned for d>=768; at d=128 it caps the largest
        # logit near 2.6, far below the ~7.6 (ln vocab) a confident prediction needs, and LoRA
        # (which touches neither embeddings nor norms) can then never make the model confident.
        initializer_range=hidden_size**-0.5,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def build_and_save(texts: list[str], out_dir: Path, **model_kwargs: int) -> dict[str, int]:
    """Build tokenizer + model into `out_dir` (a standard HF folder); returns sizes for the manifest."""
    vocab_size = model_kwargs.pop("vocab_size")
    tokenizer = train_tokenizer(texts, vocab_size)
    model = build_tiny_llama(tokenizer, **model_kwargs)
    tokenizer.save_pretrained(out_dir)
    model.save_pretrained(out_dir)
    return {"vocab_size": len(tokenizer), "parameters": sum(p.numel() for p in model.parameters())}
