#!/usr/bin/env bash
# Create (or bring up to date) the project venv .venv/ with exactly what uv.lock pins.
#
#   hack/venv.sh            uv sync --frozen: core + dev + examples extras (what CI tests)
#   hack/venv.sh --pip      the same set with plain pip, from the exported requirements-dev.txt
#   hack/venv.sh --lock     re-resolve uv.lock, then rewrite requirements.txt (runtime: the Penstock
#                           image), requirements-dev.txt and requirements-examples.txt (the example images)
#   hack/venv.sh --check    fail when uv.lock or the exported files are stale for pyproject.toml
#   hack/venv.sh --uv       print the path of the pinned uv (installing it first); hack/llm-wheel.sh
#
# The llm extra (a real generative model for the RAG example) is not in the default set: its
# llama-cpp-python is a compile of minutes, which hack/llm-wheel.sh does once into a cache.
#
# uv comes from PyPI (pinned by UV_VERSION in tools-versions.env) into its own small venv
# under ~/.cache/penstock-tools, never into the system Python. The project venv never sees
# the system site-packages.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=tools-versions.env
source "$ROOT/hack/tools-versions.env"
CACHE="${PENSTOCK_TOOLS_CACHE:-${HOME:-/root}/.cache/penstock-tools}"
PY="${PENSTOCK_PYTHON:-python3}"
VENV="$ROOT/.venv"
EXTRAS=(--extra dev --extra examples)
log() { printf '[venv] %s\n' "$*" >&2; }

uv_bin() {
  local dir="$CACHE/uv-$UV_VERSION"
  if [[ ! -x "$dir/bin/uv" ]]; then
    log "installing uv $UV_VERSION into $dir"
    rm -rf "$dir.tmp"
    "$PY" -m venv "$dir.tmp"
    "$dir.tmp/bin/python" -m pip install -q --disable-pip-version-check "uv==$UV_VERSION"
    rm -rf "$dir" && mv "$dir.tmp" "$dir"
    # A moved venv's scripts keep their old shebang; uv itself is a static binary, which is all we run.
  fi
  echo "$dir/bin/uv"
}

export_requirements() {
  local uv="$1" out="$2"; shift 2
  "$uv" export --quiet --frozen --no-emit-project --format requirements-txt --no-header "$@" -o "$out"
}

cd "$ROOT"
case "${1:-}" in
  "")
    uv=$(uv_bin)
    UV_PROJECT_ENVIRONMENT="$VENV" "$uv" sync --quiet --frozen --python "$PY" "${EXTRAS[@]}"
    ;;
  --pip)
    [[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps --require-hashes \
      -r requirements-dev.txt
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps -e .
    ;;
  --lock)
    uv=$(uv_bin)
    "$uv" lock --quiet
    export_requirements "$uv" requirements.txt
    export_requirements "$uv" requirements-dev.txt "${EXTRAS[@]}"
    export_requirements "$uv" requirements-examples.txt --extra examples
    ;;
  --check)
    uv=$(uv_bin)
    "$uv" lock --check --quiet || { log "uv.lock is stale: run make lock"; exit 1; }
    tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
    export_requirements "$uv" "$tmp/requirements.txt"
    export_requirements "$uv" "$tmp/requirements-dev.txt" "${EXTRAS[@]}"
    export_requirements "$uv" "$tmp/requirements-examples.txt" --extra examples
    for f in requirements.txt requirements-dev.txt requirements-examples.txt; do
      diff -q "$tmp/$f" "$f" >/dev/null || { log "$f is stale: run make lock"; exit 1; }
    done
    ;;
  --uv) uv_bin ;;
  *) log "unknown option $1"; exit 2 ;;
esac
