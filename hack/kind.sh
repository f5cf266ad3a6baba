#!/usr/bin/env bash
# A kind cluster whose containers really run, on a machine with no registry (`make kind-up`).
#
#   hack/kind.sh up       Docker engine (Debian's docker.io; dockerd started when none runs), the
#                         egress guard, every image (hack/images.sh, cached), the cluster, the
#                         images loaded; KUBECONFIG=.kind/kubeconfig
#   hack/kind.sh down     delete the cluster, remove the guard and the network, stop the dockerd
#                         this script started
#   hack/kind.sh status   the cluster's nodes and the guard's rules with their counters
#   hack/kind.sh engine   only the Docker engine
#
# The network rule: nothing from the cluster may leave the machine. Before the cluster exists, the
# `kind` network is created with a fixed bridge name and DOCKER-USER rejects anything that enters
# from that bridge and would leave by another interface; CoreDNS has no upstream and the node no
# resolver outside the cluster. The guard is checked by its presence and counters only.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=kind-versions.env
source "$ROOT/hack/kind-versions.env"
CACHE="${PENSTOCK_KIND_CACHE:-${HOME:-/root}/.cache/penstock-kind}"
STATE="$ROOT/.kind"
export KUBECONFIG="$STATE/kubeconfig"
export PATH="$ROOT/bin:$ROOT/.venv/bin:$PATH"
mkdir -p "$CACHE" "$STATE"

log() { printf '[kind] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
elapsed() { local s=$(( $(date +%s) - $1 )); printf '%dm%02ds' $((s / 60)) $((s % 60)); }

# ---------------------------------------------------------------- the engine
engine() {
  if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
    log "installing Debian's docker.io and debootstrap ..."
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends docker.io debootstrap iptables >/dev/null
  fi
  docker info >/dev/null 2>&1 && return 0
  log "starting dockerd (data in $CACHE/docker, log in $CACHE/dockerd.log) ..."
  # setsid: the engine outlives this script; `down` stops it (its pid is in $STATE/dockerd.pid).
  setsid dockerd --data-root "$CACHE/docker" --pidfile "$STATE/dockerd.pid" \
    >"$CACHE/dockerd.log" 2>&1 </dev/null &
  local i; for i in $(seq 60); do docker info >/dev/null 2>&1 && return 0; sleep 0.5; done
  tail -n 20 "$CACHE/dockerd.log" >&2
  die "dockerd did not start"
}

stop_engine() {
  [[ -f "$STATE/dockerd.pid" ]] || return 0
  local pid; pid=$(cat "$STATE/dockerd.pid")
  if kill -0 "$pid" 2>/dev/null; then
    log "stopping the dockerd this script started (pid $pid)"
    kill "$pid"
    local i; for i in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  fi
  rm -f "$STATE/dockerd.pid"
}

# ---------------------------------------------------------------- the egress guard
GUARD=(-i "$KIND_NETWORK_BRIDGE" ! -o "$KIND_NETWORK_BRIDGE" -j REJECT)
# The same rejection, counted apart for the cluster's own addresses (hack/kind/cluster.yaml): a
# Service IP (10.96.0.0/16) opened before kube-proxy programmed it, or the IP of a pod that is gone
# (10.244.0.0/16, e.g. the kubelet's last probe of a deleted pod), leaves the node by its default
# route. Their counters say how much of what the guard stopped was that, and not egress.
GUARD_SERVICES=(-i "$KIND_NETWORK_BRIDGE" ! -o "$KIND_NETWORK_BRIDGE" -d 10.96.0.0/16 -j REJECT)
GUARD_PODS=(-i "$KIND_NETWORK_BRIDGE" ! -o "$KIND_NETWORK_BRIDGE" -d 10.244.0.0/16 -j REJECT)

guard_up() {
  if docker network inspect kind >/dev/null 2>&1; then
    local bridge
    bridge=$(docker network inspect kind -f '{{index .Options "com.docker.network.bridge.name"}}')
    [[ "$bridge" == "$KIND_NETWORK_BRIDGE" ]] ||
      die "a docker network 'kind' exists with bridge '$bridge', not $KIND_NETWORK_BRIDGE: remove it first"
  else
    docker network create --driver bridge --subnet "$KIND_NETWORK_SUBNET" \
      -o "com.docker.network.bridge.name=$KIND_NETWORK_BRIDGE" kind >/dev/null
  fi
  iptables -C DOCKER-USER "${GUARD[@]}" 2>/dev/null || iptables -I DOCKER-USER 1 "${GUARD[@]}"
  iptables -C DOCKER-USER "${GUARD_PODS[@]}" 2>/dev/null || iptables -I DOCKER-USER 1 "${GUARD_PODS[@]}"
  iptables -C DOCKER-USER "${GUARD_SERVICES[@]}" 2>/dev/null || iptables -I DOCKER-USER 1 "${GUARD_SERVICES[@]}"
  # IPv6: the network has none, but a node's link-local address must not route out either.
  if command -v ip6tables >/dev/null && ip6tables -L FORWARD >/dev/null 2>&1; then
    ip6tables -C FORWARD "${GUARD[@]}" 2>/dev/null || ip6tables -I FORWARD 1 "${GUARD[@]}"
  fi
  guard_check
}

# The guard is checked by its presence (first in DOCKER-USER, which FORWARD jumps to first) and
# by its counters, never by sending traffic out.
guard_check() {
  local rules; rules=$(iptables -S DOCKER-USER | sed -n 2,4p)
  local want="-A DOCKER-USER -d 10.96.0.0/16 -i $KIND_NETWORK_BRIDGE ! -o $KIND_NETWORK_BRIDGE -j REJECT --reject-with icmp-port-unreachable
-A DOCKER-USER -d 10.244.0.0/16 -i $KIND_NETWORK_BRIDGE ! -o $KIND_NETWORK_BRIDGE -j REJECT --reject-with icmp-port-unreachable
-A DOCKER-USER -i $KIND_NETWORK_BRIDGE ! -o $KIND_NETWORK_BRIDGE -j REJECT --reject-with icmp-port-unreachable"
  [[ "$rules" == "$want" ]] || die "the egress guard is not the first rules of DOCKER-USER: $rules"
  iptables -S FORWARD | sed -n 2p | grep -q -- '-j DOCKER-USER' || die "FORWARD does not jump to DOCKER-USER first"
}

guard_counters() {
  iptables -L DOCKER-USER -v -n -x | awk -v b="$KIND_NETWORK_BRIDGE" '
    $0 ~ b && /REJECT/ && /10\.96\.0\.0\/16/ {services = $1; next}
    $0 ~ b && /REJECT/ && /10\.244\.0\.0\/16/ {pods = $1; next}
    $0 ~ b && /REJECT/ {other = $1}
    END {printf "egress guard: rejected %d packets to Service IPs before kube-proxy, %d to pods that are gone, %d to anywhere else\n", services, pods, other}'
}

guard_down() {
  while iptables -C DOCKER-USER "${GUARD[@]}" 2>/dev/null; do iptables -D DOCKER-USER "${GUARD[@]}"; done
  while iptables -C DOCKER-USER "${GUARD_SERVICES[@]}" 2>/dev/null; do iptables -D DOCKER-USER "${GUARD_SERVICES[@]}"; done
  while iptables -C DOCKER-USER "${GUARD_PODS[@]}" 2>/dev/null; do iptables -D DOCKER-USER "${GUARD_PODS[@]}"; done
  if command -v ip6tables >/dev/null; then
    while ip6tables -C FORWARD "${GUARD[@]}" 2>/dev/null; do ip6tables -D FORWARD "${GUARD[@]}"; done
  fi
  docker network rm kind >/dev/null 2>&1 || true
}

# ---------------------------------------------------------------- kind
# kind runs its nodes --privileged; without CAP_SYS_RESOURCE in the bounding set that fails here.
needs_unprivileged_wrapper() {
  local capbnd; capbnd=$(awk '/^CapBnd:/ {print $2}' /proc/self/status)
  [[ $(( (0x$capbnd >> 24) & 1 )) -eq 0 ]]
}

kind_cmd() {
  if needs_unprivileged_wrapper; then
    local wrap="$CACHE/docker-wrapper"
    mkdir -p "$wrap"
    ln -sfn "$ROOT/hack/kind/docker-unprivileged" "$wrap/docker"
    PENSTOCK_REAL_DOCKER="$(command -v docker)" PATH="$wrap:$PATH" kind "$@"
  else
    kind "$@"
  fi
}

cluster_exists() { kind get clusters 2>/dev/null | grep -qx "$KIND_CLUSTER"; }

up() {
  local t0; t0=$(date +%s)
  engine
  guard_up
  local t1; t1=$(date +%s)
  bash "$ROOT/hack/images.sh" rootfs
  local node_image; node_image=$(bash "$ROOT/hack/images.sh" node)
  bash "$ROOT/hack/images.sh" penstock
  log "images ready in $(elapsed "$t1")"
  if ! cluster_exists; then
    t1=$(date +%s)
    sed "s/@ETCD_TAG@/$(bash "$ROOT/hack/images.sh" etcd-tag)/" "$ROOT/hack/kind/cluster.yaml" >"$STATE/cluster.yaml"
    needs_unprivileged_wrapper && log "host lacks CAP_SYS_RESOURCE: nodes get every other capability instead of --privileged"
    kind_cmd create cluster --name "$KIND_CLUSTER" --image "$node_image" --config "$STATE/cluster.yaml" \
      --kubeconfig "$KUBECONFIG" --wait 180s
    log "cluster created in $(elapsed "$t1")"
  fi
  kind_cmd get kubeconfig --name "$KIND_CLUSTER" >"$KUBECONFIG"
  coredns_without_upstream
  load_images
  guard_check
  guard_counters
  log "kind cluster '$KIND_CLUSTER' is up in $(elapsed "$t0"): export KUBECONFIG=$KUBECONFIG"
}

# What `kind load docker-image` does (docker save | ctr import on the node), for the images whose
# ID is not on the node yet: kind's own check needs crictl, which this node image does not carry.
load_images() {
  local t1; t1=$(date +%s)
  local node="$KIND_CLUSTER-control-plane" images missing=() image id
  mapfile -t images < <(bash "$ROOT/hack/images.sh" list)
  local present; present=$(docker exec "$node" ctr --namespace=k8s.io content ls -q)
  for image in "${images[@]}"; do
    id=$(docker image inspect -f '{{.Id}}' "$image")
    grep -qx "$id" <<<"$present" || missing+=("$image")
  done
  if ((${#missing[@]})); then
    docker save "${missing[@]}" |
      docker exec -i "$node" ctr --namespace=k8s.io images import --digests --snapshotter=overlayfs - >/dev/null
  fi
  log "loaded ${#missing[@]} of ${#images[@]} images in $(elapsed "$t1")"
}

coredns_without_upstream() {
  kubectl -n kube-system create configmap coredns --from-file=Corefile="$ROOT/hack/kind/Corefile" \
    --dry-run=client -o yaml | kubectl apply --server-side --force-conflicts --field-manager=penstock-kind -f - >/dev/null
  kubectl -n kube-system get configmap coredns -o jsonpath='{.data.Corefile}' | grep -qE '^[[:space:]]*forward' &&
    die "CoreDNS still has an upstream"
  kubectl -n kube-system rollout restart deployment coredns >/dev/null
  kubectl -n kube-system rollout status deployment coredns --timeout 120s >/dev/null
}

down() {
  if command -v kind >/dev/null && docker info >/dev/null 2>&1; then
    cluster_exists && guard_counters
    cluster_exists && kind_cmd delete cluster --name "$KIND_CLUSTER"
    guard_down
  fi
  stop_engine
  rm -f "$KUBECONFIG"
}

status() {
  docker info >/dev/null 2>&1 || { echo "no Docker engine"; return 0; }
  cluster_exists || { echo "no kind cluster '$KIND_CLUSTER'"; return 0; }
  kubectl get nodes -o wide
  iptables -L DOCKER-USER -v -n -x
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  engine) engine ;;
  *) die "usage: hack/kind.sh up|down|status|engine" ;;
esac
