"""Config overrides the flow tests share: the tiny model with the recipe it needs.

The default model is SmolLM2-135M; tests that exercise the flow's plumbing use the tiny model,
whose random weights need its embeddings and output layer trained beside LoRA (see the README).
"""

TINY = {"model.base": "tiny", "training.learning_rate": 0.003,
        "training.lora.modules_to_save": ["embed_tokens", "lm_head"]}
