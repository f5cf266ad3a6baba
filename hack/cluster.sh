#!/usr/bin/env bash
# A real, local Kubernetes control plane for development and e2e tests, without Docker:
# etcd + kube-apiserver + kube-controller-manager + kube-scheduler as local processes on
# 127.0.0.1, and kwok simulating 3 fake nodes (pods on them become Running with IPs).
#
# Usage: hack/cluster.sh up | down | status | env | restart-apiserver | restart <component>
#
#   up                 start everything and wait until healthy (idempotent: a healthy
#                      cluster is left alone; a broken or stale one is torn down first;
#                      a failed start is tried once more, on fresh ports)
#   down               stop every component and delete the cluster state (idempotent)
#   status             show components, pids and ports; exit 0 only if all are healthy
#   env                print `export KUBECONFIG=...` (use: eval "$(hack/cluster.sh env)")
#   restart-apiserver  stop and start only kube-apiserver on the same port (SIGTERM, then
#                      SIGKILL after PENSTOCK_CLUSTER_STOP_GRACE=5 s; etcd keeps the state)
#   restart <c>        the same for any component (etcd, kube-controller-manager, ...)
#
# State lives in ${PENSTOCK_CLUSTER_DIR:-<repo>/.cluster}: kubeconfig, pki/, logs/<c>.log,
# pids/<c>.pid, cmd/<c> (argv, for restarts), ports.env (ports picked free at start, so
# clusters of two checkouts never collide).  Binaries come from <repo>/bin (`make tools`),
# overridable with PENSTOCK_BIN_DIR.  PENSTOCK_CLUSTER_TIMEOUT (default 180 s) bounds each
# wait for health.  Tests: run `up`, then KUBECONFIG=$(state dir)/kubeconfig.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${PENSTOCK_BIN_DIR:-$ROOT/bin}"
STATE="${PENSTOCK_CLUSTER_DIR:-$ROOT/.cluster}"
TIMEOUT="${PENSTOCK_CLUSTER_TIMEOUT:-180}" # seconds to wait for the cluster to be healthy
NODES="${PENSTOCK_CLUSTER_NODES:-3}"

SERVICE_CIDR=10.96.0.0/16
SERVICE_IP=10.96.0.1 # first IP of SERVICE_CIDR: the `kubernetes` Service
CLUSTER_CIDR=10.244.0.0/16 # node i gets pod CIDR 10.244.i.0/24
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)
KWOK_NODE_ANNOTATION=kwok.x-k8s.io/node=fake

PKI="$STATE/pki"
LOGS="$STATE/logs"
PIDS="$STATE/pids"
CMDS="$STATE/cmd"
KUBECONFIG_FILE="$STATE/kubeconfig"

log() { printf '[cluster] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ------------------------------------------------------------------ processes

pid_of() { # <component>: the pid if the process is alive AND is ours, else nothing
  local f="$PIDS/$1.pid" pid
  [[ -f "$f" ]] || return 1
  pid=$(<"$f")
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  # Guard against pid reuse after a crash or reboot: every command line we start
  # mentions the state directory.
  tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -qF -- "$STATE/" || return 1
  echo "$pid"
}

start_component() { # <component> <argv...>: start in its own session, detached from our stdio
  local name="$1"; shift
  mkdir -p "$LOGS" "$PIDS" "$CMDS"
  printf '%q ' "$@" >"$CMDS/$name"
  printf '\n===== %s starting %s\n' "$(date -u +%FT%TZ)" "$name" >>"$LOGS/$name.log"
  # The component must not inherit the lock (or any other) descriptor of this script.
  if [[ -n "${LOCK_FD:-}" ]]; then
    setsid "$@" </dev/null >>"$LOGS/$name.log" 2>&1 {LOCK_FD}>&- &
  else
    setsid "$@" </dev/null >>"$LOGS/$name.log" 2>&1 &
  fi
  local pid=$! i
  echo "$pid" >"$PIDS/$name.pid"
  # Until the forked shell has exec'd the binary its command line is ours, not the
  # component's: wait for the exec so pid_of recognises it.
  for ((i = 0; i < 200; i++)); do
    tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -qF -- "$STATE/" && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
}

alive() { # <pid>: running and not a zombie
  kill -0 "$1" 2>/dev/null || return 1
  local st
  st=$(awk '{print $3}' 2>/dev/null <"/proc/$1/stat") || return 1
  [[ "$st" != Z ]]
}

# TERM the components all at once, wait up to $STOP_GRACE seconds, then KILL.  The
# grace is short on purpose: kube-apiserver keeps draining watch connections for up to
# a minute after SIGTERM, and a SIGKILL loses nothing (etcd holds the state).
STOP_GRACE="${PENSTOCK_CLUSTER_STOP_GRACE:-5}"
stop_components() { # <components...>
  local name pid i pids=()
  for name in "$@"; do
    if pid=$(pid_of "$name"); then
      [[ -n "${QUIET:-}" ]] || log "stopping $name (pid $pid)"
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$name:$pid")
    fi
  done
  for ((i = 0; i < STOP_GRACE * 10; i++)); do
    local left=0
    for name in "${pids[@]}"; do alive "${name#*:}" && left=1; done
    [[ $left -eq 0 ]] && break
    sleep 0.1
  done
  for name in "${pids[@]}"; do
    if alive "${name#*:}"; then
      [[ -n "${QUIET:-}" ]] || log "${name%%:*} (pid ${name#*:}) still running ${STOP_GRACE}s after TERM; killing"
      kill -KILL "${name#*:}" 2>/dev/null || true
    fi
  done
  for name in "$@"; do rm -f "$PIDS/$name.pid"; done
}

# Processes of ours whose pid file is gone (state dir removed by hand, crashed script):
# a component binary whose command line mentions this state directory.
kill_orphans() {
  local p exe args c known=" "
  for p in "$PIDS"/*.pid; do [[ -f "$p" ]] && known+="$(<"$p") "; done
  for p in /proc/[0-9]*; do
    [[ "$known" == *" ${p#/proc/} "* ]] && continue
    args=$(tr '\0' ' ' 2>/dev/null <"$p/cmdline") || continue
    [[ "$args" == *"$STATE/"* ]] || continue
    exe="${args%% *}"
    for c in "${COMPONENTS[@]}"; do
      if [[ "${exe##*/}" == "$c" ]]; then
        log "killing leftover $c (pid ${p#/proc/})"
        kill -KILL "${p#/proc/}" 2>/dev/null || true
      fi
    done
  done
}

log_tail() { # <component>
  local f="$LOGS/$1.log"
  [[ -s "$f" ]] || return 0
  log "last lines of $f:"
  tail -n 30 "$f" | sed 's/^/    /' >&2
}

# ------------------------------------------------------------------ health

ports_loaded=0
load_ports() {
  [[ $ports_loaded -eq 1 ]] && return 0
  [[ -f "$STATE/ports.env" ]] || return 1
  # shellcheck disable=SC1091
  source "$STATE/ports.env"
  ports_loaded=1
}

https_ok() { # <url>: 2xx from a loopback component, authenticated as admin
  curl -fsS --max-time 3 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
    -o /dev/null "$1" 2>/dev/null
}

healthy() { # <component>
  local name="$1"
  pid_of "$name" >/dev/null || return 1
  load_ports || return 1
  case "$name" in
    etcd) curl -fsS --max-time 3 "http://127.0.0.1:$ETCD_PORT/health" 2>/dev/null | grep -q '"health":"true"' ;;
    kube-apiserver) https_ok "https://127.0.0.1:$APISERVER_PORT/readyz" ;;
    kube-controller-manager) https_ok "https://127.0.0.1:$CONTROLLER_MANAGER_PORT/healthz" ;;
    kube-scheduler) https_ok "https://127.0.0.1:$SCHEDULER_PORT/healthz" ;;
    kwok) return 0 ;;
  esac
}

kubectl() { "$BIN/kubectl" --kubeconfig "$KUBECONFIG_FILE" --request-timeout=10s "$@"; }

nodes_ready() {
  local ready
  ready=$(kubectl get nodes -l type=kwok \
    -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' 2>/dev/null |
    grep -c '^True$' || true)
  [[ "$ready" -ge "$NODES" ]]
}

default_sa_exists() { kubectl -n default get serviceaccount default >/dev/null 2>&1; }

all_healthy() {
  local c
  for c in "${COMPONENTS[@]}"; do healthy "$c" || return 1; done
  nodes_ready && default_sa_exists
}

wait_for() { # <description> <component-to-blame> <command...>
  local what="$1" blame="$2"; shift 2
  local deadline=$((SECONDS + TIMEOUT))
  until "$@"; do
    # The pid file's process itself, not pid_of: on a loaded machine the forked shell may not
    # have exec'd the binary yet, and its command line is then not the component's.
    if [[ -n "$blame" ]] && ! alive "$(cat "$PIDS/$blame.pid" 2>/dev/null || echo 0)"; then
      log "$blame exited while waiting for $what"
      FAILED_COMPONENT="$blame"
      return 1
    fi
    if ((SECONDS >= deadline)); then
      log "timed out after ${TIMEOUT}s waiting for $what"
      FAILED_COMPONENT="$blame"
      return 1
    fi
    sleep 0.5
  done
}

# ------------------------------------------------------------------ setup

require_tools() {
  local b
  for b in etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok; do
    [[ -x "$BIN/$b" ]] || die "$BIN/$b is missing: run 'make tools' first"
  done
  [[ -f "$BIN/kwok-stages.yaml" ]] || die "$BIN/kwok-stages.yaml is missing: run 'make tools' first"
  command -v openssl >/dev/null || die "openssl is required"
  command -v curl >/dev/null || die "curl is required"
}

pick_ports() { # 5 distinct free loopback ports, chosen by the kernel
  local ports
  if command -v python3 >/dev/null; then
    ports=$(python3 - <<'PY'
import socket
socks = []
for _ in range(5):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
)
  else # fallback: random high ports that nothing listens on
    local p list=()
    while ((${#list[@]} < 5)); do
      p=$((20000 + RANDOM % 30000))
      [[ " ${list[*]} " == *" $p "* ]] && continue
      (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && continue
      list+=("$p")
    done
    ports="${list[*]}"
  fi
  read -r ETCD_PORT ETCD_PEER_PORT APISERVER_PORT CONTROLLER_MANAGER_PORT SCHEDULER_PORT <<<"$ports"
  cat >"$STATE/ports.env" <<EOF
ETCD_PORT=$ETCD_PORT
ETCD_PEER_PORT=$ETCD_PEER_PORT
APISERVER_PORT=$APISERVER_PORT
CONTROLLER_MANAGER_PORT=$CONTROLLER_MANAGER_PORT
SCHEDULER_PORT=$SCHEDULER_PORT
APISERVER_URL=https://127.0.0.1:$APISERVER_PORT
KUBECONFIG=$KUBECONFIG_FILE
EOF
  ports_loaded=1
}

gen_pki() {
  mkdir -p "$PKI"
  (
    cd "$PKI"
    umask 077
    exec >>"$LOGS/pki.log" 2>&1
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 \
      -subj "/CN=penstock-local-ca" -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature"
    # front-proxy (request-header) CA, for aggregated API servers
    openssl req -x509 -newkey rsa:2048 -nodes -keyout front-proxy-ca.key -out front-proxy-ca.crt \
      -days 3650 -subj "/CN=penstock-local-front-proxy-ca" -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature"
    # service-account token signing key
    openssl genrsa -out sa.key 2048
    openssl rsa -in sa.key -pubout -out sa.pub
    cert() { # <name> <subject> <extendedKeyUsage> [subjectAltName] [signing CA]
      openssl req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "$2"
      {
        echo "basicConstraints=critical,CA:FALSE"
        echo "keyUsage=critical,digitalSignature,keyEncipherment"
        echo "extendedKeyUsage=$3"
        [[ -n "${4:-}" ]] && echo "subjectAltName=$4"
      } >"$1.ext"
      openssl x509 -req -in "$1.csr" -CA "${5:-ca}.crt" -CAkey "${5:-ca}.key" -CAcreateserial -days 3650 \
        -extfile "$1.ext" -out "$1.crt"
      rm -f "$1.csr" "$1.ext"
    }
    local san="DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc"
    san+=",DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:$SERVICE_IP"
    cert serving "/CN=penstock-local" serverAuth "$san"
    cert admin "/O=system:masters/CN=penstock-admin" clientAuth
    cert controller-manager "/CN=system:kube-controller-manager" clientAuth
    cert scheduler "/CN=system:kube-scheduler" clientAuth
    cert kwok "/O=system:masters/CN=kwok" clientAuth
    cert front-proxy-client "/CN=front-proxy-client" clientAuth "" front-proxy-ca
  ) || { log_tail pki; die "certificate generation failed"; }
}

write_kubeconfig() { # <file> <client-cert-name>
  local b64='base64 -w0'
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: penstock
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority-data: $($b64 <"$PKI/ca.crt")
users:
- name: $2
  user:
    client-certificate-data: $($b64 <"$PKI/$2.crt")
    client-key-data: $($b64 <"$PKI/$2.key")
contexts:
- name: penstock
  context:
    cluster: penstock
    user: $2
current-context: penstock
EOF
  chmod 600 "$1"
}

start_etcd() {
  start_component etcd "$BIN/etcd" \
    --name penstock \
    --data-dir "$STATE/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "penstock=http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster-state new \
    --unsafe-no-fsync \
    --log-level warn
}

start_apiserver() {
  start_component kube-apiserver "$BIN/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address 127.0.0.1 \
    --advertise-address 127.0.0.1 \
    --secure-port "$APISERVER_PORT" \
    --cert-dir "$PKI" \
    --tls-cert-file "$PKI/serving.crt" \
    --tls-private-key-file "$PKI/serving.key" \
    --client-ca-file "$PKI/ca.crt" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$PKI/sa.pub" \
    --service-account-signing-key-file "$PKI/sa.key" \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --requestheader-client-ca-file "$PKI/front-proxy-ca.crt" \
    --requestheader-allowed-names front-proxy-client \
    --requestheader-username-headers X-Remote-User \
    --requestheader-group-headers X-Remote-Group \
    --requestheader-extra-headers-prefix X-Remote-Extra- \
    --proxy-client-cert-file "$PKI/front-proxy-client.crt" \
    --proxy-client-key-file "$PKI/front-proxy-client.key" \
    --authorization-mode Node,RBAC \
    --allow-privileged=true \
    --endpoint-reconciler-type none \
    --profiling=false
}

start_controller_manager() {
  start_component kube-controller-manager "$BIN/kube-controller-manager" \
    --kubeconfig "$STATE/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$STATE/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$STATE/controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 \
    --secure-port "$CONTROLLER_MANAGER_PORT" \
    --tls-cert-file "$PKI/serving.crt" \
    --tls-private-key-file "$PKI/serving.key" \
    --client-ca-file "$PKI/ca.crt" \
    --controllers '*' \
    --use-service-account-credentials=true \
    --service-account-private-key-file "$PKI/sa.key" \
    --root-ca-file "$PKI/ca.crt" \
    --cluster-signing-cert-file "$PKI/ca.crt" \
    --cluster-signing-key-file "$PKI/ca.key" \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --cluster-cidr "$CLUSTER_CIDR" \
    --allocate-node-cidrs=false \
    --leader-elect=false \
    --profiling=false
}

start_scheduler() {
  start_component kube-scheduler "$BIN/kube-scheduler" \
    --kubeconfig "$STATE/scheduler.kubeconfig" \
    --authentication-kubeconfig "$STATE/scheduler.kubeconfig" \
    --authorization-kubeconfig "$STATE/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 \
    --secure-port "$SCHEDULER_PORT" \
    --tls-cert-file "$PKI/serving.crt" \
    --tls-private-key-file "$PKI/serving.key" \
    --client-ca-file "$PKI/ca.crt" \
    --leader-elect=false \
    --profiling=false
}

start_kwok() {
  start_component kwok "$BIN/kwok" \
    --kubeconfig "$STATE/kwok.kubeconfig" \
    --config "$STATE/kwok.yaml" \
    --manage-all-nodes=false \
    --manage-nodes-with-annotation-selector "$KWOK_NODE_ANNOTATION" \
    --node-lease-duration-seconds 40 \
    --cidr 10.243.0.0/16
}

# kwok's default ("fast") stages plus one of ours: a Running pod whose Ready condition
# was set to False by the node lifecycle controller (nodes NotReady while the apiserver
# was down for longer than the node-monitor grace period) becomes Ready again.
write_kwok_config() {
  {
    cat "$BIN/kwok-stages.yaml"
    cat <<'EOF'
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: penstock-pod-ready-again
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - key: '.metadata.deletionTimestamp'
      operator: 'DoesNotExist'
    - key: '.status.phase'
      operator: 'In'
      values:
      - 'Running'
    - key: '.status.conditions.[] | select( .type == "Ready" ) | .status'
      operator: 'In'
      values:
      - 'False'
  delay:
    durationMilliseconds: 1000
  next:
    statusTemplate: |
      conditions:
      - type: Ready
        status: "True"
        lastProbeTime: null
        lastTransitionTime: {{ Now | Quote }}
EOF
  } >"$STATE/kwok.yaml"
}

create_nodes() {
  local i manifest=""
  for ((i = 0; i < NODES; i++)); do
    manifest+="---
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-$i
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: \"0\"
  labels:
    type: kwok
    kubernetes.io/arch: amd64
    kubernetes.io/os: linux
    kubernetes.io/hostname: kwok-node-$i
    topology.kubernetes.io/zone: zone-$((i % 3))
spec:
  podCIDR: 10.244.$i.0/24
  podCIDRs: [10.244.$i.0/24]
status:
  addresses:
  - type: InternalIP
    address: 10.240.0.$((i + 10))
  - type: Hostname
    address: kwok-node-$i
  allocatable: {cpu: \"32\", memory: 256Gi, pods: \"110\", ephemeral-storage: 1Ti}
  capacity: {cpu: \"32\", memory: 256Gi, pods: \"110\", ephemeral-storage: 1Ti}
  nodeInfo:
    architecture: amd64
    operatingSystem: linux
"
  done
  printf '%s' "$manifest" | kubectl create -f - >>"$LOGS/nodes.log" 2>&1 ||
    printf '%s' "$manifest" | kubectl get -f - >/dev/null 2>&1
}

# ------------------------------------------------------------------ commands

FAILED_COMPONENT=""
UP_IN_PROGRESS=0

on_exit() {
  local rc=$?
  [[ $UP_IN_PROGRESS -eq 1 && $rc -ne 0 ]] || return 0
  UP_IN_PROGRESS=0
  local c="${FAILED_COMPONENT:-}"
  if [[ $rc -eq 130 || $rc -eq 143 ]]; then
    log "cluster start interrupted; cleaning up"
    do_down quiet || true
    exit "$rc"
  fi
  log "cluster start FAILED${c:+ (component: $c)}"
  if [[ -n "$c" ]]; then
    log_tail "$c"
  else
    for c in "${COMPONENTS[@]}"; do pid_of "$c" >/dev/null || log_tail "$c"; done
  fi
  log "cleaning up"
  do_down quiet || true
  exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

do_up() {
  require_tools
  if [[ -f "$STATE/ports.env" ]] && all_healthy; then
    log "cluster already up and healthy"
    print_env_hint
    return 0
  fi
  if [[ -e "$STATE/ports.env" || -e "$STATE/pids" ]]; then
    log "found a stale or partial cluster in $STATE; cleaning it up first"
  fi
  do_down quiet
  local t0=$SECONDS
  mkdir -p "$STATE" "$LOGS" "$PIDS" "$CMDS"
  : >"$LOGS/pki.log"
  for c in "${COMPONENTS[@]}"; do : >"$LOGS/$c.log"; done
  UP_IN_PROGRESS=1

  pick_ports
  log "ports: etcd $ETCD_PORT, kube-apiserver $APISERVER_PORT, controller-manager $CONTROLLER_MANAGER_PORT, scheduler $SCHEDULER_PORT"
  gen_pki
  write_kubeconfig "$KUBECONFIG_FILE.tmp" admin
  write_kubeconfig "$STATE/controller-manager.kubeconfig" controller-manager
  write_kubeconfig "$STATE/scheduler.kubeconfig" scheduler
  write_kubeconfig "$STATE/kwok.kubeconfig" kwok
  write_kwok_config

  log "starting etcd"
  start_etcd
  wait_for "etcd health" etcd healthy etcd
  log "starting kube-apiserver"
  start_apiserver
  wait_for "kube-apiserver /readyz" kube-apiserver healthy kube-apiserver
  mv "$KUBECONFIG_FILE.tmp" "$KUBECONFIG_FILE"
  log "starting kube-controller-manager, kube-scheduler, kwok"
  start_controller_manager
  start_scheduler
  start_kwok
  wait_for "kube-controller-manager /healthz" kube-controller-manager healthy kube-controller-manager
  wait_for "kube-scheduler /healthz" kube-scheduler healthy kube-scheduler
  log "creating $NODES fake nodes"
  FAILED_COMPONENT=kube-apiserver
  create_nodes
  FAILED_COMPONENT=""
  wait_for "nodes Ready" kwok nodes_ready
  wait_for "default service account" kube-controller-manager default_sa_exists
  UP_IN_PROGRESS=0
  log "cluster up in $((SECONDS - t0))s: $("$BIN/kubectl" --kubeconfig "$KUBECONFIG_FILE" version -o json 2>/dev/null | sed -n 's/.*"gitVersion": *"\([^"]*\)".*/\1/p' | tail -n1) at https://127.0.0.1:$APISERVER_PORT"
  print_env_hint
}

print_env_hint() {
  log "kubeconfig: $KUBECONFIG_FILE   (eval \"\$(hack/cluster.sh env)\")"
}

do_down() {
  local quiet="${1:-}"
  kill_orphans
  if [[ ! -e "$STATE/ports.env" && ! -e "$STATE/pids" ]]; then
    [[ -n "$quiet" ]] || log "no cluster in $STATE; nothing to do"
    return 0
  fi
  # All at once: the state (etcd data included) is deleted right after anyway.
  QUIET="$quiet" stop_components "${COMPONENTS[@]}"
  kill_orphans
  # Keep the logs for post-mortems; everything else (etcd data, certs, ports) goes.
  find "$STATE" -mindepth 1 -maxdepth 1 ! -name logs ! -name .lock -exec rm -rf {} +
  [[ -n "$quiet" ]] || log "cluster down"
}

do_status() {
  local c pid rc=0
  if [[ ! -f "$STATE/ports.env" ]]; then
    log "no cluster in $STATE"
    return 1
  fi
  load_ports
  for c in "${COMPONENTS[@]}"; do
    if pid=$(pid_of "$c"); then
      if healthy "$c"; then
        printf '%-24s running  pid %-8s healthy\n' "$c" "$pid"
      else
        printf '%-24s running  pid %-8s NOT healthy\n' "$c" "$pid"
        rc=1
      fi
    else
      printf '%-24s stopped\n' "$c"
      rc=1
    fi
  done
  sed 's/^/    /' "$STATE/ports.env"
  if [[ $rc -eq 0 ]]; then
    kubectl get nodes -o wide || rc=1
  fi
  return $rc
}

do_env() {
  [[ -f "$KUBECONFIG_FILE" ]] || die "no cluster: run 'hack/cluster.sh up' first"
  printf 'export KUBECONFIG=%q\n' "$KUBECONFIG_FILE"
}

do_restart() { # <component>
  local c="$1" t0=$SECONDS
  [[ " ${COMPONENTS[*]} " == *" $c "* ]] || die "unknown component '$c' (one of: ${COMPONENTS[*]})"
  [[ -f "$CMDS/$c" ]] || die "no cluster (or $c never started): run 'hack/cluster.sh up' first"
  load_ports
  stop_components "$c"
  log "starting $c"
  local -a argv
  eval "argv=($(<"$CMDS/$c"))"
  start_component "$c" "${argv[@]}"
  if ! wait_for "$c to become healthy" "$c" healthy "$c"; then
    log_tail "$c"
    die "$c did not come back"
  fi
  log "$c restarted in $((SECONDS - t0))s"
}

# Serialize commands that change the cluster: a pytest session, a developer and `make`
# may call this script at the same time for the same state directory.  The lock file
# survives `down` (deleting it would let a second caller lock a different inode).
with_lock() {
  mkdir -p "$STATE"
  exec {LOCK_FD}>>"$STATE/.lock"
  if ! flock -w "$((TIMEOUT + 120))" "$LOCK_FD"; then
    die "timed out waiting for another hack/cluster.sh on $STATE to finish"
  fi
  "$@"
}

case "${1:-}" in
  # Ports are picked free before the components bind them, so a process starting at the same
  # moment can take one (seen with other test runs on the machine): a failed start is cleaned
  # up by its own run, then tried once more on fresh ports.
  up)
    if ! bash "$0" up-once; then
      log "the start failed; trying once more on fresh ports"
      bash "$0" up-once
    fi
    ;;
  up-once) with_lock do_up ;;
  down) with_lock do_down ;;
  status) do_status ;;
  env) do_env ;;
  restart-apiserver) with_lock do_restart kube-apiserver ;;
  restart) with_lock do_restart "${2:?usage: $0 restart <component>}" ;;
  *)
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
