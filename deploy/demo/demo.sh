#!/usr/bin/env bash
# mesh-agent demo: transparent capture and workload identity on one machine.
#
# Builds a tiny two-host network out of network namespaces ("node" runs the
# agent and two processes, "remote" runs a web server), puts one process in a
# workload cgroup and one outside, and shows that only the workload's connection
# is captured and attributed to its SPIFFE identity. Everything it makes is
# removed on exit, also on failure or Ctrl-C.
set -euo pipefail

BIN=${MESH_AGENT_BIN:-$(cd "$(dirname "$0")/../.." && pwd)/.build/release}
[ "$(id -u)" -eq 0 ] || { echo "the demo needs root (network namespaces, nftables, cgroups): run it with sudo"; exit 1; }
[ -x "$BIN/mesh-agent" ] || { echo "no $BIN/mesh-agent: run 'make demo' (it builds first)"; exit 1; }

TAG="demo$$"
NODE="ma-$TAG-node"; REMOTE="ma-$TAG-remote"
CG2=$(awk '$0 ~ / - cgroup2 / {print $5; exit}' /proc/self/mountinfo)
[ -n "$CG2" ] || { echo "no cgroup v2 mount found"; exit 1; }
CGROUP_REL="/ma-$TAG"
WORK=$(mktemp -d /tmp/mesh-agent-demo.XXXXXX)
AGENT_PID=""; SERVER_PID=""

cleanup() {
    set +e
    [ -n "$AGENT_PID" ] && kill -TERM "$AGENT_PID" 2>/dev/null && wait "$AGENT_PID" 2>/dev/null
    [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
    for dir in "$CG2$CGROUP_REL"/*/ "$CG2$CGROUP_REL"; do
        [ -d "$dir" ] || continue
        for pid in $(cat "$dir/cgroup.procs" 2>/dev/null); do kill -9 "$pid" 2>/dev/null; done
        rmdir "$dir" 2>/dev/null
    done
    ip netns delete "$NODE" 2>/dev/null
    ip netns delete "$REMOTE" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
in_node() { nsenter --net="/run/netns/$NODE" "$@"; }
# Runs a command as a process of the given cgroup, inside the node namespace.
in_cgroup() { local cg=$1; shift; sh -c 'echo $$ > "$0/cgroup.procs" && exec "$@"' "$CG2$CGROUP_REL/$cg" nsenter --net="/run/netns/$NODE" "$@"; }

step "Two hosts: '$NODE' (10.77.250.1) runs the agent, '$REMOTE' (10.77.250.2) a web server"
ip netns add "$NODE"; ip netns add "$REMOTE"
ip -n "$NODE" link set lo up; ip -n "$REMOTE" link set lo up
ip link add "v$TAG" netns "$NODE" type veth peer name "w$TAG" netns "$REMOTE"
ip -n "$NODE" addr add 10.77.250.1/24 dev "v$TAG"; ip -n "$NODE" link set "v$TAG" up
ip -n "$REMOTE" addr add 10.77.250.2/24 dev "w$TAG"; ip -n "$REMOTE" link set "w$TAG" up
mkdir -p "$WORK/www" && echo "hello from the remote host" > "$WORK/www/index.html"
nsenter --net="/run/netns/$REMOTE" python3 -m http.server 8080 --bind 10.77.250.2 --directory "$WORK/www" >/dev/null 2>&1 &
SERVER_PID=$!

step "Two cgroups: 'frontend' is a workload (identity spiffe://demo.local/ns/shop/sa/frontend), 'intruder' is not"
mkdir -p "$CG2$CGROUP_REL/frontend" "$CG2$CGROUP_REL/intruder"

step "A certificate authority: an offline root, and an intermediate for this node limited to demo.local"
"$BIN/agentctl" ca init --trust-domain demo.local --out "$WORK/ca/root"
"$BIN/agentctl" ca issue-intermediate --ca "$WORK/ca/root" --name demo-node --out "$WORK/ca/node"

cat > "$WORK/agent.yaml" <<YAML
trustDomain: demo.local
node: demo-node
accessLog: $WORK/access.log
adminSocket: $WORK/admin.sock
ca:
  certificate: $WORK/ca/node/intermediate.pem
  key: $WORK/ca/node/intermediate.key
  trustBundle: $WORK/ca/node/bundle.pem
workloads:
  - name: frontend
    namespace: shop
    cgroup: $CGROUP_REL/frontend
YAML
cat "$WORK/agent.yaml"
"$BIN/agentctl" config check "$WORK/agent.yaml"

step "Start mesh-agent in the node"
nsenter --net="/run/netns/$NODE" "$BIN/mesh-agent" --config "$WORK/agent.yaml" 2>"$WORK/agent.log" &
AGENT_PID=$!
for _ in $(seq 100); do grep -q "mesh-agent ready" "$WORK/agent.log" && break; sleep 0.1; done
grep -q "mesh-agent ready" "$WORK/agent.log" || { cat "$WORK/agent.log"; exit 1; }
sed 's/^/  agent: /' "$WORK/agent.log"

step "The workload's certificate (agentctl certs): a short-lived SVID, key kept in memory only"
"$BIN/agentctl" certs --socket "$WORK/admin.sock"

step "The capture rules the agent installed (nft list table inet mesh_agent)"
in_node nft list table inet mesh_agent

fetch='import sys, urllib.request; print(urllib.request.urlopen("http://10.77.250.2:8080/", timeout=5).read().decode().strip())'
step "The workload fetches http://10.77.250.2:8080/ — captured, proxied, attributed"
in_cgroup frontend python3 -c "$fetch"
step "The other process fetches the same URL — not captured"
in_cgroup intruder python3 -c "$fetch"
sleep 0.3

step "Access log: one line, for the workload's connection, naming its SPIFFE ID"
python3 -m json.tool --no-ensure-ascii < <(head -n 1 "$WORK/access.log")
echo "lines in the access log: $(wc -l < "$WORK/access.log") (the intruder's connection went around the agent)"

step "SIGTERM: the agent drains and removes its table (failureMode: open)"
kill -TERM "$AGENT_PID"; wait "$AGENT_PID" || true; AGENT_PID=""
in_node nft list table inet mesh_agent 2>/dev/null && echo "table still present!" || echo "table inet mesh_agent is gone"
step "Done; cleaning up"
