#!/usr/bin/env bash
# `make e2e-kind`: the e2e suite on a kind cluster, for machines with Docker.
# Creates a kind cluster, builds and loads the operator image, installs the chart, runs
# tests/e2e with KUBECONFIG pointing at kind and the operator under test being the
# in-cluster one, then deletes the cluster.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CLUSTER="${PENSTOCK_KIND_CLUSTER:-penstock-e2e}"
IMAGE="penstock:e2e"
# A small public image serving GET /healthz on 8080 as a non-root user, for the stages.
STAGE_IMAGE="${PENSTOCK_E2E_STAGE_IMAGE:-registry.k8s.io/e2e-test-images/agnhost:2.53}"
STAGE_IMAGE_UPDATE="${PENSTOCK_E2E_STAGE_IMAGE_UPDATE:-registry.k8s.io/e2e-test-images/agnhost:2.52}"
export PATH="$ROOT/bin:$PATH"

for tool in docker kind kubectl helm; do
  command -v "$tool" >/dev/null || { echo "error: $tool is required for make e2e-kind" >&2; exit 1; }
done
docker info >/dev/null 2>&1 || { echo "error: no Docker engine is running" >&2; exit 1; }

kind create cluster --name "$CLUSTER" --wait 180s
trap 'kind delete cluster --name "$CLUSTER"' EXIT
KUBECONFIG="$(mktemp)"
export KUBECONFIG
kind get kubeconfig --name "$CLUSTER" >"$KUBECONFIG"

docker build -f "$ROOT/operator/Dockerfile" -t "$IMAGE" "$ROOT"
kind load docker-image "$IMAGE" --name "$CLUSTER"
helm install penstock "$ROOT/charts/penstock" -n penstock-system --create-namespace \
  --set image.repository=penstock --set image.tag=e2e --set image.pullPolicy=Never \
  --set resyncSeconds=5 --wait --timeout 5m

export PENSTOCK_E2E_OPERATOR=in-cluster PENSTOCK_E2E_OPERATOR_NAMESPACE=penstock-system
export PENSTOCK_E2E_STAGE_IMAGE="$STAGE_IMAGE" PENSTOCK_E2E_STAGE_IMAGE_UPDATE="$STAGE_IMAGE_UPDATE"
export PENSTOCK_E2E_STAGE_ARGS="${PENSTOCK_E2E_STAGE_ARGS:-netexec --http-port=8080}"
cd "$ROOT" && python3 -m pytest tests/e2e -q
