#!/usr/bin/env bash
# Refresh the chart's copy of the Pipeline CRD from the API models (what `penstock crd` prints).
# The chart renders this file (adding only helm.sh/resource-policy: keep); the unit test
# tests/unit/test_chart.py fails while it differs from `penstock crd`.
#
# Usage: hack/sync-chart-crd.sh          (needs `penstock` installed: pip install -e .)
#        hack/sync-chart-crd.sh --check  (exit 1 when the copy is stale, change nothing)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET="$ROOT/charts/penstock/files/pipelines.penstock.dev.yaml"

if command -v penstock >/dev/null 2>&1; then
  PENSTOCK=(penstock)
else
  PENSTOCK=("${PYTHON:-python3}" -m penstock.cli)
fi

tmp="$(mktemp)"
trap 'rm -f "$tmp"' EXIT
"${PENSTOCK[@]}" crd >"$tmp"

if [[ "${1:-}" == "--check" ]]; then
  if ! cmp -s "$tmp" "$TARGET"; then
    echo "charts/penstock/files/pipelines.penstock.dev.yaml is stale: run hack/sync-chart-crd.sh" >&2
    exit 1
  fi
  exit 0
fi

cat "$tmp" >"$TARGET"
echo "wrote ${TARGET#"$ROOT"/}"
