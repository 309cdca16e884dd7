#!/usr/bin/env bash
# Egress filter benchmark: what the per-sandbox nftables table costs. One Safehouse sandbox
# under an allowlist policy, in a pod network namespace joined by a veth pair to a test-host
# namespace (HTTP server); every figure is measured with the table in place and, in the same
# sandbox, with the table removed (the "no policy" baseline), interleaved round by round.
# Prints medians; asserts nothing. Usage: scripts/bench-egress.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
SH_LAB=/tmp/safehouse-bench-egress
SH_NS=bench-egress-$$
. scripts/lib.sh
ROUNDS=${1:-${BENCH_RUNS:-7}}
CONNECTS=${CONNECTS:-100}
DOWNLOADS=${DOWNLOADS:-4}
[ "$(id -u)" -eq 0 ] || die "benchmarks need root"
shim_dir=${SHIM_DIR:-$(pwd)/target/release}
[ -x "$shim_dir/containerd-shim-safehouse-v2" ] || die "build first: make build"

tag=$$
pod=sfb-pod-$tag; host=sfb-host-$tag
sub=$(( 1 + tag % 250 ))
host_ip=10.220.$sub.1; pod_ip=10.220.$sub.2
server_pid=
cleanup() {
  ctr_ task kill -s SIGKILL eg-bench >/dev/null 2>&1 || true
  sleep 0.5
  ctr_ task delete eg-bench >/dev/null 2>&1 || true
  ctr_ containers rm eg-bench >/dev/null 2>&1 || true
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
  ip netns del "$pod" 2>/dev/null || true
  ip netns del "$host" 2>/dev/null || true
  stop_containerd
}
trap cleanup EXIT
stop_containerd
rm -rf "$SH_LAB/state" "$SH_LAB/root"
start_containerd "$shim_dir"
import_image

# The network: pod <-veth-> host, an HTTP server on the host with a 64 MiB file.
ip netns add "$pod"; ip netns add "$host"
ip link add "sbp$tag" netns "$pod" type veth peer name "sbh$tag" netns "$host"
ip -n "$pod" addr add "$pod_ip/24" dev "sbp$tag"; ip -n "$host" addr add "$host_ip/24" dev "sbh$tag"
for ns in "$pod" "$host"; do ip -n "$ns" link set lo up; done
ip -n "$pod" link set "sbp$tag" up; ip -n "$host" link set "sbh$tag" up
mkdir -p "$SH_LAB/www"
[ -s "$SH_LAB/www/big" ] || head -c $((64 << 20)) /dev/zero > "$SH_LAB/www/big"
ip netns exec "$host" python3 -m http.server --bind "$host_ip" --directory "$SH_LAB/www" 8080 >/dev/null 2>&1 &
server_pid=$!
for _ in $(seq 50); do ip netns exec "$host" python3 -c "import socket; socket.create_connection(('$host_ip', 8080), 1)" 2>/dev/null && break; sleep 0.1; done

mkdir -p "$SH_LAB/policies"
cat > "$SH_LAB/policies/allow.yaml" <<YAML
apiVersion: safehouse.dev/v1alpha1
kind: AgentPolicy
metadata: {name: allow}
spec:
  filesystem: {rootfs: read-write}
  network: {mode: allowlist, egress: ["$host_ip:8080"]}
  process: {user: "0:0"}
  resources: {memory: 1Gi, pids: 1024}
  audit: {record: []}
YAML
printf '[policy]\ndefault = "%s"\n[audit]\noutput = "%s"\n' "$SH_LAB/policies/allow.yaml" "$SH_LAB/audit.jsonl" > "$SH_LAB/allow.toml"

run_in() { ctr_ task exec --exec-id "x$RANDOM$RANDOM" eg-bench sh -c "$1"; }
# busybox date has no %N: the sandbox's /proc/uptime (centiseconds) times whole loops instead.
CS='cs() { read a b < /proc/uptime; echo $(( ${a%.*} * 100 + 1${a#*.} - 100 )); }'
# Microseconds per connect over $CONNECTS connects (each a busybox nc: includes its start).
per_connect() {
  run_in "$CS; t0=\$(cs); i=0; while [ \$i -lt $CONNECTS ]; do nc -w 3 $host_ip $1 </dev/null >/dev/null 2>&1; i=\$((i+1)); done; t1=\$(cs); echo \$(( (t1 - t0) * 10000 / $CONNECTS ))"
}
# MB/s over $DOWNLOADS downloads of the 64 MiB file.
download() {
  run_in "$CS; t0=\$(cs); i=0; while [ \$i -lt $DOWNLOADS ]; do wget -q -O /dev/null http://$host_ip:8080/big; i=\$((i+1)); done; t1=\$(cs); echo \$(( 64 * $DOWNLOADS * 100 / (t1 - t0 + 1) ))"
}
med() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

log "rule install at sandbox start: $ROUNDS sandboxes (shim log: network filter installed)"
start_times=""
for i in $(seq 1 "$ROUNDS"); do
  t0=$(date +%s%N)
  ctr_ run --rm --runtime io.containerd.safehouse.v2 --runtime-config-path "$SH_LAB/allow.toml" \
    --with-ns "network:/var/run/netns/$pod" "$SH_IMAGE" "eg-start-$i" true >/dev/null
  t1=$(date +%s%N)
  start_times+="$(( (t1 - t0) / 1000000 )) "
done
installs=$(grep -o 'network filter installed[^"]*elapsed_ms=[0-9]*' "$SH_LAB/containerd.log" | grep -o '[0-9]*$' | tr '\n' ' ')

ctr_ run -d --runtime io.containerd.safehouse.v2 --runtime-config-path "$SH_LAB/allow.toml" \
  --with-ns "network:/var/run/netns/$pod" "$SH_IMAGE" eg-bench sleep 3600 >/dev/null
for _ in $(seq 50); do ctr_ task ls | grep -q 'eg-bench.*RUNNING' && break; sleep 0.1; done
table=$(ip netns exec "$pod" nft list tables | awk '/safehouse_/ {print $3}')
[ -n "$table" ] || die "no Safehouse table in $pod"
ip netns exec "$pod" nft list table inet "$table" > "$SH_LAB/table.nft"
filter_on() { ip netns exec "$pod" nft -f "$SH_LAB/table.nft"; }
filter_off() { ip netns exec "$pod" nft delete table inet "$table"; }

log "connect, refusal, download: $ROUNDS rounds, filter on/off interleaved, $CONNECTS connects each"
declare -A s
for i in $(seq 1 "$ROUNDS"); do
  s[allowed_on]+="$(per_connect 8080) "
  s[refused_on]+="$(per_connect 9090) "
  s[dl_on]+="$(download) "
  filter_off
  s[allowed_off]+="$(per_connect 8080) "
  s[closed_off]+="$(per_connect 9090) "
  s[dl_off]+="$(download) "
  filter_on
done

a_on=$(echo "${s[allowed_on]}" | med); a_off=$(echo "${s[allowed_off]}" | med)
r_on=$(echo "${s[refused_on]}" | med); c_off=$(echo "${s[closed_off]}" | med)
d_on=$(echo "${s[dl_on]}" | med); d_off=$(echo "${s[dl_off]}" | med)
printf '\n%-52s %12s %12s\n' "egress filter (median of $ROUNDS)" "filter" "no filter"
printf '%-52s %10s us %10s us\n' "connect to an allowed port (incl. nc start)" "$a_on" "$a_off"
printf '%-52s %10s us %10s us\n' "refused port (filter: reset; none: host's reset)" "$r_on" "$c_off"
printf '%-52s %8s MB/s %8s MB/s\n' "64 MiB HTTP download" "$d_on" "$d_off"
printf '%-52s %10s ms\n' "rule install at sandbox start (shim log)" "$(echo "$installs" | med)"
printf '%-52s %10s ms\n' "ctr run --rm true, allowlist + own netns" "$(echo "$start_times" | med)"
printf 'raw: installs_ms=[%s] starts_ms=[%s]\n' "$installs" "$start_times"
for k in "${!s[@]}"; do printf 'raw: %s=[%s]\n' "$k" "${s[$k]}"; done | sort
