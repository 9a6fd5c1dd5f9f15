"""Authorization policy end to end, on two nodes with an agent each: Istio
AuthorizationPolicy files enforced per connection (L4) and per HTTP request
(L7) by the destination's agent, and on the same-node path by the source's.

Node "a" runs the callers (checkout, reporting, frontend) and one server of
its own (cart, for the same-node path); node "b" runs the servers: orders (an
HTTP server whose policies name methods and paths) and ledger (a TCP echo
server with an L4-only policy). Every server records what reached it, so a test
can show that a refused connection or request never got there.
"""
import datetime
import json
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from conftest import TwoNodes, agentctl, http_exchange, principal, spiffe, wait_for

TOOLS = Path(__file__).resolve().parent / "tools"
HTTP_PEER = TOOLS / "http_peer.py"
MESH = ["10.77.0.0/16", "fd77::/64"]
ORDERS, LEDGER, CART, PROFILE, INVENTORY = 8080, 8090, 8095, 8085, 8070
GRPC = TOOLS / "grpc_echo.py"
ISSUER = "https://issuer.example"
sys.path.insert(0, str(TOOLS))
import jwt  # noqa: E402


def request(method, path, headers=None, body=b"", host="orders.shop"):
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return "\r\n".join(lines) + "\r\n\r\n" + body.decode("latin-1")


ORDERS_POLICIES = f"""\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: orders-allow, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: orders}}}}
  action: ALLOW
  rules:
  - from: [{{source: {{principals: ["{principal('checkout')}"]}}}}]
    to:
    - operation: {{methods: ["POST"], paths: ["/reserve"]}}
    - operation: {{methods: ["GET", "HEAD"], paths: ["/orders/*", "/admin*", "/public/*"]}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: orders-no-admin, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: orders}}}}
  action: DENY
  rules:
  - to: [{{operation: {{paths: ["/admin", "/admin/*"]}}}}]
"""

LEDGER_POLICIES = f"""\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: ledger-callers, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: ledger}}}}
  rules:
  - from: [{{source: {{principals: ["{principal('checkout')}", "{principal('frontend', 'web')}"]}}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: ledger-no-web, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: ledger}}}}
  action: DENY
  rules:
  - from: [{{source: {{namespaces: ["web"]}}}}]
"""

INVENTORY_POLICY = f"""\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: inventory-reserve, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: inventory}}}}
  rules:
  - from: [{{source: {{principals: ["{principal('checkout')}"]}}}}]
    to: [{{operation: {{methods: ["POST"], paths: ["/shop.Inventory/Reserve", "/shop.Inventory/Get*"]}}}}]
"""


def profile_policies(jwks_path):
    return f"""\
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: profile-jwt, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: profile}}}}
  jwtRules:
  - issuer: "{ISSUER}"
    audiences: ["shop"]
    jwksUri: "{jwks_path}"
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: profile-users, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: profile}}}}
  rules:
  - from: [{{source: {{requestPrincipals: ["{ISSUER}/*"]}}}}]
    to: [{{operation: {{paths: ["/me"]}}}}]
  - to: [{{operation: {{paths: ["/ops/*"]}}}}]
    when: [{{key: "request.auth.claims[groups]", values: ["ops"]}}]
  - to: [{{operation: {{paths: ["/public"]}}}}]
"""


CART_POLICY = f"""\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: cart-reporting-only, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: cart}}}}
  rules:
  - from: [{{source: {{principals: ["{principal('reporting')}"]}}}}]
"""


class PolicyMesh:
    def __init__(self, nodes, tmp):
        self.nodes = nodes
        self.topology = nodes.topology
        t = self.topology
        self.b_ip = t.remote_ip
        self.a_ip = t.node_ip
        self.a_workloads = [
            nodes.workload("checkout", namespace="shop", serviceAccount="checkout"),
            nodes.workload("reporting", namespace="shop", serviceAccount="reporting"),
            nodes.workload("frontend", namespace="web", serviceAccount="frontend"),
            nodes.workload("cart", namespace="shop", serviceAccount="cart", labels={"app": "cart"}, ports=[CART]),
        ]
        self.b_workloads = [
            nodes.workload("orders", namespace="shop", serviceAccount="orders", labels={"app": "orders"}, ports=[ORDERS]),
            nodes.workload("ledger", namespace="shop", serviceAccount="ledger", labels={"app": "ledger"}, ports=[LEDGER]),
            nodes.workload("profile", namespace="shop", serviceAccount="profile", labels={"app": "profile"}, ports=[PROFILE]),
            nodes.workload("inventory", namespace="shop", serviceAccount="inventory", labels={"app": "inventory"}, ports=[INVENTORY]),
        ]
        self.policies_a = tmp / "policies-a"
        self.policies_b = tmp / "policies-b"
        self.policies_a.mkdir()
        self.policies_b.mkdir()
        (self.policies_b / "orders.yaml").write_text(ORDERS_POLICIES)
        (self.policies_b / "ledger.yaml").write_text(LEDGER_POLICIES)
        (self.policies_a / "cart.yaml").write_text(CART_POLICY)
        self.signing = {"rsa": jwt.rsa_key(), "ec": jwt.ec_key(), "ed": jwt.ed25519_key()}
        self.jwks = tmp / "jwks.json"
        jwt.write_jwks(self.jwks, [(self.signing["rsa"], "rsa-1"), (self.signing["ec"], "ec-1"), (self.signing["ed"], "ed-1")])
        (self.policies_b / "profile.yaml").write_text(profile_policies(self.jwks))
        (self.policies_b / "inventory.yaml").write_text(INVENTORY_POLICY)
        # ledger also takes plaintext from outside the mesh, where policy sees no identity.
        (self.policies_b / "ledger-permissive.yaml").write_text(
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: ledger, namespace: shop}\n"
            "spec: {selector: {matchLabels: {app: ledger}}, mtls: {mode: PERMISSIVE}}\n")

        self.orders_record = tmp / "orders-requests"
        self.ledger_record = tmp / "ledger-accepted"
        self.cart_record = tmp / "cart-accepted"
        t.serve(t.remote, [sys.executable, str(HTTP_PEER), "serve", str(ORDERS), str(self.orders_record)],
                cgroup=nodes.cgroups.directory("orders"), what="the orders server")
        t.server("echo", LEDGER, ns=t.remote, cgroup=nodes.cgroups.directory("ledger"), record=self.ledger_record)
        self.inventory_record = tmp / "inventory-calls"
        t.serve(t.remote, [sys.executable, str(GRPC), "serve", str(INVENTORY), str(self.inventory_record)],
                cgroup=nodes.cgroups.directory("inventory"), what="the inventory server")
        self.profile_record = tmp / "profile-requests"
        t.serve(t.remote, [sys.executable, str(HTTP_PEER), "serve", str(PROFILE), str(self.profile_record)],
                cgroup=nodes.cgroups.directory("profile"), what="the profile server")
        t.server("echo", CART, ns=t.node, cgroup=nodes.cgroups.directory("cart"), record=self.cart_record)

        self.b = nodes.agent("b", self.b_workloads, meshNetworks=MESH, policyDir=self.policies_b, mtlsMode="STRICT").start()
        self.a = nodes.agent("a", self.a_workloads, meshNetworks=MESH, policyDir=self.policies_a).start()
        for agent, names in ((self.a, [spiffe("checkout"), spiffe("reporting"), spiffe("frontend", "web")]),
                             (self.b, [spiffe("orders")])):
            wait_for(lambda: all(any(c["identity"] == n and c["state"] == "valid"
                                     for c in json.loads(agent.ctl("certs", "-o", "json").stdout)) for n in names),
                     timeout=20, what=f"certificates for {names}")

    def http(self, workload, requests, port=ORDERS, host=None, pipeline=False):
        """Raw HTTP/1.1 requests on one connection from a workload of node a."""
        return http_exchange(self.topology, self.nodes.cgroups.directory(workload), host or self.b_ip, port, requests, pipeline=pipeline)

    def echo(self, workload, port, host=None):
        """One round trip to an echo server; "outcome" is "echoed" when the bytes came back."""
        text = f"hello {uuid.uuid4().hex}"
        result = self.topology.client(["probe", host or self.b_ip, port, text], cgroup=self.nodes.cgroups.directory(workload), timeout=60)
        result["outcome"] = "echoed" if result["received"] == text else (result["error"] or "nothing")
        return result

    def hold(self, workload, host, port, agent, dst_workload):
        """A connection from `workload` kept open for 30 s with a round trip
        every 50 ms; returns its process once `agent` lists it with bytes."""
        holder = self.topology.spawn(self.topology.node, [sys.executable, str(TOOLS / "peer.py"), "hold", host, str(port), "30"],
                                     cgroup=self.nodes.cgroups.directory(workload))
        wait_for(lambda: any(e.get("src_identity") == spiffe(workload) and e.get("dst_workload") == dst_workload and e["bytes_received"] > 0
                             for e in json.loads(agent.ctl("connections", "-o", "json").stdout)),
                 timeout=10, what=f"the held {dst_workload} connection, with its bytes counted")
        return holder

    def arrived(self):
        """The requests that reached the orders server."""
        if not self.orders_record.exists():
            return []
        return [json.loads(line) for line in self.orders_record.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("policy")
    nodes = TwoNodes(tmp, "policy")
    try:
        yield PolicyMesh(nodes, tmp)
    finally:
        nodes.close()


def marker():
    return uuid.uuid4().hex[:12]


# ---------------------------------------------------------------- L7


def test_a_permitted_caller_reaches_its_method_and_path(mesh):
    tag = marker()
    answers = mesh.http("checkout", [request("POST", f"/reserve", {"x-tag": tag}, body=b"item=42"),
                                     request("GET", f"/orders/{tag}")])
    assert [a["status"] for a in answers] == [200, 200]
    assert json.loads(answers[1]["body"]) == {"method": "GET", "path": f"/orders/{tag}"}
    arrived = [r for r in mesh.arrived() if r["path"] in ("/reserve", f"/orders/{tag}")]
    assert any(r["method"] == "POST" and r["body"] == 7 and ["x-tag", tag] in r["headers"] for r in arrived)
    entry = mesh.b.find_entry(lambda e: e.get("path") == f"/orders/{tag}", what="the request's log line")
    assert entry["protocol"] == "http" and entry["method"] == "GET" and entry["status"] == 200
    assert entry["action"] == "allow" and entry["policy"] == "shop/orders-allow"
    assert entry["src_identity"] == spiffe("checkout") and entry["tls"] == "mutual"


def test_a_forbidden_method_or_path_gets_403_and_the_connection_stays_usable(mesh):
    tag = marker()
    answers = mesh.http("checkout", [
        request("GET", f"/reserve?tag={tag}"),          # wrong method
        request("POST", f"/orders/{tag}"),             # wrong method for this path
        request("GET", f"/secret/{tag}"),              # path no rule allows
        request("GET", f"/orders/{tag}"),              # still served on the same connection
    ])
    assert [a["status"] for a in answers] == [403, 403, 403, 200]
    assert answers[0]["body"] == "RBAC: access denied"
    paths = [r["path"] for r in mesh.arrived()]
    assert f"/secret/{tag}" not in paths and f"/reserve?tag={tag}" not in paths
    assert paths.count(f"/orders/{tag}") == 1
    denied = mesh.b.find_entry(lambda e: e.get("path") == f"/secret/{tag}", what="the refused request's log line")
    assert denied["action"] == "deny" and denied["status"] == 403 and denied["method"] == "GET"
    assert "no ALLOW policy matched" in denied["reason"]


def test_with_requests_denied_only_refused_requests_get_a_line(mesh):
    """`accessLog.requests: denied`, applied by a reload: the refused request
    and the connection are logged, the allowed request is not; `all` again
    brings its lines back."""
    try:
        mesh.b.write_config(mesh.b_workloads, accessLogRequests="denied")
        mesh.b.ctl("reload")
        tag = marker()
        since = len(mesh.b.entries())
        answers = mesh.http("checkout", [request("GET", f"/orders/{tag}"), request("GET", f"/secret/{tag}")])
        assert [a["status"] for a in answers] == [200, 403]
        refused = mesh.b.find_entry(lambda e: e.get("path") == f"/secret/{tag}", since=since, what="the refused request's line")
        # The connection's own line comes after every request line it carried.
        mesh.b.find_entry(lambda e: e.get("protocol") == "http" and "method" not in e and e.get("src_addr") == refused["src_addr"],
                          since=since, what="the inspected connection's line")
        assert not [e for e in mesh.b.entries()[since:] if e.get("path") == f"/orders/{tag}"], "an allowed request was logged"
    finally:
        mesh.b.write_config(mesh.b_workloads)
        mesh.b.ctl("reload")
    tag = marker()
    assert [a["status"] for a in mesh.http("checkout", [request("GET", f"/orders/{tag}")])] == [200]
    mesh.b.find_entry(lambda e: e.get("path") == f"/orders/{tag}", what="the allowed request's line after requests: all")


def test_pipelined_requests_are_answered_in_order(mesh):
    tag = marker()
    answers = mesh.http("checkout", [request("GET", f"/orders/{tag}-1"), request("DELETE", f"/orders/{tag}-2"),
                                     request("GET", f"/orders/{tag}-3")], pipeline=True)
    assert [a["status"] for a in answers] == [200, 403, 200]
    assert json.loads(answers[2]["body"])["path"] == f"/orders/{tag}-3"


@pytest.mark.parametrize("path", [
    "/admin", "/admin/users", "/%61dmin", "/%61%64%6d%69%6e/users", "//admin", "/./admin", "/public/../admin",
    "/public/%2e%2e/admin", "/orders/../admin/users", "/admin/./users", "/admin?x=1",
])
def test_path_normalization_variants_of_a_forbidden_path_are_still_forbidden(mesh, path):
    answers = mesh.http("checkout", [request("GET", path)])
    assert answers[0]["status"] == 403, answers
    assert not any(r["path"].lower().lstrip("/").startswith(("admin", "%61")) for r in mesh.arrived())


@pytest.mark.parametrize("path", ["/admin%2Fusers", "/admin%5cusers", "/admin\\users", "/admin%zz", "/admin#x", "http://orders/admin"])
def test_ambiguous_paths_are_refused_with_400(mesh, path):
    answers = mesh.http("checkout", [request("GET", path)])
    assert answers[0]["status"] == 400, answers


def test_the_workload_sees_the_normalized_path(mesh):
    tag = marker()
    answers = mesh.http("checkout", [request("GET", f"/public/../orders/./{tag}//x")])
    assert answers[0]["status"] == 200
    assert json.loads(answers[0]["body"])["path"] == f"/orders/{tag}/x"


@pytest.mark.parametrize("raw", [
    "POST /reserve HTTP/1.1\r\nHost: o\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "POST /reserve HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    "POST /reserve HTTP/1.1\r\nHost: o\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    "GET /orders/x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "GET /orders/x HTTP/1.1\r\n\r\n",
    "GET /orders/x HTTP/1.1\r\nHost: o\r\nX-Long: " + "a" * 70000 + "\r\n\r\n",
])
def test_ambiguous_or_malformed_requests_are_refused_never_forwarded(mesh, raw):
    before = len(mesh.arrived())
    answers = mesh.http("checkout", [raw, request("GET", "/orders/after")])
    assert answers[0]["status"] in (400, 431, 501), answers
    # The connection is closed after the refusal: where the next request begins is in doubt.
    assert answers[1]["status"] == "closed"
    assert len(mesh.arrived()) == before


@pytest.mark.parametrize("raw,status", [
    ("GET /\r\n", 505),                                    # HTTP/0.9: no version, no headers, then silence
    ("GET /\r\n\r\n", 505),
    ("GET /orders/x HTTP/0.9\r\nHost: o\r\n\r\n", 505),
    ("GET /orders/x HTTP/1.1\r\nHost: o\r\nContent-Length: 99999999999999999999\r\n\r\n", 400),
    ("POST /orders/x HTTP/1.1\r\nHost: o\r\nContent-Length: -1\r\n\r\n", 400),
    ("GET /orders/x HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    ("GET /orders/x HTTP/1.1\r\nHost o\r\n\r\n", 400),
])
def test_a_request_the_agent_will_not_forward_is_answered_at_once(mesh, raw, status):
    """The client gets its answer as soon as the agent knows it will refuse,
    not when a timeout runs out: the request is sent, and nothing more."""
    before = len(mesh.arrived())
    answers = mesh.http("checkout", [raw])
    assert answers[0]["status"] == status, answers
    assert answers[0]["seconds"] < 2, f"the refusal took {answers[0]['seconds']:.1f}s: {answers}"
    assert len(mesh.arrived()) == before


def test_path_parameters_are_refused_stripped_or_kept_as_configured(mesh):
    """A DENY on /admin/* and a workload framework that drops ';' parameters:
    reject (the default) answers 400, strip decides and forwards the path
    without them (403 here), keep matches them as sent (Istio's way, the
    bypass the other two close)."""
    path = "/admin;jsessionid=1/panel"
    refused = mesh.http("checkout", [request("GET", path)])[0]
    assert refused["status"] == 400 and "pathParameters" in refused["body"], refused
    before = len(mesh.arrived())
    try:
        for mode, status in (("strip", 403), ("keep", 200)):
            mesh.b.write_config(mesh.b_workloads, http={"pathParameters": mode})
            assert "reloaded" in mesh.b.ctl("reload").stdout
            answer = mesh.http("checkout", [request("GET", path)])[0]
            assert answer["status"] == status, f"{mode}: {answer}"
        assert [r["path"] for r in mesh.arrived()[before:]] == [path], "only keep forwards the parameters, as sent"
    finally:
        mesh.b.write_config(mesh.b_workloads)
        assert "reloaded" in mesh.b.ctl("reload").stdout
    assert mesh.http("checkout", [request("GET", path)])[0]["status"] == 400


# ---------------------------------------------------------------- gRPC


def grpc_call(mesh, workload, path, message):
    proc = mesh.topology.spawn(mesh.topology.node, [sys.executable, str(GRPC), "call", mesh.b_ip, str(INVENTORY), path, message],
                               cgroup=mesh.nodes.cgroups.directory(workload))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, f"grpc client failed: {err}"
    return json.loads(out)


def test_grpc_over_http2_is_allowed_and_denied_per_method_path(mesh):
    tag = marker()
    allowed = grpc_call(mesh, "checkout", "/shop.Inventory/Reserve", f"reserve {tag}")
    assert allowed["status"] == 200 and str(allowed["grpc_status"]) == "0" and f"reserve {tag}" in allowed["body"], allowed
    prefix = grpc_call(mesh, "checkout", "/shop.Inventory/GetStock", f"get {tag}")
    assert prefix["status"] == 200, prefix
    denied = grpc_call(mesh, "checkout", "/shop.Inventory/Delete", f"delete {tag}")
    assert denied["status"] == 403 and "RBAC: access denied" in denied["body"], denied
    calls = mesh.inventory_record.read_text()
    assert f"reserve {tag}" in calls or "/shop.Inventory/Reserve" in calls
    assert "/shop.Inventory/Delete" not in calls
    entry = mesh.b.find_entry(lambda e: e.get("path") == "/shop.Inventory/Delete" and e.get("status") == 403, what="the denied call's line")
    assert entry["action"] == "deny" and entry["method"] == "POST" and entry["src_identity"] == spiffe("checkout")
    ok = mesh.b.find_entry(lambda e: e.get("path") == "/shop.Inventory/Reserve" and e.get("status") == 200, what="the allowed call's line")
    assert ok["policy"] == "shop/inventory-reserve"
    # Another caller is refused when it connects: no HTTP/2 exchange at all.
    other = mesh.topology.spawn(mesh.topology.node, [sys.executable, str(GRPC), "call", mesh.b_ip, str(INVENTORY), "/shop.Inventory/Reserve", "x"],
                                cgroup=mesh.nodes.cgroups.directory("reporting"))
    other.communicate(timeout=60)
    refused = mesh.b.find_entry(lambda e: e.get("dst_workload") == "shop/inventory" and e.get("src_identity") == spiffe("reporting"),
                                what="reporting's refusal")
    assert refused["action"] == "deny" and refused.get("protocol") == "tcp"


# ---------------------------------------------------------------- JWT


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def token_cases(mesh):
    rsa, ec, ed = mesh.signing["rsa"], mesh.signing["ec"], mesh.signing["ed"]
    good = jwt.claims(ISSUER, "alice", aud="shop")
    other_key = jwt.rsa_key()
    return {
        "valid RS256": (jwt.mint(rsa, good, alg="RS256", kid="rsa-1"), 200),
        "valid ES256": (jwt.mint(ec, good, alg="ES256", kid="ec-1"), 200),
        "valid EdDSA": (jwt.mint(ed, good, alg="EdDSA", kid="ed-1"), 200),
        "expired": (jwt.mint(rsa, jwt.claims(ISSUER, "alice", aud="shop", lifetime=-600), kid="rsa-1"), 401),
        "not yet valid": (jwt.mint(rsa, {**good, "nbf": int(time.time()) + 3600}, kid="rsa-1"), 401),
        "wrong issuer": (jwt.mint(rsa, jwt.claims("https://evil.example", "alice", aud="shop"), kid="rsa-1"), 401),
        "wrong audience": (jwt.mint(rsa, jwt.claims(ISSUER, "alice", aud="billing"), kid="rsa-1"), 401),
        "bad signature": (jwt.tamper(jwt.mint(rsa, good, kid="rsa-1")), 401),
        "signed by another key": (jwt.mint(other_key, good, kid="rsa-1"), 401),
        "unknown kid": (jwt.mint(rsa, good, kid="rsa-9"), 401),
        "alg none": (jwt.forge_none(good), 401),
        "HS256 keyed with the public key": (jwt.forge_hs256(good, jwt.rsa_modulus(rsa), kid="rsa-1"), 401),
        "garbage": ("not.a.token", 401),
    }


CASES = ["valid RS256", "valid ES256", "valid EdDSA", "expired", "not yet valid", "wrong issuer", "wrong audience",
         "bad signature", "signed by another key", "unknown kid", "alg none", "HS256 keyed with the public key", "garbage"]


@pytest.mark.parametrize("case", CASES)
def test_jwt_cases_behave_as_specified(mesh, case):
    token, expected = token_cases(mesh)[case]
    tag = marker()
    logged_before = len(mesh.b.entries())
    answers = mesh.http("reporting", [request("GET", f"/me?tag={tag}", bearer(token), host="profile.shop")], port=PROFILE)
    assert answers[0]["status"] == expected, (case, answers)
    arrived = mesh.profile_record.read_text() if mesh.profile_record.exists() else ""
    assert (tag in arrived) == (expected == 200)
    # This case's own line: the first request line logged after it was sent.
    entry = mesh.b.find_entry(lambda e: e.get("path") == "/me" and e.get("src_identity") == spiffe("reporting"),
                              since=logged_before, what=f"the {case} line")
    assert entry["status"] == expected, entry
    if expected == 200:
        assert entry["request_principal"] == f"{ISSUER}/alice" and entry["policy"] == "shop/profile-users"
        # The token was consumed here: the workload does not receive it (forwardOriginalToken is false).
        request_line = [json.loads(line) for line in arrived.splitlines() if tag in line][0]
        assert not any(name == "authorization" for name, _ in request_line["headers"])
    else:
        assert entry["action"] == "deny"


def test_without_a_token_there_is_no_request_principal(mesh):
    answers = mesh.http("reporting", [request("GET", "/me", host="profile.shop"), request("GET", "/public", host="profile.shop")], port=PROFILE)
    assert [a["status"] for a in answers] == [403, 200]


def test_claims_are_usable_in_authorization_policy(mesh):
    rsa = mesh.signing["rsa"]
    ops = jwt.mint(rsa, jwt.claims(ISSUER, "bob", aud="shop", groups=["dev", "ops"]), kid="rsa-1")
    dev = jwt.mint(rsa, jwt.claims(ISSUER, "carol", aud="shop", groups=["dev"]), kid="rsa-1")
    answers = mesh.http("reporting", [request("GET", "/ops/deploy", bearer(ops), host="profile.shop"),
                                      request("GET", "/ops/deploy", bearer(dev), host="profile.shop")], port=PROFILE)
    assert [a["status"] for a in answers] == [200, 403]
    explained = json.loads(mesh.b.ctl("policy", "explain", "--from-workload", "orders", "--to-workload", "profile", "--port", str(PROFILE),
                                      "--method", "GET", "--path", "/ops/x", "--jwt", ops, "-o", "json").stdout)
    assert explained["decision"] == "allow" and explained["request_principal"] == f"{ISSUER}/bob"
    forged = json.loads(mesh.b.ctl("policy", "explain", "--to-workload", "profile", "--from", spiffe("checkout"), "--port", str(PROFILE),
                                   "--method", "GET", "--path", "/ops/x", "--jwt", jwt.forge_none(jwt.claims(ISSUER, "eve", aud="shop")),
                                   "-o", "json").stdout)
    assert forged["decision"] == "deny" and "401" in forged["reason"]


def test_a_rotated_jwks_file_is_picked_up(mesh):
    new_key = jwt.rsa_key()
    token = jwt.mint(new_key, jwt.claims(ISSUER, "dave", aud="shop"), kid="rsa-2")
    assert mesh.http("reporting", [request("GET", "/me", bearer(token), host="profile.shop")], port=PROFILE)[0]["status"] == 401
    original = mesh.jwks.read_text()
    jwt.write_jwks(mesh.jwks, [(mesh.signing["rsa"], "rsa-1"), (mesh.signing["ec"], "ec-1"), (mesh.signing["ed"], "ed-1"), (new_key, "rsa-2")])
    try:
        wait_for(lambda: mesh.http("reporting", [request("GET", "/me", bearer(token), host="profile.shop")], port=PROFILE)[0]["status"] == 200,
                 timeout=5, interval=0.2, what="the new key to be accepted")
    finally:
        mesh.jwks.write_text(original)


# ---------------------------------------------------------------- L4


def test_a_second_workload_is_refused_at_l4_before_any_byte_reaches_it(mesh):
    accepted_before = mesh.ledger_record.read_text().count("accepted") if mesh.ledger_record.exists() else 0
    allowed = mesh.echo("checkout", LEDGER)
    assert allowed["outcome"] == "echoed", allowed
    refused = mesh.echo("reporting", LEDGER)
    assert refused["outcome"] != "echoed", refused
    denied = mesh.echo("frontend", LEDGER)
    assert denied["outcome"] != "echoed", denied
    accepted = mesh.ledger_record.read_text().count("accepted")
    assert accepted == accepted_before + 1, "only the permitted caller's connection may reach the workload"
    no_allow = mesh.b.find_entry(lambda e: e.get("src_identity") == spiffe("reporting") and e.get("dst_workload") == "shop/ledger",
                                 what="reporting's refusal")
    assert no_allow["action"] == "deny" and no_allow["policy"] is None and "no ALLOW policy matched" in no_allow["reason"]
    by_deny = mesh.b.find_entry(lambda e: e.get("src_identity") == spiffe("frontend", "web") and e.get("dst_workload") == "shop/ledger",
                                what="frontend's refusal")
    assert by_deny["action"] == "deny" and by_deny["policy"] == "shop/ledger-no-web"
    source_side = mesh.a.find_entry(lambda e: e.get("direction") == "outbound" and e.get("src_identity") == spiffe("reporting")
                                    and e.get("dst_addr", "").endswith(f":{LEDGER}"), what="the source agent's line")
    assert source_side["action"] == "deny" and "status 403" in source_side["reason"]


def test_plaintext_is_decided_without_an_identity(mesh):
    accepted_before = mesh.ledger_record.read_text().count("accepted")
    text = f"plain {uuid.uuid4().hex}"
    result = mesh.topology.client(["probe", mesh.b_ip, LEDGER, text], timeout=60)
    assert result["received"] != text, result
    assert mesh.ledger_record.read_text().count("accepted") == accepted_before
    entry = mesh.b.find_entry(lambda e: e.get("tls") == "none" and e.get("dst_workload") == "shop/ledger", what="the plaintext refusal")
    assert entry["action"] == "deny" and entry["src_identity"] is None and "no ALLOW policy matched" in entry["reason"]


def test_same_node_connections_are_decided_by_the_destinations_policy(mesh):
    refused = mesh.echo("checkout", CART, host=mesh.a_ip)
    assert refused["outcome"] != "echoed", refused
    allowed = mesh.echo("reporting", CART, host=mesh.a_ip)
    assert allowed["outcome"] == "echoed", allowed
    entry = mesh.a.find_entry(lambda e: e.get("src_identity") == spiffe("checkout") and e.get("dst_workload") == "shop/cart",
                              what="the same-node refusal")
    assert entry["action"] == "deny" and entry["reason"].startswith("no ALLOW policy matched")


# ---------------------------------------------------------------- reload


def test_a_policy_change_takes_effect_within_two_seconds_and_revokes_open_connections(mesh):
    tag = marker()
    assert mesh.http("checkout", [request("GET", f"/orders/{tag}")])[0]["status"] == 200
    holder = mesh.hold("checkout", mesh.b_ip, LEDGER, mesh.b, "shop/ledger")
    generation = json.loads(mesh.b.ctl("policies", "-o", "json").stdout)["generation"]
    deny = mesh.policies_b / "zz-revoke.yaml"
    deny.write_text(f"""\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: revoke-checkout, namespace: shop}}
spec:
  action: DENY
  rules:
  - from: [{{source: {{principals: ["{principal('checkout')}"]}}}}]
    to: [{{operation: {{ports: ["{LEDGER}"]}}}}]
  - to: [{{operation: {{paths: ["/orders/{tag}"]}}}}]
""")
    written = time.monotonic()
    try:
        wait_for(lambda: mesh.http("checkout", [request("GET", f"/orders/{tag}")])[0]["status"] == 403,
                 timeout=10, interval=0.1, what="the new DENY to apply")
        took = time.monotonic() - written
        assert took <= 2.0, f"the policy change took {took:.2f}s"
        out, _ = holder.communicate(timeout=40)
        result = json.loads(out)
        assert not result.get("ok", False), f"the open connection outlived the revocation: {result}"
        revoked = mesh.b.find_entry(lambda e: e.get("src_identity") == spiffe("checkout") and e.get("dst_workload") == "shop/ledger"
                                    and "closed after a policy reload" in e.get("reason", ""), what="the revocation's log line")
        assert revoked["action"] == "deny" and revoked["policy"] == "shop/revoke-checkout"
        assert json.loads(mesh.b.ctl("policies", "-o", "json").stdout)["generation"] > generation
    finally:
        deny.unlink()
        if holder.poll() is None:
            holder.kill()
    wait_for(lambda: mesh.http("checkout", [request("GET", f"/orders/{tag}")])[0]["status"] == 200,
             timeout=10, what="the DENY to be lifted")


def test_a_revocation_closes_a_same_node_connection_the_kernel_splices(mesh):
    """Same-node connections with an L4 policy are relayed by the kernel, not
    the event loops; a reload must still find and close them."""
    holder = mesh.hold("reporting", mesh.a_ip, CART, mesh.a, "shop/cart")
    metrics = mesh.a.metrics()
    assert 'mesh_agent_kernel_splices_total{result="spliced"}' in metrics, [m for m in metrics.splitlines() if "splice" in m]
    deny = mesh.policies_a / "zz-revoke-reporting.yaml"
    deny.write_text(f"""\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: revoke-reporting, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: cart}}}}
  action: DENY
  rules:
  - from: [{{source: {{principals: ["{principal('reporting')}"]}}}}]
""")
    try:
        out, _ = holder.communicate(timeout=40)
        result = json.loads(out)
        assert not result.get("ok", False), f"the spliced connection outlived the revocation: {result}"
        revoked = mesh.a.find_entry(lambda e: e.get("src_identity") == spiffe("reporting") and e.get("dst_workload") == "shop/cart"
                                    and "closed after a policy reload" in e.get("reason", ""), what="the revocation's log line")
        assert revoked["action"] == "deny" and revoked["policy"] == "shop/revoke-reporting"
        # Counted as they moved: the revocation may cut an echo in flight.
        assert 0 < revoked["bytes_sent"] <= revoked["bytes_received"], revoked
        wait_for(lambda: not any(e.get("dst_workload") == "shop/cart" for e in json.loads(mesh.a.ctl("connections", "-o", "json").stdout)),
                 timeout=10, what="the revoked connection to leave the connection list")
    finally:
        deny.unlink()
        if holder.poll() is None:
            holder.kill()
    wait_for(lambda: mesh.echo("reporting", CART, host=mesh.a_ip)["outcome"] == "echoed", timeout=10, what="the DENY to be lifted")


def test_an_invalid_policy_file_leaves_the_previous_policy_in_force(mesh):
    bad = mesh.policies_b / "bad.yaml"
    bad.write_text("""\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-everyone, namespace: shop}
spec:
  rules:
  - from: [{source: {principals: ["spiffe://cluster.local/ns/shop/sa/reporting"]}}]
""")
    try:
        wait_for(lambda: json.loads(mesh.b.ctl("policies", "-o", "json").stdout).get("last_reload_error"),
                 timeout=10, what="the refused reload to be reported")
        view = json.loads(mesh.b.ctl("policies", "-o", "json").stdout)
        assert any(f"{bad}:6" in error and "without the spiffe:// scheme" in error for error in view["last_reload_error"]), view
        # Had the file loaded, reporting would be let in; the old policy refuses it at L4.
        assert mesh.http("reporting", [request("GET", "/orders/x")])[0]["status"] == "closed"
        assert mesh.http("checkout", [request("GET", "/orders/x")])[0]["status"] == 200
        assert "policies not loaded" in mesh.b.log()
    finally:
        bad.unlink()
    wait_for(lambda: json.loads(mesh.b.ctl("policies", "-o", "json").stdout).get("last_reload_error") is None,
             timeout=10, what="the error to clear once the file is gone")


# ---------------------------------------------------------------- agentctl


def test_agentctl_policies_lists_what_is_in_force(mesh):
    view = json.loads(mesh.b.ctl("policies", "-o", "json").stdout)
    names = {(p["kind"], f"{p['namespace']}/{p['name']}") for p in view["policies"]}
    assert ("AuthorizationPolicy", "shop/orders-allow") in names and ("AuthorizationPolicy", "shop/ledger-no-web") in names
    row = next(p for p in view["policies"] if p["name"] == "orders-no-admin")
    assert row["action"] == "DENY" and row["selector"] == "app=orders" and row["source"].endswith("orders.yaml:13")
    table = mesh.b.ctl("policies").stdout
    assert "shop/orders-allow" in table and "generation" in table


def test_agentctl_policy_explain_names_the_deciding_rule(mesh):
    allowed = json.loads(mesh.b.ctl("policy", "explain", "--from", spiffe("checkout"), "--to-workload", "orders", "--port", str(ORDERS),
                                    "--method", "POST", "--path", "/reserve", "-o", "json").stdout)
    assert allowed["decision"] == "allow" and allowed["layer"] == "l7" and allowed["policy"] == "shop/orders-allow"
    assert "rules[0]" in allowed["rule"]
    denied = json.loads(mesh.b.ctl("policy", "explain", "--from", spiffe("checkout"), "--to-workload", "shop/orders", "--port", str(ORDERS),
                                   "--method", "GET", "--path", "/public/../admin", "-o", "json").stdout)
    assert denied["decision"] == "deny" and denied["policy"] == "shop/orders-no-admin" and denied["path"] == "/admin"
    l4 = json.loads(mesh.b.ctl("policy", "explain", "--from", spiffe("frontend", "web"), "--to-workload", "ledger", "--port", str(LEDGER),
                               "-o", "json").stdout)
    assert l4["decision"] == "deny" and l4["layer"] == "l4" and l4["policy"] == "shop/ledger-no-web"
    depends = json.loads(mesh.b.ctl("policy", "explain", "--from", spiffe("checkout"), "--to-workload", "orders", "--port", str(ORDERS),
                                    "-o", "json").stdout)
    assert depends["decision"] == "depends on the request"
    plaintext = json.loads(mesh.b.ctl("policy", "explain", "--to-workload", "orders", "--port", str(ORDERS), "-o", "json").stdout)
    assert plaintext["decision"] == "deny" and plaintext["layer"] == "peer_authentication"
    unknown = mesh.b.ctl("policy", "explain", "--to-workload", "nobody", "--port", "1", check=False)
    assert unknown.returncode == 1 and "no workload \"nobody\"" in unknown.stderr


def test_agentctl_policy_check_works_without_an_agent(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(ORDERS_POLICIES)
    result = agentctl("policy", "check", good)
    assert "valid (2 AuthorizationPolicy(s)" in result.stdout
    bad = tmp_path / "policies"
    bad.mkdir()
    (bad / "a.yaml").write_text(ORDERS_POLICIES)
    (bad / "b.yaml").write_text("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x, namespace: shop}\n"
                                "spec:\n  action: ALOW\n")
    (bad / "c.yaml").write_text(ORDERS_POLICIES.split("---")[0])
    result = agentctl("policy", "check", bad, check=False)
    assert result.returncode == 1
    assert f"{bad}/b.yaml:5: spec.action: must be one of ALLOW, DENY, AUDIT" in result.stderr
    assert "AuthorizationPolicy shop/orders-allow is already defined at" in result.stderr
    missing = agentctl("policy", "check", tmp_path / "nope", check=False)
    assert missing.returncode == 1 and "no such file" in missing.stderr


def test_agentctl_policy_check_with_a_config_refuses_http_rules_on_tcp_ports(tmp_path):
    config = tmp_path / "agent.yaml"
    config.write_text("trustDomain: cluster.local\nworkloads:\n"
                      "  - {name: db, namespace: shop, cgroup: /db.slice, labels: {app: db}, ports: [{port: 5432, protocol: tcp}, 8080]}\n")
    policy = tmp_path / "db.yaml"
    policy.write_text("""\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: db-readers, namespace: shop}
spec:
  selector: {matchLabels: {app: db}}
  rules:
  - to: [{operation: {methods: ["GET"]}}]
""")
    assert agentctl("policy", "check", policy).returncode == 0
    result = agentctl("policy", "check", policy, "--config", config, check=False)
    assert result.returncode == 1
    assert f"{policy}:7: spec.rules[0]: names HTTP attributes (methods) but applies to port 5432 of shop/db, declared protocol: tcp" in result.stderr
    policy.write_text(policy.read_text().replace('methods: ["GET"]', 'ports: ["8080"], methods: ["GET"]'))
    assert agentctl("policy", "check", policy, "--config", config).returncode == 0


def test_metrics_report_policy_decisions_requests_and_certificate_expiry(mesh):
    from test_hbone import metric_samples, scrape
    # Some traffic of each kind, so every series exists.
    mesh.http("checkout", [request("GET", "/orders/metrics"), request("DELETE", "/orders/metrics")])
    mesh.echo("reporting", LEDGER)
    status, text = scrape(mesh.topology, mesh.topology.remote, f"http://{mesh.b_ip}:15020/metrics")
    assert status == 200
    decisions = metric_samples(text, "mesh_agent_authorization_decisions_total")
    assert decisions[frozenset({("layer", "l4"), ("decision", "deny")})] >= 1
    assert decisions[frozenset({("layer", "l4"), ("decision", "inspect")})] >= 1
    assert decisions[frozenset({("layer", "l7"), ("decision", "deny")})] >= 1
    requests = metric_samples(text, "istio_requests_total")
    codes = {dict(labels)["response_code"]: value for labels, value in requests.items()
             if dict(labels)["source_principal"] == spiffe("checkout") and dict(labels)["reporter"] == "destination"}
    assert codes.get("200", 0) >= 1 and codes.get("403", 0) >= 1, codes
    assert all(dict(labels)["request_protocol"] == "http" for labels in requests)
    expiry = metric_samples(text, "mesh_agent_certificate_expiry_timestamp_seconds")
    orders = [c for c in json.loads(mesh.b.ctl("certs", "-o", "json").stdout) if c["identity"] == spiffe("orders") and c["state"] == "valid"][0]
    not_after = datetime.datetime.fromisoformat(orders["not_after"].replace("Z", "+00:00")).timestamp()
    assert abs(expiry[frozenset({("identity", spiffe("orders"))})] - not_after) < 2
    generation = json.loads(mesh.b.ctl("policies", "-o", "json").stdout)["generation"]
    assert re.search(rf"^mesh_agent_policy_generation {generation}(\.0)?$", text, re.M), "the generation gauge is not agentctl's"
    assert re.search(r"^mesh_agent_active_connections \d+", text, re.M)
    assert 'mesh_agent_workloads{state="present"} 4' in text
