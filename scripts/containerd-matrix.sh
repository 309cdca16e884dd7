#!/usr/bin/env bash
# Unpacks the newer containerd releases the tests run against beside the system's 1.6.20,
# without touching apt's own sources or the installed package: each suite gets a private apt
# state under $MATRIX_DIR/apt/<suite>, its containerd .deb is downloaded and `dpkg -x`-ed into
# $MATRIX_DIR/<version>/. Idempotent; a version already unpacked is left alone.
#
#   trixie: containerd 1.7.x    sid: containerd 2.x
#
# The integration harness finds them through $MATRIX_DIR (default /var/lib/safehouse-test/containerd).
set -euo pipefail

MATRIX_DIR=${SAFEHOUSE_CONTAINERD_MATRIX:-/var/lib/safehouse-test/containerd}
SUITES=${SAFEHOUSE_CONTAINERD_SUITES:-"trixie sid"}

log() { printf '==> %s\n' "$*"; }

mkdir -p "$MATRIX_DIR"
for suite in $SUITES; do
  state="$MATRIX_DIR/apt/$suite"
  mkdir -p "$state/lists/partial" "$state/cache/archives/partial"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $suite main" \
    >"$state/sources.list"
  apt_opts=(
    -o "Dir::Etc::SourceList=$state/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$state/lists" -o "Dir::Cache=$state/cache"
    -o APT::Sandbox::User=root
  )
  apt-get "${apt_opts[@]}" update -qq
  # The first Version stanza is the suite's candidate (awk reads everything: no SIGPIPE).
  version=$(apt-cache "${apt_opts[@]}" show containerd | awk '/^Version: / && !v {v=$2} END {print v}')
  short=${version%%~*}; short=${short%%+*}; short=${short%%-*}
  dest="$MATRIX_DIR/$short"
  if [ -x "$dest/usr/bin/containerd" ]; then
    log "containerd $short ($suite) already at $dest"
  else
    log "fetching containerd $version from $suite into $dest"
    tmp=$(mktemp -d)
    (cd "$tmp" && apt-get "${apt_opts[@]}" download "containerd=$version" >/dev/null)
    mkdir -p "$dest.partial"
    dpkg -x "$tmp"/containerd_*.deb "$dest.partial"
    rm -rf "$tmp" "$dest"
    mv "$dest.partial" "$dest"
  fi
  "$dest/usr/bin/containerd" --version
done
