# The factory's images for compose.yaml (README "Full stack (compose)").
#   app     the chat, the workers and the one-shot `init`: requirements.lock, then the project with
#           --no-deps, as `make install` does, so a container runs what the tests ran; Mermaid's parser
#           for the mermaid check from verify/mermaid's lock (npm ci, as `make install` does);
#   litellm the LiteLLM proxy of proxy mode, from its own lock (its `proxy` extra cannot share the
#           app's environment: it needs mcp>=2.2, chainlit mcp<2).
# Base images are pinned by version (tests/unit/test_compose.py checks it).

FROM python:3.11.13-slim-bookworm AS build
# llama-cpp-python compiles from source: a portable x86-64 baseline, as in the Makefile (-march=native
# kernels crashed on a VM that reports AMX, and an image moves between machines).
ARG CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
ENV CMAKE_ARGS=${CMAKE_ARGS} UV_PYTHON_DOWNLOADS=never UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake nodejs npm \
 && rm -rf /var/lib/apt/lists/* \
 && pip install --no-cache-dir -q 'uv==0.13.9' \
 && python -m venv /opt/venv
WORKDIR /app
# The lock first: this layer is rebuilt only when the lock changes, not on every source edit.
COPY requirements.lock ./
RUN uv pip install --python /opt/venv/bin/python -r requirements.lock
# Mermaid's own parser (issue 19) from its lock, likewise before the sources (.dockerignore leaves a
# local node_modules out); it has no install scripts and none are run.
COPY verify/mermaid/package.json verify/mermaid/package-lock.json verify/mermaid/
RUN npm ci --prefix verify/mermaid --no-audit --no-fund --ignore-scripts
COPY . .
# Then the project itself, without resolving anything again; and the embedded model must decode on
# this build (the Makefile's check), not fail at the first run.
RUN uv pip install --python /opt/venv/bin/python --no-deps -e . \
 && /opt/venv/bin/python -m routing.embedded

FROM python:3.11.13-slim-bookworm AS app
# libgomp1: llama.cpp's OpenMP runtime, which the slim image lacks; bubblewrap: the sandbox in which the
# verification gate runs produced code (issue 19; the container must allow unprivileged user namespaces);
# nodejs: runs Mermaid's parser for the mermaid check (its node_modules come with /app).
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 bubblewrap nodejs \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --create-home --shell /usr/sbin/nologin factory \
 && mkdir -p /data /srv/litellm \
 && chown factory:factory /data /srv/litellm
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
# /data is the factory's data dir (a named volume: bundles, the chat's files); Chainlit's app root is
# under it from the first import on, since /app is read-only to the factory user.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    FACTORY_DATA_DIR=/data \
    CHAINLIT_APP_ROOT=/data/chat
WORKDIR /app
USER factory
EXPOSE 8000 9101
CMD ["factory", "up", "--host", "0.0.0.0", "--port", "8000", "--no-worker"]

FROM python:3.11.13-slim-bookworm AS litellm
ENV UV_PYTHON_DOWNLOADS=never UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy
COPY requirements-proxy.lock /tmp/requirements-proxy.lock
# uv stays outside the proxy's environment: `pip sync` leaves exactly the lock in it.
RUN pip install --no-cache-dir -q 'uv==0.13.9' \
 && python -m venv /opt/litellm \
 && uv pip sync --no-cache --python /opt/litellm/bin/python /tmp/requirements-proxy.lock \
 && useradd --uid 10002 --create-home --shell /usr/sbin/nologin litellm
# LITELLM_LOCAL_MODEL_COST_MAP: the price map LiteLLM ships, not one fetched at start-up.
ENV PATH=/opt/litellm/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    LITELLM_LOCAL_MODEL_COST_MAP=True
USER litellm
EXPOSE 4000
CMD ["litellm", "--config", "/etc/litellm/config.yaml", "--host", "0.0.0.0", "--port", "4000"]
