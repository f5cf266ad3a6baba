#!/usr/bin/env bash
# Build every container image a kind cluster needs, with no registry: nothing is pulled.
#
#   hack/images.sh rootfs     two Debian root filesystems (debootstrap), as tarballs in the cache
#   hack/images.sh node       the kind node image (systemd, containerd, kubelet, kubeadm) with the
#                             control plane's images (apiserver, etcd, coredns, pause ...) inside
#   hack/images.sh penstock   Penstock's images: penstock (operator/gateway/router/preload), redis,
#                             collector (Jaeger v2), prometheus, the RAG example's four stages
#   hack/images.sh all        all three, rootfs builds in parallel with nothing else to wait on
#
# Inputs are pinned in hack/tools-versions.env and hack/kind-versions.env; the Go binaries come
# from `make tools`. Root filesystems and the node image are cached under
# ${PENSTOCK_KIND_CACHE:-~/.cache/penstock-kind}, keyed by the versions and package lists that
# make them, so a warm machine only re-imports them. Build steps run with no network: Debian
# packages come in through debootstrap on the host, Python packages as a wheelhouse downloaded on
# the host from the lock.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=tools-versions.env
source "$ROOT/hack/tools-versions.env"
# shellcheck source=kind-versions.env
source "$ROOT/hack/kind-versions.env"
CACHE="${PENSTOCK_KIND_CACHE:-${HOME:-/root}/.cache/penstock-kind}"
TOOLS_CACHE="${PENSTOCK_TOOLS_CACHE:-${HOME:-/root}/.cache/penstock-tools}"
BIN="$ROOT/bin"
mkdir -p "$CACHE"

log() { printf '[images] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
elapsed() { local s=$(( $(date +%s) - $1 )); printf '%dm%02ds' $((s / 60)) $((s % 60)); }
short_hash() { sha256sum | cut -c1-12; }

# ---------------------------------------------------------------- root filesystems
# The node: what kind's own base image installs (images/base/Dockerfile in kind's module), from
# Debian's packages: systemd as PID 1, containerd 1.6 + runc, the CNI plugins (ptp, host-local,
# portmap, loopback), iptables for kube-proxy and kind's entrypoint.
NODE_PACKAGES="systemd systemd-sysv dbus conntrack iptables nftables iproute2 ethtool util-linux mount
kmod libseccomp2 pigz ca-certificates jq procps containerd runc containernetworking-plugins"
# Every other image: Python 3.11 with venv (Penstock, the example stages), redis-server (the cache
# sidecar), iptables + conntrack (kube-proxy), ca-certificates (TLS to stages and Redis).
BASE_PACKAGES="python3 python3-venv ca-certificates redis-server iptables conntrack"

rootfs_key() { # <name> <packages>
  printf '%s %s %s %s\n' "$1" "$DEBIAN_SUITE" "$DEBIAN_MIRROR" "$2" | short_hash
}

rootfs_tar() { # <name> <packages>: path of the cached tarball
  echo "$CACHE/rootfs-$1-$DEBIAN_SUITE-$(rootfs_key "$1" "$2").tar"
}

build_rootfs() { # <name> <packages>
  local name="$1" packages="$2" tar; tar=$(rootfs_tar "$1" "$2")
  [[ -s "$tar" ]] && return 0
  command -v debootstrap >/dev/null || die "debootstrap is missing (hack/kind.sh installs it)"
  local t0; t0=$(date +%s) dir="$CACHE/rootfs-$name.tmp"
  log "debootstrap $name ($DEBIAN_SUITE, minbase + $(echo "$packages" | wc -w) packages) ..."
  rm -rf "$dir"; mkdir -p "$dir"
  if ! debootstrap --variant=minbase --include="$(echo $packages | tr ' ' ,)" \
      "$DEBIAN_SUITE" "$dir" "$DEBIAN_MIRROR" >"$CACHE/rootfs-$name.log" 2>&1; then
    tail -n 30 "$CACHE/rootfs-$name.log" >&2
    die "debootstrap $name failed (log: $CACHE/rootfs-$name.log)"
  fi
  # What an image should not carry: the package cache and lists, logs, machine identity.
  rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/* "$dir"/var/log/* \
    "$dir"/tmp/* "$dir"/root/.cache
  : >"$dir/etc/machine-id"
  tar --numeric-owner --xattrs -C "$dir" -cf "$tar.tmp" .
  mv "$tar.tmp" "$tar"
  rm -rf "$dir"
  log "rootfs $name: $(du -h "$tar" | cut -f1) in $(elapsed "$t0")"
}

rootfs_all() {
  local pids=() rc=0
  build_rootfs node "$NODE_PACKAGES" & pids+=($!)
  build_rootfs base "$BASE_PACKAGES" & pids+=($!)
  local p; for p in "${pids[@]}"; do wait "$p" || rc=1; done
  return $rc
}


# ---------------------------------------------------------------- docker helpers
docker_ok() { docker info >/dev/null 2>&1 || die "no Docker engine (run hack/kind.sh engine)"; }

# import_rootfs <name> <packages> <image>: the rootfs tarball as an image (skipped when present).
import_rootfs() {
  local tar; tar=$(rootfs_tar "$1" "$2")
  [[ -s "$tar" ]] || build_rootfs "$1" "$2"
  docker image inspect "$3" >/dev/null 2>&1 && return 0
  docker import "$tar" "$3" >/dev/null
}

# build_image <tag> <context> [docker build args...]: the classic builder with no network.
build_image() {
  local tag="$1" ctx="$2"; shift 2
  local t0; t0=$(date +%s)
  if ! DOCKER_BUILDKIT=0 docker build --network none --quiet -t "$tag" "$@" "$ctx" >"$CACHE/build.log" 2>&1; then
    cat "$CACHE/build.log" >&2
    die "docker build $tag failed"
  fi
  log "image $tag: $(image_size "$tag") in $(elapsed "$t0")"
}

image_size() { docker image inspect -f '{{.Size}}' "$1" | awk '{printf "%.0f MB", $1 / 1e6}'; }

BASE_IMAGE="penstock/debian-base:$DEBIAN_SUITE-$(rootfs_key base "$BASE_PACKAGES")"
NODE_ROOTFS_IMAGE="penstock/debian-node:$DEBIAN_SUITE-$(rootfs_key node "$NODE_PACKAGES")"

k8s_bin() { echo "$TOOLS_CACHE/kubernetes-$KUBERNETES_VERSION/bin/$1"; }
tool_bin() { # <tool> <version> <binary>
  echo "$TOOLS_CACHE/$1-$2/bin/$3"
}

# ---------------------------------------------------------------- the node image
# The images kubeadm v1.34 names. etcd: the etcd that `make tools` builds (ETCD_VERSION) under
# its own tag; hack/kind.sh tells kubeadm that tag (etcd.local.imageTag).
etcd_tag() { echo "${ETCD_VERSION#v}-0"; }
control_plane_images() {
  local c; for c in kube-apiserver kube-controller-manager kube-scheduler kube-proxy; do
    echo "registry.k8s.io/$c:$KUBERNETES_VERSION"
  done
  echo "registry.k8s.io/etcd:$(etcd_tag)"
  echo "registry.k8s.io/coredns/coredns:$COREDNS_VERSION"
  echo "registry.k8s.io/pause:$PAUSE_VERSION"
}

node_image_key() {
  {
    echo "$KUBERNETES_VERSION $ETCD_VERSION $COREDNS_VERSION $KIND_VERSION $PAUSE_VERSION"
    echo "$NODE_ROOTFS_IMAGE $BASE_IMAGE"
    (cd "$ROOT/hack/kind/node" && find . -type f | sort | xargs sha256sum)
    sha256sum <"$ROOT/hack/images.sh"  # the content only: the same key from every clone's path
  } | short_hash
}
NODE_IMAGE="penstock/kind-node:$KUBERNETES_VERSION-$(node_image_key)"

build_component_images() { # <dir>: one image per control-plane binary, then one tarball of all
  local dir="$1" c
  for c in kube-apiserver kube-controller-manager kube-scheduler kube-proxy; do
    mkdir -p "$dir/$c"; cp "$(k8s_bin "$c")" "$dir/$c/"
    printf 'FROM %s\nCOPY %s /usr/local/bin/%s\n' "$BASE_IMAGE" "$c" "$c" >"$dir/$c/Dockerfile"
    build_image "registry.k8s.io/$c:$KUBERNETES_VERSION" "$dir/$c"
  done
  mkdir -p "$dir/etcd"; cp "$(tool_bin etcd "$ETCD_VERSION" etcd)" "$dir/etcd/"
  printf 'FROM %s\nCOPY etcd /usr/local/bin/etcd\n' "$BASE_IMAGE" >"$dir/etcd/Dockerfile"
  build_image "registry.k8s.io/etcd:$(etcd_tag)" "$dir/etcd"
  mkdir -p "$dir/coredns"; cp "$(tool_bin coredns "$COREDNS_VERSION" coredns)" "$dir/coredns/"
  printf 'FROM %s\nCOPY coredns /coredns\nENTRYPOINT ["/coredns"]\n' "$BASE_IMAGE" >"$dir/coredns/Dockerfile"
  build_image "registry.k8s.io/coredns/coredns:$COREDNS_VERSION" "$dir/coredns"
  # pause: kubernetes' own build/pause/linux/pause.c (in the k8s.io/kubernetes module), static.
  local src; src=$(cd "$dir" && GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" |
    sed -n 's/.*"Dir": *"\(.*\)".*/\1/p')
  [[ -f "$src/build/pause/linux/pause.c" ]] || die "pause.c not found in k8s.io/kubernetes@$KUBERNETES_VERSION"
  mkdir -p "$dir/pause/root"
  gcc -Os -Wall -Werror -static -DVERSION="v$PAUSE_VERSION-penstock" -o "$dir/pause/root/pause" \
    "$src/build/pause/linux/pause.c"
  strip "$dir/pause/root/pause"
  tar --numeric-owner -C "$dir/pause/root" -c pause |
    docker import --change 'ENTRYPOINT ["/pause"]' --change 'USER 65535:65535' - "registry.k8s.io/pause:$PAUSE_VERSION" >/dev/null
  local images; mapfile -t images < <(control_plane_images)
  docker save -o "$dir/control-plane.tar" "${images[@]}"
}

build_node_image() {
  docker_ok
  if docker image inspect "$NODE_IMAGE" >/dev/null 2>&1; then
    echo "$NODE_IMAGE"; return 0
  fi
  local t0; t0=$(date +%s)
  import_rootfs node "$NODE_PACKAGES" "$NODE_ROOTFS_IMAGE"
  import_rootfs base "$BASE_PACKAGES" "$BASE_IMAGE"
  local dir="$CACHE/node-context"
  rm -rf "$dir"; mkdir -p "$dir/kind-base" "$dir/bin" "$dir/images"
  # kind's base image files (its entrypoint, kubelet units, sysctls), from kind's Go module.
  local kind_src; kind_src=$(cd "$dir" && GOFLAGS=-mod=mod go mod download -json "sigs.k8s.io/kind@$KIND_VERSION" |
    sed -n 's/.*"Dir": *"\(.*\)".*/\1/p')
  [[ -d "$kind_src/images/base/files" ]] || die "kind $KIND_VERSION module source not found"
  cp -r "$kind_src/images/base/files/." "$dir/kind-base/"
  rm -f "$dir/kind-base/etc/containerd/config.toml" "$dir/kind-base/etc/systemd/system/containerd-fuse-overlayfs.service"
  chmod -R u+w "$dir/kind-base"
  cp -r "$ROOT/hack/kind/node" "$dir/penstock"
  local b; for b in kubelet kubeadm kubectl; do cp "$(k8s_bin "$b")" "$dir/bin/"; done
  build_component_images "$dir/components"
  mv "$dir/components/control-plane.tar" "$dir/images/"
  cat >"$dir/Dockerfile" <<DOCKERFILE
FROM $NODE_ROOTFS_IMAGE
COPY kind-base/ /
COPY penstock/ /
COPY bin/ /usr/bin/
COPY images/ /kind/images/
RUN chmod 0755 /usr/local/bin/* /kind/bin/* /usr/bin/kubelet /usr/bin/kubeadm /usr/bin/kubectl \\
 && find /lib/systemd/system/sysinit.target.wants/ -name systemd-tmpfiles-setup.service -delete \\
 && rm -f /lib/systemd/system/multi-user.target.wants/* /etc/systemd/system/*.wants/* \\
      /lib/systemd/system/local-fs.target.wants/* /lib/systemd/system/sockets.target.wants/*udev* \\
      /lib/systemd/system/sockets.target.wants/*initctl* /lib/systemd/system/basic.target.wants/* \\
 && echo "ReadKMsg=no" >>/etc/systemd/journald.conf \\
 && ln -sf /usr/bin/containerd /usr/local/bin/containerd \\
 && systemctl enable kubelet.service containerd.service undo-mount-hacks.service \\
      penstock-import-images.service penstock-dns-fence.service \\
 && systemctl mask systemd-binfmt.service \\
 && ctr oci spec | jq '.hooks.createContainer[.hooks.createContainer | length] |= . + {"path": "/kind/bin/mount-product-files.sh"}' \\
      | jq 'del(.process.rlimits)' >/etc/containerd/cri-base.json \\
 && mkdir -p /etc/kubernetes/manifests /opt/cni \\
 && ln -sfn /usr/lib/cni /opt/cni/bin \\
 && echo "$KUBERNETES_VERSION" >/kind/version
ENV container=docker
STOPSIGNAL SIGRTMIN+3
ENTRYPOINT ["/usr/local/bin/penstock-node-entrypoint", "/sbin/init"]
DOCKERFILE
  build_image "$NODE_IMAGE" "$dir"
  rm -rf "$dir"
  # Only the current node image is kept (1.4 GB each): the cache stays bounded.
  docker images --format '{{.Repository}}:{{.Tag}}' | grep '^penstock/kind-node:' |
    grep -vxF "$NODE_IMAGE" | xargs -r docker rmi >/dev/null 2>&1 || true
  docker image prune -f >/dev/null 2>&1 || true
  log "node image $NODE_IMAGE in $(elapsed "$t0")"
  echo "$NODE_IMAGE"
}

# ---------------------------------------------------------------- Penstock's images
# Names the chart and the operator use under kind (hack/kind/values.yaml says the same).
PENSTOCK_IMAGE="penstock/penstock:$PENSTOCK_IMAGE_TAG"
REDIS_IMAGE="penstock/redis:$DEBIAN_SUITE"
jaeger_release() { local m="${JAEGER_VERSION#v1.}"; echo "2.$(( ${m%%.*} - 63 )).${m#*.}"; }
prometheus_release() { local m="${PROMETHEUS_VERSION#v0.}" mm; mm="${m%%.*}"; echo "${mm:0:1}.$((10#${mm:1})).${m#*.}"; }
JAEGER_IMAGE="penstock/jaeger:$(jaeger_release)"
PROMETHEUS_IMAGE="penstock/prometheus:$(prometheus_release)"
RAG_STAGES=(retrieve embed rerank generate check)
rag_image() { echo "penstock/examples-rag-$1:$PENSTOCK_IMAGE_TAG"; }

penstock_images() { # every image `make images` builds, one per line
  echo "$PENSTOCK_IMAGE"; echo "$REDIS_IMAGE"; echo "$JAEGER_IMAGE"; echo "$PROMETHEUS_IMAGE"
  local s; for s in "${RAG_STAGES[@]}"; do rag_image "$s"; done
}

# The lock's wheels, downloaded on the host (the only place with a route to PyPI), keyed by the
# export they come from. requirements-examples.txt is a superset of requirements.txt.
# for_python <version>: the requirement blocks of an exported requirements file whose markers hold
# for that Python on Linux, markers dropped (pip download judges markers by its own interpreter).
for_python() {
  "$ROOT/.venv/bin/python" -c '
import re, sys
from packaging.markers import Marker
env = {"python_full_version": sys.argv[1], "python_version": ".".join(sys.argv[1].split(".")[:2]),
       "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix",
       "platform_machine": "x86_64", "implementation_name": "cpython"}
for block in re.split(r"\n(?=\S)", sys.stdin.read()):
    first, *rest = block.splitlines()
    req, _, marker = first.removesuffix(" \\").partition(" ; ")
    hashes = [line for line in rest if line.strip().startswith("--hash")]
    if first.startswith("#") or not first.strip() or (marker and not Marker(marker).evaluate(env)):
        continue
    print(" \\\n".join([req, *(h.removesuffix(" \\") for h in hashes)]))
' "$1"
}

# Markers are evaluated for the image's Python (Debian's 3.11.2 needs async-timeout; the host's
# newer 3.11 does not), so the version comes from the base image itself.
wheelhouse() {
  local pyver; pyver=$(docker run --rm --network none "$BASE_IMAGE" python3 -c 'import platform; print(platform.python_version())')
  local key; key=$( (echo "$pyver"; cat "$ROOT/requirements-examples.txt") | short_hash)
  local dir="$CACHE/wheels-$key"
  if [[ ! -f "$dir/.complete" ]]; then
    local t0; t0=$(date +%s)
    [[ -x "$CACHE/pip/bin/pip" ]] || python3 -m venv "$CACHE/pip"
    rm -rf "$dir"; mkdir -p "$dir"
    "$CACHE/pip/bin/pip" download --quiet --disable-pip-version-check --no-deps --require-hashes \
      --only-binary=:all: --python-version "$pyver" --implementation cp --platform manylinux2014_x86_64 \
      --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --platform linux_x86_64 \
      -d "$dir" -r <(for_python "$pyver" <"$ROOT/requirements-examples.txt") >&2
    touch "$dir/.complete"
    log "wheelhouse: $(ls "$dir" | wc -l) wheels, $(du -sh "$dir" | cut -f1) in $(elapsed "$t0")"
  fi
  echo "$dir"
}

build_penstock_images() {
  docker_ok
  local t0; t0=$(date +%s)
  import_rootfs base "$BASE_PACKAGES" "$BASE_IMAGE"
  local wheels; wheels=$(wheelhouse)
  local ctx="$CACHE/penstock-context"
  rm -rf "$ctx"; mkdir -p "$ctx/wheels"
  cp -l "$wheels"/*.whl "$ctx/wheels/" 2>/dev/null || cp "$wheels"/*.whl "$ctx/wheels/"
  local uv="$TOOLS_CACHE/uv-$UV_VERSION/bin/uv"
  [[ -x "$uv" ]] || die "uv is missing: run make install"
  # The commit's time as every file's time in the wheel: the same checkout gives the same
  # wheel, so Docker's build cache (and the node's copy of the image) stays valid.
  SOURCE_DATE_EPOCH=$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null || echo 315532800) \
    "$uv" build --quiet --wheel --out-dir "$ctx/wheels" "$ROOT" >&2
  cp "$ROOT/requirements.txt" "$ROOT/requirements-examples.txt" "$ctx/"
  cp "$ROOT/operator/Dockerfile" "$ctx/Dockerfile"
  build_image "$PENSTOCK_IMAGE" "$ctx" --build-arg "BASE_IMAGE=$BASE_IMAGE"

  # The cache sidecar: Debian's redis-server (the operator's pods set the user and the args).
  mkdir -p "$ctx/redis"
  printf 'FROM %s\nUSER 65532:65532\nENTRYPOINT ["redis-server"]\n' "$BASE_IMAGE" >"$ctx/redis/Dockerfile"
  build_image "$REDIS_IMAGE" "$ctx/redis"
  # Jaeger v2: the trace backend, and the OpenTelemetry collector the operator runs per namespace.
  mkdir -p "$ctx/jaeger"; cp "$(tool_bin jaeger "$JAEGER_VERSION" jaeger)" "$ctx/jaeger/"
  printf 'FROM %s\nCOPY jaeger /usr/local/bin/jaeger\nUSER 65532:65532\nENTRYPOINT ["jaeger"]\n' \
    "$BASE_IMAGE" >"$ctx/jaeger/Dockerfile"
  build_image "$JAEGER_IMAGE" "$ctx/jaeger"
  mkdir -p "$ctx/prometheus"; cp "$(tool_bin prometheus "$PROMETHEUS_VERSION" prometheus)" "$ctx/prometheus/"
  printf 'FROM %s\nCOPY prometheus /usr/local/bin/prometheus\nUSER 65532:65532\nENTRYPOINT ["prometheus"]\n' \
    "$BASE_IMAGE" >"$ctx/prometheus/Dockerfile"
  build_image "$PROMETHEUS_IMAGE" "$ctx/prometheus"

  # The RAG example's stages: one Dockerfile, the venv layer shared by the four.
  local rag="$ctx/rag"
  cp -r "$ROOT/examples/rag" "$rag"
  cp "$ROOT/requirements-examples.txt" "$rag/"
  cp -r "$ctx/wheels" "$rag/wheels"
  rm -f "$rag"/wheels/penstock_operator-*.whl
  local stage; for stage in "${RAG_STAGES[@]}"; do
    build_image "$(rag_image "$stage")" "$rag" --build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "STAGE=$stage"
  done
  rm -rf "$ctx"
  log "Penstock's images in $(elapsed "$t0")"
}

case "${1:-all}" in
  rootfs) rootfs_all ;;
  node) build_node_image ;;
  node-image-name) echo "$NODE_IMAGE" ;;
  etcd-tag) etcd_tag ;;
  penstock) build_penstock_images ;;
  list) penstock_images ;;
  all)
    rootfs_all
    build_node_image >/dev/null
    build_penstock_images
    ;;
  *) die "usage: hack/images.sh rootfs|node|penstock|all" ;;
esac
