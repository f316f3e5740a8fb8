# qlib workbook. Two commands matter: `make reproduce` and `make test`; both install what they need.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
PROFILE ?= cpu
PORT ?= 8080
# make serve: MODEL = smollm2-135m (default) | smollm2-135m-bc (the clone of ENV, from runs/$(PROFILE)/clones) | a GGUF file
MODEL ?= smollm2-135m
ENV ?=
# torch and llama.cpp share libgomp: busy-waiting threads make both 5-13x slower on shared cores
export OMP_WAIT_POLICY := PASSIVE
# pip, not the project, owns the llama.cpp build: the compiled wheel is cached after the first time.
LLAMA_CPP := llama-cpp-python[server]==0.3.36
# It is compiled for this CPU (-march=native) but without AMX: on a Sapphire Rapids machine ggml's AMX matmul
# segfaulted in llama_decode on any prompt longer than a few tokens (ggml_backend_amx_mul_mat). AVX-512 stays.
# Only x86_64 compilers know these flags. A wheel pip cached from a build without them is reused as is.
NO_AMX := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
LLAMA_CMAKE_ARGS := $(if $(filter x86_64,$(shell uname -m)),-DCMAKE_C_FLAGS='$(NO_AMX)' -DCMAKE_CXX_FLAGS='$(NO_AMX)')
DEPS_HASH := $(shell cat requirements.txt requirements-nodeps.txt pyproject.toml | sha256sum | cut -c1-16)
STAMP := $(VENV)/.qlib-setup-$(DEPS_HASH)

.PHONY: help setup test browser reproduce report smoke lab bench serve clean FORCE

help:
	@echo "make setup      create .venv and install pinned dependencies (idempotent)"
	@echo "make test       setup + Chromium (apt, where missing) + the test suite, a real-browser test included"
	@echo "make reproduce  setup + run every notebook headlessly (PROFILE=smoke|cpu|paper, default cpu)"
	@echo "make smoke      = make reproduce PROFILE=smoke"
	@echo "make report     every table and figure of notebooks 01-08 from the committed release, computing nothing"
	@echo "make lab        open the workbook in JupyterLab"
	@echo "make bench      print benchmark ratios"
	@echo "make serve      llama.cpp OpenAI-compatible server on 127.0.0.1:$(PORT) with the embedded model"
	@echo "                (MODEL=smollm2-135m-bc ENV=webshop|hotpotqa: the behaviour-cloned agent of runs/$(PROFILE)/clones/ENV)"
	@echo "make clean      remove test caches and the smoke run (keeps .venv, runs/cpu and committed results)"

setup: $(STAMP)

$(STAMP):
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip setuptools wheel
	$(PIP) install --quiet -r requirements.txt
	$(PIP) install --quiet --no-deps --require-hashes -r requirements-nodeps.txt
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) install --quiet "$(LLAMA_CPP)" torch==2.13.0
	$(PIP) install --quiet --no-deps --no-build-isolation -e .
	@rm -f $(VENV)/.qlib-setup-*
	@touch $@
	@echo "setup complete ($(STAMP))"

# The real-browser test (tests/test_browser.py) opens an exported notebook in headless Chromium: the Debian
# package, installed here when missing (as root or with passwordless sudo). QLIB_REQUIRE_BROWSER=1 makes that
# test fail, not skip, without a browser; `make test QLIB_REQUIRE_BROWSER=` lets it skip.
QLIB_REQUIRE_BROWSER ?= 1
export QLIB_REQUIRE_BROWSER
APT_CHROMIUM := DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium

test: setup browser
	$(PY) -m pytest -q

browser:
	@if [ -n "$$QLIB_CHROMIUM" ] || command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ]; then $(APT_CHROMIUM) || { apt-get update && $(APT_CHROMIUM); }; \
	elif sudo -n true 2>/dev/null; then sudo $(APT_CHROMIUM) || { sudo apt-get update && sudo $(APT_CHROMIUM); }; \
	else echo "make test: Chromium is missing and this user cannot install it; run 'sudo apt-get install chromium'" \
	          "(or set QLIB_CHROMIUM=/path/to/chrome): tests/test_browser.py fails without it" >&2; fi

# Each notebook is a stage, redone when the notebook, the library, the profile or the previous stage is
# newer. A stage's stamp lives under runs/<profile>/ (not in git), so a fresh clone runs every stage even
# though executed copies are committed in results/notebooks/. smoke writes under runs/smoke/ only.
RESULTS_DIR := $(if $(filter smoke,$(PROFILE)),runs/smoke/results,results)
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
STAMPS := runs/$(PROFILE)/stages
STAGES := $(patsubst notebooks/%.ipynb,$(STAMPS)/%.done,$(NOTEBOOKS))
QLIB_SOURCES := $(shell find qlib -type f \( -name '*.py' -o -name '*.json' -o -name '*.txt' \) 2>/dev/null)
PROFILE_MARK := $(RESULTS_DIR)/.profile

reproduce: setup $(STAGES)
	$(PY) -m qlib release --profile $(PROFILE)
	$(PY) -m qlib.workbook --profile $(PROFILE) --report

# The committed release (results/artifacts/run: trees, pairs, episodes, small models) is copied back into
# runs/<profile>/ before the first stage, so a fresh clone resumes from it instead of recollecting; redone
# when the release changes. A corrupt release, or a runs/ folder of another run, stops here with an error.
RELEASE_MANIFEST := $(wildcard $(RESULTS_DIR)/artifacts/run/MANIFEST.json)
$(STAMPS)/restore.done: $(RELEASE_MANIFEST) | setup
	$(PY) -m qlib release --profile $(PROFILE) --restore
	@mkdir -p $(@D) && touch $@

$(PROFILE_MARK): FORCE
	@mkdir -p $(@D)
	@[ "$$(cat $@ 2>/dev/null)" = "$(PROFILE)" ] || echo "$(PROFILE)" > $@

define STAGE_RULE
$(1): $(patsubst $(STAMPS)/%.done,notebooks/%.ipynb,$(1)) $(QLIB_SOURCES) $(PROFILE_MARK) | setup
	$(PY) -m qlib.workbook --profile $(PROFILE) --only $(basename $(notdir $(1))) --no-report
	@mkdir -p $$(@D) && touch $$@
endef
$(foreach stage,$(STAGES),$(eval $(call STAGE_RULE,$(stage))))
# each stage also depends on the one before it
chain = $(if $(word 2,$(1)),$(eval $(word 2,$(1)): $(word 1,$(1)))$(call chain,$(wordlist 2,999,$(1))))
$(call chain,$(STAGES))
# order-only: a new release (written at the end of every reproduce) does not redo the stages
$(firstword $(STAGES)): | $(STAMPS)/restore.done

smoke:
	$(MAKE) reproduce PROFILE=smoke

# Every table and figure of notebooks 01-08 from the committed release, computing nothing (eval.reuse_only):
# missing rows and models are left out with a warning instead of being run or trained. About a minute.
REPORT_NOTEBOOKS := $(filter-out 00_% 09_%,$(notdir $(basename $(NOTEBOOKS))))
report: $(STAMPS)/restore.done
	$(PY) -m qlib.workbook --profile $(PROFILE) --set eval.reuse_only=true $(addprefix --only ,$(REPORT_NOTEBOOKS))

lab: setup
	$(VENV)/bin/jupyter lab notebooks/

bench: setup
	$(PY) -m qlib bench

serve: setup
	$(PY) -m qlib.agent.serve --port $(PORT) --model $(MODEL) --profile $(PROFILE)$(if $(ENV), --env $(ENV))

clean:
	rm -rf .pytest_cache .hypothesis runs/smoke
	find . -name __pycache__ -prune -not -path "./$(VENV)/*" -exec rm -rf {} +
