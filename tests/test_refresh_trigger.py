"""New lore, new model: a refresh that publishes a new dataset emits the event finetune/<domain>
starts on (deployments/prefect.yaml); a night with nothing new emits nothing."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_the_first_night_emits_the_second_does_not(prefect_server, samples, tmp_path, monkeypatch):
    from loretune.flows import refresh

    emitted = []
    monkeypatch.setattr(refresh, "emit_event", lambda **event: emitted.append(event))
    monkeypatch.setenv("LORETUNE_HOME", str(tmp_path / "home"))
    overrides = {"store": str(tmp_path / "store")}

    first = refresh.refresh(overrides=overrides, sample_sources=samples.base_url)
    assert first["stages"]["dataset"]["state"] == "Completed"
    (event,) = emitted
    assert event["event"] == refresh.DATASET_EVENT == "loretune.dataset.published"
    assert event["resource"]["prefect.resource.id"] == "loretune.dataset.naruto"
    assert event["resource"]["loretune.version"] == first["stages"]["dataset"]["version"]

    second = refresh.refresh(overrides=overrides, sample_sources=samples.base_url)
    assert second["stages"]["dataset"] == {**first["stages"]["dataset"], "state": "Cached"}
    assert len(emitted) == 1, "nothing new: no event, so no finetune"
