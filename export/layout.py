"""What an export artifact holds: its folder layout, shared by export and the chat UI that serves it.

An export (`<store>/export/<version>/`) is one checkpoint made ready to serve:

- `adapter/`: the PEFT adapter with the image projector (as training saved it), and
  `loretune_multimodal.json`;
- `merged/`: the adapter merged into its base, 16-bit safetensors, with the tokenizer, chat
  template, generation config and `loretune_chat.json`: a plain model folder any tool loads;
- `projector/`: the image projector beside the merged folder (`projector.safetensors` and
  `loretune_multimodal.json`), since merging keeps only what LoRA touched;
- `gguf/<name>-<type>.gguf`: llama.cpp files converted from `merged/` (f16 and quantised types);
- `export.json`: which checkpoint, its evaluation score, each file's real tensor types and size,
  the converter's version, and the parity results (`parity.json` holds every probe's numbers).

Export writes this layout; the chat UI's catalogue (`chat/catalogue.py`) reads it.
"""

from __future__ import annotations

EXPORT_FILE = "export.json"
NOT_EXPORTED_FILE = "not_exported.json"  # what an export version holds when nothing was chosen, and why
PARITY_FILE = "parity.json"
ADAPTER_DIR = "adapter"
MERGED_DIR = "merged"
PROJECTOR_DIR = "projector"
GGUF_DIR = "gguf"
PROJECTOR_WEIGHTS = "projector.safetensors"
