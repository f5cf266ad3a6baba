#!/usr/bin/env bash
# `make demo`: the main job on the local default. A local control plane, the CRD, the
# operator as a local process, and the example RAG pipeline, waited on until Ready.
#   hack/demo.sh up     start (idempotent)
#   hack/demo.sh down   stop the operator and the control plane
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${PENSTOCK_CLUSTER_DIR:-$ROOT/.cluster}"
NAMESPACE="${PENSTOCK_DEMO_NAMESPACE:-demo}"
OPERATOR_PID="$STATE/operator.pid"
OPERATOR_LOG="$STATE/logs/operator.log"
export PATH="$ROOT/bin:$PATH"

say() { printf '\033[1m[demo]\033[0m %s\n' "$*"; }

# Poll a condition (kubectl wait errors while .status.conditions is still unset).
wait_condition() { # <timeout s> <condition> <kubectl get args...>
  local deadline=$((SECONDS + $1)) type="$2" got; shift 2
  while ((SECONDS < deadline)); do
    got=$(kubectl get "$@" -o "jsonpath={.status.conditions[?(@.type==\"$type\")].status}" 2>/dev/null || true)
    [[ "$got" == True ]] && return 0
    sleep 1
  done
  return 1
}

operator_running() { [[ -f "$OPERATOR_PID" ]] && kill -0 "$(<"$OPERATOR_PID")" 2>/dev/null; }

down() {
  if operator_running; then
    say "stopping the operator (pid $(<"$OPERATOR_PID"))"
    kill "$(<"$OPERATOR_PID")" 2>/dev/null || true
  fi
  rm -f "$OPERATOR_PID"
  bash "$ROOT/hack/cluster.sh" down
}

up() {
  bash "$ROOT/hack/cluster.sh" up
  export KUBECONFIG="$STATE/kubeconfig"
  say "installing the Pipeline CRD"
  kubectl apply --server-side --force-conflicts -f "$ROOT/crds/pipelines.penstock.dev.yaml" >/dev/null
  wait_condition 60 Established crd pipelines.penstock.dev || { say "the CRD was not established"; exit 1; }
  if ! operator_running; then
    mkdir -p "$(dirname "$OPERATOR_LOG")"
    say "starting the operator (log: $OPERATOR_LOG)"
    # setsid: the operator outlives this script; `make demo-down` stops it.
    setsid penstock operator --metrics-port 0 --health-port 0 >>"$OPERATOR_LOG" 2>&1 < /dev/null &
    echo $! >"$OPERATOR_PID"
  fi
  kubectl get namespace "$NAMESPACE" >/dev/null 2>&1 || kubectl create namespace "$NAMESPACE" >/dev/null
  say "applying examples/rag.yaml to namespace $NAMESPACE"
  kubectl apply -n "$NAMESPACE" -f "$ROOT/examples/rag.yaml"
  say "waiting for the pipeline to become Ready"
  if ! wait_condition 180 Ready pipeline rag -n "$NAMESPACE"; then
    say "not Ready in time; operator log tail:"
    tail -n 30 "$OPERATOR_LOG" >&2
    exit 1
  fi
  echo
  kubectl get pipelines -n "$NAMESPACE"
  echo
  kubectl get deployments,services,hpa,configmaps,secrets,pods -n "$NAMESPACE" -l penstock.dev/pipeline=rag
  cat <<MSG

Penstock is running on a local control plane (fake kwok nodes: pods are scheduled and
reported Running, but no container really runs).

Next:
  export KUBECONFIG=$STATE/kubeconfig
  # conditions, per-stage status and events:
  kubectl describe pipeline rag -n $NAMESPACE
  # the API, documented:
  kubectl explain pipeline.spec.stages
  # change a stage and watch the rollout:
  kubectl edit pipeline rag -n $NAMESPACE
  kubectl apply -n $NAMESPACE -f examples/batch-embedding.yaml
  # what the operator does:
  tail -f $OPERATOR_LOG

Stop everything:  make demo-down
MSG
}

case "${1:-up}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
