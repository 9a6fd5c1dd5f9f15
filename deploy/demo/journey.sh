#!/usr/bin/env bash
# mesh-agent: the road from permissive to least privilege (docs/journey.md),
# scripted on the two-node host-mode lab.
#
#   node A (netns ma-demojN-a, 10.77.240.1)      node B (netns ma-demojN-b, 10.77.240.2)
#   web/frontend, shop/reporting (callers)       shop/orders :8080, shop/ledger :8090
#
# Every node is a network namespace, every workload a cgroup v2 directory, one
# agent per node (common.sh). The workloads talk HTTP in a scripted mix; the
# agent of node B records what reaches its workloads in the observed service
# graph. From it the demo suggests policies, applies them as dry-run, reads the
# report, enforces them, alerts on a new edge and grants temporary access.
# Run as root (make demo-journey builds first). It exits non-zero when
# something it shows does not happen, and removes everything it made on exit,
# failure or Ctrl-C.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
BIN=${MESH_AGENT_BIN:-$(cd "$HERE/../.." && pwd)/.build/release}
# shellcheck source=common.sh
source "$HERE/common.sh"
require_lab cgroups demo-journey ip nsenter nft python3

TAG="demoj$$"
NS_A="ma-$TAG-a"; NS_B="ma-$TAG-b"
VETH_A="va$TAG"; VETH_B="vb$TAG"
IP_A=10.77.240.1; IP_B=10.77.240.2
CG_REL="/ma-$TAG"
WORK=$(mktemp -d /tmp/mesh-agent-journey.XXXXXX)
AGENT_A=""; AGENT_B=""; ORDERS=""; LEDGER=""
CLIENT="$HERE/client.py"
ID=spiffe://cluster.local/ns

cleanup() {
    local code=$?
    set +e
    trap - EXIT INT TERM
    stop_pid "$AGENT_A"; stop_pid "$AGENT_B"
    stop_pid "$ORDERS"; stop_pid "$LEDGER"
    remove_lab
    cleaned_up "$code" "agents, workloads, cgroups"
}
trap_cleanup

# ---------------------------------------------------------------------------
# Helpers

node_of() { case $1 in frontend|reporting) echo a ;; *) echo b ;; esac; }
port_of() { [ "$1" = orders ] && echo 8080 || echo 8090; }
# call CALLER METHOD WORKLOAD PATH: one request from workload CALLER (or from
# "plaintext", a process of node A that is no workload); prints the status line.
call() {
    local caller=$1 method=$2 url="http://$IP_B:$(port_of "$3")$4" answer
    if [ "$caller" = plaintext ]; then
        answer=$(on a python3 "$CLIENT" send "$method" "$url" 2>&1) || answer="refused (${answer##*: })"
    else
        answer=$(in_workload "$(node_of "$caller")" "$caller" python3 "$CLIENT" send "$method" "$url" 2>&1) \
            || answer="refused (${answer##*: })"
    fi
    printf '    %-9s -> %-7s %-6s %-14s %s\n' "$caller" "$3" "$method" "$4" "${answer%%$'\n'*}" >&2
    echo "$answer"
}
expect() {   # expect STATUS CALLER METHOD WORKLOAD PATH
    local want=$1 got; shift
    got=$(call "$@")
    case "$got" in "$want"*) ;; *) fail "$1 $2 $3$4 should have answered $want, got: $got" ;; esac
}
show() { printf '  $ %s\n' "$*" >&2; }   # the command a step runs, as an operator would type it
agentctl_b() { show "agentctl ${*//$WORK/\$WORK}"; ctl b "$@"; }
mix() {   # the traffic of an ordinary day
    for id in 17 42 108 2311; do expect 200 frontend GET orders "/orders/$id"; done
    expect 200 frontend POST orders /orders
    expect 200 reporting GET orders /orders/42
    expect 200 orders POST ledger /entries
    expect 200 orders GET ledger /balance
    expect 200 plaintext GET orders /healthz
}

# ---------------------------------------------------------------------------

step "1. The lab: two nodes, four workloads, an agent on each node" \
     "Nodes are the network namespaces $NS_A and $NS_B, joined by a veth pair."
make_nodes "$IP_A" "$IP_B"
make_ca
write_config a web/frontend shop/reporting
write_config b shop/orders:8080 shop/ledger:8090
in_workload b orders python3 "$CLIENT" serve 8080 orders >"$WORK/orders.log" 2>&1 &
ORDERS=$!
in_workload b ledger python3 "$CLIENT" serve 8090 ledger >"$WORK/ledger.log" 2>&1 &
LEDGER=$!
for port in 8080 8090; do
    for _ in $(seq 100); do on b bash -c ": </dev/tcp/127.0.0.1/$port" 2>/dev/null && break; sleep 0.1; done
done
echo "    node A: web/frontend, shop/reporting    node B: shop/orders (:8080), shop/ledger (:8090)"
echo "    mtlsMode: PERMISSIVE, and no policy that allows or denies anything."
start_agents

step "2. Permissive, and watching" \
     "The graph records methods and paths where the agent reads HTTP requests, which it does" \
     "where a policy needs them. An AUDIT policy that matches every path makes it read them" \
     "and changes no decision:"
cp "$HERE/record-requests.yaml" "$WORK/b/policies/"
grep -v '^#' "$HERE/record-requests.yaml" | indent
agentctl_b reload | indent
echo "  The day's traffic:"
mix

step "3. The observed service graph"
agentctl_b graph | indent
show "agentctl graph -o svg > \$WORK/graph.svg"
ctl b graph -o svg > "$WORK/graph.svg"
echo "    $(wc -c < "$WORK/graph.svg") bytes of SVG (solid = mTLS, dashed = plaintext; removed with \$WORK at exit)"

step "4. Suggest least-privilege policies from it, and check them"
agentctl_b policy suggest --out "$WORK/suggested" | indent
for file in "$WORK"/suggested/*.yaml; do echo "  --- ${file##*/}"; indent < "$file"; done
show "agentctl policy check \$WORK/suggested/"
"$BIN/agentctl" policy check "$WORK/suggested/" | indent || fail "the suggested policies do not pass agentctl policy check"
ok "the suggested policies pass agentctl policy check"

step "5. Apply them as dry-run: nothing is blocked, the report counts what would be" \
     "The AuthorizationPolicy files go into node B's policyDir. shop-ledger-strict.yaml waits for" \
     "step 6: PeerAuthentication has no dry-run. (orders gets none: it takes plaintext from node A.)"
for file in "$WORK"/suggested/*.yaml; do
    case $file in *-strict.yaml) ;; *) cp "$file" "$WORK/b/policies/" ;; esac
done
agentctl_b reload | indent
mix
echo "  A request outside what was observed: frontend deletes an order."
expect 200 frontend DELETE orders /orders/7
line=$(grep '"DELETE"' "$WORK/b/access.log" | tail -n 1)
has '"audit":"deny"' "$line" || fail "the DELETE was not logged as one the dry-run policy would deny: $line"
ok "it went through (200), logged with \"audit\":\"deny\""
agentctl_b policy report | indent
would=$(ctl b policy report -o json | python3 -c '
import json, sys
print(sum(r["would_deny"] for r in json.load(sys.stdin)["rules"] if r["policy"] == "shop/orders-observed" and r["rule"] is None))')
[ "$would" -eq 1 ] || fail "the report should count one request shop/orders-observed would deny, not $would"
ok "would_deny: 1 on shop/orders-observed, and nothing was blocked"

step "6. Enforce: remove the dry-run annotation, then STRICT for ledger" \
     "A rule for billing, a caller that is gone, is added by hand: the report will show it unused."
show "sed -i '/annotations:/d; /istio.io\\/dry-run/d' policies/shop-*.yaml"
sed -i '/annotations:/d; /istio.io\/dry-run/d' "$WORK"/b/policies/shop-*.yaml
cat > "$WORK/b/policies/orders-billing.yaml" <<YAML
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: orders-billing, namespace: shop}
spec:
  selector: {matchLabels: {app: orders}}
  rules: [{from: [{source: {principals: ["cluster.local/ns/shop/sa/billing"]}}], to: [{operation: {methods: ["GET"], paths: ["/invoices/*"]}}]}]
YAML
[ -f "$WORK/suggested/shop-ledger-strict.yaml" ] || fail "suggest wrote no STRICT file for ledger, which no plaintext reached"
[ ! -f "$WORK/suggested/shop-orders-strict.yaml" ] || fail "suggest wrote a STRICT file for orders, which plaintext reached"
show "cp \$WORK/suggested/shop-ledger-strict.yaml policies/"
cp "$WORK/suggested/shop-ledger-strict.yaml" "$WORK/b/policies/"
agentctl_b reload | indent
mix
expect 403 frontend DELETE orders /orders/7
ok "what was observed still answers 200; the DELETE gets 403 from node B's agent"
echo "  plaintext from node A to ledger, now STRICT:"
set +e
on a python3 "$CLIENT" probe "$IP_B" 8090 | indent
probe=${PIPESTATUS[0]}
set -e
[ "$probe" -eq 3 ] || fail "plaintext to ledger should have been refused with a reset"
ok "refused by node B's kernel; orders, on the same node, still reaches ledger"
agentctl_b policy report | indent
has "shop/orders-billing .*unused" "$(ctl b policy report)" || fail "the billing rule is not reported unused"
ok "the billing rule matched nothing: it is marked unused, a candidate to prune"
echo "  (record-requests reads as unused too: the report counts the rules that decide, and AUDIT decides nothing.)"

step "7. Baseline the graph, then a never-seen edge" \
     "From now on a caller that talks to a workload's port for the first time is reported."
agentctl_b graph baseline | indent
echo "  reporting, which only ever read orders, tries ledger:"
expect refused reporting GET ledger /balance
for _ in $(seq 100); do grep -q '"event":"new_edge"' "$WORK/b/access.log" && break; sleep 0.1; done
grep '"event":"new_edge"' "$WORK/b/access.log" | indent
has "$ID/shop/sa/reporting" "$(grep '"event":"new_edge"' "$WORK/b/access.log" || true)" \
    || fail "no new_edge line for reporting -> ledger in node B's access log"
ok "one new_edge line in node B's access log"

step "8. Temporary access: a grant for 20 seconds"
agentctl_b policy grant --from "$ID/shop/sa/reporting" --to ledger --port 8090 --for 20s | indent
granted=$(date +%s)
ctl b reload >/dev/null
agentctl_b policies | indent
expect 200 reporting GET ledger /balance
ok "the grant lets reporting read the ledger"
echo "  waiting for the grant to expire..."
sleep $((granted + 21 - $(date +%s)))
expect refused reporting GET ledger /balance
agentctl_b policies | grep -i grant | indent || true
ok "expired: reporting is refused again, without a reload"
