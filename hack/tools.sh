#!/usr/bin/env bash
# Build pinned upstream tools (the Kubernetes binaries, etcd, kwok, helm, prometheus,
# jaeger, and for kind clusters kind and coredns) from source with the local Go toolchain.
# Independent builds run in parallel: on 2 cores the link steps and downloads of one
# overlap the compiles of another.
#
# Builds happen in a version-keyed cache OUTSIDE the checkout:
#   ${PENSTOCK_TOOLS_CACHE:-$HOME/.cache/penstock-tools}/<tool>-<version>/bin/<binary>
# and are symlinked into <repo>/bin/, so a second run (or a fresh clone on a machine
# with a warm cache) only re-creates symlinks.  Nothing fetched is ever written into
# the repository.
#
# Usage: hack/tools.sh [--force]        (--force rebuilds everything)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=tools-versions.env
source "$ROOT/hack/tools-versions.env"
# shellcheck source=kind-versions.env
source "$ROOT/hack/kind-versions.env"

CACHE="${PENSTOCK_TOOLS_CACHE:-${HOME:-/root}/.cache/penstock-tools}"
BIN="$ROOT/bin"
JOBS="${PENSTOCK_TOOLS_JOBS:-$(nproc 2>/dev/null || echo 2)}"
FORCE=0
[[ "${1:-}" == "--force" ]] && FORCE=1

# Never let the go command download another toolchain, and build reproducibly.
export GOTOOLCHAIN=local
export GOFLAGS="${GOFLAGS:-} -trimpath -buildvcs=false"
export CGO_ENABLED="${CGO_ENABLED:-0}"
export GO111MODULE=on

START_ALL=$(date +%s)
log() { printf '[tools] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
elapsed() { local s=$(( $(date +%s) - $1 )); printf '%dm%02ds' $((s / 60)) $((s % 60)); }

command -v go >/dev/null || die "go is not on PATH (need Go >= 1.26)"
mkdir -p "$CACHE" "$BIN"

# run_logged <label> <logfile> <cmd...>: run a long command with its output in a log
# file and a heartbeat line every 60 s; print the log tail on failure.
run_logged() {
  local label="$1" logf="$2"; shift 2
  local t0; t0=$(date +%s)
  "$@" >"$logf" 2>&1 &
  local pid=$!
  (
    while sleep 60; do
      kill -0 "$pid" 2>/dev/null || exit 0
      log "  ... $label: $(elapsed "$t0") elapsed, $(grep -c . "$logf" 2>/dev/null || echo 0) log lines"
    done
  ) &
  local hb=$!
  local rc=0
  wait "$pid" || rc=$?
  kill "$hb" 2>/dev/null || true
  wait "$hb" 2>/dev/null || true
  if [[ $rc -ne 0 ]]; then
    log "FAILED: $label (exit $rc) after $(elapsed "$t0"); last lines of $logf:"
    tail -n 40 "$logf" >&2
    exit "$rc"
  fi
}

# with_cache_lock <dir> <function>: serialize concurrent builds of the same tool.
with_cache_lock() {
  local dir="$1"; shift
  mkdir -p "$dir"
  exec {lockfd}>"$dir.lock"
  flock "$lockfd"
  "$@"
  local rc=$?
  flock -u "$lockfd"
  exec {lockfd}>&-
  return $rc
}

is_built() { # <dir> <binaries...>
  local dir="$1"; shift
  [[ $FORCE -eq 0 && -f "$dir/.complete" ]] || return 1
  local b; for b in "$@"; do [[ -x "$dir/bin/$b" ]] || return 1; done
}

link() { # <dir> <binaries...>
  local dir="$1"; shift
  local b; for b in "$@"; do ln -sfn "$dir/bin/$b" "$BIN/$b"; done
}

mark_complete() { printf 'built %s with %s\n' "$(date -u +%FT%TZ)" "$(go version)" >"$1/.complete"; }

# The commit hash the Go module proxy records for a module version, if it records one
# (proxy.golang.org often does not; then the version strings say "unknown").
origin_hash() {
  go mod download -json "$1" 2>/dev/null | sed -n 's/.*"Hash": *"\([0-9a-f]*\)".*/\1/p' | head -n1
}

# ---------------------------------------------------------------- kubernetes
K8S_DIR="$CACHE/kubernetes-$KUBERNETES_VERSION"
# The first four serve the kwok control plane; kubelet, kubeadm and kube-proxy go into the
# kind node image (hack/kind.sh). One build: they share most packages.
K8S_BINS=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kubeadm kube-proxy)

build_kubernetes() {
  is_built "$K8S_DIR" "${K8S_BINS[@]}" && return 0
  local t0; t0=$(date +%s)
  log "building ${K8S_BINS[*]} $KUBERNETES_VERSION (a cold build takes minutes) ..."
  local mod="$K8S_DIR/mod"
  rm -rf "$mod" "$K8S_DIR/bin" "$K8S_DIR/.complete"
  mkdir -p "$mod" "$K8S_DIR/bin"
  # k8s.io/kubernetes replaces its k8s.io/* staging modules with ./staging/...; those
  # replacements do not apply to a dependency, so a throwaway module requires it and
  # maps each staging module to its published v0.<minor>.<patch> release instead.
  local stage_ver="v0.${KUBERNETES_VERSION#v1.}"
  local gomod
  gomod=$(cd "$mod" && go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" | sed -n 's/.*"GoMod": *"\(.*\)".*/\1/p')
  [[ -f "$gomod" ]] || die "could not download k8s.io/kubernetes@$KUBERNETES_VERSION go.mod"
  {
    echo "module penstock.local/kubernetes-tools"
    echo
    echo "go $(go env GOVERSION | sed -E 's/^go([0-9]+\.[0-9]+).*/\1/')"
    echo
    echo "require k8s.io/kubernetes $KUBERNETES_VERSION"
    echo
    echo "replace ("
    sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\1#p' "$gomod" | while read -r m; do
      case "$m" in k8s.io/sample-*) continue ;; esac # not published, not needed
      echo "	$m => $m $stage_ver"
    done
    echo ")"
    echo
    echo "tool ("
    local b; for b in "${K8S_BINS[@]}"; do echo "	k8s.io/kubernetes/cmd/$b"; done
    echo ")"
  } >"$mod/go.mod"
  run_logged "go mod tidy (kubernetes)" "$K8S_DIR/tidy.log" bash -c "cd '$mod' && go mod tidy"

  local commit; commit=$(cd "$mod" && origin_hash "k8s.io/kubernetes@$KUBERNETES_VERSION")
  local v="${KUBERNETES_VERSION#v}"
  local major="${v%%.*}" minor; minor="${v#*.}"; minor="${minor%%.*}"
  local date; date=$(cd "$mod" && go list -m -json "k8s.io/kubernetes" | sed -n 's/.*"Time": *"\([^"]*\)".*/\1/p' | head -n1)
  local ld="-s -w" pkg
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    ld+=" -X $pkg.gitCommit=${commit:-unknown} -X $pkg.gitTreeState=clean -X $pkg.buildDate=${date:-1970-01-01T00:00:00Z}"
  done
  local pkgs=(); for b in "${K8S_BINS[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$b"); done
  run_logged "go build ${K8S_BINS[*]}" "$K8S_DIR/build.log" \
    bash -c "cd '$mod' && go build -v -p '$JOBS' -ldflags '$ld' -o '$K8S_DIR/bin/' ${pkgs[*]}"
  mark_complete "$K8S_DIR"
  log "built ${K8S_BINS[*]} $KUBERNETES_VERSION in $(elapsed "$t0")"
}

# ---------------------------------------------------------------- etcd
ETCD_DIR="$CACHE/etcd-$ETCD_VERSION"

build_etcd() {
  is_built "$ETCD_DIR" etcd && return 0
  local t0; t0=$(date +%s)
  log "building etcd $ETCD_VERSION ..."
  local mod="$ETCD_DIR/mod"
  rm -rf "$mod" "$ETCD_DIR/bin" "$ETCD_DIR/.complete"
  mkdir -p "$mod" "$ETCD_DIR/bin"
  # The etcd main module uses relative replace directives (go install refuses it), so
  # a throwaway module with the same two-line main as upstream's etcd binary.
  cat >"$mod/go.mod" <<GOMOD
module penstock.local/etcd

go $(go env GOVERSION | sed -E 's/^go([0-9]+\.[0-9]+).*/\1/')

require go.etcd.io/etcd/server/v3 $ETCD_VERSION
GOMOD
  cat >"$mod/main.go" <<'GOMAIN'
// Generated by Penstock's hack/tools.sh: the etcd server binary.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GOMAIN
  run_logged "go mod tidy (etcd)" "$ETCD_DIR/tidy.log" bash -c "cd '$mod' && go mod tidy"
  local commit; commit=$(cd "$mod" && origin_hash "go.etcd.io/etcd/server/v3@$ETCD_VERSION")
  run_logged "go build etcd" "$ETCD_DIR/build.log" bash -c \
    "cd '$mod' && go build -v -p '$JOBS' -ldflags '-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=${commit:-unknown}' -o '$ETCD_DIR/bin/etcd' ."
  mark_complete "$ETCD_DIR"
  log "built etcd $ETCD_VERSION in $(elapsed "$t0")"
}

# ---------------------------------------------------------------- go install tools
# go_install <name> <version> <module-path/cmd> <ldflags>
go_install() {
  local name="$1" ver="$2" pkg="$3" ld="$4"
  local dir="$CACHE/$name-$ver"
  is_built "$dir" "$name" && return 0
  local t0; t0=$(date +%s)
  log "building $name $ver ..."
  rm -rf "$dir/bin" "$dir/.complete"
  mkdir -p "$dir/bin"
  run_logged "go install $name" "$dir/build.log" \
    env GOBIN="$dir/bin" go install -v -p "$JOBS" -ldflags "$ld" "$pkg@$ver"
  mark_complete "$dir"
  log "built $name $ver in $(elapsed "$t0")"
}

build_kwok() {
  go_install kwok "$KWOK_VERSION" sigs.k8s.io/kwok/cmd/kwok \
    "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v}"
}

# kwok v0.8 refuses to start without Stage objects; its default stages ship in its
# module under kustomize/stage/.  Assemble the "fast" set (node-initialize,
# node-heartbeat-with-lease, pod-ready/complete/delete) into one config file next to
# the kwok binary in the cache (never into the repository).
kwok_stages() {
  local dir="$CACHE/kwok-$KWOK_VERSION"
  [[ $FORCE -eq 0 && -s "$dir/stages.yaml" ]] && return 0
  local src
  src=$(cd "$dir" && go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | sed -n 's/.*"Dir": *"\(.*\)".*/\1/p')
  [[ -d "$src/kustomize/stage" ]] || die "kwok $KWOK_VERSION module source not found"
  local f out="$dir/stages.yaml.tmp"
  : >"$out"
  for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
    pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
    { echo "---"; cat "$src/kustomize/stage/$f"; } >>"$out"
  done
  mv "$out" "$dir/stages.yaml"
}

build_helm() {
  local major="${HELM_VERSION%%.*}"
  go_install helm "$HELM_VERSION" "helm.sh/helm/$major/cmd/helm" \
    "-s -w -X helm.sh/helm/$major/internal/version.version=$HELM_VERSION -X helm.sh/helm/$major/internal/version.gitTreeState=clean"
}

# Prometheus server (for the throughput tuner's integration tests).  Prometheus 3.x is
# published as the Go module github.com/prometheus/prometheus with tags v0.3MM.P for
# release 3.MM.P; its go.mod has no replace directives, so go install works directly.
# Built WITHOUT the `builtinassets` tag: the web UI's compiled assets (web/ui/static) are
# not in the module, so the UI pages are unavailable but the HTTP API (/api/v1/...) works.
build_prometheus() {
  local dir="$CACHE/prometheus-$PROMETHEUS_VERSION"
  is_built "$dir" prometheus && return 0
  local m="${PROMETHEUS_VERSION#v0.}" # 316.0
  local mm="${m%%.*}" patch="${m#*.}"
  local release="${mm:0:1}.$((10#${mm:1})).$patch" # 3.16.0
  local date; date=$(cd "$dir" && go mod download -json "github.com/prometheus/prometheus@$PROMETHEUS_VERSION" 2>/dev/null |
    sed -n 's/.*"Info": *"\(.*\)".*/\1/p' | xargs -r sed -n 's/.*"Time": *"\([^"]*\)".*/\1/p' | head -n1)
  local commit; commit=$(cd "$dir" && origin_hash "github.com/prometheus/prometheus@$PROMETHEUS_VERSION")
  local pv=github.com/prometheus/common/version
  go_install prometheus "$PROMETHEUS_VERSION" github.com/prometheus/prometheus/cmd/prometheus \
    "-s -w -X $pv.Version=$release -X $pv.Revision=${commit:-unknown} -X $pv.Branch=HEAD -X $pv.BuildUser=penstock-tools -X $pv.BuildDate=${date:-unknown}"
}

# Jaeger v2 (an OpenTelemetry collector distribution with Jaeger's storage and query UI):
# the trace backend of the tracing tests, and the real collector binary that validates and
# runs the collector configuration the operator renders.  The Go module tags release 2.X as
# v1.(X+63); its go.mod has a replace directive, so a throwaway module repeats it.
JAEGER_DIR="$CACHE/jaeger-$JAEGER_VERSION"

build_jaeger() {
  is_built "$JAEGER_DIR" jaeger && return 0
  local t0; t0=$(date +%s)
  log "building jaeger $JAEGER_VERSION (a cold build takes minutes) ..."
  local mod="$JAEGER_DIR/mod"
  rm -rf "$mod" "$JAEGER_DIR/bin" "$JAEGER_DIR/.complete"
  mkdir -p "$mod" "$JAEGER_DIR/bin"
  local gomod
  gomod=$(cd "$mod" && go mod download -json "github.com/jaegertracing/jaeger@$JAEGER_VERSION" | sed -n 's/.*"GoMod": *"\(.*\)".*/\1/p')
  [[ -f "$gomod" ]] || die "could not download github.com/jaegertracing/jaeger@$JAEGER_VERSION go.mod"
  {
    echo "module penstock.local/jaeger"
    echo
    echo "go $(go env GOVERSION | sed -E 's/^go([0-9]+\.[0-9]+).*/\1/')"
    echo
    echo "require github.com/jaegertracing/jaeger $JAEGER_VERSION"
    echo
    grep '^replace ' "$gomod" || true
    echo
    echo "tool github.com/jaegertracing/jaeger/cmd/jaeger"
  } >"$mod/go.mod"
  run_logged "go mod tidy (jaeger)" "$JAEGER_DIR/tidy.log" bash -c "cd '$mod' && go mod tidy"
  run_logged "go build jaeger" "$JAEGER_DIR/build.log" bash -c \
    "cd '$mod' && go build -v -p '$JOBS' -ldflags '-s -w' -o '$JAEGER_DIR/bin/jaeger' github.com/jaegertracing/jaeger/cmd/jaeger"
  mark_complete "$JAEGER_DIR"
  log "built jaeger $JAEGER_VERSION in $(elapsed "$t0")"
}

# ---------------------------------------------------------------- kind
build_kind() {
  go_install kind "$KIND_VERSION" sigs.k8s.io/kind "-s -w"
}

# CoreDNS for the kind cluster's DNS addon (kubeadm names it registry.k8s.io/coredns/coredns).
build_coredns() {
  go_install coredns "$COREDNS_VERSION" github.com/coredns/coredns \
    "-s -w -X github.com/coredns/coredns/coremain.GitCommit=$COREDNS_VERSION"
}

# The quick ones, one after another (together about as long as one of the big builds).
build_small_tools() {
  with_cache_lock "$ETCD_DIR" build_etcd
  with_cache_lock "$CACHE/kwok-$KWOK_VERSION" build_kwok
  with_cache_lock "$CACHE/kwok-$KWOK_VERSION" kwok_stages
  with_cache_lock "$CACHE/helm-$HELM_VERSION" build_helm
  with_cache_lock "$CACHE/prometheus-$PROMETHEUS_VERSION" build_prometheus
  with_cache_lock "$CACHE/kind-$KIND_VERSION" build_kind
}

# ---------------------------------------------------------------- main
# Kubernetes first: the longest build, so it starts while the others queue behind it.
pids=()
in_background() { "$@" & pids+=($!); }
in_background with_cache_lock "$K8S_DIR" build_kubernetes
in_background with_cache_lock "$JAEGER_DIR" build_jaeger
in_background with_cache_lock "$CACHE/coredns-$COREDNS_VERSION" build_coredns
in_background build_small_tools
failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
[[ $failed -eq 0 ]] || die "a tool build failed (its log tail is above)"

link "$ETCD_DIR" etcd
link "$CACHE/kwok-$KWOK_VERSION" kwok
ln -sfn "$CACHE/kwok-$KWOK_VERSION/stages.yaml" "$BIN/kwok-stages.yaml"
link "$CACHE/helm-$HELM_VERSION" helm
link "$CACHE/prometheus-$PROMETHEUS_VERSION" prometheus
link "$JAEGER_DIR" jaeger
link "$K8S_DIR" "${K8S_BINS[@]}"
link "$CACHE/kind-$KIND_VERSION" kind
link "$CACHE/coredns-$COREDNS_VERSION" coredns

log "tools ready in $BIN: $(cd "$BIN" && ls | tr '\n' ' ')"
log "total wall time: $(elapsed "$START_ALL") ($(( $(date +%s) - START_ALL ))s)"
