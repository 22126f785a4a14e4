"""The bad-config matrix (issue 25, item 5): every key of the schema, three ways wrong.

The keys come from the schema itself (loretune/config.py's models, walked recursively, list-of-model
fields such as evaluation.decoding included), so a new key is covered the day it is added. For each
key: a wrong type, an out-of-range value for each bound its field declares (ge / gt / le / lt,
min_length / max_length, pattern, Literal choices), and an unknown neighbour key
(`<section>.<key>_typo`). Each case writes deployments/naruto.yaml's content with that one change
to a file and expects `load_config` to fail with exactly one problem line, naming the file and the
full dotted key: a wrong value must not cascade into unrelated errors.

The last tests call the flows and the CLI with a bad value: the error names the key, and nothing
is written to the store, which is a fresh folder that must still not exist afterwards.
"""

from __future__ import annotations

import copy
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import annotated_types
import pytest
import yaml
from pydantic import BaseModel
from typer.testing import CliRunner

from loretune import config as schema
from loretune.config import ConfigError, LoretuneConfig, load_config

ROOT = Path(__file__).resolve().parent.parent
NARUTO = ROOT / "deployments" / "naruto.yaml"
BASE = yaml.safe_load(NARUTO.read_text())

# A valid item for each list-of-model field that naruto.yaml leaves empty, so its item keys are
# tested too. A new list-of-model field without an item here (or in naruto.yaml) fails
# test_every_list_of_models_has_an_item_to_test.
SAMPLE_ITEMS: dict[type[BaseModel], dict[str, Any]] = {
    schema.MixSource: {"path": "chat.jsonl", "format": "sharegpt", "count": 10},
}

# Cases that do not fail, on purpose: (key, case) -> why that is harmless. Empty today; the
# coercions pydantic does make are listed in LAX below, each with its reason.
EXPECTED_TO_PASS: dict[tuple[str, str], str] = {}

# pydantic's lax mode takes these, and they are harmless: the value meant is the value used.
LAX = {
    "numeric string": "a quoted number (`\"3\"`, `\"0.5\"`) is read as that number: what was meant",
    "integral float": "`3.0` where an integer belongs is 3: what was meant",
}


@dataclass(frozen=True)
class Leaf:
    key: str  # dotted, as the schema names it; list items as `0`
    path: tuple  # where in the YAML data it lives
    annotation: Any
    field: Any  # pydantic FieldInfo
    item: dict[str, Any] | None = None  # the list item to insert first, for list-of-model fields


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """The annotation without `| None`, and whether None was allowed."""
    if get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        return (args[0] if len(args) == 1 else typing.Union[tuple(args)]), len(args) != len(get_args(annotation))
    return annotation, False


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _get(data: Any, path: tuple) -> Any:
    for part in path:
        if isinstance(data, dict):
            data = data.get(part)
        elif isinstance(data, list) and isinstance(part, int) and part < len(data):
            data = data[part]
        else:
            return None
    return data


def leaves(model: type[BaseModel] = LoretuneConfig, key: str = "", path: tuple = (),
           item: dict[str, Any] | None = None) -> list[Leaf]:
    """Every key of the schema: sections, their fields, and the fields of list items."""
    out = []
    for name, field in model.model_fields.items():
        dotted, where = f"{key}{name}", (*path, name)
        annotation, _ = _unwrap(field.annotation)
        out.append(Leaf(dotted, where, field.annotation, field, item))
        if _is_model(annotation):
            out.extend(leaves(annotation, f"{dotted}.", where, item))
        elif get_origin(annotation) is list and _is_model(get_args(annotation)[0]):
            item_model = get_args(annotation)[0]
            existing = _get(BASE, where)
            first = existing[0] if existing else SAMPLE_ITEMS.get(item_model)
            if first is None:
                continue  # test_every_list_of_models_has_an_item_to_test names it
            out.extend(leaves(item_model, f"{dotted}.0.", (*where, 0), None if existing else {"at": where, "item": first}))
    return out


LEAVES = leaves()


def _wrong_types(leaf: Leaf) -> list[tuple[str, Any]]:
    """Values of the wrong type for this key, by what it expects."""
    annotation, _ = _unwrap(leaf.annotation)
    origin = get_origin(annotation)
    if _is_model(annotation):
        return [("scalar for a section", "not a section")]
    if origin is list:
        return [("number for a list", 3), ("mapping for a list", {"a": 1})]
    if origin is dict:
        return [("string for a mapping", "not a mapping"), ("list for a mapping", [1, 2])]
    if annotation is bool:
        return [("mapping for a bool", {"a": 1}), ("word for a bool", "maybe"), ("number for a bool", 2)]
    if annotation in (int, float):
        cases = [("mapping for a number", {"a": 1}), ("word for a number", "lots"), ("bool for a number", True),
                 ("list for a number", [1])]
        return cases + ([("fraction for an integer", 2.5)] if annotation is int else [])
    if annotation is str or origin is Literal:
        return [("mapping for a string", {"a": 1}), ("list for a string", ["a"]), ("number for a string", 3),
                ("bool for a string", True)]
    if annotation is Any:
        return []
    raise AssertionError(f"{leaf.key}: no wrong-type values for {leaf.annotation!r}; add them to _wrong_types")


def _out_of_range(leaf: Leaf) -> list[tuple[str, Any]]:
    """A value just past each bound the field declares."""
    annotation, _ = _unwrap(leaf.annotation)
    cases = []
    step = 1 if annotation is int else 0.001
    for bound in leaf.field.metadata:
        if isinstance(bound, annotated_types.Ge):
            cases.append((f"below ge={bound.ge}", bound.ge - step))
        elif isinstance(bound, annotated_types.Gt):
            cases.append((f"at gt={bound.gt}", bound.gt))
        elif isinstance(bound, annotated_types.Le):
            cases.append((f"above le={bound.le}", bound.le + step))
        elif isinstance(bound, annotated_types.Lt):
            cases.append((f"at lt={bound.lt}", bound.lt))
        elif isinstance(bound, annotated_types.MinLen):
            short = ["x"] * (bound.min_length - 1) if get_origin(annotation) is list else "x" * (bound.min_length - 1)
            cases.append((f"shorter than min_length={bound.min_length}", short))
        elif isinstance(bound, annotated_types.MaxLen):
            cases.append((f"longer than max_length={bound.max_length}", ["x"] * (bound.max_length + 1)))
        elif hasattr(bound, "pattern") and bound.pattern:
            cases.append(("not matching the pattern", "Not Valid!"))
    if get_origin(annotation) is Literal:
        cases.append(("not one of the choices", "not-a-choice"))
    if get_origin(annotation) is list and get_origin(get_args(annotation)[0]) is Literal:
        cases.append(("an item not one of the choices", ["not-a-choice"]))
    return cases


def _cases() -> list:
    params = []
    for leaf in LEAVES:
        for name, value in _wrong_types(leaf):
            params.append(pytest.param(leaf, "wrong type", value, id=f"{leaf.key}-{name}"))
        for name, value in _out_of_range(leaf):
            params.append(pytest.param(leaf, "out of range", value, id=f"{leaf.key}-{name}"))
        params.append(pytest.param(leaf, "unknown neighbour", None, id=f"{leaf.key}-typo"))
    return params


CASES = _cases()


def _base(leaf: Leaf) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    if leaf.item:
        *parents, name = leaf.item["at"]
        node = data
        for part in parents:
            node = node.setdefault(part, {})
        node[name] = [copy.deepcopy(leaf.item["item"])]
    return data


def _set(data: dict[str, Any], path: tuple, value: Any) -> None:
    node = data
    for part in path[:-1]:
        node = node.setdefault(part, {}) if isinstance(node, dict) else node[part]
    node[path[-1]] = value


def _shown(data: dict[str, Any], path: tuple) -> str:
    """The key as an error names it: a list item with a `name` is `0[greedy]`."""
    parts = []
    for i, part in enumerate(path):
        parent = _get(data, path[:i])
        if isinstance(part, int) and isinstance(parent, list) and isinstance(parent[part], dict) \
                and isinstance(parent[part].get("name"), str):
            parts.append(f"{part}[{parent[part]['name']}]")
        else:
            parts.append(str(part))
    return ".".join(parts)


def test_the_matrix_covers_the_whole_schema():
    keys = {leaf.key for leaf in LEAVES}
    # Spot checks that the walk reaches nested sections and list items, and what it found.
    for key in ("domain", "training.lora.r", "dataset.teaching.exposures", "evaluation.decoding.0.max_new_tokens",
                "evaluation.promote.open.0.metric", "dataset.mix.0.weight", "runtime.dask_workers",
                "training.launcher", "training.num_processes", "store_credentials_block"):
        assert key in keys, key
    print(f"bad-config matrix: {len(LEAVES)} keys, {len(CASES)} cases "
          f"({sum(c.values[1] == 'wrong type' for c in CASES)} wrong type, "
          f"{sum(c.values[1] == 'out of range' for c in CASES)} out of range, "
          f"{sum(c.values[1] == 'unknown neighbour' for c in CASES)} unknown neighbour)")


def test_every_list_of_models_has_an_item_to_test():
    missing = []
    for leaf in LEAVES:
        annotation, _ = _unwrap(leaf.annotation)
        if get_origin(annotation) is list and _is_model(get_args(annotation)[0]):
            if not _get(BASE, leaf.path) and get_args(annotation)[0] not in SAMPLE_ITEMS:
                missing.append(leaf.key)
    assert not missing, f"add a valid item to SAMPLE_ITEMS for {missing}"


def test_the_starting_points_are_valid(tmp_path):
    """Each case changes one thing in a valid config, so its error is that change's alone."""
    for n, item in enumerate({id(leaf.item): leaf for leaf in LEAVES}.values()):
        path = tmp_path / f"base{n}.yaml"
        path.write_text(yaml.safe_dump(_base(item), sort_keys=False))
        load_config(path)


@pytest.mark.parametrize("leaf, case, value", CASES)
def test_a_bad_value_is_one_error_naming_the_file_and_the_key(leaf, case, value, tmp_path):
    data = _base(leaf)
    if case == "unknown neighbour":
        path = (*leaf.path[:-1], f"{leaf.path[-1]}_typo")
        _set(data, path, _get(data, leaf.path) if _get(data, leaf.path) is not None else 1)
    else:
        path = leaf.path
        _set(data, path, value)
    config = tmp_path / "naruto.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    if (leaf.key, case) in EXPECTED_TO_PASS:
        load_config(config)
        return
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    message = str(caught.value)
    key = _shown(data, path)
    header, *problems = message.splitlines()
    assert header == f"{config}: invalid config:", message
    assert len(problems) == 1, f"one problem expected for {key}, got:\n{message}"
    (problem,) = problems
    # The key itself, or an item of it (a list of choices names the bad item: `gguf.0`).
    assert re.match(rf"  {re.escape(key)}(\.\d+)?: ", problem), f"{key!r} not named in:\n{message}"
    if case == "unknown neighbour":
        assert problem.endswith(": unknown key"), problem


@pytest.mark.parametrize("key, value", [("training.max_steps", "3"), ("training.learning_rate", "0.5"),
                                        ("training.max_steps", 3.0)])
def test_lax_coercions_that_are_harmless(key, value):
    """What pydantic's lax mode still takes (LAX says why each is harmless): the value meant."""
    cfg = load_config(NARUTO, {key: value})
    section, name = key.split(".")
    assert getattr(getattr(cfg, section), name) == float(value)


# --- before any work: the flows and the CLI with a bad value -------------------------------------


def _bad_config(tmp_path: Path) -> tuple[Path, Path]:
    """naruto.yaml with its store in tmp_path (not there yet) and one ill-typed key."""
    store = tmp_path / "store"
    data = {**copy.deepcopy(BASE), "store": str(store)}
    data["training"]["lora"]["r"] = "many"
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    return config, store


@pytest.mark.parametrize("flow", ["finetune", "refresh"])
def test_a_flow_with_a_bad_config_fails_before_any_work(flow, tmp_path, prefect_server):
    from loretune.flows.finetune import finetune
    from loretune.flows.refresh import refresh

    run = {"finetune": finetune, "refresh": refresh}[flow]
    config, store = _bad_config(tmp_path)
    with pytest.raises(ConfigError, match=rf"(?s){re.escape(str(config))}.*training\.lora\.r: .*'many'"):
        run(config=str(config))
    assert not store.exists(), f"{flow} wrote to the store for a rejected config"
    # The same through an override, with the store named by an override too.
    other = tmp_path / "store2"
    with pytest.raises(ConfigError, match=r"(?s)with overrides .*training\.max_steps: .*True"):
        run(config=str(NARUTO), overrides={"store": str(other), "training.max_steps": True})
    assert not other.exists()


def test_the_cli_with_a_bad_value_fails_before_any_work(tmp_path):
    from loretune.flows.cli import app

    runner = CliRunner()
    config, store = _bad_config(tmp_path)
    result = runner.invoke(app, ["run", "--offline", "--config", str(config)])
    assert result.exit_code == 2, result.output
    assert str(config) in result.output and "training.lora.r" in result.output and "'many'" in result.output
    assert not store.exists()

    store2 = tmp_path / "store2"
    result = runner.invoke(app, ["run", "--offline", "--store", str(store2), "--set", "evaluation.seeds=0"])
    assert result.exit_code == 2, result.output
    assert "deployments/naruto.yaml" in result.output and "evaluation.seeds" in result.output
    assert not store2.exists()
