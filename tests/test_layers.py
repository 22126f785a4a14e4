"""The layer contracts (../shared/DESIGN.md, "Layers"), checked on the project's import graph.

Arrows point down the data path or into the shared core: the dataset knows no model, evaluation and
export never import the training loop, and no library imports Prefect, tasks/ or flows/. A change
that breaks one fails here, naming the importing module and what it reached for.
"""

from __future__ import annotations

import ast
import shutil
import tomllib
from pathlib import Path

import pytest

from loretune import import_graph

REPO = Path(__file__).resolve().parents[1]

# The stages in data-path order, each a top-level folder installed as loretune.<name>.
STAGES = ("ingest", "multimodal", "dataset", "model", "training", "evaluation", "export", "chat")
PREFECT_LAYER = ("prefect", "loretune.tasks", "loretune.flows")
MODEL_LIBRARIES = ("torch", "transformers", "peft", "trl", "accelerate", "bitsandbytes", "unsloth")


def pkg(*names: str) -> tuple[str, ...]:
    return tuple(f"loretune.{n}" for n in names)


# importer (a package, or a core module) -> what it must never import, and why.
CONTRACTS: dict[str, tuple[tuple[str, ...], str]] = {
    "loretune.ingest": (PREFECT_LAYER + pkg(*STAGES[1:]), "ingest comes first: it reads sources, nothing downstream"),
    "loretune.multimodal": (PREFECT_LAYER + pkg(*STAGES[2:]), "images and features come before the dataset and the model"),
    "loretune.dataset": (PREFECT_LAYER + pkg(*STAGES[3:]) + MODEL_LIBRARIES, "the dataset knows nothing of models"),
    "loretune.model": (PREFECT_LAYER + pkg("dataset", "training", "evaluation", "export", "chat"),
                       "the model is shared by every later stage and depends on none of them"),
    "loretune.training": (PREFECT_LAYER + pkg("evaluation", "export", "chat"), "training comes before evaluation and export"),
    "loretune.evaluation": (PREFECT_LAYER + pkg("training", "export", "chat"), "evaluation never imports the training loop"),
    "loretune.export": (PREFECT_LAYER + pkg("training", "chat"), "export never imports the training loop"),
    "loretune.chat": (PREFECT_LAYER + pkg("training"), "the chat UI serves exports, it never trains"),
    # the shared core: every stage may use it, so it uses no stage
    "loretune.config": (PREFECT_LAYER + pkg(*STAGES), "the core is below every stage"),
    "loretune.fingerprint": (PREFECT_LAYER + pkg(*STAGES), "the core is below every stage"),
    "loretune.import_graph": (PREFECT_LAYER + pkg(*STAGES), "the core is below every stage"),
    "loretune.stats": (PREFECT_LAYER + pkg(*STAGES), "the core is below every stage"),
    "loretune.store": (PREFECT_LAYER + pkg(*STAGES), "the core is below every stage"),
    "loretune.failpoints": (PREFECT_LAYER + pkg(*STAGES), "the core is below every stage"),
    "loretune.stack": (PREFECT_LAYER + pkg(*STAGES), "the local stack starts servers; it runs no stage code"),
    "loretune.postgres": (PREFECT_LAYER + pkg(*STAGES), "PostgreSQL for the stack's server; it runs no stage code"),
    "loretune.processes": (PREFECT_LAYER + pkg(*STAGES), "the core is below every stage"),
    "loretune.samples": (PREFECT_LAYER + pkg(*STAGES), "the sample server serves recorded sources; it runs no stage code"),
    # the Prefect layer: tasks are thin and never reach up into flows
    "loretune.tasks": (pkg("flows"), "tasks are composed by flows, never the other way round"),
}


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def violations(find: import_graph.Locate = import_graph.locate) -> list[str]:
    """Every (module, forbidden import) pair in the tree `find` reads, as readable lines."""
    found = []
    for owner, (forbidden, why) in CONTRACTS.items():
        owners = import_graph.modules_in(owner, find) if import_graph.is_package(owner, find) else {owner}
        for module in sorted(owners):
            for target in sorted(import_graph.all_imports(module, find)):
                if any(within(target, f) for f in forbidden):
                    found.append(f"{module} imports {target}: {why}")
    return found


def tree_locator(root: Path) -> import_graph.Locate:
    """Where a module's source lies in a checkout at `root`, from its pyproject's package-dir, so a
    test can read a copy of the tree it edits without installing it."""
    dirs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]

    def find(module: str) -> Path | None:
        owner = max((p for p in dirs if within(module, p)), key=len, default=None)
        if owner is None:
            return None
        rest = module[len(owner):].lstrip(".")
        base = root / dirs[owner] / Path(*rest.split(".")) if rest else root / dirs[owner]
        if (base / "__init__.py").is_file():
            return base / "__init__.py"
        return base.with_suffix(".py") if rest and base.with_suffix(".py").is_file() else None

    return find


def copy_checkout(target: Path) -> Path:
    """The project's source folders and pyproject.toml, copied to `target` (a second checkout)."""
    dirs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    for folder in sorted({d.split("/")[0] for d in dirs.values()}):
        shutil.copytree(REPO / folder, target / folder, ignore=shutil.ignore_patterns("__pycache__", "snapshot"))
    shutil.copy(REPO / "pyproject.toml", target / "pyproject.toml")
    return target


# What a stage library may take from the config module: the state folder, a path, not a section.
CONFIG_NAMES_ALLOWED = {"state_dir"}


def config_imports(find: import_graph.Locate = import_graph.locate) -> list[str]:
    """Every place a stage library imports a config section (libraries take plain values; the task
    translates the config at the Prefect boundary)."""
    found = []
    for stage in STAGES:
        for module in sorted(import_graph.modules_in(f"loretune.{stage}", find)):
            for node in ast.walk(ast.parse(find(module).read_text())):
                if isinstance(node, ast.ImportFrom) and node.module == "loretune.config":
                    found += [f"{module} imports loretune.config.{a.name}" for a in node.names
                              if a.name not in CONFIG_NAMES_ALLOWED]
                elif isinstance(node, ast.Import) and any(a.name == "loretune.config" for a in node.names):
                    found.append(f"{module} imports loretune.config")
    return found


def test_stage_libraries_take_plain_values_not_config_sections(tmp_path):
    assert config_imports() == []
    root = copy_checkout(tmp_path)
    with open(root / "training" / "sft.py", "a") as handle:
        handle.write("\n\ndef later():\n    from loretune.config import TrainingConfig\n")
    assert config_imports(tree_locator(root)) == ["loretune.training.sft imports loretune.config.TrainingConfig"]


def test_every_layer_contract_holds():
    assert violations() == []


def test_the_contracts_cover_every_project_package():
    packages = {m for m in import_graph.modules_in("loretune") if import_graph.is_package(m)}
    for stage in STAGES:
        packages |= {m for m in import_graph.modules_in(f"loretune.{stage}") if import_graph.is_package(m)}
    uncovered = {p for p in packages if not any(within(p, owner) for owner in CONTRACTS)}
    assert uncovered == {"loretune"}, f"packages no contract speaks for: {sorted(uncovered - {'loretune'})}"
    assert set(STAGES) <= {owner.removeprefix("loretune.") for owner in CONTRACTS}


@pytest.mark.parametrize("importer, source, expected", [
    ("evaluation/binary_choice.py", "from loretune.training.sft import train\n",
     "loretune.evaluation.binary_choice imports loretune.training.sft: evaluation never imports the training loop"),
    ("export/parity.py", "def later():\n    from loretune.training import sft\n",
     "loretune.export.parity imports loretune.training.sft: export never imports the training loop"),
    ("dataset/builders.py", "import transformers\n",
     "loretune.dataset.builders imports transformers: the dataset knows nothing of models"),
    ("dataset/card.py", "from loretune.model import chat_format\n",
     "loretune.dataset.card imports loretune.model.chat_format: the dataset knows nothing of models"),
    ("model/loading.py", "from prefect import task\n",
     "loretune.model.loading imports prefect: the model is shared by every later stage and depends on none of them"),
    ("training/sft.py", "from loretune.tasks.stage import publish_stage\n",
     "loretune.training.sft imports loretune.tasks.stage: training comes before evaluation and export"),
])
def test_a_forbidden_import_is_caught_and_named(tmp_path, importer, source, expected):
    """The check itself can fail: each rule, broken once in a copy of the tree (a lazy import
    inside a function included), is reported with the importing module and the rule's reason."""
    root = copy_checkout(tmp_path)
    with open(root / importer, "a") as handle:
        handle.write("\n\n" + source)
    assert expected in violations(tree_locator(root))
