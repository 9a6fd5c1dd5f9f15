"""The Kubernetes source: the agent lists and watches a stand-in API server
(k8s_apiserver.py, the real list/watch wire format) for its node's pods and
all namespaces, and captures the enrolled pods in their own network
namespaces, found from the processes in their pod cgroups (the cgroupfs
kubelet layout, /kubepods/besteffort/pod<uid>), which the test makes.

Node a's client pod comes from the API; node b's server pod from node b's
config, so a connection between them shows the identity the API gave.
"""
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from conftest import TRUST_DOMAIN, KubeletCgroups, read_line, wait_for

HERE = Path(__file__).resolve().parent
ECHO = 8080
AMBIENT = {"istio.io/dataplane-mode": "ambient"}
MESH = ["10.77.0.0/16"]


class StandIn:
    """The stand-in API server as a process in node a's namespace (the agent
    reaches it on 127.0.0.1 there), scripted over its control socket."""

    def __init__(self, topology, tmp_path):
        sys.path.insert(0, str(HERE))
        import k8s_apiserver
        self.control_path = tmp_path / "apiserver.sock"
        self.proc = topology.spawn(topology.node, [sys.executable, str(HERE / "k8s_apiserver.py"), "--control", str(self.control_path)])
        line = read_line(self.proc.stdout, 20, "the stand-in API server to start")
        self.port = json.loads(line)["port"]
        self.api = k8s_apiserver.ControlClient(str(self.control_path))

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def cluster(pods, tmp_path):
    cgroups = KubeletCgroups()
    stand_in = StandIn(pods.nodes.topology, tmp_path)
    token = tmp_path / "token"
    token.write_text("test-token\n")
    try:
        yield pods, stand_in, cgroups, token
    finally:
        stand_in.api.close()
        for agent in pods.nodes.agents:
            if agent.alive():
                agent.stop()
        for proc in pods.nodes.topology.processes:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        cgroups.close()


def identity(sa, namespace="shop"):
    return f"spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/{sa}"


def pod_table(pods, which):
    return pods.nodes.topology.run_in(pods.pod[which], "nft", "list", "table", "inet", "mesh_agent", check=False)


def workload_view(agent, name):
    views = json.loads(agent.ctl("workloads", "-o", "json").stdout)
    return next((v for v in views if v["name"] == name), None)


def test_api_pods_are_captured_relabelled_deleted_and_survive_an_api_restart(cluster):
    pods, stand_in, cgroups, token = cluster
    nodes, t = pods.nodes, pods.nodes.topology
    api = stand_in.api
    api.set_namespace(name="shop", labels=AMBIENT)
    uid = str(uuid.uuid4())
    pod_cgroup = cgroups.pod(uid)
    # The pod's process: in its cgroup, in its network namespace.
    t.spawn(pods.pod["a"], ["sleep", "600"], cgroup=pod_cgroup)

    server = nodes.workload("server", namespace="shop", serviceAccount="orders", ports=[ECHO], captureMode="netns", netns=pods.netns("b"))
    agent_b = nodes.agent("b", [server], meshNetworks=MESH).start()
    t.server(ns=pods.pod["b"], port=ECHO, cgroup=nodes.cgroups.directory("server"))
    agent_a = nodes.agent("a", [], meshNetworks=MESH, workloadSources={
        "kubernetes": {"node": "node-a", "apiServer": stand_in.url, "tokenFile": str(token)}}).start()

    api.add_pod(name="client", namespace="shop", node="node-a", uid=uid, service_account="checkout", ips=[pods.ip["a"]])
    api.add_pod(name="elsewhere", namespace="shop", node="node-b", service_account="other")
    view = wait_for(lambda: (v := workload_view(agent_a, "client")) and v["state"].startswith("captured") and v, timeout=15,
                    what="the API's pod captured on node a")
    assert view["source"] == "kubernetes" and view["capture_mode"] == "netns"
    assert view["identity"] == identity("checkout")
    assert workload_view(agent_a, "elsewhere") is None, "a pod of another node is not this node's"
    certs = json.loads(agent_a.ctl("certs", "-o", "json").stdout)
    assert identity("other") not in {c["identity"] for c in certs}, "no certificate for a pod on another node"

    result = t.client(["echo", pods.ip["b"], ECHO, "from an API pod"], ns=pods.pod["a"], cgroup=pod_cgroup)
    assert result["ok"]
    inbound = agent_b.find_entry(lambda e: e.get("direction") == "inbound" and e.get("src_identity") == identity("checkout"),
                                 what="node b's inbound line with the API-given identity")
    assert inbound["action"] == "allow"

    # Relabelled out: no longer captured; and back in.
    api.modify_pod(uid=uid, labels={"istio.io/dataplane-mode": "none"})
    wait_for(lambda: workload_view(agent_a, "client") is None and pod_table(pods, "a").returncode != 0, timeout=15,
             what="the opted-out pod released")
    api.modify_pod(uid=uid, labels={})
    wait_for(lambda: pod_table(pods, "a").returncode == 0, timeout=15, what="the pod captured again (its namespace is enrolled)")

    # The API server goes away: the pod stays captured, and status says so.
    api.stop()
    def disconnected():
        status = json.loads(agent_a.ctl("status", "-o", "json").stdout)
        source = next(s for s in status["sources"] if s["name"] == "kubernetes")
        return not source["connected"] and source
    source = wait_for(disconnected, timeout=20, what="status to show the API server lost")
    assert source["last_error"]
    assert workload_view(agent_a, "client")["state"].startswith("captured")
    assert pod_table(pods, "a").returncode == 0
    api.start()
    wait_for(lambda: next(s for s in json.loads(agent_a.ctl("status", "-o", "json").stdout)["sources"])["connected"], timeout=30,
             what="the source reconnected")

    api.delete_pod(uid=uid)
    wait_for(lambda: workload_view(agent_a, "client") is None and pod_table(pods, "a").returncode != 0, timeout=15,
             what="the deleted pod released")
    assert agent_a.alive() and agent_b.alive()
