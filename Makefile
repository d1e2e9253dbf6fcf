# The two commands that matter: `make demo` and `make test` (see README).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
ARTIFACTS ?= artifacts

# Offline data: ../shared/data when it exists, unless the caller set E2EDGE_DATA_DIR.
SHARED_DATA := $(abspath ../shared/data)
ifeq ($(origin E2EDGE_DATA_DIR), undefined)
ifneq ($(wildcard $(SHARED_DATA)/README.md),)
export E2EDGE_DATA_DIR := $(SHARED_DATA)
endif
endif

.PHONY: install demo test lint gpu-check proto docs clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU build of torch that lies on this disk; a plain `torch` would pull a CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[export,cpu,dev]'
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m e2edge.demo --artifacts $(ARTIFACTS)

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy --follow-imports=silent --ignore-missing-imports tests/runtime/server/core/served_model_conformance.py

# Runs with the machine's own python (its CUDA torch, cuda-python), not the CPU venv:
# kernels vs references, benchmarks, the whole BitMed ViT, memcheck, the GPU tests.
gpu-check:
	PYTHON=$(PYTHON) sh scripts/gpu_check.sh $(ARTIFACTS)/gpu-check

proto: $(STAMP)
	$(BIN)/python proto/generate.py

# docs/reference/{cli,config,grpc}.md from the CLI parser, the config dataclasses and the
# .proto files (tests/docs/test_references.py fails when they are stale).
docs: $(STAMP)
	$(BIN)/python -m e2edge.reference

clean:
	rm -rf $(ARTIFACTS) .pytest_cache
