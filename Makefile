# Harness: every install step lives here (a venv under the repo, pinned versions in pyproject.toml).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROTOS := $(shell find protos -name '*.proto')
GEN_STAMP := gen/.stamp
# npm ci writes this file; the Node.js client's packages are reinstalled when the lock changes.
NODE_STAMP := clients/node/node_modules/.package-lock.json

.PHONY: install system-deps proto run test test-fast lint bench bench-fleet bench-capacity certs clean help example-rag

help:
	@echo "make run    - install, generate, make certs, start the local stack (Ctrl-C stops it)"
	@echo "make test   - the full test suite (PostgreSQL and Redis on their default ports)"
	@echo "make lint   - ruff (style) and import-linter (services never import each other; no cycles)"
	@echo "make bench  - benchmarks in bench/"
	@echo "make example-rag - the LangGraph RAG agent (examples/rag_agent) against the stack of make run"
	@echo "make bench-capacity - what one router, audit and cost replica handle, Redis commands per request (~2 min; README, Scaling out)"
	@echo "make bench-fleet - fleet scenario: static per-agent GPUs vs the pooled Harness with its scaling loop (~4 min; charts in bench/fleet/out/)"

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24,<27"
	$(PY) -m pip install --quiet -e ".[dev,triton,examples,deploy,embeddings]"
	@# Generated stubs live in gen/ (not committed); put it on the venv's path.
	echo "$(CURDIR)/gen" > $$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/harness_gen.pth
	touch $(STAMP)

# Debian packages the stack and the tests run: Prometheus (brings promtool) for `harness up`'s
# monitoring and the alert-rule tests; Node.js and npm for the Node.js client (clients/node).
system-deps:
	@command -v prometheus >/dev/null && command -v promtool >/dev/null || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; }
	@command -v node >/dev/null && command -v npm >/dev/null || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm; }

# The Node.js client's exact dependency tree, from its committed package-lock.json.
$(NODE_STAMP): clients/node/package.json clients/node/package-lock.json
	cd clients/node && npm ci --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

install: system-deps $(STAMP) $(NODE_STAMP)

$(GEN_STAMP): $(STAMP) $(PROTOS)
	rm -rf gen && mkdir -p gen
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=gen --pyi_out=gen --grpc_python_out=gen $(PROTOS)
	find gen -type d -exec touch {}/__init__.py \;
	rm -f gen/__init__.py
	touch $(GEN_STAMP)

proto: $(GEN_STAMP)

certs: proto
	$(PY) -m services.devtools.certs_cli --out .harness/certs

run: system-deps proto
	$(VENV)/bin/harness up

test: system-deps proto $(NODE_STAMP)
	$(PY) -m pytest -q

test-fast: system-deps proto $(NODE_STAMP)
	$(PY) -m pytest -q -m "not e2e"

lint: proto
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check services tests bench examples README.md
	$(VENV)/bin/lint-imports

bench: proto
	$(PY) bench/enginesim.py
	$(PY) bench/router_overhead.py --quick
	$(PY) bench/openai_frontdoor.py --quick
	$(PY) bench/openai_asgi.py
	$(PY) bench/openai_asgi.py --with all
	$(PY) bench/scheduling_decision.py --quick
	$(PY) bench/prefix_affinity.py --quick
	$(PY) bench/overload.py --quick
	$(PY) bench/pii_corpus.py
	$(PY) bench/cost_reads.py --rows 20000

bench-capacity: proto
	$(PY) bench/capacity.py $(ARGS)

bench-fleet: proto
	$(PY) -m bench.fleet $(ARGS)

# The example RAG agent against a running `make run` stack (reads .harness/env); ARGS passes options.
example-rag: $(STAMP)
	$(PY) -m examples.rag_agent $(ARGS)

clean:
	rm -rf gen .harness .pytest_cache
