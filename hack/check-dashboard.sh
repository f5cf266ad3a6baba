#!/usr/bin/env bash
# Check Grafana dashboard JSON files against Grafana's own published schema: the types of the
# @grafana/schema npm package, with the TypeScript compiler (both pinned with integrity hashes
# in hack/grafana-schema/package-lock.json). Each dashboard becomes an object literal
# `satisfies StrictDashboard` (hack/grafana-schema/strict.ts) and `tsc --noEmit --strict` must
# accept it: wrong types, missing required fields, unknown enum values and unknown keys fail,
# reported as <dashboard file>(line,column): error TS...
#
# The packages are installed with `npm ci` when the cache is cold, into a directory keyed by
# the lock's hash OUTSIDE the checkout:
#   ${PENSTOCK_TOOLS_CACHE:-$HOME/.cache/penstock-tools}/grafana-schema-<version>-<lock hash>/
#
# Usage: hack/check-dashboard.sh [--install-only] [DASHBOARD.json ...]
#        (default: charts/penstock/files/dashboards/penstock.json)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PROJECT="$ROOT/hack/grafana-schema"
CACHE="${PENSTOCK_TOOLS_CACHE:-${HOME:-/root}/.cache/penstock-tools}"
log() { printf '[check-dashboard] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 2; }

install_only=0
if [[ "${1:-}" == "--install-only" ]]; then install_only=1; shift; fi
dashboards=("$@")
((${#dashboards[@]})) || dashboards=("$ROOT/charts/penstock/files/dashboards/penstock.json")

# A missing toolchain is an error, never a skip: the check would silently not run.
for cmd in node npm; do
  command -v "$cmd" >/dev/null || die "$cmd is not on PATH: the dashboard schema check needs Node.js >= 18 and npm (Debian: apt-get install nodejs npm)"
done

version=$(node -p 'require(process.argv[1]).devDependencies["@grafana/schema"]' "$PROJECT/package.json")
lock_hash=$(sha256sum "$PROJECT/package-lock.json" | cut -c1-12)
install="$CACHE/grafana-schema-$version-$lock_hash"
tsc="$install/node_modules/.bin/tsc"

if [[ ! -f "$install/.installed" ]]; then
  log "installing @grafana/schema $version and typescript into $install (npm ci)"
  mkdir -p "$CACHE"
  # Install beside the final directory and move it in place, so an interrupted install never
  # leaves a cache that looks complete.
  staging=$(mktemp -d "$CACHE/.grafana-schema-staging.XXXXXX")
  trap 'rm -rf "$staging"' EXIT
  cp "$PROJECT/package.json" "$PROJECT/package-lock.json" "$PROJECT/.npmrc" "$staging/"
  t0=$(date +%s)
  # --ignore-scripts: neither package needs an install script, and none should run.
  if ! (cd "$staging" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >&2); then
    die "npm ci failed in $staging"
  fi
  touch "$staging/.installed"
  [[ -f "$install/.installed" ]] || rm -rf "$install" # what an older, broken run left
  if ! mv -T "$staging" "$install" 2>/dev/null; then
    rm -rf "$staging"
    [[ -f "$install/.installed" ]] || die "could not move the install to $install" # else a parallel run won
  fi
  trap - EXIT
  log "installed in $(($(date +%s) - t0)) s: $(du -sh "$install" | cut -f1)"
fi
[[ -x "$tsc" ]] || die "$tsc is missing: remove $install and run again"
((install_only)) && exit 0

# The check project lives inside the install directory, so `@grafana/schema` resolves from its
# node_modules like any dependency.
work=$(mktemp -d "$install/check.XXXXXX")
trap 'rm -rf "$work"' EXIT
cp "$PROJECT/strict.ts" "$work/strict.ts"
cat >"$work/tsconfig.json" <<'EOF'
{
  "compilerOptions": {
    "strict": true,
    "exactOptionalPropertyTypes": true,
    "noEmit": true,
    "target": "es2022",
    "lib": ["es2022"],
    "module": "esnext",
    "moduleResolution": "bundler",
    "types": [],
    "skipLibCheck": false
  },
  "files": ["dashboard.ts"]
}
EOF

status=0
for dashboard in "${dashboards[@]}"; do
  [[ -f "$dashboard" ]] || die "no such dashboard: $dashboard"
  # JSON is a TypeScript expression. The prefix stays on the first line so that tsc's line
  # numbers are the dashboard file's, and `satisfies` on the last one (after a line break it
  # would not continue the expression).
  json=$(cat "$dashboard")
  printf "import type { StrictDashboard } from './strict'; export const dashboard = %s satisfies StrictDashboard;\n" \
    "$json" >"$work/dashboard.ts"
  if output=$(cd "$work" && "$tsc" -p tsconfig.json --pretty false 2>&1); then
    echo "ok: $dashboard matches the @grafana/schema $version Dashboard"
  else
    status=1
    echo "FAIL: $dashboard does not match the @grafana/schema $version Dashboard:"
    printf '%s\n' "${output//dashboard.ts(/$dashboard(}"
  fi
done
exit $status
