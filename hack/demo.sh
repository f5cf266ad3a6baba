#!/usr/bin/env bash
# `make demo`: the main job. Where Docker can run (root, with Docker's engine or apt to install
# it): a kind cluster whose containers really run (hack/kind.sh), the operator installed by the
# chart, and the RAG example answering a question. Otherwise: the kwok control plane, the CRD, the
# operator as a local process, and the RAG example, waited on until Ready (no container runs).
# PENSTOCK_DEMO=kind|kwok chooses.
#   hack/demo.sh up     start (idempotent)
#   hack/demo.sh down   stop what up started
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

MODE_FILE="$STATE/demo-mode"

choose_mode() {
  if [[ -n "${PENSTOCK_DEMO:-}" ]]; then
    echo "$PENSTOCK_DEMO"
  elif docker info >/dev/null 2>&1 || { [[ $(id -u) -eq 0 ]] && { command -v dockerd || command -v apt-get; } >/dev/null; }; then
    echo kind
  else
    echo kwok
  fi
}

kind_up() {
  say "Docker can run here: a kind cluster with real containers (PENSTOCK_DEMO=kwok for the fake nodes)"
  bash "$ROOT/hack/kind.sh" up
  export KUBECONFIG="$ROOT/.kind/kubeconfig"
  say "installing the operator with the chart"
  helm upgrade --install penstock "$ROOT/charts/penstock" -n penstock-system --create-namespace \
    -f "$ROOT/hack/kind/values.yaml" --wait --timeout 5m >/dev/null
  kubectl get namespace "$NAMESPACE" >/dev/null 2>&1 || kubectl create namespace "$NAMESPACE" >/dev/null
  kubectl label --overwrite namespace "$NAMESPACE" pod-security.kubernetes.io/enforce=restricted >/dev/null
  say "applying the RAG example (examples/rag/pipeline.yaml, images built here) to namespace $NAMESPACE"
  "$ROOT/.venv/bin/python" "$ROOT/hack/kind/rag-pipeline.py" | kubectl apply -n "$NAMESPACE" -f -
  say "waiting for the pipeline to become Ready (the first time includes loading the model)"
  if ! wait_condition 420 Ready pipeline rag -n "$NAMESPACE"; then
    say "not Ready in time:"
    kubectl describe pipeline rag -n "$NAMESPACE" | tail -n 30 >&2
    exit 1
  fi
  echo
  kubectl get pipelines -n "$NAMESPACE"
  echo
  kubectl get pods -n "$NAMESPACE" -l penstock.dev/pipeline=rag
  local port=18080
  kubectl port-forward -n "$NAMESPACE" svc/rag-router "$port:80" >/dev/null 2>&1 &
  local forward=$!
  local i; for i in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$port/" 2>/dev/null && break; sleep 0.2; done
  say "asking the pipeline: How do I scale pods automatically based on CPU?"
  curl -sS -N -H 'Content-Type: application/json' -d '{"text": "How do I scale pods automatically based on CPU?"}' \
    "http://127.0.0.1:$port/" | "$ROOT/.venv/bin/python" -c '
import json, sys
events = sys.stdin.read().split("\n\n")
done = [e.split("\n", 1)[1] for e in events if e.startswith("event: done\n")]
print(json.loads(done[0].removeprefix("data: "))["answer"] if done else "no answer: " + events[-1][:300])'
  kill "$forward" 2>/dev/null || true
  cat <<MSG

Penstock is running on a kind cluster: every container above runs, as a non-root user on a
read-only root filesystem, from images built on this machine.

Next:
  export KUBECONFIG=$ROOT/.kind/kubeconfig
  kubectl port-forward -n $NAMESPACE svc/rag-router 18080:80 &
  curl -N -H 'Content-Type: application/json' -d '{"text": "What does a readiness probe do?"}' http://127.0.0.1:18080/
  kubectl describe pipeline rag -n $NAMESPACE
  kubectl logs -n penstock-system deploy/penstock

Stop everything:  make demo-down
MSG
}

down() {
  if [[ "$(cat "$MODE_FILE" 2>/dev/null)" == kind ]]; then
    bash "$ROOT/hack/kind.sh" down
    rm -f "$MODE_FILE"
    return 0
  fi
  if operator_running; then
    say "stopping the operator (pid $(<"$OPERATOR_PID"))"
    kill "$(<"$OPERATOR_PID")" 2>/dev/null || true
  fi
  rm -f "$OPERATOR_PID"
  bash "$ROOT/hack/cluster.sh" down
}

up() {
  local mode; mode=$(choose_mode)
  mkdir -p "$STATE"
  echo "$mode" >"$MODE_FILE"
  if [[ "$mode" == kind ]]; then
    kind_up
    return 0
  fi
  say "no Docker here: the kwok control plane (fake nodes; PENSTOCK_DEMO=kind to insist on kind)"
  bash "$ROOT/hack/cluster.sh" up
  export KUBECONFIG="$STATE/kubeconfig"
  say "installing the Pipeline CRD"
  kubectl apply --server-side --force-conflicts -f "$ROOT/crds/" >/dev/null
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
