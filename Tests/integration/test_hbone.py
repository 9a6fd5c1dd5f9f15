"""Node to node in mutual TLS (HBONE: HTTP/2 CONNECT over TLS 1.3 on :15008), with
an agent on each of two nodes: real kernel, real agents, real TLS, real bytes.

Node "a" (the topology's `node` namespace) runs the client workloads; node "b"
(the `remote` namespace) runs the server workloads. Most tests share one
two-node setup (module scope, torn down even on failure); tests that need a
different configuration build their own.
"""
import datetime
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from conftest import PEER, TRUST_DOMAIN, TwoNodes, make_node_cas, pcap_segments, read_line, start_capture, stop_capture, wait_for

TOOLS = Path(__file__).resolve().parent / "tools"
HBONE = TOOLS / "hbone.py"
sys.path.insert(0, str(TOOLS))
from hbone import make_leaf  # noqa: E402

MESH = ["10.77.0.0/16", "fd77::/64"]
ECHO, TRANSFER, VAULT, FLOOD = 8080, 8081, 8082, 8083
UNSERVED = 9090     # a port on node b that no workload serves (an uncaptured listener is there)
ON_A = 9091         # a listener on node a: not an address of node b
GHOST = 9092        # served by a configured workload whose cgroup does not exist (not present)
LOOPBACK_ONLY = 9093  # a port the server workload declares, but whose listener on node b is bound to loopback only
AGENT_IDENTITY = f"spiffe://{TRUST_DOMAIN}/ns/istio-system/sa/mesh-agent"
PROBE_IDENTITY = f"spiffe://{TRUST_DOMAIN}/ns/test/sa/probe"
MiB = 1024 * 1024


def identity(sa, namespace="shop"):
    return f"spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/{sa}"


def authority(ip, port):
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def accepted(record):
    return Path(record).read_text().splitlines() if Path(record).exists() else []


def peer_authentication(directory, name, namespace, mode, labels=None):
    selector = ""
    if labels:
        selector = "  selector:\n    matchLabels:\n" + "".join(f"      {k}: {v}\n" for k, v in labels.items())
    Path(directory, f"{name}.yaml").write_text(
        "apiVersion: security.istio.io/v1\n"
        "kind: PeerAuthentication\n"
        "metadata:\n"
        f"  name: {name}\n"
        f"  namespace: {namespace}\n"
        "spec:\n"
        f"{selector}"
        "  mtls:\n"
        f"    mode: {mode}\n")


def read_json_line(proc, timeout, what, agents=()):
    """The first stdout line of a running helper, as JSON, without blocking
    forever. On failure the message carries the helper's stderr and the
    agents' warnings."""
    try:
        line = read_line(proc.stdout, timeout, what)
    except AssertionError:
        line = ""
    if not line:
        exited = proc.poll() is not None
        proc.kill()
        warnings = "".join(
            f"\n--- {agent.namespace} agent warnings (first 10):\n" +
            "\n".join([line for line in agent.log().splitlines() if " warning " in line or " error " in line][:10])
            for agent in agents)
        state = "exited without a result" if exited else f"gave no result within {timeout}s"
        raise AssertionError(f"{what}: the helper {state}; stderr: {proc.stderr.read()[-2000:]}{warnings}")
    return json.loads(line)


def release(proc, timeout=60):
    """Sends the line a holding helper waits for; returns its remaining output."""
    try:
        proc.stdin.write("\n")
        proc.stdin.flush()
    except BrokenPipeError:
        pass
    out, err = proc.communicate(timeout=timeout)
    return out, err


def tunnel_connections(nodes, which="a"):
    """Established TCP connections to :15008 seen in that node's namespace."""
    out = nodes.topology.run_in(nodes.namespace(which), "ss", "-Htn", "state", "established", "( dport = :15008 )").stdout
    return [line for line in out.splitlines() if line.strip()]


def certs(agent):
    return json.loads(agent.ctl("certs", "-o", "json").stdout)


def cert_of(agent, ident):
    return next((c for c in certs(agent) if c["identity"] == ident and c["state"] == "valid"), None)


def parse_time(text):
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class Mesh:
    """The shared two-node setup."""

    def __init__(self, nodes, tmp):
        self.nodes = nodes
        self.topology = nodes.topology
        self.tmp = tmp
        t = self.topology
        self.a_ip, self.b_ip, self.a_ip6, self.b_ip6 = t.node_ip, t.remote_ip, t.node_ip6, t.remote_ip6
        self.ns_a, self.ns_b = t.node, t.remote
        cg = nodes.cgroups
        # Node a: clients. Each has its own identity so each test finds its own lines.
        self.a_workloads = [
            nodes.workload("client", namespace="shop", serviceAccount="checkout"),
            nodes.workload("witness", namespace="shop", serviceAccount="witness"),
            nodes.workload("pool", namespace="shop", serviceAccount="pool"),
        ]
        # Node b: servers. "vault" is switched to STRICT by a PeerAuthentication.
        self.b_workloads = [
            nodes.workload("server", namespace="shop", serviceAccount="orders", labels={"app": "orders"},
                           ports=[ECHO, TRANSFER, FLOOD, LOOPBACK_ONLY]),
            nodes.workload("vault", namespace="shop", serviceAccount="vault", labels={"app": "vault"}, ports=[VAULT]),
            {"name": "ghost", "namespace": "shop", "cgroup": cg.path("ghost"), "ports": [GHOST]},
        ]
        self.policy_b = tmp / "policies-b"
        self.policy_b.mkdir()
        peer_authentication(self.policy_b, "vault-strict", "shop", "STRICT", {"app": "vault"})

        self.records = {port: tmp / f"accepted-{port}" for port in (ECHO, TRANSFER, VAULT, FLOOD, UNSERVED, ON_A, GHOST, LOOPBACK_ONLY)}
        t.server("echo", ECHO, ns=self.ns_b, cgroup=cg.directory("server"), record=self.records[ECHO])
        t.server("transfer", TRANSFER, ns=self.ns_b, cgroup=cg.directory("server"), record=self.records[TRANSFER])
        t.server("flood", FLOOD, ns=self.ns_b, cgroup=cg.directory("server"), record=self.records[FLOOD])
        t.server("echo", VAULT, ns=self.ns_b, cgroup=cg.directory("vault"), record=self.records[VAULT])
        t.server("echo", UNSERVED, ns=self.ns_b, record=self.records[UNSERVED])
        t.server("echo", ON_A, ns=self.ns_a, record=self.records[ON_A])
        t.server("echo", GHOST, ns=self.ns_b, record=self.records[GHOST])
        t.server("echo", LOOPBACK_ONLY, ns=self.ns_b, cgroup=cg.directory("server"), record=self.records[LOOPBACK_ONLY],
                 bind=["127.0.0.1", "::1"])

        self.b = nodes.agent("b", self.b_workloads, meshNetworks=MESH, policyDir=self.policy_b).start()
        self.a = nodes.agent("a", self.a_workloads, meshNetworks=MESH).start()
        for agent, names in ((self.a, ("checkout", "witness", "pool")), (self.b, ("orders", "vault"))):
            wait_for(lambda: all(cert_of(agent, identity(n)) for n in names), timeout=20,
                     what=f"certificates for {names}")

        # A workload certificate made outside the agents, for the Python HBONE client.
        self.probe_cert, self.probe_key = make_leaf(nodes.cas["node-a"], PROBE_IDENTITY, tmp / "probe")
        self.bundle = nodes.cas["node-b"] / "bundle.pem"

    def cgroup(self, name):
        return self.nodes.cgroups.directory(name)

    def client(self, args, workload="client", timeout=120):
        return self.topology.client(args, cgroup=self.cgroup(workload), timeout=timeout)

    def plain(self, host, port, text):
        """A plaintext attempt from node a by a process that is no workload."""
        return self.topology.client(["probe", host, port, text], timeout=60)

    def hbone(self, command, *args, host=None, timeout=60, cert=None, key=None):
        """Runs the Python HBONE client on node a (not captured) against node b."""
        argv = [sys.executable, str(HBONE), command, "--host", host or self.b_ip, "--ca", str(self.bundle),
                "--cert", str(cert or self.probe_cert), "--key", str(key or self.probe_key), *[str(a) for a in args]]
        proc = self.topology.spawn(self.ns_a, argv)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            raise AssertionError(f"hbone {command} {args} did not finish: {err}")
        assert proc.returncode == 0, f"hbone {command} {args} failed: {err}"
        return json.loads(out.strip().splitlines()[-1])

    def hbone_holding(self, command, *args):
        argv = [sys.executable, str(HBONE), command, "--host", self.b_ip, "--ca", str(self.bundle),
                "--cert", str(self.probe_cert), "--key", str(self.probe_key), *[str(a) for a in args]]
        return self.topology.spawn(self.ns_a, argv, stdin=subprocess.PIPE)

    def assert_serving(self, note):
        """Both agents are up and a normal mesh connection from a to b works."""
        assert self.a.alive(), f"agent a exited ({note}):\n{self.a.log()[-3000:]}"
        assert self.b.alive(), f"agent b exited ({note}):\n{self.b.log()[-3000:]}"
        text = f"still serving after {note} {uuid.uuid4().hex}"
        result = self.client(["echo", self.b_ip, ECHO, text], timeout=60)
        assert result["ok"], f"a mesh connection failed after {note}"
        entry = self.a.entry_for_port(result["local_port"])
        assert entry["reason"] == "hbone" and entry["tls"] == "mutual", entry


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hbone")
    nodes = TwoNodes(tmp, "hbone")
    try:
        yield Mesh(nodes, tmp)
    finally:
        nodes.close()


# ---------------------------------------------------------------- bytes

@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
@pytest.mark.parametrize("size", ["small", "large"])
def test_bytes_intact_both_ways_with_half_close(mesh, family, size):
    host = mesh.b_ip if family == "ipv4" else mesh.b_ip6
    up, down = (1000, 3000) if size == "small" else (100 * MiB, 100 * MiB)
    before = len(mesh.b.entries())

    # The transfer server answers only after the client's FIN arrived through
    # the tunnel (END_STREAM), while the other direction stays open.
    result = mesh.client(["transfer", host, TRANSFER, up, down], timeout=600)
    assert result["upload_ok"], "the server saw different bytes than the client sent"
    assert result["download_ok"], f"the client got {result['download_bytes']} bytes, not the {down} the server sent"

    sent_up, sent_down = up + len(f"{down}\n"), 65 + down
    out = mesh.a.entry_for_port(result["local_port"])
    assert out["direction"] == "outbound"
    assert out["tls"] == "mutual" and out["reason"] == "hbone", out
    assert out["src_identity"] == identity("checkout")
    assert out["dst_addr"] == authority(host, TRANSFER)
    assert out["bytes_received"] == sent_up and out["bytes_sent"] == sent_down, out

    inbound = mesh.b.find_entry(
        lambda e: e["direction"] == "inbound" and e["dst_addr"] == authority(host, TRANSFER) and e["src_identity"] == identity("checkout"),
        timeout=10, what="the inbound entry on node b", since=before)
    assert inbound["tls"] == "mutual" and inbound["reason"] == "hbone" and inbound["action"] == "allow", inbound
    assert sorted([inbound["bytes_sent"], inbound["bytes_received"]]) == sorted([sent_up, sent_down]), inbound


def test_echo_over_ipv6_names_the_ipv6_destination_on_both_agents(mesh):
    result = mesh.client(["echo", mesh.b_ip6, ECHO, "hello over ipv6"])
    assert result["ok"]
    out = mesh.a.entry_for_port(result["local_port"])
    assert out["dst_addr"] == f"[{mesh.b_ip6}]:{ECHO}" and out["reason"] == "hbone", out
    mesh.b.find_entry(lambda e: e["dst_addr"] == f"[{mesh.b_ip6}]:{ECHO}" and e["reason"] == "hbone"
                      and e["src_identity"] == identity("checkout"), timeout=10, what="an ipv6 inbound entry on node b")


# ---------------------------------------------------------------- the wire

def test_the_wire_between_the_nodes_carries_no_plaintext(mesh):
    marker = f"PLAINTEXT-MARKER-{uuid.uuid4().hex}"
    capture = mesh.tmp / f"wire-{uuid.uuid4().hex[:8]}.pcap"
    tcpdump = start_capture(mesh.topology, mesh.ns_a, mesh.topology.veth[0], capture)
    try:
        for host in (mesh.b_ip, mesh.b_ip6):
            result = mesh.client(["echo", host, ECHO, marker * 20])
            assert result["ok"]
            assert mesh.a.entry_for_port(result["local_port"])["tls"] == "mutual"
    finally:
        stop_capture(tcpdump, capture)
    raw = capture.read_bytes()
    segments = pcap_segments(capture)
    tunnel = [s for s in segments if 15008 in (s[0], s[1])]
    assert tunnel, "no traffic to port 15008 on the wire"
    assert sum(len(s[2]) for s in tunnel) > 2 * len(marker) * 20, "the tunnel carried fewer bytes than the echo"
    assert not [s for s in segments if ECHO in (s[0], s[1])], "the workload's port appeared on the wire: not tunnelled"
    assert marker.encode() not in raw, "the client's plaintext is visible on the wire"
    assert marker[::-1].encode() not in raw


def test_control_without_mesh_networks_the_marker_is_visible_on_the_wire(topology, cgroups, make_agent, tmp_path):
    """Shows the capture check above can fail: passthrough traffic (no
    meshNetworks) crosses the same veth in plaintext and the marker is found."""
    cgroups.make("client")
    agent = make_agent([{"name": "client", "cgroup": cgroups.path("client")}]).start()
    topology.server("echo", ECHO)
    marker = f"PLAINTEXT-MARKER-{uuid.uuid4().hex}"
    capture = tmp_path / "control.pcap"
    tcpdump = start_capture(topology, topology.node, topology.veth[0], capture)
    try:
        result = topology.client(["echo", topology.remote_ip, ECHO, marker], cgroup=cgroups.directory("client"))
        assert result["ok"]
    finally:
        stop_capture(tcpdump, capture)
    assert agent.entry_for_port(result["local_port"])["tls"] == "none"
    assert marker.encode() in capture.read_bytes()
    assert any(ECHO in (s[0], s[1]) and marker.encode() in s[2] for s in pcap_segments(capture))


# ---------------------------------------------------------------- identity on the far side

def test_destination_agent_logs_the_source_spiffe_id(mesh):
    text = f"who am i {uuid.uuid4().hex}"
    result = mesh.client(["echo", mesh.b_ip, ECHO, text], workload="witness")
    assert result["ok"]
    entry = mesh.b.find_entry(lambda e: e["src_identity"] == identity("witness"), timeout=10,
                              what="node b's entry naming the source workload's SPIFFE ID")
    assert entry["direction"] == "inbound"
    assert entry["tls"] == "mutual"
    assert entry["reason"] == "hbone"
    assert entry["action"] == "allow"
    assert entry["dst_addr"] == f"{mesh.b_ip}:{ECHO}"
    assert entry["dst_workload"] == "shop/server"
    assert entry["dst_identity"] == identity("orders")
    assert entry["bytes_sent"] == len(text) and entry["bytes_received"] == len(text), entry

    out = mesh.a.entry_for_port(result["local_port"], src_identity=identity("witness"))
    assert out["direction"] == "outbound" and out["tls"] == "mutual" and out["reason"] == "hbone"


def test_a_source_port_reused_for_another_destination_is_still_tunnelled(mesh):
    """A client that reuses its source port (bound explicitly, or an ephemeral
    port handed out again) for a second destination on the remote node while
    the first connection is in TIME_WAIT: both connections are the workload's
    and both must be tunnelled. (Redirected connections share the listener's
    address, so conntrack may give the second one another source port.)"""
    local_port = 20000 + uuid.uuid4().int % 10000
    result = mesh.client(["sameport", mesh.b_ip, local_port, VAULT, ECHO])
    assert result["outcomes"] == ["ok", "ok"], \
        f"from source port {local_port}: {result['outcomes']}; agent a said: " + \
        "\n".join(line for line in mesh.a.log().splitlines() if "refused a captured connection" in line)[-1500:]
    entries = wait_for(lambda: (lambda found: found if len(found) == 2 else None)(
        [e for e in mesh.a.entries() if e["src_addr"] == f"{mesh.a_ip}:{local_port}"]), timeout=10, what="two entries for the reused port")
    assert all(e["reason"] == "hbone" and e["src_identity"] == identity("checkout") for e in entries), entries


def scrape(topology, ns, url):
    """GET url from inside a namespace: (status, body)."""
    code = ("import sys, urllib.request, urllib.error\n"
            "try:\n r = urllib.request.urlopen(sys.argv[1], timeout=10); print(r.status); print(r.read().decode())\n"
            "except urllib.error.HTTPError as e:\n print(e.code); print(e.read().decode())\n")
    out = topology.run_in(ns, sys.executable, "-c", code, url).stdout
    status, _, body = out.partition("\n")
    return int(status), body


def metric_samples(text, name):
    """{frozenset(labels): value} for every sample of `name` in Prometheus text."""
    samples = {}
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        labels_text, _, value = line[len(name) + 1:].rpartition("} ")
        labels = frozenset(tuple(part.split("=", 1)) for part in labels_text.replace('"', "").split(","))
        samples[labels] = float(value)
    return samples


def test_prometheus_metrics_name_both_principals_and_count_the_bytes(mesh):
    text = f"metrics {uuid.uuid4().hex}" * 10
    before_status, before = scrape(mesh.topology, mesh.ns_b, f"http://{mesh.b_ip}:15020/metrics")
    assert before_status == 200
    key = frozenset({("reporter", "destination"), ("source_principal", identity("witness")),
                     ("destination_principal", identity("orders")), ("connection_security_policy", "mutual_tls")})

    def total(body, name):
        return sum(v for labels, v in metric_samples(body, name).items() if key <= labels)

    result = mesh.client(["echo", mesh.b_ip, ECHO, text], workload="witness")
    assert result["ok"]
    mesh.b.find_entry(lambda e: e["src_identity"] == identity("witness") and e["bytes_received"] == len(text),
                      timeout=10, what="node b's entry for the scraped connection")
    status, after = scrape(mesh.topology, mesh.ns_b, f"http://{mesh.b_ip}:15020/metrics")
    assert status == 200
    assert total(after, "istio_tcp_connections_opened_total") - total(before, "istio_tcp_connections_opened_total") == 1, after
    assert total(after, "istio_tcp_connections_closed_total") - total(before, "istio_tcp_connections_closed_total") == 1
    assert total(after, "istio_tcp_received_bytes_total") - total(before, "istio_tcp_received_bytes_total") == len(text)
    assert total(after, "istio_tcp_sent_bytes_total") - total(before, "istio_tcp_sent_bytes_total") == len(text)
    # Every sample line parses: NAME{labels} VALUE, or a # comment.
    for line in after.splitlines():
        assert line.startswith("#") or line == "" or (" " in line and float(line.rsplit(" ", 1)[1]) >= 0), line

    source_status, source_side = scrape(mesh.topology, mesh.ns_a, f"http://127.0.0.1:15020/metrics")
    assert source_status == 200
    outbound = {labels: v for labels, v in metric_samples(source_side, "istio_tcp_connections_opened_total").items()
                if ("reporter", "source") in labels and ("source_principal", identity("witness")) in labels}
    assert outbound and all(("connection_security_policy", "mutual_tls") in labels for labels in outbound), source_side


def test_readiness_probe_answers_ready_while_serving(mesh):
    assert scrape(mesh.topology, mesh.ns_b, f"http://{mesh.b_ip}:15021/healthz/ready") == (200, "ready\n\n")
    assert scrape(mesh.topology, mesh.ns_a, "http://[::1]:15021/healthz/ready")[0] == 200


# ---------------------------------------------------------------- pooling

def test_a_thousand_connections_share_a_few_tls_connections(mesh):
    proc = mesh.topology.spawn(mesh.ns_a, [sys.executable, str(PEER), "many", mesh.b_ip, str(ECHO), "1000", "hold"],
                               cgroup=mesh.cgroup("pool"), stdin=subprocess.PIPE)
    try:
        first = read_json_line(proc, 240, "1000 connections", agents=(mesh.a, mesh.b))
        assert first["ok"] == 1000, f"only {first['ok']} of 1000 round trips came back intact"
        # All 1000 are open now: count the TLS connections node a holds to :15008.
        tunnels = tunnel_connections(mesh.nodes, "a")
        cores = os.cpu_count() or 1
        print(f"1000 connections over {len(tunnels)} TLS connections ({cores} cores)")
        assert 0 < len(tunnels) <= 16, f"{len(tunnels)} TLS connections for 1000 streams ({cores} cores):\n" + "\n".join(tunnels[:20])
        out, err = release(proc, timeout=240)
        assert proc.returncode == 0, err
        assert json.loads(out)["still_ok"] == 1000
    finally:
        if proc.poll() is None:
            proc.kill()
    sample = first["local_ports"][::97]
    for port in sample:
        entry = mesh.a.entry_for_port(port, timeout=30, src_identity=identity("pool"))
        assert entry["reason"] == "hbone" and entry["tls"] == "mutual", entry


# ---------------------------------------------------------------- the tunnel port as an open proxy

@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_hbone_client_with_a_valid_certificate_is_served(mesh, family):
    host = mesh.b_ip if family == "ipv4" else mesh.b_ip6
    text = f"probe {uuid.uuid4().hex}"
    result = mesh.hbone("connect", "--authority", authority(host, ECHO), "--send", text, host=host)
    assert result["error"] is None, result
    assert result["alpn"] == "h2"
    assert result["peer_identity"] == AGENT_IDENTITY, "the tunnel server must present the agent's own SVID"
    assert result["status"] == 200, result
    assert result["echo"] == text and result["ended"], result
    entry = mesh.b.find_entry(lambda e: e["src_identity"] == PROBE_IDENTITY and e["dst_addr"] == authority(host, ECHO)
                              and e["action"] == "allow", timeout=10, what="node b's entry for the probe")
    assert entry["direction"] == "inbound" and entry["tls"] == "mutual" and entry["dst_identity"] == identity("orders")


def test_connect_to_a_non_local_address_or_unserved_port_is_refused_and_nothing_is_dialled(mesh):
    refused = [
        authority(mesh.a_ip, ON_A),        # another node's address: the open-proxy attempt
        authority(mesh.a_ip6, ON_A),
        authority(mesh.b_ip, UNSERVED),    # this node, but a port no workload serves
        authority(mesh.b_ip6, UNSERVED),
        authority(mesh.b_ip, GHOST),       # a port of a configured workload that is not present
        authority(mesh.b_ip.rsplit(".", 1)[0] + ".77", ECHO),  # nobody's address
    ]
    for target in refused:
        result = mesh.hbone("connect", "--authority", target, "--send", "should not arrive")
        assert result["status"] == 403, f"CONNECT {target}: {result}"
        assert result["echo"] is None
    # Refusals answer before any dial, so a dial would have been on its way by
    # now; one served connection through the same agent lets it land.
    mesh.assert_serving("refused CONNECTs")
    assert accepted(mesh.records[ON_A]) == [], "the agent dialled an address that is not on its node"
    assert accepted(mesh.records[UNSERVED]) == [], "the agent dialled a port no workload serves"
    assert accepted(mesh.records[GHOST]) == [], "the agent dialled the port of a workload that is not present"
    for target in refused:
        entry = mesh.b.find_entry(lambda e: e["src_identity"] == PROBE_IDENTITY and e["dst_addr"] == target and e["action"] == "deny",
                                  timeout=10, what=f"a deny entry for CONNECT {target}")
        assert entry["direction"] == "inbound" and entry["reason"], entry
    # The listeners do record connections (so the empty records above mean something).
    assert mesh.topology.client(["probe", mesh.a_ip, ON_A, "x"], ns=mesh.ns_a)["received"] == "x"
    assert mesh.topology.client(["probe", mesh.b_ip, UNSERVED, "x"], ns=mesh.ns_b)["received"] == "x"
    assert len(accepted(mesh.records[ON_A])) == 1 and len(accepted(mesh.records[UNSERVED])) == 1


def link_local_address(topology, ns):
    out = topology.run_in(ns, "ip", "-6", "-o", "addr", "show", "scope", "link").stdout
    match = re.search(r"inet6 (fe80::[0-9a-f:]+)/", out)
    assert match, f"no link-local address in {ns}: {out}"
    return match.group(1)


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_connect_to_loopback_special_addresses_or_the_agents_ports_is_refused_and_nothing_is_dialled(mesh, family):
    """A peer with a valid workload certificate must not reach what node b
    keeps to itself: a service bound to loopback, or the agent's own ports."""
    if family == "ipv4":
        subnet_broadcast = mesh.b_ip.rsplit(".", 1)[0] + ".255"
        refused = {
            authority("127.0.0.1", LOOPBACK_ONLY): "loopback",   # the listener that chose loopback
            authority("127.0.0.1", ECHO): "loopback",            # a dual-stack workload listener, reached by loopback
            authority("127.1.2.3", ECHO): "loopback",
            authority("0.0.0.0", ECHO): "unspecified",
            authority("169.254.1.1", ECHO): "link-local",
            authority("224.0.0.1", ECHO): "multicast",
            authority("255.255.255.255", ECHO): "broadcast",
            authority(subnet_broadcast, ECHO): "broadcast",
            authority(mesh.b_ip, 15008): "agent's own ports",
            authority(mesh.b_ip, 15006): "agent's own ports",
            authority(mesh.b_ip, 15021): "agent's own ports",
        }
    else:
        refused = {
            authority("::1", LOOPBACK_ONLY): "loopback",
            authority("::1", ECHO): "loopback",
            authority("::", ECHO): "unspecified",
            authority(link_local_address(mesh.topology, mesh.ns_b), ECHO): "link-local",
            authority("ff02::1", ECHO): "multicast",
            authority("::ffff:127.0.0.1", LOOPBACK_ONLY): "IPv4-mapped",
            authority(f"::ffff:{mesh.b_ip}", ECHO): "IPv4-mapped",
            authority(mesh.b_ip6, 15008): "agent's own ports",
            authority(mesh.b_ip6, 15020): "agent's own ports",
        }
    echo_before = len(accepted(mesh.records[ECHO]))
    loopback_before = len(accepted(mesh.records[LOOPBACK_ONLY]))
    _, metrics_before = scrape(mesh.topology, mesh.ns_b, f"http://{mesh.b_ip}:15020/metrics")
    for target in refused:
        result = mesh.hbone("connect", "--authority", target, "--send", "should not arrive")
        assert result["status"] == 403, f"CONNECT {target}: {result}"
        assert result["echo"] is None, f"CONNECT {target} reached something: {result}"
    for target, kind in refused.items():
        entry = mesh.b.find_entry(lambda e: e["src_identity"] == PROBE_IDENTITY and e["dst_addr"] == target and e["action"] == "deny",
                                  timeout=10, what=f"a deny entry for CONNECT {target}")
        assert entry["direction"] == "inbound" and kind in entry["reason"], entry
    # Settle before reading the records: a dial would have landed by now.
    mesh.assert_serving("loopback and special-address CONNECTs")
    assert len(accepted(mesh.records[LOOPBACK_ONLY])) == loopback_before, "the agent dialled a listener bound to loopback"
    assert len(accepted(mesh.records[ECHO])) == echo_before + 1, "the agent dialled the workload for a refused target"
    _, metrics_after = scrape(mesh.topology, mesh.ns_b, f"http://{mesh.b_ip}:15020/metrics")
    counted = {labels: v for labels, v in metric_samples(metrics_after, "mesh_agent_forbidden_destinations_total").items()
               if ("path", "tunnel") in labels}
    before = metric_samples(metrics_before, "mesh_agent_forbidden_destinations_total")
    assert sum(counted.values()) - sum(v for labels, v in before.items() if ("path", "tunnel") in labels) == len(refused), counted
    # The loopback listener is there and does record (so the empty record above means something).
    assert mesh.topology.client(["probe", "127.0.0.1", LOOPBACK_ONLY, "x"], ns=mesh.ns_b)["received"] == "x"
    assert len(accepted(mesh.records[LOOPBACK_ONLY])) == loopback_before + 1


def test_non_connect_method_and_malformed_authority_get_400(mesh):
    before = len(accepted(mesh.records[ECHO]))
    get = mesh.hbone("connect", "--method", "GET", "--authority", authority(mesh.b_ip, ECHO))
    assert get["status"] == 400, get
    # HBONE authorities are IP literals with a port; anything else is a bad request.
    for bad in (mesh.b_ip, f"{mesh.b_ip}:http", f"{mesh.b_ip}:99999", f"[{mesh.b_ip6}:{ECHO}", f"{mesh.b_ip6}:{ECHO}",
                f"orders.shop:{ECHO}"):
        result = mesh.hbone("connect", "--authority", bad)
        assert result["status"] == 400, f"CONNECT {bad!r}: {result}"
    # Not even an RFC 3986 authority: the HTTP/2 layer may already treat the
    # request as malformed (RFC 9113 8.1.1: stream error PROTOCOL_ERROR).
    spaced = mesh.hbone("connect", "--authority", "not an address")
    assert spaced["status"] == 400 or spaced["reset"] == 1, f"CONNECT 'not an address': {spaced}"
    assert len(accepted(mesh.records[ECHO])) == before, "a refused request was dialled"
    mesh.assert_serving("bad requests")


# ---------------------------------------------------------------- inbound guard

def test_permissive_workload_accepts_plaintext_from_outside(mesh):
    text = f"plaintext {uuid.uuid4().hex}"
    result = mesh.plain(mesh.b_ip, ECHO, text)
    assert result["error"] is None and result["received"] == text, result
    entry = mesh.b.find_entry(lambda e: e["src_addr"] == f"{mesh.a_ip}:{result['local_port']}", timeout=10,
                              what="node b's entry for the plaintext connection")
    assert entry["direction"] == "inbound"
    assert entry["tls"] == "none"
    assert entry["src_identity"] is None
    assert entry["reason"] == "permissive"
    assert entry["dst_workload"] == "shop/server"


def test_peer_authentication_strict_workload_refuses_plaintext_but_not_the_mesh(mesh):
    before = len(accepted(mesh.records[VAULT]))
    for host in (mesh.b_ip, mesh.b_ip6):
        result = mesh.plain(host, VAULT, "let me in")
        assert result["error"] in ("refused", "reset"), f"plaintext to a STRICT workload at {host}: {result}"
        assert result["received"] == ""
    assert len(accepted(mesh.records[VAULT])) == before, "the STRICT workload saw a plaintext connection"
    # Through the tunnel the same workload is reachable.
    result = mesh.client(["echo", mesh.b_ip, VAULT, "through the mesh"])
    assert result["ok"]
    assert len(accepted(mesh.records[VAULT])) == before + 1
    mesh.b.find_entry(lambda e: e["dst_identity"] == identity("vault") and e["tls"] == "mutual", timeout=10,
                      what="the vault's mTLS entry")


def test_strict_mode_from_config_refuses_plaintext_and_peer_authentication_can_relax_it(two_nodes, tmp_path):
    nodes = two_nodes
    t = nodes.topology
    policies = tmp_path / "policies"
    policies.mkdir()
    peer_authentication(policies, "legacy-permissive", "shop", "PERMISSIVE", {"app": "legacy"})
    server = nodes.workload("server", namespace="shop", serviceAccount="orders", labels={"app": "orders"}, ports=[ECHO])
    legacy = nodes.workload("legacy", namespace="shop", labels={"app": "legacy"}, ports=[VAULT])
    records = {ECHO: tmp_path / "echo.rec", VAULT: tmp_path / "legacy.rec"}
    t.server("echo", ECHO, ns=t.remote, cgroup=nodes.cgroups.directory("server"), record=records[ECHO])
    t.server("echo", VAULT, ns=t.remote, cgroup=nodes.cgroups.directory("legacy"), record=records[VAULT])
    b = nodes.agent("b", [server, legacy], meshNetworks=MESH, mtlsMode="STRICT", policyDir=policies).start()
    a = nodes.agent("a", [nodes.workload("client", namespace="shop", serviceAccount="checkout")], meshNetworks=MESH).start()

    for host in (t.remote_ip, t.remote_ip6):
        result = t.client(["probe", host, ECHO, "let me in"], timeout=60)
        assert result["error"] in ("refused", "reset"), f"plaintext under mtlsMode STRICT at {host}: {result}"
        assert result["received"] == ""
    assert accepted(records[ECHO]) == []

    relaxed = t.client(["probe", t.remote_ip, VAULT, "legacy caller"], timeout=60)
    assert relaxed["received"] == "legacy caller", f"PeerAuthentication PERMISSIVE did not relax STRICT: {relaxed}"
    entry = b.find_entry(lambda e: e["dst_workload"] == "shop/legacy", timeout=10, what="the legacy workload's entry")
    assert entry["tls"] == "none" and entry["reason"] == "permissive" and entry["src_identity"] is None

    mesh_result = t.client(["echo", t.remote_ip, ECHO, "through the mesh"], cgroup=nodes.cgroups.directory("client"))
    assert mesh_result["ok"]
    assert a.entry_for_port(mesh_result["local_port"])["reason"] == "hbone"
    assert len(accepted(records[ECHO])) == 1


# ---------------------------------------------------------------- certificates

def test_rotation_does_not_break_an_open_connection(two_nodes):
    nodes = two_nodes
    t = nodes.topology
    ttl = 6
    server = nodes.workload("server", namespace="shop", serviceAccount="orders", ports=[ECHO])
    client = nodes.workload("client", namespace="shop", serviceAccount="checkout")
    t.server("echo", ECHO, ns=t.remote, cgroup=nodes.cgroups.directory("server"))
    b = nodes.agent("b", [server], meshNetworks=MESH, certificateTTL=f"{ttl}s").start()
    a = nodes.agent("a", [client], meshNetworks=MESH, certificateTTL=f"{ttl}s").start()
    first = wait_for(lambda: cert_of(a, identity("checkout")), timeout=15, what="the client's certificate")
    first_server = wait_for(lambda: cert_of(b, identity("orders")), timeout=15, what="the server's certificate")

    hold_seconds = 2.5 * ttl
    holder = t.spawn(t.node, [sys.executable, str(PEER), "hold", t.remote_ip, str(ECHO), str(hold_seconds)],
                     cgroup=nodes.cgroups.directory("client"))
    wait_for(lambda: tunnel_connections(nodes, "a"), timeout=15, what="the held connection's tunnel")
    rotated = wait_for(lambda: (lambda c: c if c and c["serial"] != first["serial"] else None)(cert_of(a, identity("checkout"))),
                       timeout=3 * ttl, interval=0.3, what="the client's certificate to be re-issued")
    wait_for(lambda: (lambda c: c if c and c["serial"] != first_server["serial"] else None)(cert_of(b, identity("orders"))),
             timeout=3 * ttl, interval=0.3, what="the server's certificate to be re-issued")
    out, err = holder.communicate(timeout=hold_seconds + 60)
    assert holder.returncode == 0, err
    held = json.loads(out)
    assert held["ok"], f"the connection broke across rotation: {held}"
    assert held["rounds"] > 40, held
    assert time.time() > parse_time(first["not_after"]), "the connection did not outlive its first certificate"

    after = t.client(["echo", t.remote_ip, ECHO, "after rotation"], cgroup=nodes.cgroups.directory("client"))
    assert after["ok"]
    entry = a.entry_for_port(after["local_port"])
    assert entry["reason"] == "hbone" and entry["tls"] == "mutual"
    assert rotated["serial"] != first["serial"]
    b.find_entry(lambda e: e["src_identity"] == identity("checkout") and e["tls"] == "mutual", timeout=10,
                 what="node b's entry for the client after rotation")


def test_a_draining_destination_finishes_tunnelled_connections_and_takes_no_new_ones(two_nodes):
    """SIGTERM on node b: the connection in flight through the tunnel finishes
    within drainTimeout; a new connection is refused, even though node a's
    pool still holds an open TLS connection to b (b's GOAWAY retires it)."""
    nodes = two_nodes
    t = nodes.topology
    server = nodes.workload("server", namespace="shop", serviceAccount="orders", ports=[ECHO])
    client = nodes.workload("client", namespace="shop", serviceAccount="checkout")
    record = nodes.tmp / "accepted-drain"
    t.server("echo", ECHO, ns=t.remote, cgroup=nodes.cgroups.directory("server"), record=record)
    b = nodes.agent("b", [server], meshNetworks=MESH, drainTimeout="30s").start()
    a = nodes.agent("a", [client], meshNetworks=MESH).start()
    wait_for(lambda: cert_of(a, identity("checkout")) and cert_of(b, identity("orders")), timeout=15, what="certificates")

    hold_seconds = 5
    holder = t.spawn(t.node, [sys.executable, str(PEER), "hold", t.remote_ip, str(ECHO), str(hold_seconds)],
                     cgroup=nodes.cgroups.directory("client"))
    wait_for(lambda: len(accepted(record)) == 1, timeout=15, what="the held connection to reach the server")
    stopped = time.time()
    b.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: "draining" in b.log(), timeout=10, what="node b to start draining")
    wait_for(lambda: not t.run_in(t.remote, "ss", "-Hltn", "( sport = :15008 )").stdout.strip(), timeout=10,
             what="node b's tunnel listener to stop accepting")

    late = t.client(["probe", t.remote_ip, ECHO, "during drain"], cgroup=nodes.cgroups.directory("client"), timeout=60)
    assert late["received"] != "during drain", f"a new connection got through a draining agent: {late}"
    assert len(accepted(record)) == 1, "the draining agent dialled the workload for a new connection"

    out, err = holder.communicate(timeout=hold_seconds + 60)
    held = json.loads(out)
    assert held["ok"] and held["rounds"] > 40, f"the connection in flight was cut by the drain: {held}"
    assert b.proc.wait(timeout=30) == 0
    assert time.time() - stopped >= hold_seconds - 1.5, "node b exited before its connection finished"
    late_line = a.entry_for_port(late["local_port"], src_identity=identity("checkout"))
    assert late_line["reason"].startswith("connect to destination failed"), late_line


def ca_directory(directory, node_ca, bundles):
    """A node CA directory: node_ca's intermediate and key, and a bundle of the given roots."""
    directory.mkdir()
    shutil.copy2(node_ca / "intermediate.pem", directory / "intermediate.pem")
    shutil.copy2(node_ca / "intermediate.key", directory / "intermediate.key")
    os.chmod(directory / "intermediate.key", 0o600)
    (directory / "bundle.pem").write_text("".join(Path(b).read_text() for b in bundles))
    return directory


@pytest.mark.parametrize("refuser", ["server", "client"])
def test_node_whose_ca_is_not_in_the_bundle_cannot_connect(two_nodes, tmp_path, refuser):
    """Node a's CA is under root 2, node b's under root 1. "server": node b
    trusts only root 1 while node a trusts both, so node b must refuse node a's
    workload certificate. "client": node a trusts only root 2 while node b
    trusts both, so node a must refuse node b's server certificate."""
    nodes = two_nodes
    t = nodes.topology
    root1 = make_node_cas(tmp_path / "root1", ["node-b"])["node-b"]
    root2 = make_node_cas(tmp_path / "root2", ["node-a"])["node-a"]
    both = [root1 / "bundle.pem", root2 / "bundle.pem"]
    a_ca = ca_directory(tmp_path / "a-ca", root2, both if refuser == "server" else [root2 / "bundle.pem"])
    b_ca = ca_directory(tmp_path / "b-ca", root1, [root1 / "bundle.pem"] if refuser == "server" else both)

    record = tmp_path / "server.rec"
    server = nodes.workload("server", namespace="shop", serviceAccount="orders", ports=[ECHO])
    t.server("echo", ECHO, ns=t.remote, cgroup=nodes.cgroups.directory("server"), record=record)
    b = nodes.agent("b", [server], meshNetworks=MESH, ca=b_ca).start()
    a = nodes.agent("a", [nodes.workload("client", namespace="shop", serviceAccount="checkout")], meshNetworks=MESH, ca=a_ca).start()
    wait_for(lambda: cert_of(a, identity("checkout")), timeout=15, what="the client's certificate")
    refusing = b if refuser == "server" else a
    log_before = len(refusing.log())

    result = t.client(["probe", t.remote_ip, ECHO, "across an untrusted link"], cgroup=nodes.cgroups.directory("client"), timeout=60)
    assert result["received"] == "", f"bytes came back across an untrusted link: {result}"
    assert result["error"] in ("closed", "reset", "refused"), result
    wait_for(lambda: [line for line in refusing.log()[log_before:].splitlines() if "handshake" in line.lower()],
             timeout=10, what=f"the {refuser} side's agent to log the refused handshake")
    assert accepted(record) == [], "the server workload saw a connection across an untrusted link"
    assert not [e for e in b.entries() if e["action"] == "allow"], b.entries()

    if refuser == "server":
        # The same with the Python client: a leaf under root 2 is refused, a
        # leaf under root 1 is served (so node b's tunnel itself works).
        def connect(cert, key):
            argv = [sys.executable, str(HBONE), "connect", "--host", t.remote_ip, "--ca", str(root1 / "bundle.pem"), "--cert", str(cert),
                    "--key", str(key), "--authority", authority(t.remote_ip, ECHO), "--send", "hi"]
            out, _ = t.spawn(t.node, argv).communicate(timeout=60)
            return json.loads(out)
        for name, ca, expect in (("foreign", root2, None), ("trusted", root1, 200)):
            outcome = connect(*make_leaf(ca, PROBE_IDENTITY, tmp_path / name))
            assert outcome["status"] == expect, f"{name} leaf: {outcome}"
        assert len(accepted(record)) == 1


# ---------------------------------------------------------------- bad input on :15008 (last: they attack node b)

def test_garbage_on_the_tunnel_port(mesh):
    result = mesh.hbone("garbage")
    assert result["closed"], f"the agent kept a connection of garbage open: {result}"
    mesh.assert_serving("garbage on :15008")


def test_tls_client_without_a_certificate_gets_nothing(mesh):
    before = len(accepted(mesh.records[ECHO]))
    result = mesh.hbone("nocert", "--authority", authority(mesh.b_ip, ECHO))
    assert result["status"] is None, f"a client without a certificate got an answer: {result}"
    assert len(accepted(mesh.records[ECHO])) == before, "a client without a certificate got a connection dialled"
    mesh.assert_serving("a TLS client without a certificate")


def test_thousands_of_streams_on_one_connection(mesh):
    """One connection carries thousands of tunnelled connections in turn, and a
    peer that ignores the advertised stream limit loses its connection."""
    sequence = mesh.hbone("sequence", "--count", "3000", "--authority", authority(mesh.b_ip, ECHO), timeout=180)
    print("3000 streams in turn:", sequence)
    assert sequence["limit"] == 100, sequence
    assert sequence["error"] is None and sequence["goaway"] is None, sequence
    assert sequence["echoed"] == 3000 and sequence["ended"] == 3000, f"every stream must be served and ended: {sequence}"
    assert sequence["resets"] == 0 and sequence["other"] == 0, sequence

    proc = mesh.hbone_holding("streams", "--count", "3000", "--authority", authority(mesh.b_ip, ECHO))
    try:
        burst = read_json_line(proc, 90, "3000 streams at once")
        print("3000 streams at once:", burst)
        limit = burst["advertised_max_concurrent_streams"]
        assert limit == 100, f"the tunnel server must advertise SETTINGS_MAX_CONCURRENT_STREAMS: {burst}"
        assert burst["ok_responses"] <= limit, f"more streams accepted than advertised: {burst}"
        # 2,900 streams over the limit at once is abuse, not load: the server
        # ends the connection (GOAWAY with an error) rather than refusing
        # stream after stream.
        assert burst["goaway"] is not None and burst["goaway_error"] != 0 and burst["closed"], burst
        # While that connection is still open, others are served.
        mesh.assert_serving("3000 streams on one connection")
    finally:
        if proc.poll() is None:
            release(proc)
    mesh.assert_serving("3000 streams, after the connection closed")


def test_client_that_never_reads_does_not_grow_the_agent(mesh):
    rss_before = mesh.b.rss_kib()
    proc = mesh.hbone_holding("noread", "--authority", authority(mesh.b_ip, FLOOD))
    try:
        result = read_json_line(proc, 30, "the never-reading client")
        assert result["status"] == 200, result
        time.sleep(5)  # the flood server writes as fast as it can meanwhile
        assert len(accepted(mesh.records[FLOOD])) == 1, "the flood server was not dialled"
        mesh.assert_serving("a client that never reads")
        grown = mesh.b.rss_kib() - rss_before
        print(f"agent b grew by {grown} KiB while a client did not read")
        # The client advertises windows of 2 GiB, so flow control holds nothing
        # back: what bounds the agent is the stream's write watermark (1 MiB)
        # over full socket buffers, plus read buffers and the allocator's
        # arenas (about 5 MiB measured). Four stream windows (16 MiB) leave room
        # for that; the flood's 5 seconds (gigabytes) would not fit.
        assert grown < 16 * 1024, f"agent b grew by {grown // 1024} MiB buffering for a client that never reads"
    finally:
        if proc.poll() is None:
            release(proc)
    mesh.assert_serving("a client that never read, after it left")
