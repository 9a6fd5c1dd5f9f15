"""The observed service graph end to end, on two nodes with an agent each:
traffic through the mesh (HTTP through an L7 policy, TCP through an L4 one,
plaintext from outside the mesh) becomes edges in the destination agent's
graph database; `agentctl graph` shows them as a table, JSON, DOT and SVG,
filtered and merged; `agentctl policy suggest` turns them into dry-run
policies that `agentctl policy check` accepts; a restart keeps the graph; a
damaged database is reported while the agent keeps proxying.

Node "a" runs the callers (checkout in shop, frontend in web); node "b" the
servers: orders (HTTP, L7 policy) and ledger (TCP echo, L4 policy, PERMISSIVE
so plaintext from the node itself reaches policy).
"""
import json
import re
import sys
import uuid
import xml.dom.minidom
from pathlib import Path

import pytest

from conftest import TwoNodes, agentctl, http_exchange, principal, spiffe, wait_for

TOOLS = Path(__file__).resolve().parent / "tools"
HTTP_PEER = TOOLS / "http_peer.py"
MESH = ["10.77.0.0/16", "fd77::/64"]
ORDERS, LEDGER = 8080, 8090


POLICIES = f"""\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: orders-allow, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: orders}}}}
  rules:
  - from: [{{source: {{principals: ["{principal('checkout')}"]}}}}]
    to: [{{operation: {{methods: ["GET", "POST"], paths: ["/orders/*", "/reserve"]}}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: ledger-callers, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: ledger}}}}
  rules:
  - from: [{{source: {{principals: ["{principal('checkout')}"]}}}}]
  - from: [{{source: {{notPrincipals: ["*"], ipBlocks: ["10.77.0.0/16"]}}}}]
  - from: [{{source: {{principals: ["{principal('retired')}"]}}}}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: ledger, namespace: shop}}
spec: {{selector: {{matchLabels: {{app: ledger}}}}, mtls: {{mode: PERMISSIVE}}}}
"""


def request(method, path):
    return f"{method} {path} HTTP/1.1\r\nHost: orders.shop\r\n\r\n"


class GraphMesh:
    def __init__(self, nodes, tmp):
        self.nodes = nodes
        self.tmp = tmp
        t = self.topology = nodes.topology
        self.b_ip = t.remote_ip
        a_workloads = [
            nodes.workload("checkout", namespace="shop", serviceAccount="checkout"),
            nodes.workload("frontend", namespace="web", serviceAccount="frontend"),
        ]
        self.b_workloads = [
            nodes.workload("orders", namespace="shop", serviceAccount="orders", labels={"app": "orders"}, ports=[ORDERS]),
            nodes.workload("ledger", namespace="shop", serviceAccount="ledger", labels={"app": "ledger"}, ports=[LEDGER]),
        ]
        self.policies_b = tmp / "policies-b"
        self.policies_b.mkdir()
        (self.policies_b / "shop.yaml").write_text(POLICIES)
        t.serve(t.remote, [sys.executable, str(HTTP_PEER), "serve", str(ORDERS), str(tmp / "orders-requests")],
                cgroup=nodes.cgroups.directory("orders"), what="the orders server")
        t.server("echo", LEDGER, ns=t.remote, cgroup=nodes.cgroups.directory("ledger"))
        self.b = nodes.agent("b", self.b_workloads, meshNetworks=MESH, policyDir=self.policies_b).start()
        self.a = nodes.agent("a", a_workloads, meshNetworks=MESH).start()
        names = [spiffe("checkout"), spiffe("frontend", "web")]
        wait_for(lambda: all(any(c["identity"] == n and c["state"] == "valid"
                                 for c in json.loads(self.a.ctl("certs", "-o", "json").stdout)) for n in names),
                 timeout=20, what=f"certificates for {names}")
        self.traffic()

    def echo(self, workload=None):
        """One round trip to ledger from a workload of node a (plaintext from
        the node itself when workload is None)."""
        text = f"hello {uuid.uuid4().hex}"
        cgroup = self.nodes.cgroups.directory(workload) if workload else None
        result = self.topology.client(["probe", self.b_ip, LEDGER, text], cgroup=cgroup, timeout=60)
        return result["received"] == text

    def traffic(self):
        answers = http_exchange(self.topology, self.nodes.cgroups.directory("checkout"), self.b_ip, ORDERS, [request("GET", "/orders/17"), request("GET", "/orders/42"),
                                         request("POST", "/reserve"), request("DELETE", "/orders/17")])
        assert [a["status"] for a in answers] == [200, 200, 200, 403], answers
        assert self.echo("checkout"), "checkout may reach ledger"
        assert self.echo("checkout"), "checkout may reach ledger"
        assert not self.echo("frontend"), "frontend may not reach ledger"
        assert self.echo(None), "plaintext from the mesh network may reach ledger"

    def graph(self, agent, *args):
        return json.loads(agent.ctl("graph", "-o", "json", *args).stdout)["edges"]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("graph")
    nodes = TwoNodes(tmp, "graph")
    try:
        yield GraphMesh(nodes, tmp)
    finally:
        nodes.close()


def find(edges, **fields):
    found = [e for e in edges if all(e.get(k) == v for k, v in fields.items())]
    assert len(found) == 1, f"one edge with {fields}, got {found} among {json.dumps(edges, indent=1)}"
    return found[0]


def test_traffic_becomes_edges_with_the_access_logs_field_names(mesh):
    edges = mesh.graph(mesh.b)
    fields = {"src_identity", "src_addr", "dst_workload", "dst_identity", "dst_port", "protocol", "tls", "method",
              "path_template", "decision", "policy", "rule", "connections", "requests", "bytes_sent", "bytes_received",
              "first_seen", "last_seen"}
    assert all(fields <= set(e) for e in edges), edges
    gets = find(edges, src_identity=spiffe("checkout"), dst_workload="shop/orders", method="GET")
    assert gets["path_template"] == "/orders/{id}" and gets["requests"] == 2
    assert gets["decision"] == "allow" and gets["policy"] == "shop/orders-allow" and gets["rule"] == 0
    assert gets["tls"] == "mutual" and gets["protocol"] == "http" and gets["dst_port"] == ORDERS
    assert gets["dst_identity"] == spiffe("orders")
    assert find(edges, dst_workload="shop/orders", method="POST")["path_template"] == "/reserve"
    assert find(edges, dst_workload="shop/orders", method="DELETE")["decision"] == "deny"
    ledger = find(edges, src_identity=spiffe("checkout"), dst_workload="shop/ledger")
    assert ledger["connections"] == 2 and ledger["protocol"] == "tcp" and ledger["decision"] == "allow"
    assert ledger["bytes_sent"] > 0 and ledger["bytes_received"] > 0
    denied = find(edges, src_identity=spiffe("frontend", "web"), dst_workload="shop/ledger")
    assert denied["decision"] == "deny" and denied["policy"] is None
    plain = find(edges, src_identity=None, dst_workload="shop/ledger")
    assert plain["src_addr"] == mesh.topology.node_ip and plain["tls"] == "none" and plain["rule"] == 1
    # Node a decided nothing for a workload of its own: its graph has no edge.
    assert mesh.graph(mesh.a) == []


def test_the_table_filters_and_dot_show_the_same_graph(mesh):
    table = mesh.b.ctl("graph").stdout
    assert table.splitlines()[0].split()[:3] == ["SOURCE", "DESTINATION", "PORT"], table
    assert "shop/checkout" in table and "/orders/{id}" in table and "plaintext from" in table, table
    web = mesh.graph(mesh.b, "--namespace", "web")
    assert [e["src_identity"] for e in web] == [spiffe("frontend", "web")], web
    ledger = mesh.graph(mesh.b, "--workload", "ledger")
    assert ledger and all(e["dst_workload"] == "shop/ledger" for e in ledger), ledger
    assert mesh.graph(mesh.b, "--since", "1h") == mesh.graph(mesh.b), "everything happened within the hour"
    dot = mesh.b.ctl("graph", "-o", "dot").stdout
    assert dot.startswith("digraph mesh {"), dot
    assert '"shop/checkout" -> "shop/ledger"' in dot and "style=solid" in dot
    assert f'"plaintext from {mesh.topology.node_ip}" -> "shop/ledger"' in dot and "style=dashed" in dot
    refused = mesh.b.ctl("graph", "--since", "yesterday", check=False)
    assert refused.returncode != 0 and "--since \"yesterday\" is not a duration" in refused.stderr


def test_svg_is_valid_xml(mesh):
    svg = mesh.b.ctl("graph", "-o", "svg").stdout
    document = xml.dom.minidom.parseString(svg)
    assert document.documentElement.tagName == "svg"
    assert "shop/ledger" in svg


def test_merging_graphs_adds_the_same_edges(mesh, tmp_path):
    one = tmp_path / "b.json"
    one.write_text(mesh.b.ctl("graph", "-o", "json").stdout)
    merged = json.loads(agentctl("graph", "merge", one, one, "-o", "json").stdout)["edges"]
    single = json.loads(one.read_text())["edges"]
    assert len(merged) == len(single)
    ledger = find(merged, src_identity=spiffe("checkout"), dst_workload="shop/ledger")
    assert ledger["connections"] == 2 * find(single, src_identity=spiffe("checkout"), dst_workload="shop/ledger")["connections"]
    bad = tmp_path / "bad.json"
    bad.write_text('{"edges": [{"dst_workload": "x"}]}')
    refused = agentctl("graph", "merge", bad, check=False)
    assert refused.returncode == 1 and f"{bad}: not a graph document" in refused.stderr, refused.stderr


def test_suggest_for_the_cluster_takes_other_nodes_labels_from_their_workloads(mesh, tmp_path):
    graph = tmp_path / "cluster.json"
    graph.write_text(agentctl("graph", "merge", "-o", "json", write_json(tmp_path / "b.json", mesh.b.ctl("graph", "-o", "json").stdout)).stdout)
    # Node a runs neither orders nor ledger: without node b's workloads it can write nothing.
    alone = mesh.a.ctl("policy", "suggest", "--graph", graph, check=False)
    assert alone.returncode == 1 and "no policy for shop/orders" in alone.stderr, alone.stderr
    workloads = write_json(tmp_path / "b-workloads.json", mesh.b.ctl("workloads", "-o", "json").stdout)
    cluster = mesh.a.ctl("policy", "suggest", "--graph", graph, "--workloads", workloads).stdout
    assert cluster == mesh.b.ctl("policy", "suggest").stdout, "node b's labels, whichever node suggests"


def write_json(path, text):
    path.write_text(text)
    return path


def policies_in_force(agent):
    view = json.loads(agent.ctl("policies", "-o", "json").stdout)
    return view["generation"], {p["name"] for p in view["policies"]}


def apply(mesh, files):
    """Replaces node b's policies with `files` and waits until they are in force."""
    generation, _ = policies_in_force(mesh.b)
    for old in mesh.policies_b.iterdir():
        old.unlink()
    for name, text in files.items():
        (mesh.policies_b / name).write_text(text)
    names = {n for text in files.values() for n in re.findall(r"\bname: ([\w-]+)", text)}

    def applied():
        now, loaded = policies_in_force(mesh.b)
        return now > generation and loaded == names
    wait_for(applied, timeout=10, what=f"policies {names} in force")


def test_suggested_policies_pass_check_and_allow_exactly_what_was_seen(mesh, tmp_path):
    out = tmp_path / "suggested"
    written = mesh.b.ctl("policy", "suggest", "--out", out).stdout.split()
    assert sorted(Path(p).name for p in written) == ["shop-ledger.yaml", "shop-orders-strict.yaml", "shop-orders.yaml"], written
    checked = agentctl("policy", "check", out, check=False)
    assert checked.returncode == 0, checked.stderr
    orders = (out / "shop-orders.yaml").read_text()
    assert 'istio.io/dry-run: "true"' in orders and '"/orders/*"' in orders and '"DELETE"' not in orders, orders
    assert "notPrincipals" in (out / "shop-ledger.yaml").read_text(), "plaintext is allowed by address, without an identity"
    printed = mesh.b.ctl("policy", "suggest", "--workload", "orders").stdout
    assert printed == orders + "---\n" + (out / "shop-orders-strict.yaml").read_text(), "printed and written are the same policies"

    # Dry-run: nothing is blocked; a request outside what was seen is logged as one it would deny.
    suggested = {"orders.yaml": orders, "ledger.yaml": (out / "shop-ledger.yaml").read_text()}
    apply(mesh, suggested)
    marker = f"/orders/{uuid.uuid4().int % 10**9}"
    answers = http_exchange(mesh.topology, mesh.nodes.cgroups.directory("checkout"), mesh.b_ip, ORDERS,
                            [request("PUT", marker), request("GET", "/orders/5")])
    assert [a["status"] for a in answers] == [200, 200], answers
    would = mesh.b.find_entry(lambda e: e.get("method") == "PUT" and e.get("path") == marker, what="the dry-run line")
    # No rule of the dry-run ALLOW policy matches, so none is named as the one that would deny.
    assert would["action"] == "allow" and would["audit"] == "deny", would
    seen = mesh.b.find_entry(lambda e: e.get("method") == "GET" and e.get("path") == "/orders/5", what="an observed request")
    assert seen["audit"] == "allow" and seen["audit_policy"] == "shop/orders-observed", seen
    assert mesh.echo("frontend"), "dry-run blocks nobody"
    report = json.loads(mesh.b.ctl("policy", "report", "-o", "json").stdout)
    dry = [r for r in report["rules"] if r["policy"] == "shop/orders-observed"]
    assert all(r["dry_run"] for r in dry), dry
    assert [r["would_deny"] for r in dry if r["rule"] is None] == [1], dry
    assert sum(r["allowed"] for r in dry if r["rule"] is not None) >= 1, dry

    # Enforced: what was seen is allowed, the rest is refused.
    apply(mesh, {name: text.replace('  annotations:\n    istio.io/dry-run: "true"\n', "") for name, text in suggested.items()})
    answers = http_exchange(mesh.topology, mesh.nodes.cgroups.directory("checkout"), mesh.b_ip, ORDERS,
                            [request("GET", "/orders/99"), request("POST", "/reserve"), request("PUT", "/orders/1")])
    assert [a["status"] for a in answers] == [200, 200, 403], answers
    assert mesh.echo("checkout") and mesh.echo(None), "observed callers of ledger"
    assert not mesh.echo("frontend"), "a caller refused while observed stays refused"
    apply(mesh, {"shop.yaml": POLICIES})


def test_the_report_counts_per_rule_lists_unused_rules_and_strict_blockers(mesh):
    report = json.loads(mesh.b.ctl("policy", "report", "-o", "json").stdout)
    rules = {(r["policy"], r["rule"]): r for r in report["rules"]}
    orders = rules[("shop/orders-allow", 0)]
    assert orders["allowed"] >= 3 and orders["action"] == "ALLOW" and not orders["dry_run"] and not orders["unused"], orders
    assert orders["last_match"] is not None
    assert rules[("shop/ledger-callers", 0)]["allowed"] >= 2
    assert rules[("shop/ledger-callers", 1)]["allowed"] >= 1, "the plaintext rule"
    retired = rules[("shop/ledger-callers", 2)]
    assert retired["unused"] and retired["last_match"] is None and retired["allowed"] == 0, retired
    blockers = report["strict_blockers"]
    assert [(b["dst_workload"], b["src_addr"], b["dst_port"]) for b in blockers] == [("shop/ledger", mesh.topology.node_ip, LEDGER)], blockers
    table = mesh.b.ctl("policy", "report").stdout
    assert "unused" in table and "plaintext peers that STRICT would refuse" in table, table


def new_edge_metric(mesh, source_namespace, workload):
    metrics = mesh.topology.run_in(mesh.topology.remote, sys.executable, "-c",
                                   "import urllib.request; print(urllib.request.urlopen("
                                   "'http://127.0.0.1:15020/metrics', timeout=10).read().decode())").stdout
    for line in metrics.splitlines():
        if line.startswith("mesh_agent_new_edges_total{") and f'source_namespace="{source_namespace}"' in line \
                and f'destination_workload="{workload}"' in line:
            return float(line.split()[-1])
    return 0.0


def test_after_the_baseline_a_never_seen_edge_is_one_event_and_one_count(mesh):
    assert mesh.graph(mesh.b, "--new") == [], "still learning: nothing is new"
    mesh.b.ctl("graph", "baseline")
    assert mesh.graph(mesh.b, "--new") == []
    before = new_edge_metric(mesh, "web", "shop/orders")
    # frontend was refused at ledger before; now it tries orders, which it never talked to.
    for _ in range(2):
        answers = http_exchange(mesh.topology, mesh.nodes.cgroups.directory("frontend"), mesh.b_ip, ORDERS, [request("GET", "/orders/1")])
        # No rule names frontend, so the connection is refused before any request.
        assert answers[0]["status"] == "closed", answers
    wait_for(lambda: new_edge_metric(mesh, "web", "shop/orders") == before + 1, timeout=15, what="the new-edge count")
    events = [e for e in mesh.b.entries() if e.get("event") == "new_edge"]
    assert len(events) == 1, events
    event = events[0]
    assert event["src_identity"] == spiffe("frontend", "web") and event["dst_workload"] == "shop/orders" and event["dst_port"] == ORDERS
    assert event["decision"] == "deny" and "lateral movement" in event["reason"], event
    new = mesh.graph(mesh.b, "--new")
    assert {(e["src_identity"], e["dst_workload"]) for e in new} == {(spiffe("frontend", "web"), "shop/orders")}, new
    # Known from now on: more of the same is no new edge.
    http_exchange(mesh.topology, mesh.nodes.cgroups.directory("frontend"), mesh.b_ip, ORDERS, [request("GET", "/orders/2")])
    mesh.graph(mesh.b)  # flushes
    assert len([e for e in mesh.b.entries() if e.get("event") == "new_edge"]) == 1
    assert new_edge_metric(mesh, "web", "shop/orders") == before + 1


def test_a_grant_lets_a_caller_in_until_it_expires_and_then_closes_its_connection(mesh):
    assert not mesh.echo("frontend"), "frontend may not reach ledger without a grant"
    generation, _ = policies_in_force(mesh.b)
    smuggled = mesh.b.ctl("policy", "grant", "--from", spiffe("frontend", "web") + "\n---\nkind: AuthorizationPolicy", "--to", "ledger",
                          "--for", "1h", check=False)
    assert smuggled.returncode != 0 and "--from must be a SPIFFE ID" in smuggled.stderr, smuggled.stderr
    granted = mesh.b.ctl("policy", "grant", "--from", spiffe("frontend", "web"), "--to", "ledger", "--port", str(LEDGER), "--for", "8s").stdout
    assert "mesh-agent.io/expires:" in granted and f"# written to {mesh.policies_b}/" in granted, granted
    name = re.search(r"^  name: (\S+)$", granted, re.M).group(1)
    wait_for(lambda: policies_in_force(mesh.b)[0] > generation, timeout=10, what="the grant to be loaded")
    rows = {p["name"]: p for p in json.loads(mesh.b.ctl("policies", "-o", "json").stdout)["policies"]}
    assert 0 < rows[name]["seconds_left"] <= 8, rows[name]
    assert " left" in mesh.b.ctl("policies").stdout
    assert mesh.echo("frontend"), "the grant lets frontend in"
    holder = mesh.topology.spawn(mesh.topology.node, [sys.executable, str(TOOLS / "peer.py"), "hold", mesh.b_ip, str(LEDGER), "30"],
                                 cgroup=mesh.nodes.cgroups.directory("frontend"))
    try:
        out, _ = holder.communicate(timeout=40)
        assert not json.loads(out).get("ok", False), "the held connection outlived the grant"
        closed = mesh.b.find_entry(lambda e: e.get("src_identity") == spiffe("frontend", "web") and e.get("dst_workload") == "shop/ledger"
                                   and f"grant expired: shop/{name}" in e.get("reason", ""), what="the expiry's log line")
        assert closed["action"] == "deny", closed
    finally:
        if holder.poll() is None:
            holder.kill()
    assert not mesh.echo("frontend"), "expired: frontend is refused again, without a reload"
    rows = {p["name"]: p for p in json.loads(mesh.b.ctl("policies", "-o", "json").stdout)["policies"]}
    assert rows[name]["seconds_left"] == 0 and "expired" in mesh.b.ctl("policies").stdout
    report = json.loads(mesh.b.ctl("policy", "report", "-o", "json").stdout)
    assert [r["expired"] for r in report["rules"] if r["policy"] == f"shop/{name}"] == [True], report["rules"]
    (mesh.policies_b / f"{name}.yaml").unlink()


def test_a_restart_keeps_the_graph(mesh):
    before = mesh.graph(mesh.b)
    assert mesh.b.stop() == 0
    # start() waits for "ready" in the log: the first run's must not count.
    mesh.b.stderr_path.rename(mesh.b.stderr_path.with_suffix(".first"))
    mesh.b.start()
    after = mesh.graph(mesh.b)
    assert after == before


def test_a_damaged_database_is_reported_and_the_agent_keeps_proxying(two_nodes):
    nodes = two_nodes
    t = nodes.topology
    ledger = nodes.workload("ledger", namespace="shop", serviceAccount="ledger", ports=[LEDGER])
    t.server("echo", LEDGER, ns=t.remote, cgroup=nodes.cgroups.directory("ledger"))
    b = nodes.agent("b", [ledger], meshNetworks=MESH)
    b.graph_db.write_bytes(b"\x5a" * 8192)
    b.start()
    text = f"hello {uuid.uuid4().hex}"
    result = t.client(["probe", t.remote_ip, LEDGER, text], timeout=60)
    assert result["received"] == text, "the agent proxies without its graph"
    wait_for(lambda: "the service graph is not being recorded" in b.log(), timeout=10, what="the graph error in the log")
    assert f"graph database {b.graph_db}" in b.log() and "move it away" in b.log()
    refused = b.ctl("graph", check=False)
    assert refused.returncode == 1 and "the service graph is not available" in refused.stderr, refused.stderr
    metrics = t.run_in(t.remote, sys.executable, "-c",
                       "import urllib.request; print(urllib.request.urlopen("
                       "'http://127.0.0.1:15020/metrics', timeout=10).read().decode())").stdout
    errors = [line for line in metrics.splitlines() if line.startswith("mesh_agent_graph_errors_total ")]
    assert errors and float(errors[0].split()[1]) >= 1, errors


def test_with_graph_http_the_requests_no_policy_inspects_are_recorded_and_other_protocols_pass(two_nodes):
    """graph.http: true watches the requests of spliced connections (no L7
    policy here) for the graph only: no request lines in the access log, and
    a connection that is not HTTP goes through untouched."""
    nodes = two_nodes
    t = nodes.topology
    tmp = nodes.tmp
    b_workloads = [
        nodes.workload("orders", namespace="shop", serviceAccount="orders", ports=[ORDERS]),
        nodes.workload("ledger", namespace="shop", serviceAccount="ledger", ports=[LEDGER]),
    ]
    t.serve(t.remote, [sys.executable, str(HTTP_PEER), "serve", str(ORDERS), str(tmp / "orders-requests-http")],
            cgroup=nodes.cgroups.directory("orders"), what="the orders server")
    t.server("echo", LEDGER, ns=t.remote, cgroup=nodes.cgroups.directory("ledger"))
    policies = tmp / "policies-http"
    policies.mkdir()
    (policies / "orders.yaml").write_text(f"""\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: orders-l4, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: orders}}}}
  rules:
  - from: [{{source: {{principals: ["{principal('checkout')}"]}}}}]
""")
    b_workloads[0]["labels"] = {"app": "orders"}
    b = nodes.agent("b", b_workloads, meshNetworks=MESH, policyDir=policies, graph={"http": True}).start()
    a = nodes.agent("a", [nodes.workload("checkout", namespace="shop", serviceAccount="checkout")], meshNetworks=MESH).start()
    wait_for(lambda: any(c["identity"] == spiffe("checkout") and c["state"] == "valid"
                         for c in json.loads(a.ctl("certs", "-o", "json").stdout)), timeout=20, what="checkout's certificate")
    checkout = nodes.cgroups.directory("checkout")
    answers = http_exchange(t, checkout, t.remote_ip, ORDERS,
                            [request("GET", "/orders/17"), request("GET", "/orders/42?x=1"), request("POST", "/reserve")])
    assert [answer["status"] for answer in answers] == [200, 200, 200], answers
    text = f"GET-like but not HTTP {uuid.uuid4().hex}"
    assert t.client(["probe", t.remote_ip, LEDGER, text], cgroup=checkout, timeout=60)["received"] == text

    def graph():
        return json.loads(b.ctl("graph", "-o", "json").stdout)["edges"]
    # Connections count when they close, which the agents see a moment after the clients.
    wait_for(lambda: sum(e["connections"] for e in graph()) == 2, timeout=10, what="both connections in b's graph")
    edges = graph()
    gets = find(edges, dst_workload="shop/orders", method="GET")
    assert gets["path_template"] == "/orders/{id}" and gets["requests"] == 2 and gets["protocol"] == "http", gets
    assert gets["src_identity"] == spiffe("checkout") and gets["decision"] == "allow" and gets["tls"] == "mutual"
    assert find(edges, dst_workload="shop/orders", method="POST")["path_template"] == "/reserve"
    # The L4 rule decided the connection; no rule decided its requests.
    assert gets["policy"] is None and gets["rule"] is None, gets
    connection = find(edges, dst_workload="shop/orders", method=None)
    assert connection["connections"] == 1 and connection["policy"] == "shop/orders-l4" and connection["rule"] == 0, connection
    ledger = find(edges, dst_workload="shop/ledger")
    assert ledger["method"] is None and ledger["connections"] == 1 and ledger["bytes_received"] > 0
    # The graph only: the access log has the connections, not the requests.
    lines = b.entries()
    assert any(line.get("dst_workload") == "shop/orders" for line in lines), lines
    assert [line for line in lines if line.get("method")] == [], lines
