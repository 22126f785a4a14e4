"""loretune.fingerprint: stage versions are stable, content-keyed and code-sensitive."""

from __future__ import annotations

import hashlib
import importlib.util
import re
import uuid
from pathlib import Path
from types import ModuleType

import pytest

from loretune.config import TrainingConfig, load_config
from loretune.fingerprint import canonical, code_version, digest, stage_version
from loretune.store import ArtifactRef

NARUTO = Path(__file__).resolve().parents[1] / "deployments" / "naruto.yaml"


def test_digest_is_canonical_json_sha256():
    # Pinned format: a change here would silently re-version every stored artifact.
    payload = '{"a":1,"b":[true,null,"é"]}'
    assert digest({"b": [True, None, "é"], "a": 1}) == hashlib.sha256(payload.encode()).hexdigest()[:16]
    assert digest({"a": 1}, length=40) == hashlib.sha256(b'{"a":1}').hexdigest()[:40]


def test_stage_version_is_16_hex_chars():
    assert re.fullmatch(r"[0-9a-f]{16}", stage_version("dataset", "abc", {"seed": 0}))


def test_dict_order_does_not_matter():
    a = {"seed": 0, "lora": {"r": 16, "alpha": 32}, "categories": ["A", "B"]}
    b = {"categories": ["A", "B"], "lora": {"alpha": 32, "r": 16}, "seed": 0}
    assert list(a) != list(b)
    assert canonical(a) == canonical(b)
    assert digest(a) == digest(b)
    assert stage_version("s", "c", a) == stage_version("s", "c", b)


def test_types_are_not_conflated():
    values = [1, "1", True, None, 1.5, "1.5", [1], {"1": 1}]
    assert len({digest({"x": v}) for v in values}) == len(values)


def test_pydantic_section_and_its_dump_fingerprint_the_same():
    cfg = load_config(NARUTO)
    for section in (cfg.training, cfg.sources, cfg.dataset, cfg.model):
        assert canonical(section) == canonical(section.model_dump())
        assert (stage_version("s", "c", {"cfg": section})
                == stage_version("s", "c", {"cfg": section.model_dump()}))


def test_artifact_ref_fingerprints_by_stage_and_version_not_store():
    here = ArtifactRef("/srv/store", "documents", "0123456789abcdef")
    there = ArtifactRef("s3://bucket/store", "documents", "0123456789abcdef")
    assert canonical(here) == "documents@0123456789abcdef"
    assert stage_version("images", "c", {"docs": here}) == stage_version("images", "c", {"docs": there})

    other_version = ArtifactRef("/srv/store", "documents", "fedcba9876543210")
    other_stage = ArtifactRef("/srv/store", "dataset", "0123456789abcdef")
    base = stage_version("images", "c", {"docs": here})
    assert stage_version("images", "c", {"docs": other_version}) != base
    assert stage_version("images", "c", {"docs": other_stage}) != base


@pytest.mark.parametrize(
    "update",
    [
        {"max_steps": 241},
        {"learning_rate": 0.002},
        {"packing": True},
        {"backend": "hf"},
        {"lora": TrainingConfig().lora.model_copy(update={"r": 8})},
        {"lora": TrainingConfig().lora.model_copy(update={"target_modules": ["q_proj"]})},
    ],
    ids=["max_steps", "learning_rate", "packing", "backend", "lora.r", "lora.target_modules"],
)
def test_changing_any_parameter_changes_the_version(update):
    base = TrainingConfig()
    changed = base.model_copy(update=update)
    assert changed != base
    assert stage_version("checkpoints", "c", {"training": changed}) != stage_version(
        "checkpoints", "c", {"training": base})


def test_stage_name_code_and_input_names_are_part_of_the_version():
    base = stage_version("dataset", "code1", {"seed": 0})
    assert stage_version("features", "code1", {"seed": 0}) != base
    assert stage_version("dataset", "code2", {"seed": 0}) != base
    assert stage_version("dataset", "code1", {"seed": 1}) != base
    assert stage_version("dataset", "code1", {"sed": 0}) != base
    assert stage_version("dataset", "code1", {"seed": 0, "extra": None}) != base


@pytest.mark.parametrize(
    ("value", "type_name"),
    [({1, 2}, "set"), (Path("/tmp/x"), "PosixPath"), (b"raw", "bytes"), (object(), "object")],
)
def test_unsupported_types_raise_type_error_naming_the_type(value, type_name):
    with pytest.raises(TypeError, match=rf"cannot fingerprint a {type_name}\b"):
        digest(value)
    with pytest.raises(TypeError, match=rf"cannot fingerprint a {type_name}\b"):
        stage_version("s", "c", {"nested": [{"deep": value}]})


# --- code_version ------------------------------------------------------------------------------

def load_module(tmp_path: Path, source: str, name: str | None = None) -> ModuleType:
    name = name or f"loretune_fp_test_{uuid.uuid4().hex}"
    path = tmp_path / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert isinstance(module, ModuleType)
    return module


def test_code_version_follows_module_source(tmp_path):
    a = load_module(tmp_path, "def f():\n    return 1\n")
    a_twin = load_module(tmp_path, "def f():\n    return 1\n")
    b = load_module(tmp_path, "def f():\n    return 2\n")
    assert re.fullmatch(r"[0-9a-f]{12}", code_version(a))
    assert code_version(a) == code_version(a)
    assert code_version(a) == code_version(a_twin)  # same source, same version
    assert code_version(a) != code_version(b)


def test_code_version_sees_an_edit_to_the_file(tmp_path):
    module = load_module(tmp_path, "def f():\n    return 1\n")
    before = code_version(module)
    Path(module.__file__).write_text("def f():\n    return 1 + 1  # fixed\n")
    assert code_version(module) != before


def test_code_version_of_several_modules_is_order_independent(tmp_path):
    a = load_module(tmp_path, "A = 1\n", name=f"fp_a_{uuid.uuid4().hex}")
    b = load_module(tmp_path, "B = 2\n", name=f"fp_b_{uuid.uuid4().hex}")
    c = load_module(tmp_path, "C = 3\n", name=f"fp_c_{uuid.uuid4().hex}")
    assert code_version(a, b) == code_version(b, a)
    assert code_version(a, b) != code_version(a)
    assert code_version(a, b) != code_version(a, c)



def test_keys_that_collide_as_strings_are_refused_not_merged():
    with pytest.raises(TypeError, match="collide"):
        canonical({1: "a", "1": "b"})


def test_code_version_hashes_data_files_by_name_and_content_not_path(tmp_path):
    module = load_module(tmp_path, "X = 1\n")
    here, there = tmp_path / "here", tmp_path / "there"
    here.mkdir(), there.mkdir()
    (here / "arch.json").write_text('{"embed_dim": 64}')
    (there / "arch.json").write_text('{"embed_dim": 64}')
    (here / "other.json").write_text("{}")

    with_file = code_version(module, files=[here / "arch.json"])
    assert with_file != code_version(module)
    assert with_file == code_version(module, files=[there / "arch.json"]), "same file elsewhere, same version"
    assert (code_version(module, files=[here / "arch.json", here / "other.json"])
            == code_version(module, files=[here / "other.json", here / "arch.json"]))
    (here / "arch.json").write_text('{"embed_dim": 128}')
    assert code_version(module, files=[here / "arch.json"]) != with_file


def test_code_version_without_files_is_what_it_always_was(tmp_path):
    # Pinned: adding `files` must not re-version every stage that has none.
    module = load_module(tmp_path, "X = 1\n")
    assert code_version(module) == hashlib.sha256(b"X = 1\n").hexdigest()[:12]


def test_code_version_refuses_a_missing_data_file(tmp_path):
    module = load_module(tmp_path, "X = 1\n")
    with pytest.raises(FileNotFoundError, match="nowhere.json"):
        code_version(module, files=[tmp_path / "nowhere.json"])


def test_a_later_attempt_is_another_version_and_the_first_is_unchanged():
    inputs = {"seed": 0}
    assert stage_version("images", "c", inputs, attempt=0) == stage_version("images", "c", inputs)
    assert stage_version("images", "c", inputs) == digest({"stage": "images", "code": "c", "inputs": inputs})
    versions = {stage_version("images", "c", inputs, attempt=n) for n in range(4)}
    assert len(versions) == 4
    with pytest.raises(ValueError, match="attempt -1"):
        stage_version("images", "c", inputs, attempt=-1)
