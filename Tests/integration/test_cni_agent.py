"""mesh-agent-cni with the real agent: the reference plugins (bridge +
host-local) make a pod's interface, mesh-agent-cni asks the agent to enroll
the namespace, and ADD returns only once the pod's table and listeners are in
place, so the first connection of a process started right after is captured.
The pod's cgroup is the kubelet's (cgroupfs layout, from K8S_POD_UID), made
by the test. Restart and DEL leave nothing behind."""
import json
import uuid

import pytest

from conftest import Agent, KubeletCgroups, TRUST_DOMAIN, wait_for
from test_cni_plugin import Conflist


@pytest.fixture
def lab(topology, tmp_path):
    conflist = Conflist()
    cgroups = KubeletCgroups()
    agent = None
    try:
        conflist.pod_uid = str(uuid.uuid4())
        pod_cgroup = cgroups.pod(conflist.pod_uid)
        # A runtime brings the pod's loopback up first (the loopback plugin).
        loopback = conflist._exec({"type": "loopback"}, "ADD")
        assert loopback.returncode == 0, loopback.stderr
        agent = Agent(topology, tmp_path, [], namespace=conflist.node,
                      workloadSources={"cni": {"socket": str(conflist.socket)}})
        yield conflist, agent, pod_cgroup, topology
    finally:
        if agent is not None and agent.proc is not None and agent.alive():
            agent.stop()
        for proc in topology.processes:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        conflist.close()
        cgroups.close()


def pod_table(topology, conflist):
    return topology.run_in(conflist.pod, "nft", "list", "table", "inet", "mesh_agent", check=False)


def listeners(topology, conflist):
    out = topology.run_in(conflist.pod, "ss", "-Htln").stdout
    return sorted({int(line.split()[3].rsplit(":", 1)[1]) for line in out.splitlines() if line.strip()})


def test_add_returns_once_captured_and_the_first_connection_is(lab):
    conflist, agent, pod_cgroup, t = lab
    agent.start()
    gateway = f"10.77.{conflist.index}.1"
    # A plain server on the node, at the bridge's address: outside the mesh.
    t.server(ns=conflist.node, port=8080)

    result, failed = conflist.add()
    assert failed is None, failed.stdout + failed.stderr
    # No waiting: the capture is there when ADD has returned.
    assert pod_table(t, conflist).returncode == 0
    assert listeners(t, conflist) == [15001, 15006, 15008]
    first = t.client(["echo", gateway, 8080, "first packet"], ns=conflist.pod, cgroup=pod_cgroup)
    assert first["ok"]
    entry = agent.entry_for_port(first["local_port"])
    assert entry["src_identity"] == f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/default"
    view = next(v for v in json.loads(agent.ctl("workloads", "-o", "json").stdout) if v["name"] == "web-0")
    assert view["source"] == "cni" and view["netns"] == f"/run/netns/{conflist.pod}"
    assert conflist.check(result) is None

    # A restart finds the enrollment again: the runtime will not call ADD twice.
    agent.stop()
    assert pod_table(t, conflist).returncode != 0, "failureMode open: the table goes with the agent"
    agent.start()
    wait_for(lambda: pod_table(t, conflist).returncode == 0 and listeners(t, conflist) == [15001, 15006, 15008], timeout=10,
             what="the pod captured again after the restart")

    failed = conflist.delete(result)
    assert failed is None, failed.stdout + failed.stderr
    assert pod_table(t, conflist).returncode != 0
    assert listeners(t, conflist) == []
    assert conflist.allocations() == [], "host-local released the address"


def test_add_for_a_pod_whose_cgroup_is_unknown_fails_with_the_reason(lab):
    conflist, agent, _, t = lab
    agent.start()
    conflist.pod_uid = str(uuid.uuid4())  # no such pod cgroup
    _, failed = conflist.add()
    assert failed is not None and failed.returncode != 0
    error = json.loads(failed.stdout)
    assert "no kubelet pod cgroup exists" in error["msg"] + error.get("details", ""), error
    assert pod_table(t, conflist).returncode != 0
