"""loretune.config: the domain YAML, its overrides and its errors (offline, no Prefect)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from loretune.config import (
    ConfigError,
    LoretuneConfig,
    apply_overrides,
    load_config,
    parse_overrides,
    state_dir,
)

NARUTO = Path(__file__).resolve().parents[1] / "deployments" / "naruto.yaml"


def write(tmp_path: Path, text: str, name: str = "domain.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems(message: str) -> list[str]:
    """The per-key lines of a validation ConfigError (after the `...: invalid config:` header)."""
    header, _, body = message.partition("invalid config:\n")
    assert body, f"not a validation error: {message!r}"
    return [line.strip() for line in body.splitlines() if line.strip()]


# --- the real domain file ---------------------------------------------------------------------

def test_naruto_config_loads_every_value_the_file_sets():
    cfg = load_config(NARUTO)
    assert isinstance(cfg, LoretuneConfig)
    loaded = cfg.model_dump()

    def check(raw: dict, got: dict, prefix: str = "") -> None:
        for key, value in raw.items():
            if isinstance(value, dict):
                check(value, got[key], f"{prefix}{key}.")
            elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
                assert len(got[key]) == len(value), f"{prefix}{key}: {len(value)} items in the file"
                for i, (item, loaded_item) in enumerate(zip(value, got[key])):
                    check(item, loaded_item, f"{prefix}{key}.{i}.")
            else:
                assert got[key] == value, f"{prefix}{key}: file says {value!r}, config has {got[key]!r}"

    check(yaml.safe_load(NARUTO.read_text()), loaded)
    assert cfg.sources.fandom.api_url.startswith("https://"), "the domain file points at the real site"
    assert cfg.training.exposures and cfg.training.checkpoints >= 1, "the demo states its budget in exposures per fact"


# --- validation errors name the file and the dotted key ---------------------------------------

@pytest.mark.parametrize(
    ("yaml_text", "key"),
    [
        ("domain: naruto\ntrainin:\n  max_steps: 3\n", "trainin"),
        ("domain: naruto\ntraining:\n  max_stepz: 3\n", "training.max_stepz"),
        ("domain: naruto\ntraining:\n  lora:\n    rank: 3\n", "training.lora.rank"),
    ],
    ids=["top-level", "nested", "two-deep"],
)
def test_unknown_key_is_one_error_naming_key_and_file(tmp_path, yaml_text, key):
    path = write(tmp_path, yaml_text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert str(path) in message
    assert problems(message) == [f"{key}: unknown key"]


def test_ill_typed_value_names_key_and_bad_value(tmp_path):
    path = write(tmp_path, "domain: naruto\ntraining:\n  max_steps: lots\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert str(path) in message
    [line] = problems(message)
    assert line.startswith("training.max_steps:")
    assert "'lots'" in line


@pytest.mark.parametrize(("value", "ok"), [(50, True), (1, True), (51, False), (0, False)])
def test_fandom_batch_size_range(tmp_path, value, ok):
    path = write(tmp_path, f"domain: naruto\nsources:\n  fandom:\n    batch_size: {value}\n")
    if ok:
        assert load_config(path).sources.fandom.batch_size == value
        return
    with pytest.raises(ConfigError) as err:
        load_config(path)
    [line] = problems(str(err.value))
    assert line.startswith("sources.fandom.batch_size:")
    assert f"(got {value})" in line


def test_several_problems_are_all_reported_in_one_error(tmp_path):
    path = write(tmp_path, "domain: naruto\ntraining:\n  max_stepz: 3\n  batch_size: 0\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    keys = sorted(line.split(":")[0] for line in problems(str(err.value)))
    assert keys == ["training.batch_size", "training.max_stepz"]


def test_missing_domain_is_reported_as_missing(tmp_path):
    path = write(tmp_path, "training:\n  max_steps: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert problems(str(err.value)) == ["domain: required key is missing"]


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nope" / "absent.yaml"
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value)
    assert "not found" in str(err.value)


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"], ids=["list", "str", "int"])
def test_non_mapping_yaml_is_a_config_error(tmp_path, text):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value)
    assert "expected a mapping" in str(err.value)


def test_invalid_yaml_is_a_config_error_naming_the_path(tmp_path):
    path = write(tmp_path, "domain: naruto\ntraining: [unclosed\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value)
    assert "not valid YAML" in str(err.value)


@pytest.mark.parametrize("kind", ["directory", "not-utf8"])
def test_unreadable_config_is_a_config_error(tmp_path, kind):
    if kind == "directory":
        path = tmp_path
    else:
        path = tmp_path / "latin1.yaml"
        path.write_bytes(b"domain: caf\xe9\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value)


# --- command-line overrides -------------------------------------------------------------------

def test_parse_overrides_values_are_yaml():
    assert parse_overrides([
        "sources.fandom.categories=[Characters,Clans]",
        "training.max_steps=3",
        "training.learning_rate=0.5",
        "training.packing=true",
        "features.pretrained=null",
        "store=",
        " model.base = tiny ",
    ]) == {
        "sources.fandom.categories": ["Characters", "Clans"],
        "training.max_steps": 3,
        "training.learning_rate": 0.5,
        "training.packing": True,
        "features.pretrained": None,
        "store": "",
        "model.base": "tiny",
    }


def test_parse_overrides_splits_on_the_first_equals_only():
    assert parse_overrides(["sources.fandom.api_url=http://h/api.php?a=b"]) == {
        "sources.fandom.api_url": "http://h/api.php?a=b"
    }


@pytest.mark.parametrize("item", ["novalue", "=3", "  =3"])
def test_parse_overrides_rejects_items_without_key(item):
    with pytest.raises(ConfigError) as err:
        parse_overrides([item])
    assert "KEY=VALUE" in str(err.value)
    assert repr(item) in str(err.value)


def test_parse_overrides_rejects_bad_yaml():
    with pytest.raises(ConfigError) as err:
        parse_overrides(["training.lora.target_modules=[q_proj"])
    assert "not valid YAML" in str(err.value)


def test_parse_overrides_rejects_unprintable_value():
    with pytest.raises(ConfigError):
        parse_overrides(["model.base=\x07"])


def test_apply_overrides_sets_nested_values_without_mutating_input():
    data = {"domain": "naruto", "training": {"max_steps": 240, "lora": {"r": 16}}}
    before = copy.deepcopy(data)
    merged = apply_overrides(data, {"training.lora.r": 4, "model.tiny.seed": 7, "store": "/s"})
    assert merged == {
        "domain": "naruto",
        "store": "/s",
        "training": {"max_steps": 240, "lora": {"r": 4}},
        "model": {"tiny": {"seed": 7}},
    }
    assert data == before
    assert merged["training"] is not data["training"]


def test_apply_overrides_into_a_scalar_is_a_config_error():
    with pytest.raises(ConfigError) as err:
        apply_overrides({"domain": "naruto"}, {"domain.name": "x"})
    assert "domain.name" in str(err.value)


def test_load_config_applies_overrides(tmp_path):
    cfg = load_config(NARUTO, parse_overrides(["training.max_steps=3", "training.lora.r=4",
                                               "sources.fandom.categories=[Clans]"]))
    assert cfg.training.max_steps == 3
    assert cfg.training.lora.r == 4
    assert cfg.training.lora.alpha == 32  # untouched sibling kept
    assert cfg.sources.fandom.categories == ["Clans"]


def test_bad_override_is_reported_with_file_and_override_keys():
    with pytest.raises(ConfigError) as err:
        load_config(NARUTO, parse_overrides(["training.max_stepz=3"]))
    message = str(err.value)
    assert str(NARUTO) in message
    assert "with overrides ['training.max_stepz']" in message
    assert problems(message) == ["training.max_stepz: unknown key"]


# --- where the store lives --------------------------------------------------------------------

def test_set_store_overrides_store_uri(tmp_path, monkeypatch):
    monkeypatch.setenv("LORETUNE_HOME", str(tmp_path / "home"))
    cfg = load_config(NARUTO, parse_overrides(["store=memory://team-store"]))
    assert cfg.store_uri() == "memory://team-store"


def test_loretune_home_sets_default_store(tmp_path, monkeypatch):
    monkeypatch.setenv("LORETUNE_HOME", str(tmp_path / "home"))
    assert state_dir() == (tmp_path / "home").resolve()
    assert load_config(NARUTO).store_uri() == str((tmp_path / "home" / "store").resolve())

    monkeypatch.setenv("LORETUNE_HOME", str(tmp_path / "other"))
    assert load_config(NARUTO).store_uri() == str((tmp_path / "other" / "store").resolve())


def test_default_state_dir_is_local_not_home(tmp_path, monkeypatch):
    monkeypatch.delenv("LORETUNE_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    assert state_dir() == (tmp_path / ".loretune").resolve()


def test_packing_is_refused_with_the_reason(tmp_path):
    path = tmp_path / "d.yaml"
    path.write_text("domain: d\n")
    with pytest.raises(ConfigError, match="training.packing: .*refuses the image collator"):
        load_config(path, {"training.packing": True})
    assert load_config(path).training.gradient_checkpointing is False
    assert load_config(path).training.attn_implementation == "sdpa"


def test_overriding_one_budget_key_replaces_the_file_s_other():
    """The demo states its budget in exposures per fact; `--set training.max_steps=200` still
    means 200 steps, and an override of exposures drops nothing else."""
    steps = load_config(NARUTO, {"training.max_steps": 200}).training
    assert steps.max_steps == 200 and steps.exposures is None and steps.epochs is None
    exposures = load_config(NARUTO, {"training.exposures": 12}).training
    assert exposures.exposures == 12 and exposures.retention == load_config(NARUTO).training.retention
    with pytest.raises(ConfigError, match="training.epochs or training.exposures, not both"):
        load_config(NARUTO, {"training.epochs": 1, "training.exposures": 12})
