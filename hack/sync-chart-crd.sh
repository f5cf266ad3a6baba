#!/usr/bin/env bash
# Refresh the chart's copies of the CRDs from the API models (what `penstock crd [--kind K]`
# prints). The chart renders these files (adding only helm.sh/resource-policy: keep); the unit
# test tests/unit/test_chart.py fails while they differ from `penstock crd`.
#
# Usage: hack/sync-chart-crd.sh          (needs `penstock` installed: pip install -e .)
#        hack/sync-chart-crd.sh --check  (exit 1 when a copy is stale, change nothing)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if command -v penstock >/dev/null 2>&1; then
  PENSTOCK=(penstock)
else
  PENSTOCK=("${PYTHON:-python3}" -m penstock.cli)
fi

tmp="$(mktemp)"
trap 'rm -f "$tmp"' EXIT
stale=0
for pair in Pipeline:pipelines PipelineRun:pipelineruns; do
  kind="${pair%%:*}" plural="${pair#*:}"
  target="$ROOT/charts/penstock/files/$plural.penstock.dev.yaml"
  "${PENSTOCK[@]}" crd --kind "$kind" >"$tmp"
  if [[ "${1:-}" == "--check" ]]; then
    if ! cmp -s "$tmp" "$target"; then
      echo "${target#"$ROOT"/} is stale: run hack/sync-chart-crd.sh" >&2
      stale=1
    fi
  else
    cat "$tmp" >"$target"
    echo "wrote ${target#"$ROOT"/}"
  fi
done
exit "$stale"
