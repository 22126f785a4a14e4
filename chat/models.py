"""Which models a store offers, and the one loaded now.

The list is read from the store each time it is asked for (`chat/catalogue.py list_models`: every
export, newest first, then the base models), so an export published while the UI runs appears on
the next refresh. Only one model is kept loaded: the models are small, the machines that run this
are too, and switching costs seconds (transformers) or less (llama.cpp).
"""

from __future__ import annotations

import gc
import json
import threading
from pathlib import Path

from loretune.chat.backends import ChatBackend, ChatError, LlamaCppChat, ModelUnavailable, TransformersChat
from loretune.chat.catalogue import ServableModel, list_models
from loretune.export.layout import EXPORT_FILE, MERGED_DIR

FALLBACK_SYSTEM_PROMPT = "You are a helpful assistant."
# For a store whose datasets are gone but whose exports name their domain: the dataset stage's
# default wording (a dataset built with another prompt records it, and is read first).
DOMAIN_SYSTEM_PROMPT = "You are a helpful expert on the lore of {domain}."


class Catalogue:
    """The servable models of one store, by their dropdown label."""

    def __init__(self, store: str | Path):
        self.store = str(store)

    def models(self) -> list[ServableModel]:
        try:
            return list_models(self.store)
        except Exception as exc:  # an unreadable manifest or export.json: say which store and why
            raise ChatError(f"cannot list the models in the store {self.store}: {type(exc).__name__}: {exc}") from exc

    def find(self, label: str | None) -> ServableModel:
        models = self.models()
        if not models:
            raise ChatError(self.empty_message())
        if not label:
            return models[0]
        for model in models:
            if model.label == label:
                return model
        raise ChatError(f"no model {label!r} in the store {self.store} any more: refresh the list")

    def empty_message(self) -> str:
        return (f"The store {self.store} holds no model to talk to yet: run the finetune flow first "
                "(`loretune run --offline`, or `make demo`), or point `loretune chat --store` at another store.")

    def system_prompt(self) -> str:
        """The system prompt the newest dataset was built with, so the chat asks as training did."""
        from loretune.dataset.layout import system_prompt
        from loretune.store import ArtifactStore

        store = ArtifactStore(self.store)
        for manifest in reversed(store.versions("dataset")):
            try:
                prompt = system_prompt(store.local_path("dataset", manifest["version"]))
            except (OSError, ValueError, KeyError):
                continue
            if prompt:
                return str(prompt)
        for manifest in reversed(store.versions("export")):
            info = store.local_path("export", manifest["version"]) / EXPORT_FILE
            try:
                domain = json.loads(info.read_text()).get("domain")
            except (OSError, ValueError):
                continue
            if domain:
                return DOMAIN_SYSTEM_PROMPT.format(domain=domain)
        return FALLBACK_SYSTEM_PROMPT


def load_backend(model: ServableModel) -> ChatBackend:
    """The backend for one dropdown entry; `ModelUnavailable` with a clear message if it cannot load."""
    if model.kind == "gguf":
        # export/<v>/gguf/<file>: the merged folder beside it carries loretune_chat.json.
        return LlamaCppChat(model.path, name=model.label, format_dir=model.path.parent.parent / MERGED_DIR)
    if model.kind in ("base", "merged"):
        return TransformersChat(model.path, model.projector, name=model.label)
    raise ModelUnavailable(f"{model.label}: unknown model kind {model.kind!r}")


class ModelCache:
    """Keeps the last loaded model; loading another one releases it first (memory over speed)."""

    def __init__(self) -> None:
        self._key: tuple[str, str, str] | None = None
        self._backend: ChatBackend | None = None
        self._lock = threading.Lock()

    @staticmethod
    def key(model: ServableModel) -> tuple[str, str, str]:
        return model.kind, str(model.path), str(model.projector)

    def get(self, model: ServableModel) -> ChatBackend:
        with self._lock:
            if self._key == self.key(model) and self._backend is not None:
                return self._backend
            self._release()
            self._backend = load_backend(model)
            self._key = self.key(model)
            return self._backend

    def is_loaded(self, model: ServableModel) -> bool:
        return self._key == self.key(model)

    def close(self) -> None:
        with self._lock:
            self._release()

    def _release(self) -> None:
        backend, self._backend, self._key = self._backend, None, None
        if backend is not None:
            close = getattr(backend, "close", None)
            if close is not None:
                close()
            del backend
            gc.collect()
