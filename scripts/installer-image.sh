#!/usr/bin/env bash
# Builds the node installer image of deploy/kubernetes/installer.yaml without Docker: an OCI
# image (umoci) with busybox-static (sh, nsenter, chroot, sleep), the release binaries with the
# shared libraries they link, and what `safehouse node install --from /opt/safehouse` copies:
#   /opt/safehouse/bin/{containerd-shim-safehouse-v2,safehouse}
#   /opt/safehouse/config/{config.toml,config-net.toml}     (deploy/config)
#   /opt/safehouse/policies/*.yaml                          (deploy/policies)
# Output: target/safehouse-node-installer.tar (an OCI layout). Put it on a node with
#   ctr -n k8s.io images import --base-name docker.io/safehouse/node-installer target/safehouse-node-installer.tar
# or push it with skopeo to your registry and change `image:` in the manifests.
# Usage: scripts/installer-image.sh [BIN_DIR]   (default target/release; run `make build` first)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
IMAGE=docker.io/safehouse/node-installer:0.1.0
bin_dir=${1:-target/release}
out=${CARGO_TARGET_DIR:-target}/safehouse-node-installer.tar
for b in containerd-shim-safehouse-v2 safehouse; do
  [ -x "$bin_dir/$b" ] || die "$bin_dir/$b missing: make build"
done
command -v umoci >/dev/null || die "umoci missing: run 'make deps'"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
umoci init --layout "$work/oci" >/dev/null
umoci new --image "$work/oci:${IMAGE##*:}" >/dev/null
umoci unpack --image "$work/oci:${IMAGE##*:}" "$work/bundle" >/dev/null
root="$work/bundle/rootfs"
mkdir -p "$root/bin" "$root/tmp" "$root/host" "$root/opt/safehouse/bin" "$root/opt/safehouse/config" "$root/opt/safehouse/policies"
cp /bin/busybox "$root/bin/busybox"
for a in sh nsenter chroot sleep cat ls echo; do ln -sf busybox "$root/bin/$a"; done
for b in containerd-shim-safehouse-v2 safehouse; do
  install -m 0755 "$bin_dir/$b" "$root/opt/safehouse/bin/$b"
  # The Rust binaries link glibc: carry the exact libraries (and loader) they were built with.
  for lib in $(ldd "$bin_dir/$b" | grep -o '/[^ ]*'); do
    mkdir -p "$root$(dirname "$lib")"; cp -L "$lib" "$root$lib"
  done
done
install -m 0644 deploy/config/config.toml deploy/config/config-net.toml "$root/opt/safehouse/config/"
install -m 0644 deploy/policies/*.yaml "$root/opt/safehouse/policies/"
umoci repack --image "$work/oci:${IMAGE##*:}" "$work/bundle" >/dev/null
umoci config --image "$work/oci:${IMAGE##*:}" --config.cmd=/opt/safehouse/bin/safehouse --config.env=PATH=/bin:/opt/safehouse/bin >/dev/null
mkdir -p "$(dirname "$out")"
tar -C "$work/oci" -cf "$out" .
log "built $out ($IMAGE): import it with ctr -n k8s.io images import --base-name ${IMAGE%:*} $out"
