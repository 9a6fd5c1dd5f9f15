# Helpers of the demos (demo.sh, demo-host.sh, journey.sh), sourced by each once
# it has set BIN. Functions only; they use what the demo sets next: WORK, NS_A,
# NS_B, VETH_A and VETH_B (the host-mode ones also CG_REL). Agents live in
# $WORK/a and $WORK/b.

# require_lab WHAT TARGET TOOL...: root, the binaries in $BIN, the tools, and
# cgroup v2 (its mount in CG2), or a message saying how to get them.
require_lab() {
    local what=$1 target=$2 tool; shift 2
    [ "$(id -u)" -eq 0 ] || { echo "the demo needs root (network namespaces, nftables, $what): run it with sudo"; exit 1; }
    for tool in "$BIN/mesh-agent" "$BIN/agentctl"; do
        [ -x "$tool" ] || { echo "no $tool: run 'make $target' (it builds first)"; exit 1; }
    done
    for tool in "$@"; do
        command -v "$tool" >/dev/null || { echo "the demo needs $tool: run 'make deps' (or 'make $target')"; exit 1; }
    done
    CG2=$(awk '$0 ~ / - cgroup2 / {print $5; exit}' /proc/self/mountinfo)
    [ -n "$CG2" ] || { echo "no cgroup v2 mount in /proc/self/mountinfo; mesh-agent needs cgroup v2"; exit 1; }
}

# The cleanup of every demo is its function cleanup, run on exit whatever
# happened; it ends with cleaned_up CODE WHAT.
trap_cleanup() {
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}
cleaned_up() {
    case $1 in
        0) printf '\nCleaned up: %s, namespaces (and the nftables tables in them), %s.\n' "$2" "$WORK" ;;
        130|143) printf '\nInterrupted; cleaned up everything the demo made.\n' ;;
        *) printf '\nCleaned up after the failure (exit %s).\n' "$1" ;;
    esac
    exit "$1"
}
remove_namespaces() {   # and $WORK. Anything still running in the demo's namespaces was started by the demo.
    for ns in "$NS_A" "$NS_B"; do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do stop_pid "$pid"; done
        ip netns delete "$ns" 2>/dev/null
    done
    rm -rf "$WORK"
}

running() { [ -r "/proc/$1/status" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }
stop_pid() {   # PID [signal]: signal it, wait up to 10 s for it to exit, then SIGKILL
    local pid=$1 sig=${2:-TERM}
    [ -n "$pid" ] || return 0
    kill -"$sig" "$pid" 2>/dev/null || return 0
    for _ in $(seq 100); do running "$pid" || break; sleep 0.1; done
    running "$pid" && kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null || true
}

step() { printf '\n\033[1m== %s\033[0m\n' "$1"; shift; for line in "$@"; do printf '   %s\n' "$line"; done; }
ok() { printf '\033[32m✔ %s\033[0m\n' "$*"; }
fail() {
    printf '\033[31m✘ %s\033[0m\n' "$*" >&2
    for node in a b; do
        [ -s "$WORK/$node/agent.log" ] && { echo "--- last lines of node ${node^^}'s agent log:" >&2; tail -n 15 "$WORK/$node/agent.log" >&2; }
    done
    exit 1
}
indent() { sed 's/^/    /'; }
has() { grep -q -- "$1" <<<"$2"; }   # has PATTERN TEXT (no pipe into grep -q: pipefail and SIGPIPE)
netns_of() { [ "$1" = a ] && echo "$NS_A" || echo "$NS_B"; }
# Runs a command in node $1's network namespace. In a subshell (`on ... &`,
# `$(...)`, a pipeline) it execs, so $! is the command's own PID.
on() {
    local ns; ns=$(netns_of "$1"); shift
    set -- nsenter --net="/run/netns/$ns" "$@"
    if [ "$BASHPID" != "$$" ]; then exec "$@"; else "$@"; fi
}
ctl() { local node=$1; shift; "$BIN/agentctl" "$@" --socket "$WORK/$node/admin.sock"; }
log_lines() { wc -l < "$WORK/$1/access.log" 2>/dev/null || echo 0; }

# Starts the agent of each node with $WORK/NODE/agent.yaml (PIDs in AGENT_A
# and AGENT_B) and waits until both say they are ready.
start_agents() {
    for node in a b; do
        on "$node" "$BIN/mesh-agent" --config "$WORK/$node/agent.yaml" 2>"$WORK/$node/agent.log" &
        if [ "$node" = a ]; then AGENT_A=$!; else AGENT_B=$!; fi
    done
    for node in a b; do
        local pid=$AGENT_A; [ "$node" = b ] && pid=$AGENT_B
        for _ in $(seq 300); do
            grep -q "mesh-agent ready" "$WORK/$node/agent.log" && break
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        grep -q "mesh-agent ready" "$WORK/$node/agent.log" || fail "the agent on node ${node^^} did not become ready"
        ok "node ${node^^}: $(grep -o 'mesh-agent ready.*' "$WORK/$node/agent.log" | head -n 1)"
    done
}

capture_start() {   # FILE: tcpdump on node B's end of the veth
    : > "$WORK/tcpdump.err"
    on b tcpdump -i "$VETH_B" -nn -U --immediate-mode -Z root -w "$1" 2>"$WORK/tcpdump.err" &
    TCPDUMP=$!
    for _ in $(seq 100); do grep -q "listening on" "$WORK/tcpdump.err" && return 0; sleep 0.1; done
    cat "$WORK/tcpdump.err" >&2; fail "tcpdump did not start"
}
capture_stop() { sleep 0.3; stop_pid "$TCPDUMP" INT; TCPDUMP=""; }
packets() { tcpdump -r "$1" -nn "${@:2}" 2>/dev/null | wc -l; }

# ---------------------------------------------------------------------------
# The host-mode lab (demo-host.sh, journey.sh): workloads are cgroups under
# $CG2$CG_REL, each node's agent config is written by write_config.

make_nodes() {   # IP_A IP_B [IP6_A IP6_B]: the two namespaces, joined by a veth pair
    for node in a b; do
        ip netns add "$(netns_of $node)"
        ip -n "$(netns_of $node)" link set lo up
    done
    ip link add "$VETH_A" netns "$NS_A" type veth peer name "$VETH_B" netns "$NS_B"
    ip -n "$NS_A" addr add "$1/24" dev "$VETH_A"; ip -n "$NS_B" addr add "$2/24" dev "$VETH_B"
    if [ $# -ge 4 ]; then
        ip -n "$NS_A" addr add "$3/64" dev "$VETH_A" nodad; ip -n "$NS_B" addr add "$4/64" dev "$VETH_B" nodad
    fi
    ip -n "$NS_A" link set "$VETH_A" up; ip -n "$NS_B" link set "$VETH_B" up
    ip -n "$NS_A" -br addr show dev "$VETH_A" | indent
    ip -n "$NS_B" -br addr show dev "$VETH_B" | indent
}

make_ca() {   # one offline root in $WORK/ca/root, an intermediate per node in $WORK/ca/node-{a,b}
    "$BIN/agentctl" ca init --trust-domain cluster.local --out "$WORK/ca/root" > "$WORK/ca.out"
    for node in a b; do
        "$BIN/agentctl" ca issue-intermediate --ca "$WORK/ca/root" --name "node-$node" --out "$WORK/ca/node-$node" >> "$WORK/ca.out"
    done
}

# write_config NODE NAMESPACE/WORKLOAD[:PORT]...: node NODE's agent.yaml, one
# cgroup per workload (made here), service account and label app = its name.
write_config() {
    local node=$1 dir="$WORK/$1" spec ns name port; shift
    mkdir -p "$dir/policies"
    cat > "$dir/agent.yaml" <<YAML
trustDomain: cluster.local
node: node-$node
adminSocket: $dir/admin.sock
accessLog: $dir/access.log
graph: {database: $dir/graph.db}
policyDir: $dir/policies
mtlsMode: PERMISSIVE
drainTimeout: 2s
meshNetworks: [10.77.0.0/16, "fd77::/64"]
ca:
  certificate: $WORK/ca/node-$node/intermediate.pem
  key: $WORK/ca/node-$node/intermediate.key
  trustBundle: $WORK/ca/node-$node/bundle.pem
workloads:
YAML
    for spec in "$@"; do
        ns=${spec%%/*}; name=${spec#*/}; port=""
        case $name in *:*) port=${name#*:}; name=${name%%:*} ;; esac
        mkdir -p "$CG2$CG_REL/$name"
        printf '  - name: %s\n    namespace: %s\n    serviceAccount: %s\n    cgroup: %s\n    labels: {app: %s}\n' \
            "$name" "$ns" "$name" "$CG_REL/$name" "$name" >> "$dir/agent.yaml"
        [ -z "$port" ] || printf '    ports: [%s]\n' "$port" >> "$dir/agent.yaml"
    done
    "$BIN/agentctl" config check "$dir/agent.yaml" >/dev/null || fail "the config of node ${node^^} is invalid"
}

# Runs a command as a process of workload cgroup $2 on node $1: a shell joins
# the cgroup, then becomes nsenter, which becomes the command (same PID). In a
# subshell (`in_workload ... &`, `$(...)`, a pipeline) it execs, so $! is the
# command's PID.
in_workload() {
    local node=$1 cg=$2; shift 2
    set -- sh -c 'echo $$ > "$0/cgroup.procs" && exec "$@"' "$CG2$CG_REL/$cg" \
        nsenter --net="/run/netns/$(netns_of "$node")" "$@"
    if [ "$BASHPID" != "$$" ]; then exec "$@"; else "$@"; fi
}

remove_lab() {   # after the agents stopped: the workloads' processes and cgroups, the namespaces, $WORK
    for dir in "$CG2$CG_REL"/*/ "$CG2$CG_REL"; do
        [ -d "$dir" ] || continue
        for pid in $(cat "$dir/cgroup.procs" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
        for _ in $(seq 50); do rmdir "$dir" 2>/dev/null && break; sleep 0.1; done
    done
    remove_namespaces
}
