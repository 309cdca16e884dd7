#!/usr/bin/env bash
# Safehouse benchmarks: cold start and shim memory, each against baselines measured in the same
# run. Prints medians, spreads and ratios; asserts nothing. Usage: scripts/bench.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
RUNS=${1:-${BENCH_RUNS:-15}}
SH_LAB=/tmp/safehouse-bench
SH_NS=bench-$$   # per run: leftovers of an earlier run are never counted
SH_SOCK="$SH_LAB/containerd.sock"
[ "$(id -u)" -eq 0 ] || die "benchmarks need root"

shim_dir=$(pwd)/target/release
[ -x "$shim_dir/containerd-shim-safehouse-v2" ] || die "build first: make build"
trap 'stop_containerd' EXIT
stop_containerd
rm -rf "$SH_LAB/state" "$SH_LAB/root"
start_containerd "$shim_dir"
import_image

# The Go shim driving the same runsc (containerd's own baseline for "gVisor via runc shim").
cat > "$SH_LAB/runsc-wrap" <<'W'
#!/bin/sh
exec /usr/bin/runsc --network=none "$@"
W
chmod +x "$SH_LAB/runsc-wrap"

# A bundle for runsc directly (the floor).
bundle="$SH_LAB/bundle"
if [ ! -x "$bundle/rootfs/bin/true" ]; then
  rm -rf "$bundle"; mkdir -p "$bundle/rootfs/bin"
  cp /bin/busybox "$bundle/rootfs/bin/busybox"; ln -sf busybox "$bundle/rootfs/bin/true"
  (cd "$bundle" && runsc spec -- /bin/true)
fi

# "No policy" for Safehouse is an open policy that records nothing: no confinement beyond
# gVisor itself, no trace session. The strict default is what a node with no config gets.
mkdir -p "$SH_LAB/policies"
cat > "$SH_LAB/policies/open.yaml" <<'YAML'
apiVersion: safehouse.dev/v1alpha1
kind: AgentPolicy
metadata:
  name: open
spec:
  filesystem: {rootfs: read-write}
  network: {mode: none}   # open needs a namespace of its own (see bench-egress.sh)
  process: {user: "0:0", noNewPrivileges: false}
  resources: {memory: 8Gi, pids: 4096}
  audit: {record: []}
YAML
printf '[policy]\ndefault = "%s"\n[audit]\noutput = "%s"\n' "$SH_LAB/policies/open.yaml" "$SH_LAB/audit-open.jsonl" > "$SH_LAB/open.toml"
printf '[audit]\noutput = "%s"\n' "$SH_LAB/audit.jsonl" > "$SH_LAB/strict.toml"

variant_cmd() {
  case $1 in
    safehouse) ctr_ run --rm --runtime io.containerd.safehouse.v2 --runtime-config-path "$SH_LAB/strict.toml" "$SH_IMAGE" b-sh true ;;
    safehouse-open) ctr_ run --rm --runtime io.containerd.safehouse.v2 --runtime-config-path "$SH_LAB/open.toml" "$SH_IMAGE" b-so true ;;
    go-shim-runsc) ctr_ run --rm --runtime io.containerd.runc.v2 --runc-binary "$SH_LAB/runsc-wrap" "$SH_IMAGE" b-go true ;;
    runsc-direct) runsc --root="$SH_LAB/runsc-root" --network=none run --bundle "$bundle" b-rd ;;
    runc) ctr_ run --rm --runtime io.containerd.runc.v2 "$SH_IMAGE" b-rc true ;;
  esac
}

variants=(safehouse safehouse-open go-shim-runsc runsc-direct runc)
declare -A samples
log "cold start: $RUNS runs of each, interleaved (ctr run --rm IMAGE ID true)"
for v in "${variants[@]}"; do variant_cmd "$v" >/dev/null 2>&1 || die "$v does not run; see $SH_LAB/containerd.log"; done
for i in $(seq 1 "$RUNS"); do
  for v in "${variants[@]}"; do
    t0=$(date +%s%N); variant_cmd "$v" >/dev/null 2>&1; t1=$(date +%s%N)
    samples[$v]+="$(( (t1 - t0) / 1000 )) "
  done
done

# stats "list of microseconds" -> "median p10 p90" in ms
stats() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {m=a[int((NR+1)/2)]; p10=a[int(NR*0.1)+1]; p90=a[int(NR*0.9)>0?int(NR*0.9):1]; printf "%.1f %.1f %.1f\n", m/1000, p10/1000, p90/1000}'; }
declare -A median
printf '\n%-16s %10s %10s %10s\n' variant median_ms p10_ms p90_ms
for v in "${variants[@]}"; do
  read -r m p10 p90 < <(echo "${samples[$v]}" | stats)
  median[$v]=$m
  printf '%-16s %10s %10s %10s\n' "$v" "$m" "$p10" "$p90"
done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a/b}'; }
echo
echo "ratio safehouse / go-shim-runsc: $(ratio "${median[safehouse]}" "${median[go-shim-runsc]}")  (target <= 0.80)"
echo "ratio safehouse / runsc-direct:  $(ratio "${median[safehouse]}" "${median[runsc-direct]}")"
echo "safehouse - runsc-direct:        $(awk -v a="${median[safehouse]}" -v b="${median[runsc-direct]}" 'BEGIN {printf "%.1f", a-b}') ms  (target <= 90)"
echo "ratio safehouse / runc:          $(ratio "${median[safehouse]}" "${median[runc]}")"
echo "ratio strict default / open, unaudited policy: $(ratio "${median[safehouse]}" "${median[safehouse-open]}")  (target < 1.05)"

# Violation to kill: an agent runs a listed multi-call binary (busybox) under a name its tools
# list does not give it (an unlisted file is refused by the mounts and never runs). From the audit
# timestamps: the Sentry's exec event -> the shim's kill event (decision) and -> the exit.
cat > "$SH_LAB/policies/tools.yaml" <<'YAML'
apiVersion: safehouse.dev/v1alpha1
kind: AgentPolicy
metadata:
  name: tools
spec:
  process: {tools: [/bin/sh, /bin/sleep]}
  audit: {record: [process], onViolation: kill}
YAML
printf '[policy]\ndefault = "%s"\n[audit]\noutput = "%s"\n' "$SH_LAB/policies/tools.yaml" "$SH_LAB/audit-kill.jsonl" > "$SH_LAB/tools.toml"
: > "$SH_LAB/audit-kill.jsonl"
KILL_RUNS=$(( RUNS > 20 ? RUNS : 20 ))
log "violation to kill: $KILL_RUNS runs (exec of an unlisted binary under onViolation: kill)"
for i in $(seq 1 "$KILL_RUNS"); do
  ctr_ run --rm --runtime io.containerd.safehouse.v2 --runtime-config-path "$SH_LAB/tools.toml" \
    "$SH_IMAGE" "b-kill-$i" sh -c 'sleep 0.2; (exec -a fetch /bin/sleep 1); sleep 10' >/dev/null 2>&1 || true
done
# Baseline, same run: the same kind of sandbox ended by `runsc kill` (how the shim killed before
# the pidfd switch), from the call to the sandbox process's exit (its pidfd readable).
log "baseline: the same sandbox ended by runsc kill: $KILL_RUNS runs"
: > "$SH_LAB/runsc-kill.ms"
for i in $(seq 1 "$KILL_RUNS"); do
  ctr_ run -d --runtime io.containerd.safehouse.v2 --runtime-config-path "$SH_LAB/tools.toml" \
    "$SH_IMAGE" "b-rk-$i" sh -c 'sleep 30' >/dev/null 2>&1 || continue
  sleep 0.3
  python3 - "/run/safehouse/runsc/$SH_NS" "b-rk-$i" >> "$SH_LAB/runsc-kill.ms" <<'PY' || true
import json, os, select, subprocess, sys, time
root, cid = sys.argv[1], sys.argv[2]
state = json.loads(subprocess.run(["runsc", "--root", root, "state", cid], capture_output=True, check=True).stdout)
fd = os.pidfd_open(state["pid"])
t0 = time.perf_counter()
subprocess.run(["runsc", "--root", root, "kill", cid, "9"], capture_output=True)
if select.select([fd], [], [], 10)[0]:
    print(f"{(time.perf_counter() - t0) * 1000:.3f}")
PY
  ctr_ task delete -f "b-rk-$i" >/dev/null 2>&1 || true
  ctr_ containers rm "b-rk-$i" >/dev/null 2>&1 || true
done

# kill_report AUDIT_FILE SANDBOX_PREFIX [BASELINE_MS_FILE]: the violation-to-kill times of the
# sandboxes named SANDBOX_PREFIX* (and the runsc kill baseline, when given).
kill_report() {
python3 - "$@" <<'PY'
import json, sys
from datetime import datetime
def t(s):  # RFC 3339 with ns -> seconds
    base, frac = s.rstrip("Z").split(".")
    return datetime.fromisoformat(base).timestamp() + float("0." + frac)
runs = {}
for line in open(sys.argv[1]):
    e = json.loads(line)
    if not e["sandbox_id"].startswith(sys.argv[2]):
        continue
    r = runs.setdefault(e["sandbox_id"], {})
    if e["category"] == "process" and e["action"] == "exec" and \
            (e.get("process", {}).get("argv") or [""])[0] == "fetch":
        r["exec"] = t(e["time"])
    elif e["category"] == "lifecycle" and e["action"] == "kill":
        r["kill"] = t(e["time"])
        if "stopped_after_us" in (e.get("detail") or {}):
            r["stopped"] = e["detail"]["stopped_after_us"] / 1000
    elif e["category"] == "lifecycle" and e["action"] == "exit":
        r["exit"] = t(e["time"])
def med(xs):
    xs = sorted(xs); return xs[len(xs) // 2] if xs else float("nan")
k = [(r["kill"] - r["exec"]) * 1000 for r in runs.values() if {"exec", "kill"} <= r.keys()]
x = [(r["exit"] - r["exec"]) * 1000 for r in runs.values() if {"exec", "exit"} <= r.keys()]
print(f"exec -> kill decision: median {med(k):.2f} ms over {len(k)} runs (max {max(k) if k else float('nan'):.2f})")
print(f"exec -> sandbox exited: median {med(x):.1f} ms over {len(x)} runs (max {max(x) if x else float('nan'):.1f})")
e = [(r["kill"] - r["exec"]) * 1000 + r["stopped"] for r in runs.values() if {"exec", "kill", "stopped"} <= r.keys()]
print(f"exec -> sandbox stopped: median {med(e):.2f} ms over {len(e)} runs (max {max(e) if e else float('nan'):.2f})  (target median <= 2)")
s = [r["stopped"] for r in runs.values() if "stopped" in r]
print(f"kill decision -> sandbox stopped (every Sentry thread exiting): median {med(s):.2f} ms over {len(s)} runs (max {max(s) if s else float('nan'):.2f})  (target median <= 2)")
d = [(r["exit"] - r["kill"]) * 1000 for r in runs.values() if {"kill", "exit"} <= r.keys()]
print(f"kill decision -> sandbox reaped (the kernel has torn down its namespaces): median {med(d):.2f} ms over {len(d)} runs (max {max(d) if d else float('nan'):.2f})")
b = [float(l) for l in open(sys.argv[3]) if l.strip()] if len(sys.argv) > 3 else []
if b:
    print(f"runsc kill -> sandbox exited (baseline): median {med(b):.2f} ms over {len(b)} runs (max {max(b):.2f})")
if b and d:
    print(f"ratio kill switch (decision -> reaped) / runsc kill (call -> exited): {med(d) / med(b):.2f}")
PY
}
kill_report "$SH_LAB/audit-kill.jsonl" b-kill- "$SH_LAB/runsc-kill.ms"

# The same violation while the container floods the audit stream with file events (about
# 6,000 a second here) and spends its CPU quota: the check must not wait for the stream's
# batching, nor the kill for the next CPU period.
cat > "$SH_LAB/policies/tools-flood.yaml" <<'YAML'
apiVersion: safehouse.dev/v1alpha1
kind: AgentPolicy
metadata:
  name: tools-flood
spec:
  filesystem: {scratch: [{path: /work, size: 64Mi}]}
  process: {tools: [/bin/sh, /bin/sleep]}
  audit: {record: [process, file], onViolation: kill}
YAML
printf '[policy]\ndefault = "%s"\n[audit]\noutput = "%s"\n' "$SH_LAB/policies/tools-flood.yaml" "$SH_LAB/audit-flood.jsonl" > "$SH_LAB/tools-flood.toml"
: > "$SH_LAB/audit-flood.jsonl"
log "violation to kill in a flood of file events: $KILL_RUNS runs"
for i in $(seq 1 "$KILL_RUNS"); do
  ctr_ run --rm --runtime io.containerd.safehouse.v2 --runtime-config-path "$SH_LAB/tools-flood.toml" \
    "$SH_IMAGE" "b-flood-$i" sh -c 'i=0; while [ $i -lt 200000 ]; do echo x > /work/f; i=$((i+1)); done & sleep 0.5; (exec -a fetch /bin/sleep 1); sleep 10' >/dev/null 2>&1 || true
done
kill_report "$SH_LAB/audit-flood.jsonl" b-flood-

# Create-time cost of process.tools: the open policy with and without a tools list (the
# rootfs bound again noexec, one view of /bin for its symlinked tools, a bind per tool and
# interpreter), on the busybox image and on one with 5,000 more files, interleaved.
sed -e 's/name: open/name: open-tools/' \
    -e 's|process: {user: "0:0", noNewPrivileges: false}|process: {user: "0:0", noNewPrivileges: false, tools: [/bin/sh, /bin/true]}|' \
    "$SH_LAB/policies/open.yaml" > "$SH_LAB/policies/open-tools.yaml"
grep -q 'tools: \[/bin/sh, /bin/true\]' "$SH_LAB/policies/open-tools.yaml" || die "open-tools.yaml: the tools list was not added"
printf '[policy]\ndefault = "%s"\n[audit]\noutput = "%s"\n' "$SH_LAB/policies/open-tools.yaml" "$SH_LAB/audit-open-tools.jsonl" > "$SH_LAB/open-tools.toml"
LARGE_IMAGE=docker.io/local/busybox-large:latest
build_image "$SH_LAB/busybox-large-v1.tar" 5000
ctr_ images ls -q | grep -qx "$LARGE_IMAGE" || ctr_ images import --base-name "${LARGE_IMAGE%:*}" "$SH_LAB/busybox-large-v1.tar" >/dev/null
tools_cmd() { # config image id
  ctr_ run --rm --runtime io.containerd.safehouse.v2 --runtime-config-path "$SH_LAB/$1.toml" "$2" "$3" true
}
declare -A tsamples
tvariants=(open:small open-tools:small open:large open-tools:large)
log "create cost of the tools mount table: $RUNS runs of each, interleaved"
for v in "${tvariants[@]}"; do
  img=$SH_IMAGE; [ "${v#*:}" = large ] && img=$LARGE_IMAGE
  tools_cmd "${v%:*}" "$img" b-tw >/dev/null 2>&1 || die "$v does not run; see $SH_LAB/containerd.log"
done
for i in $(seq 1 "$RUNS"); do
  for v in "${tvariants[@]}"; do
    img=$SH_IMAGE; [ "${v#*:}" = large ] && img=$LARGE_IMAGE
    t0=$(date +%s%N); tools_cmd "${v%:*}" "$img" b-tt >/dev/null 2>&1; t1=$(date +%s%N)
    tsamples[$v]+="$(( (t1 - t0) / 1000 )) "
  done
done
declare -A tmedian
printf '\n%-20s %10s %10s %10s\n' "policy:image" median_ms p10_ms p90_ms
for v in "${tvariants[@]}"; do
  read -r m p10 p90 < <(echo "${tsamples[$v]}" | stats)
  tmedian[$v]=$m
  printf '%-20s %10s %10s %10s\n' "$v" "$m" "$p10" "$p90"
done
echo "ratio with / without the tools table, busybox image:      $(ratio "${tmedian[open-tools:small]}" "${tmedian[open:small]}")"
echo "ratio with / without the tools table, +5,000 files:         $(ratio "${tmedian[open-tools:large]}" "${tmedian[open:large]}")"
echo

# Shim memory: RSS, PSS and anonymous PSS of the shim processes, per container.
mem_of() { awk '/^Rss:/{r=$2} /^Pss:/{p=$2} /^Pss_Anon:/{a=$2} END {print r+0, p+0, a+0}' "/proc/$1/smaps_rollup"; }
measure_mem() { # runtime-args... ; prints "rss pss anon" summed over shim processes, KiB
  local pattern=$1 total_r=0 total_p=0 total_a=0
  for pid in $(pgrep -f "$pattern" || true); do
    read -r r p a < <(mem_of "$pid"); total_r=$((total_r + r)); total_p=$((total_p + p)); total_a=$((total_a + a))
  done
  echo "$total_r $total_p $total_a"
}
run_detached() { # name count grouped runtime-args...
  local name=$1 n=$2 grouped=$3; shift 3
  for i in $(seq 1 "$n"); do
    local ann=()
    if [ "$grouped" = yes ]; then
      if [ "$i" = 1 ]; then ann=(--annotation io.kubernetes.cri.container-type=sandbox --annotation "io.kubernetes.cri.sandbox-id=$name-1")
      else ann=(--annotation io.kubernetes.cri.container-type=container --annotation "io.kubernetes.cri.sandbox-id=$name-1"); fi
    fi
    ctr_ run -d "${ann[@]}" "$@" "$SH_IMAGE" "$name-$i" sleep 600 >/dev/null
  done
}
cleanup_tasks() { for t in $(ctr_ tasks ls -q); do ctr_ tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true; done; sleep 1; for t in $(ctr_ tasks ls -q); do ctr_ tasks delete -f "$t" >/dev/null 2>&1 || true; done; for c in $(ctr_ containers ls -q); do ctr_ containers rm "$c" >/dev/null 2>&1 || true; done; }

echo
log "shim memory (KiB, summed over shim processes, divided per container)"
printf '%-34s %8s %8s %8s %8s\n' case shims rss pss pss_anon
declare -A pss
for n in 1 10; do
  for kind in safehouse go; do
    for grouped in no yes; do
      [ "$n" = 1 ] && [ "$grouped" = yes ] && continue
      if [ "$kind" = go ] && [ "$grouped" = yes ]; then
        # containerd's Go runc shim driving runsc cannot add a member to a runsc pod sandbox
        # (runsc create fails: "container already exists"), so there is no baseline here.
        printf '%-34s %8s\n' "go n=$n pod" "n/a (the Go shim cannot join runsc pod members)"
        continue
      fi
      if [ "$kind" = safehouse ]; then
        run_detached "m$kind$n$grouped" "$n" "$grouped" --runtime io.containerd.safehouse.v2 --runtime-config-path "$SH_LAB/strict.toml"
        pat="containerd-shim-safehouse-v2 -namespace $SH_NS"
      else
        run_detached "m$kind$n$grouped" "$n" "$grouped" --runtime io.containerd.runc.v2 --runc-binary "$SH_LAB/runsc-wrap"
        pat="containerd-shim-runc-v2 -namespace $SH_NS"
      fi
      sleep 1
      shims=$(pgrep -fc "$pat" || true)
      read -r r p a < <(measure_mem "$pat")
      label="$kind n=$n $([ "$grouped" = yes ] && echo pod || echo separate)"
      printf '%-34s %8s %8s %8s %8s\n' "$label" "$shims" "$((r / n))" "$((p / n))" "$((a / n))"
      pss["$kind-$n-$grouped"]=$((p / n))
      cleanup_tasks
    done
  done
done
echo
echo "ratio PSS per container safehouse / go-shim (1 container):   $(ratio "${pss[safehouse-1-no]}" "${pss[go-1-no]}")  (target <= 0.25)"
echo "ratio PSS per container safehouse / go-shim (10 separate):   $(ratio "${pss[safehouse-10-no]}" "${pss[go-10-no]}")"
echo "ratio PSS per container safehouse pod of 10 / go-shim 10 separate: $(ratio "${pss[safehouse-10-yes]}" "${pss[go-10-no]}")"

# CRI pods through containerd's CRI plugin, on a private containerd of their own:
# safehouse vs the runc handler vs containerd's Go runc shim driving runsc; shim PSS per pod;
# 20 pods at once (integration/src/bin/cri-bench.rs). The bench client itself is a debug
# build: it only waits on containerd.
echo
log "CRI pods: pod start, shim memory per pod, 20 pods at once"
${CARGO:-cargo} build -q -p safehouse-integration --features bench --bin cri-bench
SAFEHOUSE_SHIM="$shim_dir/containerd-shim-safehouse-v2" "$(pwd)/target/debug/cri-bench" "$RUNS"
