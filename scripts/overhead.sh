#!/usr/bin/env bash
# Per-sandbox cost of Safehouse on a node: the figure behind overhead.podFixed in
# deploy/kubernetes/runtimeclass.yaml. Starts N idle sandboxes (`sleep`, like a pod's pause
# container) through a private containerd and the Safehouse shim, then for each sandbox sums
# the PSS of the shim and every process under it (runsc sandbox, gofer), and the CPU time
# those processes use over an idle window. Prints medians; asserts nothing.
# Usage: scripts/overhead.sh [SANDBOXES] [IDLE_SECONDS]   (SHIM_DIR=target/debug to use a debug build)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
N=${1:-5}
IDLE=${2:-20}
SH_LAB=/tmp/safehouse-overhead
SH_NS=overhead-$$
SH_SOCK="$SH_LAB/containerd.sock"
[ "$(id -u)" -eq 0 ] || die "needs root"
shim_dir=${SHIM_DIR:-$(pwd)/target/release}
[ -x "$shim_dir/containerd-shim-safehouse-v2" ] || die "build first: make build (or SHIM_DIR=...)"
trap 'stop_containerd' EXIT
stop_containerd
rm -rf "$SH_LAB/state" "$SH_LAB/root"
start_containerd "$shim_dir"
import_image
printf '[audit]\noutput = "%s"\n' "$SH_LAB/audit.jsonl" > "$SH_LAB/strict.toml"

descendants() { # pid: the pid and every process below it
  local p=$1; echo "$p"
  for c in $(cat /proc/"$p"/task/*/children 2>/dev/null); do descendants "$c"; done
}
pss_of() { awk '/^Pss:/{print $2}' "/proc/$1/smaps_rollup" 2>/dev/null || echo 0; }
ticks_of() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }

log "starting $N idle sandboxes (strict default policy)"
for i in $(seq 1 "$N"); do
  ctr_ run -d --runtime io.containerd.safehouse.v2 --runtime-config-path "$SH_LAB/strict.toml" "$SH_IMAGE" "idle-$i" sleep 100000 >/dev/null
done
sleep 3
declare -A procs
for i in $(seq 1 "$N"); do
  shim=$(pgrep -f "containerd-shim-safehouse-v2 .*-id idle-$i( |$)" | head -1)
  [ -n "$shim" ] || die "no shim for idle-$i"
  procs[$i]=$(descendants "$shim" | tr '\n' ' ')
done
echo "processes of idle-1: $(for p in ${procs[1]}; do printf "%s " "$(cat /proc/$p/comm)"; done)"
hz=$(getconf CLK_TCK)
declare -A t0
for i in $(seq 1 "$N"); do s=0; for p in ${procs[$i]}; do s=$((s + $(ticks_of "$p"))); done; t0[$i]=$s; done
log "idle for ${IDLE}s"
sleep "$IDLE"
printf '%-8s %6s %10s %10s %12s\n' sandbox procs pss_kib cpu_ticks millicores
pss_all=(); mc_all=()
for i in $(seq 1 "$N"); do
  s=0; t=0; n=0
  for p in ${procs[$i]}; do s=$((s + $(pss_of "$p"))); t=$((t + $(ticks_of "$p"))); n=$((n + 1)); done
  d=$((t - t0[$i]))
  mc=$(awk -v d="$d" -v hz="$hz" -v idle="$IDLE" 'BEGIN {printf "%.1f", d / hz / idle * 1000}')
  printf '%-8s %6s %10s %10s %12s\n' "idle-$i" "$n" "$s" "$d" "$mc"
  pss_all+=("$s"); mc_all+=("$mc")
done
med() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "median per sandbox: PSS $(med "${pss_all[@]}") KiB, idle CPU $(med "${mc_all[@]}") millicores (shim: $shim_dir)"
