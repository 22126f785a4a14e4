"""The features stage's version: the CLIP architecture file is part of its code."""

from __future__ import annotations

import shutil

from loretune.multimodal import clip
from loretune.store import ArtifactRef
from loretune.tasks import images as images_task
from loretune.tasks.stage import StageCache


def test_editing_the_clip_architecture_file_changes_the_features_version(tmp_path, monkeypatch):
    configs = tmp_path / "model_configs"
    shutil.copytree(clip.MODEL_CONFIG_DIR, configs)
    monkeypatch.setattr(clip, "MODEL_CONFIG_DIR", configs)
    assert images_task.features_code() == images_task.FEATURES.code, "the copy hashes like the original"
    inputs = {"store": "/srv/store", "domain": "naruto", "images_ref": ArtifactRef("/srv/store", "images", "1" * 16),
              "params": {"clip_model": "loretune-tiny-vit"}}
    before = StageCache(stage="features", code=images_task.features_code()).version(inputs)

    arch = configs / "loretune-tiny-vit.json"
    original = arch.read_text()
    edited = original.replace('"layers": ', '"layers": 1', 1)
    assert edited != original, "the edit must change the architecture"
    arch.write_text(edited)
    after = StageCache(stage="features", code=images_task.features_code()).version(inputs)
    assert after != before
