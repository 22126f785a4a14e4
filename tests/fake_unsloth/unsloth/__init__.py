"""A stand-in for unsloth, for machines without a GPU (where the real one refuses to import).

It records which of transformers / trl / peft were imported before it (the worker must import it
first) and every call made to it, in the JSON-lines file named by $FAKE_UNSLOTH_LOG, and offers
FastLanguageModel's two calls over plain transformers + PEFT. Like the real one, `get_peft_model`
refuses `modules_to_save` other than embeddings and norms. $FAKE_UNSLOTH_FAIL makes loading fail.
"""

import json
import os
import sys

_BEFORE = sorted(name for name in ("transformers", "trl", "peft") if name in sys.modules)


def _record(event: str, **details) -> None:
    if os.environ.get("FAKE_UNSLOTH_LOG"):
        with open(os.environ["FAKE_UNSLOTH_LOG"], "a") as log:
            log.write(json.dumps({"event": event, **details}, default=str) + "\n")


_record("import", imported_before=_BEFORE)


class FastLanguageModel:
    @staticmethod
    def from_pretrained(model_name, max_seq_length=2048, dtype=None, load_in_4bit=True, **kwargs):
        _record("from_pretrained", model_name=model_name, max_seq_length=max_seq_length, dtype=str(dtype),
                load_in_4bit=load_in_4bit, **kwargs)
        if os.environ.get("FAKE_UNSLOTH_FAIL"):
            raise RuntimeError("Unsloth: the fake was told to fail")
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        # fp32 on a CPU, as the hf backend trains there, so the two backends' runs can be compared
        model = AutoModelForCausalLM.from_pretrained(model_name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(model_name)
        # As the real one does (seen on an H200): the embeddings grow to the tokenizer's length, and
        # PEFT then saves them whole with the adapter.
        if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
            model.resize_token_embeddings(len(tokenizer))
        return model, tokenizer

    @staticmethod
    def get_peft_model(model, r=16, target_modules=None, lora_alpha=16, lora_dropout=0.0, bias="none",
                       use_gradient_checkpointing="unsloth", random_state=3407, use_rslora=False,
                       modules_to_save=None, **kwargs):
        _record("get_peft_model", r=r, target_modules=sorted(target_modules), lora_alpha=lora_alpha,
                lora_dropout=lora_dropout, bias=bias, use_gradient_checkpointing=use_gradient_checkpointing,
                random_state=random_state, use_rslora=use_rslora, modules_to_save=modules_to_save, **kwargs)
        for module in modules_to_save or []:
            if module not in ("lm_head", "embed_tokens") and "norm" not in module:
                raise TypeError(f"Unsloth: Module = {module} is not allowed. Only 'lm_head', 'embed_tokens' and "
                                "normalization layers are allowed.")
        from peft import LoraConfig, get_peft_model

        return get_peft_model(model, LoraConfig(r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                                                target_modules=target_modules, use_rslora=use_rslora,
                                                modules_to_save=modules_to_save, bias=bias, task_type="CAUSAL_LM"))
