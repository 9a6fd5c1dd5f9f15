"""Real Podman pods on two nodes (Podman with runc, a busybox image made
locally, pod networks inside 10.77.0.0/16), each node's agent following its
node's Podman API (workloadSources.podman) and capturing the enrolled pods in
their own network namespaces.

Each node runs a podman of its own inside the node's network namespace
(podman_lab.py), so bridges, NAT rules and pods live there; everything is
removed even when a test fails.
"""
import json
import subprocess
import time

import pytest

from conftest import TRUST_DOMAIN, TwoNodes, pcap_segments, sh, start_capture, stop_capture, wait_for
from podman_lab import PodmanNode

AMBIENT = {"istio.io/dataplane-mode": "ambient", "mesh-agent.io/namespace": "shop"}
MESH = ["10.77.0.0/16"]


def identity(sa, namespace="shop"):
    return f"spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/{sa}"


class PodmanCluster:
    def __init__(self, tmp_path, name):
        self.nodes = TwoNodes(tmp_path, name)
        self.labs = {}
        t = self.nodes.topology
        subnet = {"a": (t.index + 60) % 250 + 1, "b": (t.index + 120) % 250 + 1}
        try:
            for which in "ab":
                tag = f"{t.index}{which}{int(time.time() * 1000) % 100000}"
                self.labs[which] = PodmanNode(tmp_path / f"podman-{which}", self.nodes.namespace(which), subnet[which], tag).start()
            sh("ip", "-n", t.node, "route", "add", f"10.77.{subnet['b']}.0/24", "via", t.remote_ip)
            sh("ip", "-n", t.remote, "route", "add", f"10.77.{subnet['a']}.0/24", "via", t.node_ip)
            self.agents = {
                which: self.nodes.agent(which, [], meshNetworks=MESH, captureMode="netns",
                                        workloadSources={"podman": {"socket": str(self.labs[which].socket)}}).start()
                for which in "ab"
            }
        except BaseException:
            self.close()
            raise

    def workloads(self, which):
        return json.loads(self.agents[which].ctl("workloads", "-o", "json").stdout)

    def captured(self, which, name):
        view = next((v for v in self.workloads(which) if v["name"] == name), None)
        return view if view and view["state"].startswith("captured") else None

    def close(self):
        for agent in getattr(self, "agents", {}).values():
            if agent.alive():
                agent.stop()
        for lab in self.labs.values():
            lab.close()
        self.nodes.close()


@pytest.fixture
def cluster(tmp_path, request):
    made = PodmanCluster(tmp_path, request.node.name.split("[")[0][-20:])
    try:
        yield made
    finally:
        made.close()


def pod_has_table(lab, pod):
    netns = lab.podman("inspect", "--format", "{{.NetworkSettings.SandboxKey}}", infra_of(lab, pod)).stdout.strip()
    return subprocess.run(["nsenter", f"--net={netns}", "nft", "list", "table", "inet", "mesh_agent"], capture_output=True).returncode == 0


def infra_of(lab, pod):
    data = lab.inspect_pod(pod)
    data = data[0] if isinstance(data, list) else data
    return data["InfraContainerID"]


def test_pod_to_pod_across_nodes_through_the_mesh_only(cluster):
    a, b = cluster.labs["a"], cluster.labs["b"]
    t = cluster.nodes.topology
    b.pod("orders", labels={**AMBIENT, "mesh-agent.io/service-account": "orders", "mesh-agent.io/ports": "8080"})
    b.http_server("orders")
    a.pod("checkout", labels={**AMBIENT, "mesh-agent.io/service-account": "checkout"})
    client = a.run_in_pod("checkout", "/bin/busybox", "sleep", "3600")
    a.pod("plain")  # not labelled: not enrolled
    plain = a.run_in_pod("plain", "/bin/busybox", "sleep", "3600")
    wait_for(lambda: cluster.captured("b", "orders") and cluster.captured("a", "checkout"), timeout=30, what="both pods captured")
    view = cluster.captured("a", "checkout")
    assert view["source"] == "podman" and view["identity"] == identity("checkout")
    assert not [v for v in cluster.workloads("a") if v["name"] == "plain"], "an unlabelled pod is not a workload"
    assert not pod_has_table(a, "plain")

    # Only the tunnel crosses the link between the nodes.
    capture = cluster.nodes.tmp / "link.pcap"
    dump = start_capture(t, t.node, t.veth[0], capture)
    fetched = a.fetch(client, f"http://{b.pod_ip('orders')}:8080/")
    stop_capture(dump, capture)
    assert fetched.returncode == 0 and fetched.stdout == "hello from a pod\n", fetched
    ports = {(source, destination) for source, destination, _ in pcap_segments(capture)}
    assert ports and all(15008 in pair for pair in ports), f"only HBONE may cross the link: {sorted(ports)[:10]}"

    inbound = cluster.agents["b"].find_entry(
        lambda e: e.get("direction") == "inbound" and e.get("src_identity") == identity("checkout"), timeout=10, what="node b's line")
    assert inbound["dst_identity"] == identity("orders") and inbound["action"] == "allow"
    assert cluster.agents["a"].find_entry(lambda e: e.get("direction") == "outbound" and e.get("src_identity") == identity("checkout"))

    # The unlabelled pod's traffic is not captured: it reaches the server pod
    # in plaintext (PERMISSIVE) and node b sees no identity for it.
    before = len(cluster.agents["a"].entries())
    assert a.fetch(plain, f"http://{b.pod_ip('orders')}:8080/").returncode == 0
    assert not [e for e in cluster.agents["a"].entries()[before:] if e.get("direction") == "outbound"]

    # Removing a pod removes its capture.
    a.remove_pod("checkout")
    wait_for(lambda: not [v for v in cluster.workloads("a") if v["name"] == "checkout"], timeout=20, what="the removed pod to go")
    assert "stopped capturing workload shop/checkout" in cluster.agents["a"].log()


def test_a_pod_from_podman_kube_play_is_enrolled(cluster, tmp_path):
    a = cluster.labs["a"]
    manifest = tmp_path / "pod.yaml"
    manifest.write_text(
        "apiVersion: v1\n"
        "kind: Pod\n"
        "metadata:\n"
        "  name: reports\n"
        "  labels:\n"
        "    istio.io/dataplane-mode: ambient\n"
        "    mesh-agent.io/namespace: shop\n"
        "    mesh-agent.io/service-account: reports\n"
        "spec:\n"
        "  containers:\n"
        "    - name: main\n"
        f"      image: {a.image}\n"
        "      command: [/bin/busybox, httpd, -f, -p, '9000', -h, /www]\n"
        "      ports:\n"
        "        - containerPort: 9000\n")
    a.podman("kube", "play", "--network", a.network, str(manifest))
    a.adopt_pod("reports")
    view = wait_for(lambda: cluster.captured("a", "reports"), timeout=30, what="the kube play pod captured")
    assert view["identity"] == identity("reports")
    assert pod_has_table(a, "reports")
