"""Stage versions follow the code each stage really runs (loretune/fingerprint.stage_code_version).

For every stage: appending a comment to a module the stage's task reaches only through other
modules changes that stage's version; appending one to a module it never reaches does not; and
the versions are the same in another process and in another checkout of the same code.
"""

from __future__ import annotations

import ast
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_layers import copy_checkout, tree_locator

from loretune import import_graph
from loretune.fingerprint import stage_code_version

# task module -> (a module it reaches only indirectly, a module it never runs)
STAGES = {
    "loretune.tasks.ingest": ("loretune.ingest.wikitext", "loretune.multimodal.clip"),
    # the images task imports each module it runs by name; their package's __init__ runs first
    "loretune.tasks.images": ("loretune.multimodal", "loretune.multimodal.clip"),
    "loretune.tasks.features": ("loretune.hashing", "loretune.multimodal.fusion"),
    "loretune.tasks.dataset": ("loretune.dataset.dedup", "loretune.model.chat_format"),
    "loretune.tasks.model": ("loretune.model.chat_format", "loretune.dataset.builders"),
    "loretune.tasks.training": ("loretune.training.unsloth_lora", "loretune.evaluation.promotion"),
    "loretune.tasks.evaluation": ("loretune.model.collator", "loretune.training.sft"),
    "loretune.tasks.export": ("loretune.evaluation.binary_choice", "loretune.training.sft"),
}
# The cache policy each task module keys its stage on.
POLICIES = {"loretune.tasks.images": "IMAGES", "loretune.tasks.features": "FEATURES", "loretune.tasks.dataset": "DATASET",
            "loretune.tasks.model": "BASE_MODEL", "loretune.tasks.training": "CHECKPOINTS",
            "loretune.tasks.evaluation": "EVALUATION", "loretune.tasks.export": "EXPORT"}


def installed_version(task_module: str) -> str:
    module = importlib.import_module(task_module)
    return module.CODE if task_module.endswith(".ingest") else getattr(module, POLICIES[task_module]).code


def version_in(root, task_module: str) -> str:
    """The stage's code version read from the checkout at `root` (data files from that checkout too)."""
    find = tree_locator(root)
    files = sorted((root / "multimodal" / "model_configs").glob("*.json")) if task_module.endswith(".features") else ()
    return stage_code_version(task_module, files=files, find=find)


def named_imports(module: str) -> set[str]:
    """The modules a module's import statements name: `from pkg import mod` names pkg.mod, not pkg."""
    named = set()
    for node in ast.walk(ast.parse(import_graph.locate(module).read_text())):
        if isinstance(node, ast.Import):
            named.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            subs = {f"{node.module}.{a.name}" for a in node.names} & set(import_graph.direct_imports(module))
            named |= subs or {node.module}
    return named


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    return copy_checkout(tmp_path_factory.mktemp("checkout"))


def test_the_example_modules_are_what_they_claim():
    """Each 'indirect' module is reached, but not named by the task module's own imports (a package
    is run by importing a module in it), and each 'never' module is not reached, so the tests below
    test what their names say."""
    for task_module, (indirect, never) in STAGES.items():
        reached = import_graph.stage_modules(task_module)
        assert indirect in reached, (task_module, indirect)
        assert indirect not in named_imports(task_module), (task_module, indirect)
        assert never not in reached, (task_module, never)


def comment_changes_version(checkout, task_module: str, module: str) -> bool:
    """Whether appending a comment to `module` in the checkout changes the stage's code version."""
    path = tree_locator(checkout)(module)
    before, original = version_in(checkout, task_module), path.read_text()
    try:
        path.write_text(original + "\n# a comment appended by the test\n")
        return version_in(checkout, task_module) != before
    finally:
        path.write_text(original)


@pytest.mark.parametrize("task_module", sorted(STAGES))
def test_a_comment_in_a_module_reached_indirectly_changes_the_version(checkout, task_module):
    assert comment_changes_version(checkout, task_module, STAGES[task_module][0])


@pytest.mark.parametrize("task_module", sorted(STAGES))
def test_a_comment_in_a_module_the_stage_never_runs_leaves_the_version(checkout, task_module):
    assert not comment_changes_version(checkout, task_module, STAGES[task_module][1])


def test_versions_are_the_same_in_another_checkout_and_another_process(checkout):
    here = {task_module: installed_version(task_module) for task_module in STAGES}
    assert {task_module: version_in(checkout, task_module) for task_module in STAGES} == here
    code = ("import json; from test_stage_code_versions import STAGES, installed_version; "
            "print(json.dumps({m: installed_version(m) for m in STAGES}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=str(checkout.parent), env={**os.environ, "PYTHONHASHSEED": "12345",
                                                         "PYTHONPATH": str(Path(__file__).resolve().parent)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == here
    assert len(set(here.values())) == len(here), "every stage runs different code, so no two versions agree"


def test_evaluation_and_export_versions_never_take_in_the_training_loop():
    for task_module in ("loretune.tasks.evaluation", "loretune.tasks.export"):
        reached = import_graph.stage_modules(task_module)
        assert not {m for m in reached if m.startswith("loretune.training")}, task_module
        assert not {m for m in reached if m.startswith(("loretune.tasks", "loretune.flows"))}, task_module
