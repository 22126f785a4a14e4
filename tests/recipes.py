"""Config overrides the flow tests share: the tiny model with the recipe it needs.

The default model is SmolLM2-135M; tests that exercise the flow's plumbing use the tiny model,
whose random weights need its embeddings and output layer trained beside LoRA (see the README).
"""

TINY = {"model.base": "tiny", "training.learning_rate": 0.003,
        "training.lora.modules_to_save": ["embed_tokens", "lm_head"]}

# A small open-question grid for flow tests: every kind of cell (a greedy point once, a sampled one
# per seed) and the gate, at a fraction of the default grid's cost (README: evaluation budget).
QUICK_OPEN = {"evaluation.max_open_items": 4, "evaluation.seeds": 2,
              "evaluation.decoding": [{"name": "greedy", "max_new_tokens": 8},
                                      {"name": "sample_t0.7", "do_sample": True, "temperature": 0.7, "top_p": 0.9,
                                       "max_new_tokens": 8}]}
