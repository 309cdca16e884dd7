# Shared by scripts/demo.sh and scripts/bench.sh: a private containerd and a local image.
# Source it; every function is safe to call again. Nothing here touches the node's own
# containerd: everything lives under $SH_LAB (default /tmp/safehouse-lab).

SH_LAB=${SH_LAB:-/tmp/safehouse-lab}
SH_NS=${SH_NS:-safehouse}
SH_SOCK="$SH_LAB/containerd.sock"
SH_IMAGE=${SH_IMAGE:-docker.io/local/busybox:latest}

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

ctr_() { ctr -a "$SH_SOCK" -n "$SH_NS" "$@"; }

# build_image OUT.tar: an OCI image with busybox-static and its applets, built with umoci.
build_image() { # OUT [EXTRA_FILES: that many small files under /data, for a large image]
  local out=$1 extra=${2:-0} work
  [ -f "$out" ] && return 0
  command -v umoci >/dev/null || die "umoci missing: run 'make deps'"
  work=$(mktemp -d)
  umoci init --layout "$work/oci" >/dev/null
  umoci new --image "$work/oci:latest" >/dev/null
  umoci unpack --image "$work/oci:latest" "$work/bundle" >/dev/null
  local root="$work/bundle/rootfs"
  mkdir -p "$root/bin" "$root/tmp" "$root/etc" "$root/proc" "$root/sys" "$root/dev" "$root/work"
  cp /bin/busybox "$root/bin/busybox"
  for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -sf busybox "$root/bin/$a"; done
  # A second real executable (a copy, not a link): what an agent's allowlist can leave out.
  mkdir -p "$root/usr/local/bin" && cp /bin/busybox "$root/usr/local/bin/fetch"
  echo 'root:x:0:0:root:/root:/bin/sh' > "$root/etc/passwd"
  echo 'nobody:x:65534:65534:nobody:/nonexistent:/bin/false' >> "$root/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' > "$root/etc/group"
  if [ "$extra" -gt 0 ]; then
    mkdir -p "$root/data"
    for i in $(seq 1 "$extra"); do echo "$i" > "$root/data/f$i"; done
  fi
  umoci repack --image "$work/oci:latest" "$work/bundle" >/dev/null
  umoci config --image "$work/oci:latest" --config.cmd=/bin/sh --config.env=PATH=/bin >/dev/null
  tar -C "$work/oci" -cf "$out" .
  rm -rf "$work"
}

# start_containerd: a private containerd with the shim's directory first on its PATH.
start_containerd() {
  local shim_dir=$1
  mkdir -p "$SH_LAB"
  if [ -S "$SH_SOCK" ] && ctr -a "$SH_SOCK" version >/dev/null 2>&1; then return 0; fi
  cat > "$SH_LAB/containerd.toml" <<TOML
version = 2
root = "$SH_LAB/root"
state = "$SH_LAB/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$SH_SOCK"
[ttrpc]
  address = "$SH_SOCK.ttrpc"
TOML
  PATH="$shim_dir:$PATH" containerd --config "$SH_LAB/containerd.toml" >"$SH_LAB/containerd.log" 2>&1 &
  echo $! > "$SH_LAB/containerd.pid"
  for _ in $(seq 1 100); do
    ctr -a "$SH_SOCK" version >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  die "private containerd did not come up; see $SH_LAB/containerd.log"
}

# import_image: build (once) and import the local busybox image.
import_image() {
  build_image "$SH_LAB/busybox-v2.tar"
  ctr_ images ls -q | grep -qx "$SH_IMAGE" || ctr_ images import --base-name "${SH_IMAGE%:*}" "$SH_LAB/busybox-v2.tar" >/dev/null
}

# stop_containerd: end the private containerd (by its PID) after removing our tasks.
stop_containerd() {
  [ -f "$SH_LAB/containerd.pid" ] || return 0
  local pid; pid=$(cat "$SH_LAB/containerd.pid")
  if [ -S "$SH_SOCK" ]; then
    for t in $(ctr_ tasks ls -q 2>/dev/null || true); do
      ctr_ tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true
      ctr_ tasks delete -f "$t" >/dev/null 2>&1 || true
    done
    for c in $(ctr_ containers ls -q 2>/dev/null || true); do ctr_ containers rm "$c" >/dev/null 2>&1 || true; done
  fi
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$SH_LAB/containerd.pid"
  # Snapshot mounts containerd may leave if it was killed mid-flight.
  { grep -o " $SH_LAB/[^ ]*" /proc/mounts 2>/dev/null || true; } | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
}
