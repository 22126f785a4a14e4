"""The training library: chat labels, image fusion, dataset decontamination, and that a model learns.

The last test is the guard the walking skeleton asked for: if labels were masked wrongly, the
facts unreachable, or the projector untrained, a short run would not beat step 0.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from datasets import Dataset
from safetensors import safe_open

from loretune.config import TrainingConfig
from loretune.dataset import assemble as ds
from loretune.dataset import evalsets
from loretune.evaluation.binary_choice import evaluate_checkpoints
from loretune.model.chat_format import IGNORE, ChatFormat, add_image_token, encode_chat
from loretune.model.tiny_model import build_and_save, build_tiny_llama, train_tokenizer
from loretune.multimodal import fusion
from loretune.multimodal.fusion import attach_projector, fuse
from loretune.training.recipe import Recipe
from loretune.training.sft import RESUME_ONLY, label_check, publish_checkpoints, train

SYSTEM = "You are an expert."
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
            max_position_embeddings=256, seed=0)


def page(i: int, image: str | None = None) -> ds.LorePage:
    clans = ["Uzumaki", "Uchiha", "Hyuga", "Nara", "Akimichi", "Yamanaka"]
    ranks = ["Genin", "Chunin", "Jonin", "Kage", "Sannin", "Anbu"]
    name = ["Ayo", "Bex", "Cal", "Dov", "Eli", "Fen"][i]
    return ds.LorePage(doc_id=f"fandom:{i}", title=f"{name} {clans[i]}",
                       text=f"{name} {clans[i]} is a ninja of the {clans[i]} clan. {name} holds the rank of {ranks[i]}.",
                       facts={"clan": [clans[i]], "rank": [ranks[i]]}, image=image, kind="character")


@pytest.fixture(scope="module")
def tokenizer():
    texts = [p.text for p in map(page, range(6))] * 20 + ["What is the clan of rank? Name this picture."] * 20
    return train_tokenizer(texts, vocab_size=400)


def test_encode_chat_labels_only_the_answer(tokenizer):
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What is the clan of Ayo?"},
                {"role": "assistant", "content": "Uzumaki"}]
    encoded = encode_chat(tokenizer, messages, max_length=128)
    labelled = [t for t, label in zip(encoded["input_ids"], encoded["labels"]) if label != IGNORE]
    assert tokenizer.decode(labelled).startswith("Uzumaki<|end|>")
    first = encoded["labels"].index(next(label for label in encoded["labels"] if label != IGNORE))
    assert tokenizer.decode(encoded["input_ids"][:first]).endswith("<|assistant|>\n")
    with pytest.raises(ValueError, match="assistant"):
        encode_chat(tokenizer, messages[:-1], max_length=128)
    assert not encoded["truncated"] and encode_chat(tokenizer, messages, max_length=first + 1)["truncated"]


def test_encode_chat_labels_every_answer_of_a_packed_conversation(tokenizer):
    """A conversation that packs several questions about one page teaches each answer, and no
    question: every assistant turn is labelled, user and system turns never."""
    messages = [{"role": "system", "content": SYSTEM},
                {"role": "user", "content": "What is the clan of Ayo?"}, {"role": "assistant", "content": "Uzumaki"},
                {"role": "user", "content": "And the rank of Ayo?"}, {"role": "assistant", "content": "Genin"}]
    encoded = encode_chat(tokenizer, messages, max_length=128)
    labelled = tokenizer.decode([t for t, label in zip(encoded["input_ids"], encoded["labels"]) if label != IGNORE])
    assert labelled.replace(" ", "").startswith("Uzumaki<|end|>") and "Genin<|end|>" in labelled.replace(" ", "")
    assert "rank" not in labelled and "clan" not in labelled
    last_only = encode_chat(tokenizer, messages[:1] + messages[3:], max_length=128)
    assert sum(label != IGNORE for label in encoded["labels"]) > sum(label != IGNORE for label in last_only["labels"])


def test_the_labelled_positions_loss_is_the_model_s_own_loss(tokenizer):
    """`training/loss.py` projects only labelled positions through the LM head: the same loss and
    the same gradients as the model's full-logits loss, on a LoRA-wrapped model with padding."""
    from peft import LoraConfig, get_peft_model

    from loretune.training.loss import labelled_loss, supports

    model = get_peft_model(build_tiny_llama(tokenizer, **TINY), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(0)
    ids = torch.randint(5, 300, (3, 12))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    labels = ids.masked_fill(torch.rand(ids.shape) < 0.5, IGNORE).masked_fill(mask == 0, IGNORE)
    theirs = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    theirs.backward()
    grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    model.zero_grad()
    ours, correct, count = labelled_loss(model, {"input_ids": ids, "attention_mask": mask}, labels)
    ours.backward()
    assert supports(model) and int(count) == int((labels[:, 1:] != IGNORE).sum()) and 0 <= int(correct) <= int(count)
    assert torch.allclose(ours, theirs, atol=1e-6)
    assert all(torch.allclose(g, p.grad, atol=1e-6) for g, p in zip(grads, [p for p in model.parameters() if p.requires_grad]))


def test_bf16_autocast_is_chosen_only_where_the_cpu_multiplies_bf16():
    from loretune.model.loading import cpu_has_native_bf16, training_precision

    zen5 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n"
    older = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n"
    arm = "processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n"
    assert cpu_has_native_bf16(zen5) and cpu_has_native_bf16(arm) and not cpu_has_native_bf16(older)
    assert not cpu_has_native_bf16("")
    assert training_precision("cuda", "fp32") == "bf16"  # the weights are bf16 there
    assert training_precision("cpu", "fp32") == "fp32" and training_precision("cpu", "bf16") == "bf16"
    assert training_precision("cpu", "auto") == ("bf16" if cpu_has_native_bf16() else "fp32")


def test_label_check_counts_what_teaches_nothing_and_refuses_training_that_learns_nothing(tokenizer):
    short = [{"role": "user", "content": "What is the clan of Ayo?"}, {"role": "assistant", "content": "Uzumaki"}]
    long_prompt = [{"role": "user", "content": "What is the clan of Ayo? " * 30}, {"role": "assistant", "content": "Uzumaki"}]
    encoded = [encode_chat(tokenizer, m, max_length=40) for m in (short, long_prompt)]
    report = label_check([e["labels"] for e in encoded], [e["truncated"] for e in encoded], max_length=40)
    assert report["no_trainable_tokens"] == 1 and report["no_trainable_share"] == 0.5
    assert report["truncated_answers"] == 1, "the long prompt's answer was cut off"
    with pytest.raises(ValueError, match="training would learn nothing: 1 of 1 examples"):
        label_check([encoded[1]["labels"]], [True], max_length=40)


def _placeholder_ids(tokenizer, n_tokens: int, text: str) -> tuple[list[int], int]:
    token_id = add_image_token(tokenizer)
    fmt = ChatFormat()
    messages = fmt.with_image([{"role": "user", "content": text}], n_tokens)
    return fmt.ids(tokenizer, messages, add_generation_prompt=True), token_id


def test_the_image_enters_at_its_placeholder_inside_the_user_turn(tokenizer):
    tokenizer = copy.deepcopy(tokenizer)
    ids, token_id = _placeholder_ids(tokenizer, 3, "Name this picture.")
    assert ids.count(token_id) == 3
    user = tokenizer.convert_tokens_to_ids("<|user|>")
    assert ids.index(user) < ids.index(token_id), "after the turn marker, not before BOS"
    model = build_tiny_llama(tokenizer, **TINY).eval()
    attach_projector(model, clip_dim=8, n_tokens=3, seed=0, image_token_id=token_id)
    text = tokenizer("Ayo Uzumaki is a ninja")["input_ids"]
    width = max(len(ids), len(text))
    batch = torch.tensor([ids + [0] * (width - len(ids)), text + [0] * (width - len(text))])
    mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)), [1] * len(text) + [0] * (width - len(text))])
    features = torch.randn(2, 8)
    with torch.no_grad():
        plain = model(input_ids=torch.tensor([text])).logits[0]
        fused = fuse(model, batch, mask, features)
        logits = model(**fused).logits
        other = model(**fuse(model, batch, mask, torch.randn(2, 8))).logits
    assert fused["inputs_embeds"].shape[:2] == batch.shape, "no prefix: the soft tokens replace the placeholders"
    torch.testing.assert_close(logits[1, : len(text)], plain, atol=1e-5, rtol=0)  # the text row is the plain model's
    soft = model.image_projector(features[:1])[0]
    slots = (batch[0] == token_id).nonzero().squeeze(1)
    torch.testing.assert_close(fused["inputs_embeds"][0, slots], soft)
    assert not torch.allclose(logits[0, len(ids) - 1], other[0, len(ids) - 1]), "the image changes the prediction"
    with torch.no_grad():
        plain_batch = torch.tensor([text])
        assert torch.equal(model(**fuse(model, plain_batch, torch.ones_like(plain_batch), torch.randn(1, 8))).logits[0],
                           plain), "a batch without images is exactly the plain model"


def test_a_row_whose_placeholders_were_cut_is_refused(tokenizer):
    tokenizer = copy.deepcopy(tokenizer)
    ids, token_id = _placeholder_ids(tokenizer, 3, "Name this picture.")
    model = build_tiny_llama(tokenizer, **TINY).eval()
    attach_projector(model, clip_dim=8, n_tokens=3, seed=0, image_token_id=token_id)
    cut = torch.tensor([ids[: ids.index(token_id) + 2]])
    with pytest.raises(ValueError, match="exactly 3 placeholder tokens"):
        fuse(model, cut, torch.ones_like(cut), torch.randn(1, 8))


def test_the_projector_stays_small_for_a_4096_wide_model():
    counted = fusion.projector_parameters(clip_dim=512, hidden_size=4096, n_tokens=2)
    holder = torch.nn.Module()
    holder.get_input_embeddings = lambda: torch.nn.Embedding(2, 4096)
    projector = fusion.attach_projector(holder, clip_dim=512, n_tokens=2, seed=0)
    assert sum(p.numel() for p in projector.parameters()) == counted
    assert counted < 1.5e6, "linear in the hidden size, not hidden^2 x tokens (a plain MLP would be 35M)"


def test_the_label_check_sees_what_trl_trains_on(tmp_path, tokenizer):
    """On a one-answer conversation, encode_chat (which tokenises what training sees) labels
    exactly what TRL's own prompt/completion tokenisation (completion_only_loss) labels."""
    from trl import SFTConfig, SFTTrainer

    fmt = ChatFormat()
    one_turn = ds.Teaching(turns_per_example=1)
    rows = [r["messages"] for r in ds.training_examples([page(i) for i in range(6)], SYSTEM, max_answer_chars=200,
                                                        teaching=one_turn)][:12]
    data = Dataset.from_list([fmt.as_prompt_completion(m) for m in rows])
    model = build_tiny_llama(tokenizer, **TINY)
    args = SFTConfig(output_dir=str(tmp_path), max_length=48, completion_only_loss=True, report_to="none",
                     use_cpu=True, bf16=False, gradient_checkpointing=False)
    prepared = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer).train_dataset
    ours = [encode_chat(tokenizer, m, 48, fmt) for m in rows]
    ours = [e for e in ours if any(label != IGNORE for label in e["labels"])]
    assert [r["labels"] for r in prepared] == [e["labels"] for e in ours]
    assert [r["input_ids"] for r in prepared] == [e["input_ids"] for e in ours]


def test_eval_questions_never_appear_in_training_but_their_facts_do(tmp_path):
    pages = [page(i) for i in range(6)]
    ds.build_dataset(pages, tmp_path, domain="test", system_prompt=SYSTEM, max_answer_chars=200, val_fraction=0.0,
                     seed=0, near_duplicate_threshold=0.8)
    rows = ds.training_examples(pages, SYSTEM, max_answer_chars=200)
    prompts = {m["content"] for r in rows for m in r["messages"] if m["role"] == "user"}
    answers = [(r["doc_id"], m["content"]) for r in rows for m in r["messages"] if m["role"] == "assistant"]
    titles = {p.doc_id: p.title for p in pages}
    questions = evalsets.read_set(tmp_path / "eval" / "facts.jsonl")
    assert len(questions) == 12
    for q in questions:
        assert q["question"] not in prompts
        value = q["choices"][q["answer"]]
        assert any(doc == q["doc_id"] and value in said and titles[doc] in said for doc, said in answers), \
            "the fact must be taught in training, in a sentence naming the subject and the value"
        assert q["choices"][0] != q["choices"][1]


def test_decontamination_drops_exact_and_near_duplicates(tmp_path):
    pages = [page(i) for i in range(6)]
    ds.build_dataset(pages, tmp_path, domain="test", system_prompt=SYSTEM, max_answer_chars=200, val_fraction=0.0,
                     seed=0, near_duplicate_threshold=0.8)
    questions = evalsets.read_set(tmp_path / "eval" / "facts.jsonl")
    leaked = questions[0]["question"]
    near = "In the lore which " + leaked.split("which ", 1)[1].rstrip("?") + " ?"
    report = ds.BuildReport()
    kept = ds.decontaminate(questions, {leaked, near.upper(), "unrelated prompt"}, threshold=0.8, report=report)
    assert report.dropped_exact == 1
    assert leaked not in {q["question"] for q in kept}
    assert len(kept) == len(questions) - 1 - report.dropped_near_duplicate


def test_prose_chunks_respect_the_answer_length():
    text = " ".join(f"Sentence number {i} is here." for i in range(60))
    chunks = ds.chunk_prose(text, max_chars=120)
    assert all(len(c) <= 120 for c in chunks)
    assert " ".join(chunks).split() == text.split()


def test_short_training_beats_step_zero_and_saves_the_projector(tmp_path):
    """Facts and pictures from training, asked back the way training asked them."""
    rng = np.random.default_rng(0)
    features = {f"img{i}": rng.standard_normal(8).astype(np.float32) for i in range(6)}
    pages = [page(i, image=f"img{i}") for i in range(6)]
    one_turn = ds.Teaching(exposures=4, paragraphs=0, turns_per_example=1, relation_exposures=0, lead_exposures=0)
    rows = [r for r in ds.training_examples(pages, SYSTEM, max_answer_chars=200, teaching=one_turn)
            if r["kind"] != "prose"]
    (tmp_path / "data").mkdir()
    from datasets import DatasetDict

    DatasetDict({"train": Dataset.from_list(rows * 4), "validation": Dataset.from_list(rows[:4])}).save_to_disk(
        str(tmp_path / "data" / "sft"))
    texts = [m["content"] for r in rows for m in r["messages"]] * 5
    build_and_save(texts, tmp_path / "base", vocab_size=400, **TINY)

    cfg = Recipe.from_dict(TrainingConfig(max_steps=120, save_steps=60, batch_size=8, learning_rate=5e-3, warmup_ratio=0.0,
                         max_length=64).model_dump())
    checkpoints = train(dataset_dir=tmp_path / "data", features=features, clip_dim=8, base_model=str(tmp_path / "base"),
                        output_dir=tmp_path / "ckpt", cfg=cfg, image_tokens=2, log=lambda m: None)
    assert [c.step for c in checkpoints] == [60, 120]
    (tmp_path / "published").mkdir()
    checkpoints = publish_checkpoints(tmp_path / "ckpt", tmp_path / "published")
    for checkpoint in checkpoints:
        assert not {p.name for p in checkpoint.path.iterdir()} & RESUME_ONLY, "resume state stays in scratch"
        config = json.loads((checkpoint.path / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == "model/base"
        assert config["target_modules"] == sorted(config["target_modules"]), "a stable order: stable bytes"
    for path in (tmp_path / "published").rglob("*"):
        if path.is_file() and path.suffix in {".json", ".jinja", ".md", ".txt"}:
            assert str(tmp_path) not in path.read_text(), f"{path} names a machine path"
    with safe_open(str(checkpoints[-1].path / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert any("image_projector" in k and "expand" in k for k in keys), "the projector must be saved with the adapter"
    assert any("feature_mean" in k for k in keys), "so must the feature standardisation it was trained with"

    def ask(question: str, right: str, wrong: str, page_: ds.LorePage, image: str = "") -> dict:
        return {"question": question, "choices": [right, wrong], "answer": 0, "image_sha256": image}

    by_doc = {p.doc_id: p for p in pages}
    def swap(answer: str, p: ds.LorePage, value: str, other: str) -> str:  # the value, not the subject's name
        return answer.replace(p.title, "\0").replace(value, other).replace("\0", p.title)

    facts = [ask(r["messages"][1]["content"], answer, swap(answer, p, value, other.facts[key][0]), p)
             for r in rows if r["builder"] == "infobox_facts" for p in [by_doc[r["doc_id"]]]
             for answer in [r["messages"][2]["content"]] for key, (value,) in p.facts.items() if value in answer
             for other in pages if other is not p]
    pictures = [ask(template, p.title, other.title, p, image=p.image)
                for p in pages for template in ds.TRAIN_IMAGE_TEMPLATES for other in pages if other is not p]
    result = evaluate_checkpoints(base_model=str(tmp_path / "base"), checkpoints=checkpoints,
                                  sets={"facts": facts, "pictures": pictures}, system=SYSTEM, features=features,
                                  batch_size=32, max_length=64, log=lambda m: None)
    table = {(r["step"], r["set"]): r for r in result.table}
    assert sorted({r["step"] for r in result.table}) == [0, 60, 120]
    for name in ("facts", "pictures"):
        first, last = table[0, name], table[120, name]
        assert last["acc"] >= max(0.85, first["acc"] + 0.2), (name, first, last)
        assert last["delta_acc_ci_low"] > 0 and last["mcnemar_p"] < 0.01, "a real gain must read as one"
    assert json.loads((tmp_path / "published" / "loretune_multimodal.json").read_text())["clip_dim"] == 8


def test_projector_standardises_features_so_near_identical_vectors_separate():
    rng = np.random.default_rng(0)
    common = rng.standard_normal(16)
    vectors = (common + 0.05 * rng.standard_normal((10, 16))).astype(np.float32)
    stats = fusion.feature_stats(vectors)
    tokenizer_free = torch.nn.Embedding(10, 32)
    holder = torch.nn.Module()
    holder.get_input_embeddings = lambda: tokenizer_free
    projector = fusion.attach_projector(holder, clip_dim=16, n_tokens=1, seed=0, stats=stats)
    standardised = (torch.from_numpy(vectors) - projector.feature_mean) * projector.feature_scale
    cosine = torch.nn.functional.cosine_similarity(standardised[0], standardised[1], dim=0)
    assert torch.nn.functional.cosine_similarity(torch.from_numpy(vectors[0]), torch.from_numpy(vectors[1]), dim=0) > 0.99
    assert abs(cosine) < 0.6
    assert standardised.std().item() == pytest.approx(1.0, rel=0.05)
    assert fusion.feature_stats(np.zeros((0, 16))) == {"mean": [], "scale": 1.0}
