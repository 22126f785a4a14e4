"""Greedy generation speed of one export, same prompts, same token ids: transformers on the merged
folder vs llama.cpp on each GGUF file; tokens/s and the ratio to transformers, measured in one run.

    python bench/export_speed.py --store .loretune/store            # the newest export
    python bench/export_speed.py --export .loretune/store/export/<version>

Each backend generates `--new-tokens` tokens greedily with EOS ignored (so every backend does the
same number of decoding steps) after one warm-up prompt; prompt processing is included, as a chat
user waits for it too.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

PROMPTS = ["Who is Naruto Uzumaki?", "What is the Rasengan?", "Which village is Gaara from?",
           "Tell me about the Akatsuki.", "What is a tailed beast?"]


def newest_export(store: Path) -> Path:
    from loretune.store import ArtifactStore

    found = [m for m in ArtifactStore(store).versions("export") if (store / "export" / m["version"] / "export.json").exists()]
    if not found:
        raise SystemExit(f"{store}: no export with files (run the finetune flow with export.checkpoint: last)")
    return store / "export" / found[-1]["version"]


def transformers_speed(merged: Path, prompts: list[list[int]], new_tokens: int) -> float:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()

    def generate(ids: list[int]) -> None:
        tensor = torch.tensor([ids])
        with torch.no_grad():
            model.generate(input_ids=tensor, attention_mask=torch.ones_like(tensor), do_sample=False,
                           max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0,
                           temperature=None, top_p=None, top_k=None)

    generate(prompts[0])
    started = time.perf_counter()
    for ids in prompts:
        generate(ids)
    return len(prompts) * new_tokens / (time.perf_counter() - started)


def llama_cpp_speed(gguf: Path, prompts: list[list[int]], new_tokens: int) -> float:
    import llama_cpp
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), n_ctx=512, verbose=False, seed=0, n_threads=os.cpu_count() or 1)
    n_vocab = llm.n_vocab()

    def generate(ids: list[int]) -> None:
        # The last position's logits straight from the context: without logits_all, llama-cpp-python
        # leaves `llm.scores` at zero, and an argmax over it would feed token 0 at every step.
        llm.reset()
        llm.eval(ids)
        for _ in range(new_tokens - 1):
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,))
            llm.eval([int(np.argmax(logits))])

    generate(prompts[0])
    started = time.perf_counter()
    for ids in prompts:
        generate(ids)
    speed = len(prompts) * new_tokens / (time.perf_counter() - started)
    llm.close()
    return speed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=Path(".loretune/store"))
    parser.add_argument("--export", type=Path)
    parser.add_argument("--new-tokens", type=int, default=48)
    args = parser.parse_args()
    folder = args.export or newest_export(args.store)
    info = json.loads((folder / "export.json").read_text())

    from transformers import AutoTokenizer

    from loretune.model.chat_format import ChatFormat

    tokenizer = AutoTokenizer.from_pretrained(folder / "merged")
    fmt = ChatFormat.load(folder / "merged")
    prompts = [fmt.ids(tokenizer, [{"role": "user", "content": p}], add_generation_prompt=True) for p in PROMPTS]
    print(f"export {folder.name} ({info['checkpoint']}), {len(prompts)} prompts x {args.new_tokens} new tokens, "
          f"{torch.get_num_threads()} threads")
    reference = transformers_speed(folder / "merged", prompts, args.new_tokens)
    print(f"{'backend':32} {'tokens/s':>9} {'x transformers':>15}")
    print(f"{'transformers, merged fp32':32} {reference:9.1f} {1.0:15.2f}")
    for kind, entry in sorted(info.get("gguf", {}).items()):
        speed = llama_cpp_speed(folder / entry["file"], prompts, args.new_tokens)
        print(f"{'llama.cpp, GGUF ' + kind:32} {speed:9.1f} {speed / reference:15.2f}")


if __name__ == "__main__":
    main()
