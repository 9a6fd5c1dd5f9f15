#!/usr/bin/env bash
# mesh-agent demo: Podman pods on two nodes, each captured inside its own
# network namespace by its node's agent, talking in mutual TLS (HBONE) with
# the pods' own SPIFFE identities; a pod outside the mesh refused once mTLS is
# STRICT. The host-mode tour (workloads as cgroups, policies, connections) is
# `make demo-host` (deploy/demo/demo-host.sh).
#
#   node A (netns ma-demoN-a, 10.77.250.1)        node B (netns ma-demoN-b, 10.77.250.2)
#   pods on 10.77.10.0/24                         pods on 10.77.11.0/24
#   pod checkout ─ its own netns ─┐               ┌─ its own netns ─ pod orders :8080
#     agent's :15001 in the pod ══╪══ mTLS ═══════╪══▶ agent's :15008 in the pod
#   pod legacy (not enrolled)     │    (veth)     │
#
# Each node runs a podman of its own (store, networks, API socket) inside the
# node's namespace, with a busybox image made locally: no registry. Run as
# root (make demo builds first). It exits non-zero when something it shows
# does not happen, so it doubles as a smoke test, and removes everything it
# made on exit, failure or Ctrl-C.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
BIN=${MESH_AGENT_BIN:-$(cd "$HERE/../.." && pwd)/.build/release}
# shellcheck source=common.sh
source "$HERE/common.sh"
require_lab podman demo ip nsenter nft tcpdump python3 podman runc tar
BUSYBOX=$(command -v busybox || true)
[ -n "$BUSYBOX" ] || { echo "the demo needs busybox (busybox-static) for its pod image: run 'make deps'"; exit 1; }

TAG="demo$$"
NS_A="ma-$TAG-a"; NS_B="ma-$TAG-b"
VETH_A="va$TAG"; VETH_B="vb$TAG"
IP_A=10.77.250.1; IP_B=10.77.250.2
PODS_A=10.77.10; PODS_B=10.77.11
IMAGE="localhost/ma-demo-busybox:$TAG"
NETWORK="ma-$TAG"
WORK=$(mktemp -d /tmp/mesh-agent-demo.XXXXXX)
AGENT_A=""; AGENT_B=""; SERVICE_A=""; SERVICE_B=""; TCPDUMP=""; POD_IDS=""
ACCESSLOG="$HERE/accesslog.py"

# ---------------------------------------------------------------------------
# Cleanup: everything this run made, in reverse order, whatever happened.

cleanup() {
    local code=$?
    set +e
    trap - EXIT INT TERM
    stop_pid "$TCPDUMP" INT
    stop_pid "$AGENT_A"; stop_pid "$AGENT_B"
    for node in a b; do
        [ -f "$WORK/$node/containers.conf" ] || continue
        for pod in $(pm "$node" pod ps -q --no-trunc 2>/dev/null); do pm "$node" pod rm -f -t 0 "$pod" >/dev/null 2>&1; done
        pm "$node" network rm -f "$NETWORK" >/dev/null 2>&1
        pm "$node" rmi -f "$IMAGE" >/dev/null 2>&1
    done
    stop_pid "$SERVICE_A"; stop_pid "$SERVICE_B"
    # notes/pods.md: a removed pod leaves its empty cgroups behind.
    for pod in $POD_IDS; do
        for root in "$CG2" /sys/fs/cgroup/systemd; do
            [ -d "$root/libpod_parent/$pod" ] && find "$root/libpod_parent/$pod" -depth -type d -exec rmdir {} + 2>/dev/null
        done
    done
    remove_namespaces
    cleaned_up "$code" "agents, pods, podman stores and services"
}
trap_cleanup

# ---------------------------------------------------------------------------
# Helpers

# podman of node $1: its own configuration and store, inside the node's namespace.
pm() {
    local node=$1; shift
    CONTAINERS_CONF="$WORK/$node/containers.conf" CONTAINERS_STORAGE_CONF="$WORK/$node/storage.conf" on "$node" podman "$@"
}
# An HTTP GET from inside a pod's container, as its application would make it
# (busybox wget; its own -T crashes, so timeout bounds it).
pod_get() { local node=$1 container=$2 url=$3; pm "$node" exec "$container" /bin/busybox timeout 5 /bin/busybox wget -q -O - "$url"; }
# Makes a pod on node $1 (the rest: podman pod create's arguments), noting its id for cleanup.
make_pod() { local node=$1 id; shift; id=$(pm "$node" pod create "$@" | tail -n 1); POD_IDS="$POD_IDS $id"; }
# A workload's row in agentctl workloads -o json: FIELD of workload NAME on NODE.
workload_field() {
    ctl "$1" workloads -o json | python3 -c '
import json, sys
name, field = sys.argv[1], sys.argv[2]
print(next((str(w.get(field, "")) for w in json.load(sys.stdin) if w["name"] == name), ""))' "$2" "$3"
}
wait_captured() {   # NODE NAME
    for _ in $(seq 100); do
        has "^captured" "$(workload_field "$1" "$2" state)" && return 0
        sleep 0.1
    done
    fail "node ${1^^}'s agent did not capture pod $2"
}

# ---------------------------------------------------------------------------

step "1. Two nodes: network namespaces $NS_A ($IP_A) and $NS_B ($IP_B), joined by a veth pair" \
     "Node A's pods will live on $PODS_A.0/24, node B's on $PODS_B.0/24, routed between the nodes."
for node in a b; do
    ip netns add "$(netns_of $node)"
    ip -n "$(netns_of $node)" link set lo up
    on "$node" sysctl -q -w net.ipv4.ip_forward=1
done
ip link add "$VETH_A" netns "$NS_A" type veth peer name "$VETH_B" netns "$NS_B"
ip -n "$NS_A" addr add "$IP_A/24" dev "$VETH_A"; ip -n "$NS_B" addr add "$IP_B/24" dev "$VETH_B"
ip -n "$NS_A" link set "$VETH_A" up; ip -n "$NS_B" link set "$VETH_B" up
ip -n "$NS_A" route add "$PODS_B.0/24" via "$IP_B"; ip -n "$NS_B" route add "$PODS_A.0/24" via "$IP_A"

step "2. Podman on each node: runc, its own store and API socket, a busybox image made here" \
     "(podman system service; the agent follows this API as a container runtime's own clients do)"
mkdir -p "$WORK/rootfs/bin" "$WORK/rootfs/www"
cp "$BUSYBOX" "$WORK/rootfs/bin/busybox"
echo "hello from the orders pod on node B" > "$WORK/rootfs/www/index.html"
tar -C "$WORK/rootfs" -cf "$WORK/rootfs.tar" .
for node in a b; do
    dir="$WORK/$node"; mkdir -p "$dir/policies"
    subnet=$PODS_A; [ "$node" = b ] && subnet=$PODS_B
    # notes/pods.md: runc (crun refuses hybrid cgroup layouts), cgroupfs, and
    # a pod infra container from the local image, since there is no registry.
    cat > "$dir/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
infra_image = "$IMAGE"
infra_command = "/bin/busybox sleep 3600"
tmp_dir = "$dir/tmp"
lock_type = "file"
events_logger = "file"
events_logfile_path = "$dir/events.log"
[network]
network_config_dir = "$dir/networks"
CONF
    printf '[storage]\ndriver = "vfs"\ngraphroot = "%s/graph"\nrunroot = "%s/run"\n' "$dir" "$dir" > "$dir/storage.conf"
    pm "$node" import -q --change 'CMD ["/bin/busybox", "sleep", "3600"]' "$WORK/rootfs.tar" "$IMAGE" >/dev/null
    pm "$node" network create --disable-dns --subnet "$subnet.0/24" "$NETWORK" >/dev/null
    pm "$node" system service --time=0 "unix://$dir/podman.sock" >"$dir/podman-service.log" 2>&1 &
    if [ "$node" = a ]; then SERVICE_A=$!; else SERVICE_B=$!; fi
    for _ in $(seq 100); do [ -S "$dir/podman.sock" ] && break; sleep 0.1; done
    [ -S "$dir/podman.sock" ] || fail "podman system service on node ${node^^} made no socket"
    ok "node ${node^^}: image $IMAGE, network $NETWORK ($subnet.0/24), API on $dir/podman.sock"
done

step "3. A certificate authority and an agent on each node" \
     "captureMode netns: every enrolled pod is captured inside its own network namespace." \
     "workloadSources.podman: the agent finds pods from the node's Podman API. Node B's config:"
"$BIN/agentctl" ca init --trust-domain cluster.local --out "$WORK/ca/root" > "$WORK/ca.out"
for node in a b; do
    "$BIN/agentctl" ca issue-intermediate --ca "$WORK/ca/root" --name "node-$node" --out "$WORK/ca/node-$node" >> "$WORK/ca.out"
    cat > "$WORK/$node/agent.yaml" <<YAML
trustDomain: cluster.local
node: node-$node
captureMode: netns
adminSocket: $WORK/$node/admin.sock
accessLog: $WORK/$node/access.log
graph: {database: $WORK/$node/graph.db}
policyDir: $WORK/$node/policies
mtlsMode: PERMISSIVE
drainTimeout: 2s
meshNetworks: [10.77.0.0/16]
ca:
  certificate: $WORK/ca/node-$node/intermediate.pem
  key: $WORK/ca/node-$node/intermediate.key
  trustBundle: $WORK/ca/node-$node/bundle.pem
workloads: []
workloadSources:
  podman: {socket: $WORK/$node/podman.sock}
YAML
    "$BIN/agentctl" config check "$WORK/$node/agent.yaml" >/dev/null || fail "the config of node ${node^^} is invalid"
done
indent < "$WORK/b/agent.yaml"
start_agents

step "4. Pods: orders on node B (port 8080), checkout and legacy on node A" \
     "The label istio.io/dataplane-mode=ambient enrolls a pod; mesh-agent.io/namespace and" \
     "mesh-agent.io/service-account make its identity spiffe://cluster.local/ns/NS/sa/SA." \
     "legacy has no label: it stays outside the mesh, as a pod in an unlabelled namespace would."
ambient=(--label istio.io/dataplane-mode=ambient --label mesh-agent.io/namespace=shop)
make_pod b --name orders "${ambient[@]}" --label mesh-agent.io/service-account=orders \
    --label mesh-agent.io/ports=8080 --network "$NETWORK"
pm b run -d --pod orders --name orders-web "$IMAGE" /bin/busybox httpd -f -p 8080 -h /www >/dev/null
make_pod a --name checkout "${ambient[@]}" --label mesh-agent.io/service-account=checkout --network "$NETWORK"
pm a run -d --pod checkout --name checkout-app "$IMAGE" /bin/busybox sleep 3600 >/dev/null
make_pod a --name legacy --network "$NETWORK"
pm a run -d --pod legacy --name legacy-app "$IMAGE" /bin/busybox sleep 3600 >/dev/null
wait_captured b orders; wait_captured a checkout
ORDERS_IP=$(workload_field b orders addresses | tr -d "[]' ")
[ -n "$ORDERS_IP" ] || fail "node B's agent shows no address for orders"
for node in a b; do
    echo "  agentctl workloads (node ${node^^}):"
    ctl "$node" workloads | indent
done
has "legacy" "$(ctl a workloads)" && has "captured" "$(workload_field a legacy state)" && fail "legacy was captured without the label"
ok "orders and checkout are captured in their own namespaces; legacy is not"
ORDERS_NETNS=$(workload_field b orders netns)
echo "  nft list table inet mesh_agent, inside orders' namespace $ORDERS_NETNS (comments left out):"
nsenter --net="$ORDERS_NETNS" nft list table inet mesh_agent | sed -e 's/ comment ".*"$//' -e '/^\s*comment /d' -e '/^\s*$/d' | indent
echo "  the agent's listeners inside orders' namespace (ss -tln):"
nsenter --net="$ORDERS_NETNS" ss -Htln | awk '{print $4}' | sort -u | indent

step "5. checkout calls orders: http://$ORDERS_IP:8080/, from inside the checkout pod" \
     "Neither container knows about the mesh. Node A's agent takes the connection inside checkout's" \
     "namespace and dials node B's agent inside orders' namespace, with checkout's certificate."
before_a=$(log_lines a); before_b=$(log_lines b)
body=$(pod_get a checkout-app "http://$ORDERS_IP:8080/") || fail "checkout could not fetch from orders through the mesh"
echo "    GET http://$ORDERS_IP:8080/  ->  $body"
ok "the request went through the mesh"
echo "  node A's access log:"
python3 "$ACCESSLOG" "$WORK/a/access.log" --after "$before_a" direction=outbound tls=mutual reason=hbone \
    src_identity=spiffe://cluster.local/ns/shop/sa/checkout || fail "node A did not log checkout's mTLS connection"
echo "  node B's access log:"
python3 "$ACCESSLOG" "$WORK/b/access.log" --after "$before_b" direction=inbound tls=mutual \
    src_identity=spiffe://cluster.local/ns/shop/sa/checkout dst_workload=shop/orders \
    || fail "node B did not log the inbound connection with checkout's SPIFFE ID"

step "6. The wire between the nodes carries only TLS" \
     "tcpdump on node B's veth while checkout fetches a file whose name and content hold a random marker."
MARK="SECRET-$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"
pm b exec orders-web /bin/busybox sh -c "echo 'the body carries $MARK' > /www/order-$MARK.txt"
capture_start "$WORK/mesh.pcap"
pod_get a checkout-app "http://$ORDERS_IP:8080/order-$MARK.txt" | indent || fail "the marker request failed"
capture_stop
tunnel=$(packets "$WORK/mesh.pcap" tcp port 15008); plain=$(packets "$WORK/mesh.pcap" tcp port 8080)
marks=$(grep -ac "$MARK" "$WORK/mesh.pcap" || true)
echo "    packets to or from port 15008: $tunnel, to or from port 8080: $plain; grep -c $MARK mesh.pcap -> $marks"
[ "$tunnel" -gt 0 ] || fail "the capture holds no traffic on the tunnel port 15008"
[ "$plain" -eq 0 ] || fail "the capture holds plaintext traffic to port 8080"
[ "$marks" -eq 0 ] || fail "the marker is readable on the wire"
ok "only TLS to port 15008 on the wire"

step "7. PERMISSIVE: legacy, outside the mesh, still reaches orders in plaintext" \
     "Node B's agent takes it on the pod's inbound-plaintext listener (15006) and logs it with no identity."
before_b=$(log_lines b)
body=$(pod_get a legacy-app "http://$ORDERS_IP:8080/") || fail "in PERMISSIVE mode legacy should have been let in"
echo "    legacy -> GET http://$ORDERS_IP:8080/  ->  $body"
python3 "$ACCESSLOG" "$WORK/b/access.log" --after "$before_b" direction=inbound tls=none src_identity=null \
    || fail "node B did not log legacy's plaintext connection"

step "8. STRICT for namespace shop (an Istio PeerAuthentication in node B's policyDir, then SIGHUP)" \
     "Port 8080 moves to the strict_ports set of the table inside orders' namespace: plaintext is reset" \
     "there by the kernel; checkout, in mutual TLS, still gets through."
cp "$HERE/peer-authentication-strict.yaml" "$WORK/b/policies/"
kill -HUP "$AGENT_B"
for _ in $(seq 100); do
    has 'elements = { 8080 }' "$(nsenter --net="$ORDERS_NETNS" nft list set inet mesh_agent strict_ports 2>/dev/null)" && break
    sleep 0.1
done
has 'elements = { 8080 }' "$(nsenter --net="$ORDERS_NETNS" nft list set inet mesh_agent strict_ports)" \
    || fail "port 8080 is not in strict_ports inside orders' namespace"
if refused=$(pod_get a legacy-app "http://$ORDERS_IP:8080/" 2>&1); then
    fail "in STRICT mode legacy's plaintext request should have been refused, got: $refused"
fi
echo "    legacy   -> GET http://$ORDERS_IP:8080/  ->  refused (${refused:-no answer})"
body=$(pod_get a checkout-app "http://$ORDERS_IP:8080/") || fail "checkout could no longer reach orders"
echo "    checkout -> GET http://$ORDERS_IP:8080/  ->  $body"
ok "plaintext refused inside the pod; mutual TLS from checkout still works"

step "9. A pod goes: podman pod rm checkout" \
     "Node A's agent sees the event and removes what it had put in the pod (table, listeners)."
pm a pod rm -f -t 0 checkout >/dev/null
for _ in $(seq 100); do [ -z "$(workload_field a checkout name)" ] && break; sleep 0.1; done
[ -z "$(workload_field a checkout name)" ] || fail "node A still lists checkout after its removal"
ok "checkout is gone from node A's workloads"

step "10. SIGTERM: each agent drains, removes every table it installed (failureMode: open) and exits"
for node in a b; do
    pid=$AGENT_A; [ "$node" = b ] && pid=$AGENT_B
    kill -TERM "$pid"
    code=0; wait "$pid" || code=$?
    if [ "$node" = a ]; then AGENT_A=""; else AGENT_B=""; fi
    [ "$code" -eq 0 ] || fail "the agent on node ${node^^} exited with $code"
done
nsenter --net="$ORDERS_NETNS" nft list table inet mesh_agent >/dev/null 2>&1 && fail "orders' namespace still has table inet mesh_agent"
ok "both agents exited 0; orders' namespace has no mesh_agent table left"
