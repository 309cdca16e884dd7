#!/usr/bin/env bash
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
SH_LAB=/tmp/safehouse-bench
SH_NS=probe-$$
SH_SOCK="$SH_LAB/containerd.sock"
shim_dir=$(pwd)/target/release
trap 'stop_containerd' EXIT
stop_containerd
rm -rf "$SH_LAB/state" "$SH_LAB/root"
start_containerd "$shim_dir"
import_image
printf '[audit]\noutput = "%s"\n' "$SH_LAB/audit.jsonl" > "$SH_LAB/strict.toml"
for i in 1 2 3; do ctr_ run --rm --runtime io.containerd.safehouse.v2 --runtime-config-path "$SH_LAB/strict.toml" "$SH_IMAGE" w$i true; done
for i in 1 2 3 4 5; do
  s=$(date +%s%N); ctr_ run --rm --runtime io.containerd.safehouse.v2 --runtime-config-path "$SH_LAB/strict.toml" "$SH_IMAGE" m$i true; e=$(date +%s%N); echo "run $(( (e-s)/1000000 )) ms"
done
perf record -q -o /tmp/probe.perf -a -e sched:sched_process_exec -e sched:sched_process_exit -e sched:sched_process_fork -- ctr -a "$SH_SOCK" -n "$SH_NS" run --rm --runtime io.containerd.safehouse.v2 --runtime-config-path "$SH_LAB/strict.toml" "$SH_IMAGE" p1 true
