# Set-up contract: `make up` runs the factory on embedded defaults; `make test` runs every test.
VENV ?= .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
# llama-cpp-python compiles from source: build for a portable x86-64 baseline (AVX2/FMA), not
# -march=native, whose AMX/AVX-512 kernels crashed (SIGSEGV in decode) on a VM that reports AMX.
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
REQUIREMENT ?= Build a URL shortener service with an HTTP API: create short links, redirect to the target, and count clicks.

.PHONY: install up run down doctor test test-fast lint format typecheck bench lock clean

install: $(VENV)/.installed
	@# Produced code runs only in Debian's bubblewrap (issue 19): installed here when missing and root;
	@# else a note. Never fatal: without it the checks that run code report "not run", nothing runs bare.
	@command -v bwrap >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap) >/dev/null 2>&1 || true; \
	  fi; \
	  command -v bwrap >/dev/null 2>&1 || echo "note: the sandbox of produced code needs bubblewrap: apt-get install bubblewrap"; }
	@# The mermaid check runs Mermaid's own parser in Node.js (issue 19): verify/mermaid's lock installed
	@# when node_modules is missing or older than the lock. Never fatal: without it only diagram types are checked.
	@if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then \
	  if [ ! -d verify/mermaid/node_modules ] || [ verify/mermaid/package-lock.json -nt verify/mermaid/node_modules ]; then \
	    timeout 900 npm ci --prefix verify/mermaid --no-audit --no-fund --ignore-scripts \
	      || echo "note: npm ci --prefix verify/mermaid failed; the mermaid check only checks diagram types until it succeeds"; \
	  fi; \
	else echo "note: the mermaid check needs Node.js and npm for Mermaid's parser: apt-get install nodejs npm, then make install"; fi

$(VENV)/.installed: requirements.lock pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check 'uv==0.13.9'
	$(UV) pip install -q --python $(PY) -r requirements.lock
	$(UV) pip install -q --python $(PY) --no-deps -e .
	@# Bytecode compiled once here: where PYTHONDONTWRITEBYTECODE is set (this machine's kind sets it),
	@# every `factory` process would otherwise compile LiteLLM and the rest from source (~10 s each).
	$(PY) -m compileall -q -j 0 "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" >/dev/null
	@# a llama.cpp build cached from another CPU can crash on this one: check it decodes, else rebuild
	$(PY) -m routing.embedded || $(UV) pip install -q --python $(PY) -r requirements.lock \
	  --refresh-package llama-cpp-python --reinstall-package llama-cpp-python
	$(PY) -m routing.embedded
	touch $@

up: install  ## start the embedded services, a worker and the chat; open the printed URL (Ctrl-C stops)
	$(VENV)/bin/factory up $(if $(HOST),--host $(HOST)) $(if $(PORT),--port $(PORT))

run: install
	$(VENV)/bin/factory run "$(REQUIREMENT)" --pipeline $(or $(PIPELINE),phase1)

down: install
	$(VENV)/bin/factory down

doctor: install
	$(VENV)/bin/factory doctor

test: install  ## lint, types, then every test: unit, integration (real services), slow (real embedded model)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy factory teams routing memory hitl observability broker chat api verify
	$(VENV)/bin/pytest

test-fast: install
	$(VENV)/bin/pytest -m "not slow"

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

typecheck: install
	$(VENV)/bin/mypy factory teams routing memory hitl observability broker chat api verify

bench: install
	$(PY) -m bench.pipeline_overhead
	$(PY) -m bench.routing
	$(PY) -m bench.chat
	$(PY) -m bench.scale
	$(PY) -m bench.groupchat
	$(PY) -m bench.api
	$(PY) -m bench.verify

lock:  ## re-resolve requirements.lock from pyproject.toml
	$(UV) pip compile pyproject.toml --extra dev --python-version 3.11 --python-platform x86_64-manylinux_2_28 -o requirements.lock

clean:
	rm -rf $(VENV) .venv-proxy .venv-proxy.lock .pytest_cache .ruff_cache .mypy_cache
