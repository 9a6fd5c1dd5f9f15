# Helpers of both demos (demo.sh and demo-host.sh), sourced by each after it
# has set BIN, WORK, NS_A, NS_B and VETH_B. Agents live in $WORK/a and $WORK/b.

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
