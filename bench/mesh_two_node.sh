#!/usr/bin/env bash
# Mesh cost between two nodes, next to direct TCP, in one run.
#
# Two network namespaces joined by a veth pair, an agent in each (the demo's
# topology). On node B, iperf3 and a small HTTP server listen twice: on a port
# the workload "orders" declares (so a client in the "checkout" cgroup on node A
# reaches it through the HBONE tunnel) and on a port no workload declares (so an
# uncaptured client on node A reaches it directly). Same servers, same link;
# only the path differs.
#
#   throughput: iperf3, 1 and 4 streams
#   latency:    wrk, keep-alive and "Connection: close"
#   policy:     wrk keep-alive through the mesh with an L4-only AuthorizationPolicy,
#               then with one that names methods and paths (every request parsed
#               and decided): the request-rate cost of L7 enforcement
#
# Run as root: MESH_AGENT_BIN=.build/release bash bench/mesh_two_node.sh
# BENCH_SECTIONS picks sections (default "throughput latency policy").
set -euo pipefail

BIN=${MESH_AGENT_BIN:-$(cd "$(dirname "$0")/.." && pwd)/.build/release}
HERE=$(cd "$(dirname "$0")" && pwd)
SECONDS_PER_RUN=${BENCH_SECONDS:-8}
WRK_CONNECTIONS=${WRK_CONNECTIONS:-16}
SECTIONS=${BENCH_SECTIONS:-throughput latency policy}
section() { case " $SECTIONS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
[ "$(id -u)" -eq 0 ] || { echo "run as root (network namespaces, nftables, cgroups)"; exit 1; }
for tool in iperf3 wrk nsenter; do command -v $tool >/dev/null || { echo "$tool is missing: make deps"; exit 1; }; done

TAG="bench$$"
A="ma-$TAG-a"; B="ma-$TAG-b"
CG2=$(awk '$0 ~ / - cgroup2 / {print $5; exit}' /proc/self/mountinfo)
CLIENT_CG="/ma-$TAG-checkout"; SERVER_CG="/ma-$TAG-orders"
WORK=$(mktemp -d /tmp/mesh-agent-bench.XXXXXX)
mkdir -p "$WORK/policies"
PIDS=()

cleanup() {
    set +e
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
    for cg in "$CLIENT_CG" "$SERVER_CG"; do
        for pid in $(cat "$CG2$cg/cgroup.procs" 2>/dev/null); do kill -9 "$pid" 2>/dev/null; done
        # A killed process leaves its cgroup only once it is gone: retry.
        for _ in $(seq 50); do rmdir "$CG2$cg" 2>/dev/null && break; [ -d "$CG2$cg" ] || break; sleep 0.1; done
    done
    ip netns delete "$A" 2>/dev/null; ip netns delete "$B" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

in_a() { nsenter --net="/run/netns/$A" "$@"; }
# Runs a command in a cgroup, inside a node's namespace.
in_cgroup() { local cg=$1 ns=$2; shift 2; sh -c 'echo $$ > "$0/cgroup.procs" && exec "$@"' "$CG2$cg" nsenter --net="/run/netns/$ns" "$@"; }

ip netns add "$A"; ip netns add "$B"
ip -n "$A" link set lo up; ip -n "$B" link set lo up
ip link add "v$TAG" netns "$A" type veth peer name "w$TAG" netns "$B"
ip -n "$A" addr add 10.77.251.1/24 dev "v$TAG"; ip -n "$B" addr add 10.77.251.2/24 dev "w$TAG"
ip -n "$A" link set "v$TAG" up; ip -n "$B" link set "w$TAG" up
mkdir "$CG2$CLIENT_CG" "$CG2$SERVER_CG"

"$BIN/agentctl" ca init --trust-domain cluster.local --out "$WORK/root" >/dev/null
for node in a b; do
    "$BIN/agentctl" ca issue-intermediate --ca "$WORK/root" --name "node-$node" --out "$WORK/$node" >/dev/null
    cat > "$WORK/$node.yaml" <<EOF
trustDomain: cluster.local
node: node-$node
adminSocket: $WORK/$node.sock
accessLog: $WORK/$node-access.log
policyDir: $WORK/policies
mtlsMode: STRICT
ca: {certificate: $WORK/$node/intermediate.pem, key: $WORK/$node/intermediate.key, trustBundle: $WORK/$node/bundle.pem}
meshNetworks: [10.77.0.0/16]
workloads:
  - {name: checkout, namespace: shop, cgroup: $CLIENT_CG}
  - {name: orders, namespace: shop, cgroup: $SERVER_CG, ports: [5201, 8080]}
EOF
done
nsenter --net="/run/netns/$A" "$BIN/mesh-agent" --config "$WORK/a.yaml" 2>"$WORK/a.log" & PIDS+=($!); AGENT_A=$!
nsenter --net="/run/netns/$B" "$BIN/mesh-agent" --config "$WORK/b.yaml" 2>"$WORK/b.log" & PIDS+=($!); AGENT_B=$!
in_cgroup "$SERVER_CG" "$B" iperf3 -s -p 5201 >/dev/null 2>&1 & PIDS+=($!)
in_cgroup "$SERVER_CG" "$B" iperf3 -s -p 5202 >/dev/null 2>&1 & PIDS+=($!)
in_cgroup "$SERVER_CG" "$B" python3 "$HERE/tools/http_server.py" 8080 8081 >/dev/null 2>&1 & PIDS+=($!)
for _ in $(seq 100); do
    grep -q "mesh-agent ready" "$WORK/a.log" 2>/dev/null && grep -q "mesh-agent ready" "$WORK/b.log" 2>/dev/null && break
    sleep 0.1
done
sleep 1

# utime + stime of a process, in clock ticks (fields after the command name).
cpu() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
gbits() { python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"] / 1e9))'; }

echo "mesh-agent two-node bench: $(nproc) cores, ${SECONDS_PER_RUN}s per run, $(date -u +%FT%TZ)"
if section throughput; then
echo
echo "throughput (iperf3, Gbit/s received)"
printf '  %-10s %10s %10s\n' streams direct mesh
for streams in 1 4; do
    direct=$(in_a iperf3 -c 10.77.251.2 -p 5202 -t "$SECONDS_PER_RUN" -P "$streams" -J | gbits)
    mesh=$(in_cgroup "$CLIENT_CG" "$A" iperf3 -c 10.77.251.2 -p 5201 -t "$SECONDS_PER_RUN" -P "$streams" -J | gbits)
    printf '  %-10s %10s %10s\n' "$streams" "$direct" "$mesh"
done
fi

wrk_run() {
    "$@" 2>&1 | awk '/Requests\/sec/ {rps=$2} /^ +50%/ {p50=$2} /^ +99%/ {p99=$2} END {printf "%10s %9s %9s", rps, p50, p99}'
}
seconds() { awk -v d="$1" -v t="$(getconf CLK_TCK)" 'BEGIN {printf "%.1f", d / t}'; }

if section latency; then
echo
echo "request latency (wrk -t2 -c$WRK_CONNECTIONS, ${SECONDS_PER_RUN}s; requests/s, p50, p99)"
for mode in keep-alive close; do
    header=()
    [ "$mode" = close ] && header=(-H "Connection: close")
    direct=$(wrk_run in_a wrk -t2 -c"$WRK_CONNECTIONS" -d"${SECONDS_PER_RUN}s" --latency "${header[@]}" http://10.77.251.2:8081/)
    a0=$(cpu $AGENT_A); b0=$(cpu $AGENT_B)
    mesh=$(wrk_run in_cgroup "$CLIENT_CG" "$A" wrk -t2 -c"$WRK_CONNECTIONS" -d"${SECONDS_PER_RUN}s" --latency "${header[@]}" http://10.77.251.2:8080/)
    a1=$(cpu $AGENT_A); b1=$(cpu $AGENT_B)
    printf '  %-11s direct %s\n' "$mode" "$direct"
    printf '  %-11s mesh   %s   (agent CPU: node A %ss, node B %ss)\n' "" "$mesh" \
        "$(awk -v d=$((a1 - a0)) -v t="$(getconf CLK_TCK)" 'BEGIN {printf "%.1f", d / t}')" \
        "$(awk -v d=$((b1 - b0)) -v t="$(getconf CLK_TCK)" 'BEGIN {printf "%.1f", d / t}')"
done
fi

if section policy; then
echo
echo "L7 policy cost (wrk -t2 -c$WRK_CONNECTIONS keep-alive through the mesh, ${SECONDS_PER_RUN}s; requests/s, p50, p99)"
generation() { "$BIN/agentctl" policies -o json --socket "$WORK/b.sock" | python3 -c 'import json,sys; print(json.load(sys.stdin)["generation"])'; }
apply_policy() {   # FILE CONTENT: swap node B's policies and wait until they are in force
    local before; before=$(generation)
    rm -f "$WORK"/policies/*.yaml
    printf '%s\n' "$1" > "$WORK/policies/bench.yaml"
    for _ in $(seq 100); do [ "$(generation)" -gt "$before" ] && return 0; sleep 0.1; done
    echo "node B did not load the bench policy"; exit 1
}
POLICY_HEAD='apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bench, namespace: shop}
spec:
  rules:
  - from: [{source: {principals: ["cluster.local/ns/shop/sa/checkout"]}}]'
for kind in l4 l7; do
    if [ "$kind" = l4 ]; then
        apply_policy "$POLICY_HEAD"
    else
        apply_policy "$POLICY_HEAD
    to: [{operation: {methods: [\"GET\"], paths: [\"/\", \"/api/*\"]}}]"
    fi
    a0=$(cpu $AGENT_A); b0=$(cpu $AGENT_B)
    result=$(wrk_run in_cgroup "$CLIENT_CG" "$A" wrk -t2 -c"$WRK_CONNECTIONS" -d"${SECONDS_PER_RUN}s" --latency http://10.77.251.2:8080/)
    a1=$(cpu $AGENT_A); b1=$(cpu $AGENT_B)
    printf '  %-4s %s   (agent CPU: node A %ss, node B %ss)\n' "$kind" "$result" "$(seconds $((a1 - a0)))" "$(seconds $((b1 - b0)))"
    denied=$(grep -c '"action":"deny"' "$WORK/b-access.log" || true)
    [ "$denied" -eq 0 ] || { echo "node B denied $denied request(s) or connection(s): the bench policy is wrong"; exit 1; }
done
rm -f "$WORK"/policies/*.yaml
fi
echo
echo "tunnel connections open on node A now: $(in_a ss -Htn state established '( dport = :15008 )' | wc -l)"
