#!/usr/bin/env bash
# mesh-agent demo: two nodes, one agent on each, workload traffic between them
# in mutual TLS (HBONE), plaintext from outside refused once mTLS is STRICT, and
# an AuthorizationPolicy allowing one request and refusing another.
#
#   node A (netns ma-demoN-a)                     node B (netns ma-demoN-b)
#   10.77.250.1, fd77::fa:1                       10.77.250.2, fd77::fa:2
#   workload "checkout" (a cgroup)                workload "orders" (a cgroup)
#     client ──▶ mesh-agent :15001 ══ mTLS ══▶ mesh-agent :15008 ──▶ :8080 server
#                                   (veth)
#
# Every node is a network namespace joined to the other by a veth pair; every
# workload is a cgroup v2 directory. Run as root (make demo builds first). It
# exits non-zero when something the demo shows does not happen, so it doubles
# as a smoke test, and removes everything it made on exit, failure or Ctrl-C.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
BIN=${MESH_AGENT_BIN:-$(cd "$HERE/../.." && pwd)/.build/release}
# shellcheck source=common.sh
source "$HERE/common.sh"
require_lab cgroups demo-host ip nsenter nft tcpdump python3

TAG="demo$$"
NS_A="ma-$TAG-a"; NS_B="ma-$TAG-b"
VETH_A="va$TAG"; VETH_B="vb$TAG"
IP_A=10.77.250.1; IP_B=10.77.250.2; IP6_A=fd77::fa:1; IP6_B=fd77::fa:2
CG_REL="/ma-$TAG"                  # the demo's cgroups: $CG_REL/checkout, $CG_REL/orders
WORK=$(mktemp -d /tmp/mesh-agent-demo.XXXXXX)
AGENT_A=""; AGENT_B=""; SERVER=""; HOLDER=""; TCPDUMP=""
CLIENT="$HERE/client.py"; ACCESSLOG="$HERE/accesslog.py"

# ---------------------------------------------------------------------------
# Cleanup: everything this run made, in reverse order, whatever happened.

cleanup() {
    local code=$?
    set +e
    trap - EXIT INT TERM
    stop_pid "$HOLDER"; stop_pid "$TCPDUMP" INT
    stop_pid "$AGENT_A"; stop_pid "$AGENT_B"
    stop_pid "$SERVER"
    remove_lab
    cleaned_up "$code" "agents, workloads, cgroups"
}
trap_cleanup

# ---------------------------------------------------------------------------
# Helpers

workload_of() { [ "$1" = a ] && echo checkout || echo orders; }
# An HTTP GET as an unmodified application would make it: curl if installed.
if command -v curl >/dev/null; then
    HTTP_GET=(curl -sS --fail --max-time 10); HTTP_CLIENT=curl
else
    HTTP_GET=(python3 "$CLIENT" get); HTTP_CLIENT="python3 (urllib)"
fi

# ---------------------------------------------------------------------------

step "1. Two nodes: network namespaces $NS_A and $NS_B, joined by a veth pair" \
     "node A = $IP_A, $IP6_A    node B = $IP_B, $IP6_B"
make_nodes "$IP_A" "$IP_B" "$IP6_A" "$IP6_B"

step "2. A certificate authority: one offline root, one intermediate per node" \
     "Each node's agent signs its workloads' certificates with its own intermediate;" \
     "both chain to the same root, so the nodes trust each other's workloads."
make_ca
sed -n 's/^Made /made /p' "$WORK/ca.out" | indent
echo "    files: root/{root.pem,root.key}, node-a/ and node-b/{intermediate.pem,intermediate.key,bundle.pem}"

step "3. Workloads and agents" \
     "Workloads are cgroups: checkout runs on node A, orders (port 8080) on node B." \
     "mtlsMode PERMISSIVE is Istio's default; step 10 switches node B to STRICT." \
     "Node B's config (node A's differs only in names and its workload):"
write_config a shop/checkout
write_config b shop/orders:8080
indent < "$WORK/b/agent.yaml"

start_agents

step "4. Each agent's workload certificates (agentctl certs)" \
     "Short-lived X.509 SVIDs, one per workload present on the node, plus the agent's own" \
     "(it answers the tunnel as istio-system/mesh-agent). The private keys never touch disk."
for node in a b; do
    echo "  node ${node^^}:"
    for _ in $(seq 100); do
        certs=$(ctl "$node" certs 2>&1) || true
        has "sa/$(workload_of "$node") " "$certs" && break
        sleep 0.1
    done
    has "sa/$(workload_of "$node") " "$certs" || { echo "$certs"; fail "node ${node^^} holds no certificate for $(workload_of "$node")"; }
    echo "$certs" | indent
done

step "5. checkout (node A) calls orders (node B) on port 8080, by IPv4 and IPv6" \
     "The server is python3 -m http.server in the orders cgroup on node B; the client is" \
     "$HTTP_CLIENT in the checkout cgroup on node A. Neither knows about the mesh: node A's" \
     "agent captures the connection and carries it to node B's agent in mutual TLS."
mkdir -p "$WORK/www"
echo "hello from orders on node B" > "$WORK/www/index.html"
MARK="SECRET-$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"
echo "the response body carries $MARK too" > "$WORK/www/order-$MARK.txt"
in_workload b orders python3 -m http.server 8080 --bind :: --directory "$WORK/www" >"$WORK/server.log" 2>&1 &
SERVER=$!
for _ in $(seq 100); do on b bash -c ': </dev/tcp/127.0.0.1/8080' 2>/dev/null && break; sleep 0.1; done
before_a=$(log_lines a); before_b=$(log_lines b)
for url in "http://$IP_B:8080/" "http://[$IP6_B]:8080/"; do
    body=$(in_workload a checkout "${HTTP_GET[@]}" "$url") || fail "checkout could not fetch $url through the mesh"
    echo "    GET $url  ->  $body"
done
ok "both requests succeeded through the mesh"

step "6. The access logs: one JSON line per connection on each node (main fields shown)" \
     "Node A logged it outbound, tunnelled (reason hbone, tls mutual); node B logged it inbound" \
     "and names the caller by the SPIFFE ID proven in the TLS handshake, not by its IP address."
echo "  node A ($WORK/a/access.log):"
python3 "$ACCESSLOG" "$WORK/a/access.log" --after "$before_a" direction=outbound tls=mutual reason=hbone \
    dst_addr="$IP_B:8080" src_identity=spiffe://cluster.local/ns/shop/sa/checkout || fail "node A did not log the outbound mTLS connection"
echo "  node B ($WORK/b/access.log):"
python3 "$ACCESSLOG" "$WORK/b/access.log" --after "$before_b" direction=inbound tls=mutual \
    src_identity=spiffe://cluster.local/ns/shop/sa/checkout dst_workload=shop/orders dst_addr="$IP_B:8080" \
    || fail "node B did not log the inbound connection with checkout's SPIFFE ID"

step "7. The wire between the nodes carries only TLS" \
     "tcpdump on node B's veth while checkout fetches /order-$MARK.txt: the marker is in" \
     "the request path and in the response body, so plaintext would show it twice."
capture_start "$WORK/mesh.pcap"
in_workload a checkout "${HTTP_GET[@]}" "http://$IP_B:8080/order-$MARK.txt" | indent \
    || fail "the marker request failed"
capture_stop
tunnel=$(packets "$WORK/mesh.pcap" tcp port 15008); plain=$(packets "$WORK/mesh.pcap" tcp port 8080)
marks=$(grep -ac "$MARK" "$WORK/mesh.pcap" || true)
tcpdump -r "$WORK/mesh.pcap" -nn -q 2>/dev/null | head -n 6 | cut -c1-110 | indent
echo "    ... packets to or from port 15008: $tunnel, to or from port 8080: $plain"
echo "    grep -c $MARK mesh.pcap  ->  $marks"
[ "$tunnel" -gt 0 ] || fail "the capture holds no traffic on the tunnel port 15008"
[ "$plain" -eq 0 ] || fail "the capture holds plaintext traffic to port 8080"
[ "$marks" -eq 0 ] || fail "the marker is readable on the wire"
ok "only TLS to port 15008 on the wire; the marker appears nowhere in it"

step "8. Live connections (agentctl connections) while checkout holds one open" \
     "The client sent half a request and waits; each agent shows its side of the connection."
in_workload a checkout python3 "$CLIENT" hold "$IP_B" 8080 >"$WORK/hold.out" 2>&1 &
HOLDER=$!
for _ in $(seq 100); do grep -q '^open' "$WORK/hold.out" && break; running "$HOLDER" || break; sleep 0.1; done
grep -q '^open' "$WORK/hold.out" || { cat "$WORK/hold.out"; fail "the long-lived connection did not open"; }
if has " connections " "$("$BIN/agentctl" --help 2>&1)"; then
    sleep 0.3
    for node in a b; do
        echo "  node ${node^^}:"
        ctl "$node" connections | indent || fail "agentctl connections failed on node ${node^^}"
    done
else
    echo "    (this build of agentctl has no 'connections' command yet; skipping this view)"
fi
kill -USR1 "$HOLDER"
wait "$HOLDER" || { cat "$WORK/hold.out"; fail "the held connection was not answered"; }
HOLDER=""
grep -v '^open' "$WORK/hold.out" | indent

step "9. PERMISSIVE: plaintext from outside the mesh still gets in" \
     "A process on node A that is no workload (so nothing captures it) calls orders directly:" \
     "no TLS, no identity. PERMISSIVE lets it in through the inbound-plaintext listener (15006)," \
     "and node B logs it with tls none and no source identity. The marker is readable on the wire."
before_b=$(log_lines b)
capture_start "$WORK/plain.pcap"
on a "${HTTP_GET[@]}" "http://$IP_B:8080/order-$MARK.txt" | indent \
    || fail "in PERMISSIVE mode the plaintext request should have been accepted"
capture_stop
marks=$(grep -ac "$MARK" "$WORK/plain.pcap" || true)
echo "    grep -c $MARK plain.pcap  ->  $marks"
[ "$marks" -gt 0 ] || fail "the marker should be readable in a plaintext capture"
echo "  node B's access log:"
python3 "$ACCESSLOG" "$WORK/b/access.log" --after "$before_b" direction=inbound tls=none src_identity=null \
    || fail "node B did not log the plaintext connection"

step "10. Switch node B to STRICT: an Istio PeerAuthentication for namespace shop" \
      "deploy/demo/peer-authentication-strict.yaml goes into node B's policyDir, then SIGHUP." \
      "The agent moves port 8080 from the permissive_ports set of its nftables table to strict_ports" \
      "(a set-element update; no rule changes):"
cp "$HERE/peer-authentication-strict.yaml" "$WORK/b/policies/"
indent < "$HERE/peer-authentication-strict.yaml" | grep -v '^    #'
log_before=$(wc -l < "$WORK/b/agent.log")
kill -HUP "$AGENT_B"
for _ in $(seq 100); do has "reloaded" "$(tail -n +"$((log_before + 1))" "$WORK/b/agent.log")" && break; sleep 0.1; done
has "1 PeerAuthentication" "$(tail -n +"$((log_before + 1))" "$WORK/b/agent.log")" \
    || fail "node B did not load the PeerAuthentication"
echo "  nft list table inet mesh_agent (node B, comments left out):"
on b nft list table inet mesh_agent | sed -e 's/ comment ".*"$//' -e '/^\s*comment /d' -e '/^\s*$/d' | indent
has 'elements = { 8080 }' "$(on b nft list set inet mesh_agent strict_ports)" \
    || fail "port 8080 is not in node B's strict_ports set"
ok "port 8080 is in strict_ports: plaintext from outside is answered with a TCP reset"

step "11. STRICT: the same plaintext attempt is refused; checkout still gets through" \
      "The reset comes from node B's kernel (the input chain), before any server sees a byte."
before_b=$(log_lines b); served=$(wc -l < "$WORK/server.log")
set +e
on a python3 "$CLIENT" probe "$IP_B" 8080 | indent
probe=${PIPESTATUS[0]}
set -e
[ "$probe" -eq 3 ] || fail "in STRICT mode the plaintext attempt should have been refused with a reset"
[ "$(wc -l < "$WORK/server.log")" -eq "$served" ] || fail "the orders server saw the plaintext request"
ok "plaintext from outside: connection refused; the orders server saw nothing"
body=$(in_workload a checkout "${HTTP_GET[@]}" "http://$IP_B:8080/") || fail "checkout could no longer reach orders"
echo "    checkout -> GET http://$IP_B:8080/  ->  $body"
python3 "$ACCESSLOG" "$WORK/b/access.log" --after "$before_b" direction=inbound tls=mutual \
    src_identity=spiffe://cluster.local/ns/shop/sa/checkout >/dev/null \
    || fail "node B did not log the mTLS connection after the switch"
ok "workload to workload in mutual TLS still works in STRICT mode"

step "12. Least privilege: an AuthorizationPolicy lets checkout read orders, and nothing more" \
      "deploy/examples/policies/authorization.yaml goes into node B's policyDir. The agent watches" \
      "the directory: no signal is needed, and the policy is in force within about a second."
generation=$(ctl b policies -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["generation"])')
cp "$REPO/deploy/examples/policies/authorization.yaml" "$WORK/b/policies/"
grep -v '^#' "$REPO/deploy/examples/policies/authorization.yaml" | indent
for _ in $(seq 50); do
    now=$(ctl b policies -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["generation"])')
    [ "$now" -gt "$generation" ] && break
    sleep 0.1
done
[ "$now" -gt "$generation" ] || fail "node B did not load the AuthorizationPolicy"
echo "  agentctl policies (node B):"
ctl b policies | indent
before_b=$(log_lines b)
allowed=$(in_workload a checkout python3 "$CLIENT" send GET "http://$IP_B:8080/order-$MARK.txt") || fail "checkout's GET got no answer"
echo "    checkout -> GET    http://$IP_B:8080/order-$MARK.txt  ->  $allowed"
case "$allowed" in 200*) ;; *) fail "checkout's GET should have been allowed" ;; esac
refused=$(in_workload a checkout python3 "$CLIENT" send DELETE "http://$IP_B:8080/order-$MARK.txt") || fail "checkout's DELETE got no answer"
echo "    checkout -> DELETE http://$IP_B:8080/order-$MARK.txt  ->  $refused"
case "$refused" in "403 RBAC: access denied") ;; *) fail "checkout's DELETE should have been refused with 403" ;; esac
ok "the allowed request reached orders; the refused one got 403 from node B's agent and never reached orders"
echo "  node B's access log, one line per request (the GET, then the DELETE):"
python3 "$ACCESSLOG" "$WORK/b/access.log" --after "$before_b" protocol=http method=GET | indent
echo
python3 "$ACCESSLOG" "$WORK/b/access.log" --after "$before_b" protocol=http method=DELETE | indent
echo "  agentctl policy explain (node B): why was the DELETE refused?"
ctl b policy explain --from spiffe://cluster.local/ns/shop/sa/checkout --to-workload orders --port 8080 \
    --method DELETE --path "/order-$MARK.txt" | indent

step "13. SIGTERM: each agent drains, removes its nftables table (failureMode: open) and exits"
for node in a b; do
    pid=$AGENT_A; [ "$node" = b ] && pid=$AGENT_B
    kill -TERM "$pid"
    code=0; wait "$pid" || code=$?
    if [ "$node" = a ]; then AGENT_A=""; else AGENT_B=""; fi
    [ "$code" -eq 0 ] || fail "the agent on node ${node^^} exited with $code"
    on "$node" nft list table inet mesh_agent >/dev/null 2>&1 && fail "node ${node^^} still has table inet mesh_agent"
    ok "node ${node^^}: agent exited 0, table inet mesh_agent is gone"
done
