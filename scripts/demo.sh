#!/usr/bin/env bash
# make demo: set this machine up and run an AI agent's task in a Safehouse sandbox, end to end:
# a private containerd with the safehouse runtime, an agent policy, and the audit stream
# printed as it happens. Needs root on Debian 12; touches nothing outside /tmp/safehouse-demo
# except installing packages.
set -euo pipefail
cd "$(dirname "$0")/.."
SH_LAB=${SH_LAB:-/tmp/safehouse-demo}
. scripts/lib.sh
SH_NS=demo
SH_SOCK="$SH_LAB/containerd.sock"
[ "$(id -u)" -eq 0 ] || die "run as root: the demo starts containerd and gVisor sandboxes"

log "1/5 installing what Safehouse needs (containerd, gVisor's runsc, image tools)"
bash scripts/deps.sh >/dev/null
log "2/5 building Safehouse (release)"
cargo build --release --bins --quiet
bin=$(pwd)/target/release

log "3/5 starting a private containerd with the io.containerd.safehouse.v2 runtime"
follower=
cleanup() { [ -n "$follower" ] && kill "$follower" 2>/dev/null; stop_containerd; }
trap cleanup EXIT
stop_containerd
start_containerd "$bin"
import_image

log "4/5 the agent's policy"
jobs="$SH_LAB/jobs"
mkdir -p "$jobs/in" "$jobs/out" "$SH_LAB/policies"
rm -f "$jobs/out/"*
chown 65534:65534 "$jobs/out"   # the agent runs as nobody (uid 65534)
printf 'summarise the quarterly numbers\n' > "$jobs/in/task.txt"
cat > "$SH_LAB/policies/demo-agent.yaml" <<YAML
apiVersion: safehouse.dev/v1alpha1
kind: AgentPolicy
metadata:
  name: demo-agent
spec:
  filesystem:
    rootfs: read-only
    scratch: [{path: /tmp, size: 64Mi}]
    inputs: [{source: $jobs/in, path: /input}]
    outputs: [{source: $jobs/out, path: /output, size: 1Mi, symlinks: refuse}]
  network:
    mode: none
  process:
    user: "65534:65534"
    tools: [/bin/sh, /bin/cat, /bin/touch, /bin/tail, /bin/cut, /bin/tr, /bin/sleep]
    timeout: 60s
  resources:
    memory: 256Mi
    pids: 64
  audit:
    record: [process, file, network]
    onViolation: kill
YAML
# The audit signing key (on a node, `safehouse node install` makes /etc/safehouse/audit.key).
# The key carries the log's seal chain, and each run starts a fresh log: a fresh key too.
rm -rf "$SH_LAB/keys"
"$bin/safehouse" audit keygen --dir "$SH_LAB/keys" >/dev/null
cat > "$SH_LAB/config.toml" <<TOML
[policy]
default = "$SH_LAB/policies/demo-agent.yaml"
dir = "$SH_LAB/policies"
[audit]
output = "$SH_LAB/audit.jsonl"
signing_key = "$SH_LAB/keys/audit.key"
TOML
"$bin/safehouse" policy explain "$SH_LAB/policies/demo-agent.yaml" | sed 's/^/    /'

log "5/5 running the agent (audit events stream below, one line each)"
: > "$SH_LAB/audit.jsonl"
# $! must be the follower itself (not a pipe stage after it) so cleanup can end it by PID.
"$bin/safehouse" audit follow --format short "$SH_LAB/audit.jsonl" > >(sed -u 's/^/    audit | /') &
follower=$!

run_agent() { # name script
  ctr_ run --rm --runtime io.containerd.safehouse.v2 --runtime-config-path "$SH_LAB/config.toml" \
    "$SH_IMAGE" "$1" sh -c "$2" 2>&1 | sed -u 's/^/    agent | /'
  local rc=${PIPESTATUS[0]}
  sleep 0.3   # let the follower print this task's last events
  return "$rc"
}

echo "  -- task 1: a well-behaved agent"
run_agent agent-task-1 '
  echo "reading /input/task.txt: $(cat /input/task.txt)"
  echo "REPORT: $(cat /input/task.txt)" > /output/report.txt && echo "wrote /output/report.txt"
  touch /etc/backdoor 2>/dev/null || echo "could not write to its own image (read-only rootfs)"
  cat /dev/zero > /output/filler 2>/dev/null || echo "filling /output stopped at its 1Mi size (no space left on device)"
  echo "network interfaces: $(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d " " | tr "\n" " ")"
  exit 0' && rc=0 || rc=$?
sleep 0.5
echo "  -> exit code $rc; on the host, $jobs/out/report.txt says: $(cat "$jobs/out/report.txt" 2>/dev/null || echo '(missing)')"
echo "     and $jobs/out holds $(du -sk "$jobs/out" | cut -f1) KiB in all (the zone's size is 1Mi)"
echo "     what the policy narrowed in the container's spec (from the create event):"
grep '"action":"create"' "$SH_LAB/audit.jsonl" | grep -o 'narrowed [^"]*' | sed 's/^/       /' || true

echo "  -- task 2: an agent that runs a tool its policy does not list"
run_agent agent-task-2 'echo "running /usr/local/bin/fetch, which the policy does not list..."
  /usr/local/bin/fetch >/dev/null 2>&1 || echo "refused before it ran: the mounts let only listed tools execute"
  echo "now the listed /bin/sh (busybox) under another name: exec -a wget /bin/sh ..."
  (exec -a wget /bin/sh -c true) 2>/dev/null; sleep 5; echo "never printed"' && rc=0 || rc=$?
sleep 0.5
echo "  -> exit code $rc (killed by Safehouse for the violation)"
stopped=$(grep '"action":"kill"' "$SH_LAB/audit.jsonl" | grep -o '"stopped_after_us":[0-9]*' | tail -1 | cut -d: -f2 || true)
[ -n "$stopped" ] && echo "     every thread of the sandbox had stopped ${stopped} µs after the decision (the kill event's stopped_after_us)"

echo "  -- task 3: a spec that points the loader at a library in a zone the agent writes"
ctr_ run --rm --runtime io.containerd.safehouse.v2 --runtime-config-path "$SH_LAB/config.toml" \
  --env LD_PRELOAD=/output/payload.so "$SH_IMAGE" agent-task-3 /bin/sh -c true 2>&1 \
  | sed -u 's/^/    ctr   | /' && rc=0 || rc=$?
echo "  -> refused at create, before anything ran (every listed dynamic tool would have loaded it)"
sleep 0.3

kill "$follower" 2>/dev/null || true; follower=
echo
"$bin/safehouse" audit verify --key "$SH_LAB/keys/audit.pub" "$SH_LAB/audit.jsonl" | sed 's/^/    /'
log "done: the full audit log is $SH_LAB/audit.jsonl"
