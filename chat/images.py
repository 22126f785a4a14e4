"""A picture into a transformers chat model: CLIP features -> the export's projector -> soft tokens.

An export keeps its trained projector beside the merged model (`export/<v>/projector/`:
`projector.safetensors` and `loretune_multimodal.json`), since merging keeps only what LoRA
touched. The projector is rebuilt exactly as training built it (`attach_projector` with the
recorded CLIP width, token count, seed and feature statistics), its trained weights are loaded over
it, and the placeholder token goes back into the tokenizer (the export strips it, since the merged
model has no row for it; `fuse` swaps it out before the embedding lookup).

The picture must be embedded by the same CLIP the features stage used, or the projector reads
vectors it never saw: `loretune_multimodal.json` names it (`clip_model`: the features' model id,
e.g. `loretune-tiny-vit:random-seed0`, or a `clip` object with `model`, `pretrained`, `seed`). A
file that names none gets the features stage's default CLIP (`UNRECORDED_CLIP`), and the UI says so.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loretune.chat.backends import ChatError, ModelUnavailable

SPEC_FILE = "loretune_multimodal.json"
WEIGHTS_FILE = "projector.safetensors"


@dataclass(frozen=True)
class ClipChoice:
    """Which CLIP embeds a picture: an open_clip architecture, its weights (None: random), the seed."""

    model: str
    pretrained: str | None
    seed: int
    assumed: bool = False  # True when the projector's spec did not say, and the defaults were taken

    @property
    def model_id(self) -> str:
        return f"{self.model}:{'random-seed' + str(self.seed) if self.pretrained is None else self.pretrained}"


@dataclass(frozen=True)
class ProjectorSpec:
    clip_dim: int
    image_tokens: int
    projector_seed: int
    feature_stats: dict[str, Any] | None
    clip: ClipChoice
    raw: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def load(cls, folder: Path, name: str) -> "ProjectorSpec":
        path = folder / SPEC_FILE
        if not path.is_file() or not (folder / WEIGHTS_FILE).is_file():
            raise ModelUnavailable(f"{name}: the image projector folder {folder} lacks {SPEC_FILE} or {WEIGHTS_FILE}: "
                                   "the export is incomplete; re-run the export")
        try:
            raw = json.loads(path.read_text())
            return cls(int(raw["clip_dim"]), int(raw["image_tokens"]), int(raw["projector_seed"]),
                       raw.get("feature_stats"), clip_choice(raw), raw)
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelUnavailable(f"{name}: {path} is not a valid projector spec ({type(exc).__name__}: {exc}): "
                                   "re-run the export") from exc


# A spec from before the features' CLIP was recorded: the features stage's default CLIP (loretune's
# own architecture, random weights, seed 0), marked as assumed so the UI says so.
UNRECORDED_CLIP = ClipChoice("loretune-tiny-vit", None, 0, assumed=True)


def clip_choice(spec: dict[str, Any]) -> ClipChoice:
    """The CLIP a projector was trained on, from its spec; `UNRECORDED_CLIP` if it names none."""
    given = spec.get("clip")
    if isinstance(given, dict) and given.get("model"):
        return ClipChoice(str(given["model"]), given.get("pretrained"), int(given.get("seed", 0)))
    model_id = spec.get("clip_model")
    if isinstance(model_id, str) and model_id:
        name, _, weights = model_id.partition(":")
        random = re.fullmatch(r"random-seed(\d+)", weights)
        if random or not weights:
            return ClipChoice(name, None, int(random.group(1)) if random else 0)
        return ClipChoice(name, weights, 0)
    return UNRECORDED_CLIP


_encoders: dict[ClipChoice, Any] = {}


def clip_encoder(choice: ClipChoice) -> Any:
    """One CLIP per choice, kept: building it costs seconds, embedding a picture milliseconds."""
    key = ClipChoice(choice.model, choice.pretrained, choice.seed)
    if key not in _encoders:
        from loretune.multimodal.clip import load_clip

        try:
            _encoders[key] = load_clip(key.model, key.pretrained, seed=key.seed, log=lambda message: None)
        except Exception as exc:  # an unknown architecture, weights that cannot be fetched offline
            raise ModelUnavailable(f"CLIP {key.model_id} cannot be built here ({type(exc).__name__}: {exc}), "
                                   "so pictures cannot be read") from exc
    return _encoders[key]


class ImageInput:
    """A model's trained projector and the CLIP that feeds it."""

    def __init__(self, spec: ProjectorSpec, name: str):
        self.spec = spec
        self.name = name

    @classmethod
    def attach(cls, model: Any, tokenizer: Any, folder: Path, name: str) -> "ImageInput":
        """Rebuild the projector on `model`, load its trained weights, put the placeholder token back."""
        from safetensors.torch import load_file

        from loretune.model.chat_format import add_image_token
        from loretune.multimodal.fusion import attach_projector

        spec = ProjectorSpec.load(folder, name)
        projector = attach_projector(model, spec.clip_dim, spec.image_tokens, spec.projector_seed,
                                     spec.feature_stats, image_token_id=add_image_token(tokenizer))
        try:
            projector.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
        except Exception as exc:  # a corrupt file, or weights for another shape
            raise ModelUnavailable(f"{name}: the projector weights in {folder} do not load "
                                   f"({type(exc).__name__}: {exc}): re-run the export") from exc
        projector.to(model.get_input_embeddings().weight.device)
        return cls(spec, name)

    def features(self, image: str | Path) -> Any:
        """[1, clip_dim] L2-normalised CLIP features of one picture, as the features stage computes them."""
        from PIL import Image, UnidentifiedImageError

        from loretune.multimodal.clip import embed_images

        path = Path(image)
        try:
            with Image.open(path) as probe:
                probe.verify()
        except (OSError, UnidentifiedImageError) as exc:
            raise ChatError(f"cannot read the picture {path.name}: {exc}") from exc
        encoder = clip_encoder(self.spec.clip)
        if encoder.embed_dim != self.spec.clip_dim:
            raise ModelUnavailable(f"{self.name}: its projector reads {self.spec.clip_dim}-wide CLIP features but "
                                   f"{self.spec.clip.model_id} gives {encoder.embed_dim}: the projector spec names "
                                   "the wrong CLIP")
        import torch

        return torch.from_numpy(embed_images(encoder, [path], log=lambda message: None))
