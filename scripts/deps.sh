#!/usr/bin/env bash
# Installs everything Safehouse needs to build, test, benchmark and demo on Debian 12.
# Idempotent: safe to run again. Needs root (CI and the demo run as root).
set -euo pipefail

log() { printf '==> %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
  echo "scripts/deps.sh: must run as root (it installs Debian packages)" >&2
  exit 1
fi

. /etc/os-release
codename=${VERSION_CODENAME:-bookworm}

# runsc 20240729 (systrap) lives in bookworm-backports; the base suite only has 20221219.
bp=/etc/apt/sources.list.d/safehouse-backports.sources
if ! grep -rqs "${codename}-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
  log "adding ${codename}-backports to apt sources"
  cat >"$bp" <<SRC
Types: deb
URIs: http://deb.debian.org/debian
Suites: ${codename}-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi

export DEBIAN_FRONTEND=noninteractive
log "apt-get update"
apt-get update -qq

pkgs=(
  containerd runc containernetworking-plugins  # the container runtime we plug into, plus baselines
  busybox-static umoci skopeo                   # local OCI images without a registry
  iproute2 nftables procps psmisc util-linux    # netns test hosts, leak checks
  e2fsprogs                                     # mkfs.ext4: the size-bounded image behind each output zone
  python3 jq hyperfine                          # test hosts, scripts, benchmarks
  protobuf-compiler                             # protoc, for the CRI client's gRPC bindings (k8s-cri)
  build-essential pkg-config git curl ca-certificates
)
log "installing: ${pkgs[*]}"
apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null

log "installing runsc from ${codename}-backports"
apt-get install -y -qq --no-install-recommends -t "${codename}-backports" runsc >/dev/null

# containerd 1.7 (trixie) and 2.x (sid), unpacked privately for the compatibility matrix.
log "unpacking the containerd versions of the test matrix"
bash "$(dirname "$0")/containerd-matrix.sh"

# Rust: the machine image ships rustup; make sure the components the checks need are there.
if command -v rustup >/dev/null 2>&1; then
  rustup component add rustfmt clippy >/dev/null 2>&1 || true
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "scripts/deps.sh: cargo not found; install a Rust toolchain (rustup) first" >&2
  exit 1
fi

log "versions"
# (sed reads all of it: `head -1` would leave runsc a SIGPIPE, fatal under pipefail)
runsc --version | sed -n 1p
containerd --version
ctr --version
