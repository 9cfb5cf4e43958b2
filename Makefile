# qadhya.dbops — everything a person or CI runs goes through these targets.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

VENV ?= .venv
BIN := $(CURDIR)/$(VENV)/bin
INSTANCE ?= default
COLLECTION_LINK := .cache/collections/ansible_collections/qadhya/dbops

export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export PATH := $(BIN):$(PATH)
export ANSIBLE_FORCE_COLOR ?= 0

.PHONY: help bootstrap venv images lab-up lab-reset lab-down lab-status demo test lint sanity \
        unit integration build changelog bench clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: requirements.txt
	python=$$(.ci/find-python); "$$python" -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

$(COLLECTION_LINK):
	mkdir -p $(@D) && ln -sfn ../../../.. $@

bootstrap: ## Install what the lab needs (Docker, debootstrap, Compose v2) and start the engine
	.ci/bootstrap

venv: $(VENV)/.installed $(COLLECTION_LINK) ## Create the virtualenv and expose the checkout as qadhya.dbops

images: bootstrap venv ## Build the lab images, PostgreSQL 15 and 17 (offline-capable)
	$(BIN)/python lab/lab.py build

# `lab.py up` builds the images its instance needs (PostgreSQL 15 only), so a
# demo does not wait for the PostgreSQL 17 image the tests use.
lab-up: bootstrap venv ## Bring the lab (INSTANCE=default) to the incident state
	$(BIN)/python lab/lab.py up --instance $(INSTANCE)

lab-reset: ## Reset the lab (INSTANCE=default) to the incident state in seconds
	$(BIN)/python lab/lab.py reset --instance $(INSTANCE)

lab-down: ## Remove the lab instance (INSTANCE=default)
	$(BIN)/python lab/lab.py down --instance $(INSTANCE)

lab-status: ## Show databases, row counts, env file and health of the lab
	$(BIN)/python lab/lab.py status --instance $(INSTANCE)

demo: lab-up ## Replay the incident on the lab and consolidate it
	@if [ -f playbooks/consolidate.yml ]; then \
	  ansible-playbook playbooks/consolidate.yml -i inventory/lab; \
	else \
	  $(BIN)/python lab/lab.py status --instance $(INSTANCE); \
	fi

lint: venv ## ansible-lint (production profile) and ruff
	ansible-lint --offline
	ruff check .

sanity: venv ## ansible-test sanity from an ansible_collections tree
	tests/sanity/run.sh

unit: venv ## Unit tests only
	pytest tests/unit

integration: images ## Integration tests on the real lab
	pytest -m integration tests/integration

# Test files run side by side on TEST_WORKERS workers (each file's lab
# instances are its own); most of their time is spent waiting on Docker.
# They start longest first (tests/conftest.py, tests/durations.json), so
# that no worker is left with a long file while the other idles.
TEST_WORKERS ?= 2

test: lint sanity images ## Everything CI runs: lint, sanity, unit and integration tests
	pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder tests/unit tests/integration

build: venv ## Build the collection tarball into .cache/dist
	ansible-galaxy collection build --force --output-path .cache/dist .

changelog: venv ## Regenerate CHANGELOG.md from the fragments
	antsibull-changelog release --version "$$(awk '/^version:/ {print $$2}' galaxy.yml)"

# QUICK=1: 2 repetitions and a 50 MB database instead of 5 and 1 GB. Lab
# instances are named after QADHYA_IT_PREFIX (else "bench").
bench: images ## Shell sequence, peer playbook and ours side by side; backups and checks at scale
	$(BIN)/python bench/run.py $(if $(QUICK),--quick)

clean: ## Remove the virtualenv and caches (the lab stays; see lab-down)
	rm -rf $(VENV) .cache .pytest_cache .ruff_cache
