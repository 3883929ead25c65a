# Every target does its own set-up: `make run` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROTO_FILES := $(wildcard proto/sandbox/v1/*.proto)
PROTO_OUT := client/sandbox_client/protocol/v1
PYTEST_ARGS ?=

.PHONY: setup run test lint proto proto-check bench bench-container image docker clean

setup: $(STAMP)

$(STAMP): pyproject.toml client/pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 is required"'
	test -x $(BIN)/pip || $(PYTHON) -m venv --clear $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e './client[examples]' -e '.[dev]'
	touch $(STAMP)

# Containers too when this machine has a Docker engine and the runner image (`make docker`).
run: setup
	$(BIN)/sandbox serve --containers auto $(ARGS)

test: setup
	$(BIN)/pytest $(PYTEST_ARGS)

# Generated code is committed; `proto-check` (part of lint) fails when it is stale.
proto: setup
	scripts/gen_proto.sh $(BIN)/python $(PROTO_OUT)

proto-check: setup
	scripts/gen_proto.sh $(BIN)/python "$$(mktemp -d)" --check $(PROTO_OUT)

node_modules/.bin/buf: package.json
	npm install --silent --no-audit --no-fund
	touch $@

lint: setup node_modules/.bin/buf proto-check
	node_modules/.bin/buf lint
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: setup
	$(BIN)/python -m bench.monty_roundtrip $(ARGS)
	$(BIN)/python -m bench.tool_relay

# Needs `make docker` first.
bench-container: setup
	$(BIN)/python -m bench.container_roundtrip
	$(BIN)/python -m bench.tool_relay --container

# The container backend's images, built from the Debian mirror with no registry pull.
image:
	scripts/build_images.sh

# A Docker engine (installed from Debian if missing, gVisor registered) and the images.
docker:
	scripts/ci_docker.sh

clean:
	rm -rf $(VENV) node_modules .pytest_cache .mypy_cache .ruff_cache
