"""Workloads in network namespaces of their own (captureMode netns): two nodes,
each with a "pod" namespace behind a veth pair, as a CNI bridge or ptp plugin
would make it. The agent of each node captures its pod inside the pod's
namespace: a table there, its listeners there, its dials from there.

Real kernel, real agents, real TLS; every namespace and cgroup is the test's
own and goes away even when a test fails.
"""
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TRUST_DOMAIN, wait_for

HTTP_PEER = Path(__file__).resolve().parent / "tools" / "http_peer.py"

MESH = ["10.77.0.0/16"]
ECHO = 8080


def pod_workload(pods, which, name, **extra):
    return pods.nodes.workload(name, namespace="shop", captureMode="netns", netns=pods.netns(which), **extra)


def start_pair(pods, client_extra=None, server_extra=None, **settings):
    nodes = pods.nodes
    client = pod_workload(pods, "a", "client", serviceAccount="checkout", **(client_extra or {}))
    server = pod_workload(pods, "b", "server", serviceAccount="orders", ports=[ECHO], **(server_extra or {}))
    agent_a = nodes.agent("a", [client], meshNetworks=MESH, **settings).start()
    agent_b = nodes.agent("b", [server], meshNetworks=MESH, **settings).start()
    return client, server, agent_a, agent_b


def pod_table(pods, which):
    return pods.nodes.topology.run_in(pods.pod[which], "nft", "list", "table", "inet", "mesh_agent", check=False)


def listeners_in(pods, which):
    out = pods.nodes.topology.run_in(pods.pod[which], "ss", "-Htln").stdout
    return sorted({int(line.split()[3].rsplit(":", 1)[1]) for line in out.splitlines() if line.strip()})


def identity(sa, namespace="shop"):
    return f"spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/{sa}"


def test_pod_to_pod_goes_through_the_tunnel_with_both_pods_identities(pods):
    nodes, t = pods.nodes, pods.nodes.topology
    client, server, agent_a, agent_b = start_pair(pods)
    t.server(ns=pods.pod["b"], port=ECHO, cgroup=nodes.cgroups.directory("server"))
    wait_for(lambda: pod_table(pods, "a").returncode == 0 and pod_table(pods, "b").returncode == 0, what="both pods' tables")
    assert listeners_in(pods, "a") == [15001, 15006, 15008]

    result = t.client(["echo", pods.ip["b"], ECHO, "hello from pod a"], ns=pods.pod["a"], cgroup=nodes.cgroups.directory("client"))
    assert result["ok"], "the echo came back different"

    outbound = agent_a.find_entry(lambda e: e.get("direction") == "outbound" and e.get("dst_addr", "").startswith(pods.ip["b"]),
                                  what="node a's outbound line")
    assert outbound["src_identity"] == identity("checkout")
    assert outbound["src_addr"].startswith(pods.ip["a"] + ":"), outbound
    assert outbound["tls"] == "mutual"
    inbound = agent_b.find_entry(lambda e: e.get("direction") == "inbound" and e.get("src_identity") == identity("checkout"),
                                 what="node b's inbound line")
    assert inbound["dst_identity"] == identity("orders")
    assert inbound["action"] == "allow"
    # The tunnel left pod a from pod a's own address: node b's pod saw the source pod.
    assert inbound["src_addr"].startswith(pods.ip["a"] + ":"), inbound


def test_a_pod_is_captured_in_its_namespace_not_in_the_nodes(pods):
    nodes, t = pods.nodes, pods.nodes.topology
    _, _, agent_a, _ = start_pair(pods)
    wait_for(lambda: pod_table(pods, "a").returncode == 0, what="pod a's table")
    table = pod_table(pods, "a").stdout
    assert "redirect to :15001" in table and "redirect to :15006" in table
    assert "ip saddr 169.254.7.127" in table
    # The node's own table holds no pod cgroup: the pod's sockets never pass its hooks.
    node_table = t.nft("list", "table", "inet", "mesh_agent").stdout
    assert "workloads_l" not in node_table or "elements" not in node_table
    views = json.loads(agent_a.ctl("workloads", "-o", "json").stdout)
    (view,) = views
    assert view["capture_mode"] == "netns"
    assert view["netns"] == pods.netns("a")
    assert pods.ip["a"] in view["addresses"]
    assert view["state"].startswith("captured"), view


def connect_and_echo(t, ns, host, port):
    """A plain TCP client (a host process, in no workload cgroup) in namespace ns."""
    return t.run_in(ns, "python3", "-c",
                    "import socket\n"
                    f"s=socket.create_connection(('{host}',{port}),timeout=5)\n"
                    "s.sendall(b'probe'); print(s.recv(10).decode())", check=False)


def test_strict_refuses_plaintext_into_a_pod_but_not_its_nodes_probes(pods, tmp_path):
    nodes, t = pods.nodes, pods.nodes.topology
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "strict.yaml").write_text(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: strict\n  namespace: shop\n"
        "spec:\n  mtls:\n    mode: STRICT\n")
    start_pair(pods, policyDir=policies)
    t.server(ns=pods.pod["b"], port=ECHO, cgroup=nodes.cgroups.directory("server"))
    wait_for(lambda: "strict_ports" in pod_table(pods, "b").stdout and f"{ECHO}" in pod_table(pods, "b").stdout,
             what="pod b's STRICT port in its table")
    # Plaintext from another node (node a itself, not a workload): refused in pod b's kernel.
    refused = connect_and_echo(t, t.node, pods.ip["b"], ECHO)
    assert refused.returncode != 0 and "ConnectionRefused" in refused.stderr, refused
    # A health probe from pod b's own node: source-NATed to 169.254.7.127 there, let through in the pod.
    probe = connect_and_echo(t, t.remote, pods.ip["b"], ECHO)
    assert probe.returncode == 0 and probe.stdout.strip() == "probe", probe
    assert "169.254.7.127" in t.run_in(t.remote, "nft", "list", "chain", "inet", "mesh_agent", "postrouting").stdout
    # Through the mesh the same port answers.
    result = t.client(["echo", pods.ip["b"], ECHO, "strict but meshed"], ns=pods.pod["a"], cgroup=nodes.cgroups.directory("client"))
    assert result["ok"], "the echo came back different"


def test_excluded_ports_bypass_the_agent(pods):
    nodes, t = pods.nodes, pods.nodes.topology
    exclusions = {"captureExclusions": {"ports": [ECHO]}}
    _, _, agent_a, agent_b = start_pair(pods, client_extra=exclusions, server_extra=exclusions)
    t.server(ns=pods.pod["b"], port=ECHO, cgroup=nodes.cgroups.directory("server"))
    wait_for(lambda: "excluded_ports" in pod_table(pods, "a").stdout, what="pod a's table")
    result = t.client(["echo", pods.ip["b"], ECHO, "not captured"], ns=pods.pod["a"], cgroup=nodes.cgroups.directory("client"))
    assert result["ok"], "the echo came back different"
    # Neither agent saw it: the line of a proxied connection is written when it closes, and the client has closed.
    assert not [e for e in agent_a.entries() + agent_b.entries() if e.get("dst_addr", "").endswith(f":{ECHO}")]


def test_removing_a_pod_workload_removes_its_table_and_listeners(pods):
    nodes, t = pods.nodes, pods.nodes.topology
    client, _, agent_a, _ = start_pair(pods)
    wait_for(lambda: pod_table(pods, "a").returncode == 0, what="pod a's table")
    agent_a.write_config([])
    agent_a.reload()
    wait_for(lambda: pod_table(pods, "a").returncode != 0, what="pod a's table to go")
    wait_for(lambda: listeners_in(pods, "a") == [], what="pod a's listeners to go")


def test_agent_restart_refinds_pods_and_leaves_nothing_behind(pods):
    nodes, t = pods.nodes, pods.nodes.topology
    client, _, agent_a, agent_b = start_pair(pods)
    t.server(ns=pods.pod["b"], port=ECHO, cgroup=nodes.cgroups.directory("server"))
    wait_for(lambda: pod_table(pods, "a").returncode == 0, what="pod a's table")
    agent_a.stop()
    # failureMode open: the pod flows uncaptured while its agent is away.
    wait_for(lambda: pod_table(pods, "a").returncode != 0, what="pod a's table to go with its agent")
    assert listeners_in(pods, "a") == []
    agent_a.start()
    wait_for(lambda: pod_table(pods, "a").returncode == 0, what="pod a's table again")
    assert listeners_in(pods, "a") == [15001, 15006, 15008]
    result = t.client(["echo", pods.ip["b"], ECHO, "after restart"], ns=pods.pod["a"], cgroup=nodes.cgroups.directory("client"))
    assert result["ok"], "the echo came back different"
    assert agent_a.find_entry(lambda e: e.get("direction") == "outbound" and e.get("src_identity") == identity("checkout"))


def test_failure_mode_closed_keeps_the_pod_table_while_the_agent_is_away(pods):
    nodes, t = pods.nodes, pods.nodes.topology
    _, _, agent_a, _ = start_pair(pods, failureMode="closed")
    wait_for(lambda: pod_table(pods, "a").returncode == 0, what="pod a's table")
    agent_a.stop()
    assert pod_table(pods, "a").returncode == 0, "the pod's table must stay in failureMode closed"
    refused = t.run_in(pods.pod["a"], "python3", "-c",
                       "import socket\n"
                       f"socket.create_connection(('{pods.ip['b']}',{ECHO}),timeout=5)", check=False)
    assert refused.returncode != 0 and "ConnectionRefused" in refused.stderr, refused


@pytest.mark.parametrize("which", ["a", "b"])
def test_a_second_agent_takes_over_the_pods_listeners_under_load_without_a_refused_connection(pods, tmp_path, which):
    """As a DaemonSet rolling update with surge: the new agent starts beside
    the old one and gets the sockets inside each pod's namespace too (a
    pod's table redirects to them), so no connection from or to a pod is
    refused while the agents change; the old one drains on SIGTERM and
    leaves the pod's table to the new one. Node a's takeover moves pod a's
    outbound listener, node b's pod b's tunnel listener."""
    nodes, t = pods.nodes, pods.nodes.topology
    client, server, agent_a, agent_b = start_pair(pods)
    t.serve(pods.pod["b"], [sys.executable, str(HTTP_PEER), "serve", str(ECHO), str(tmp_path / "requests")],
            cgroup=nodes.cgroups.directory("server"), what="the web server in pod b")
    wait_for(lambda: pod_table(pods, "a").returncode == 0 and pod_table(pods, "b").returncode == 0, what="both pods' tables")
    load = t.spawn(pods.pod["a"], ["wrk", "-t1", "-c8", "-d12s", "--timeout", "30s", "-H", "Connection: close",
                                   f"http://{pods.ip['b']}:{ECHO}/wrk"], cgroup=nodes.cgroups.directory("client"))
    time.sleep(3)  # the load runs through the first agents before the takeover starts
    first = agent_a if which == "a" else agent_b
    workloads = [client] if which == "a" else [server]
    second = nodes.agent(which, workloads, directory=tmp_path / f"{which}-second", meshNetworks=MESH)
    second.admin_socket = first.admin_socket
    second.write_config(workloads)
    second.start()
    wait_for(lambda: "took over: this one accepts nothing new" in first.log(), timeout=20, what="the first agent to hand over")
    pod_name = "client" if which == "a" else "server"
    took_over = f"workload=shop/{pod_name} [Proxy] took over the listening socket" in second.log()
    first.proc.send_signal(signal.SIGTERM)
    assert first.proc.wait(timeout=30) == 0, first.log()[-2000:]

    out, err = load.communicate(timeout=60)
    assert load.returncode == 0, err
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    print(f"takeover on node {which} with pods under load: {requests} requests, errors {errors.groups() if errors else 0}, "
          f"non-2xx {non2xx.group(1) if non2xx else 0}")
    assert requests > 100, out
    assert errors is None and non2xx is None, out
    assert took_over, second.log()[-3000:]
    # The new agent owns the pod's capture: the table stayed, the sockets are its own.
    assert pod_table(pods, which).returncode == 0
    assert {15001, 15006, 15008} <= set(listeners_in(pods, which))
    assert second.find_entry(lambda e: e.get("src_identity") == identity("checkout"), timeout=10)
    second.stop()
