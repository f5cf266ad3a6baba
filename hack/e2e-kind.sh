#!/usr/bin/env bash
# `make e2e-kind`: the e2e suite on a kind cluster whose containers really run.
#
# hack/kind.sh up (Docker engine, egress guard, images built here, cluster), then the chart
# installs the operator from the image `make images` built, then tests/e2e (the same suite as on
# the kwok control plane, with the operator under test being the in-cluster one) and tests/kind
# (what only a real kubelet can show), then the cluster goes down again, unless
# PENSTOCK_KIND_KEEP=1 (then `make kind-down` removes it).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PATH="$ROOT/bin:$ROOT/.venv/bin:$PATH"
export KUBECONFIG="$ROOT/.kind/kubeconfig"
started=$(date +%s)
step() { printf '\n==> [e2e-kind %4ss] %s\n' "$(( $(date +%s) - started ))" "$*"; }

step "kind cluster (hack/kind.sh up)"
[[ "${PENSTOCK_KIND_KEEP:-0}" == 1 ]] || trap 'step "kind cluster down"; bash "$ROOT/hack/kind.sh" down' EXIT
bash "$ROOT/hack/kind.sh" up

step "the operator, installed by the chart"
# Two cores hold a few Pipelines' pods: the operator must still find room when it is killed and
# rescheduled while Pipelines wait for CPU, so it outranks them (the scheduler preempts).
kubectl apply --server-side --field-manager=penstock-e2e -f - <<'YAML' >/dev/null
apiVersion: scheduling.k8s.io/v1
kind: PriorityClass
metadata: {name: penstock-operator}
value: 1000000
description: The Penstock operator outranks the Pipelines it runs (e2e on one small node).
YAML
helm upgrade --install penstock "$ROOT/charts/penstock" -n penstock-system --create-namespace \
  -f "$ROOT/hack/kind/values.yaml" --set resyncSeconds=5 --set priorityClassName=penstock-operator \
  --set jaeger.enabled=true \
  --wait --timeout 5m

step "tests/e2e and tests/kind against the kind cluster"
export PENSTOCK_E2E_OPERATOR=in-cluster PENSTOCK_E2E_OPERATOR_NAMESPACE=penstock-system
# The examples' stages become the RAG example's retrieve app (GET /healthz, POST /), built here.
export PENSTOCK_E2E_STAGE_IMAGE=penstock/examples-rag-retrieve:dev
export PENSTOCK_E2E_STAGE_IMAGE_UPDATE=penstock/examples-rag-generate:dev
export PENSTOCK_E2E_STAGE_ARGS="--port 8080"
export PENSTOCK_E2E_ARTIFACTS="$ROOT/.kind/e2e" PENSTOCK_KIND=1
set +e
(cd "$ROOT" && python -m pytest tests/e2e tests/kind -q "$@")
code=$?
set -e
[[ $code -eq 5 ]] && { echo "error: pytest collected no tests" >&2; code=1; }
step "done (exit $code)"
exit $code
