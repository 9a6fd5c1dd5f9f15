"""Restarts and upgrades with no refused connection and no bypass: a second
agent taking over from a running one under load, a restart through systemd's
file descriptor store, kill -9 with failureMode closed (watched on the wire),
and the repair of each kind of drift in the capture table."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from conftest import BIN, PEER, TwoNodes, read_line, start_capture, wait_for

TOOLS = Path(__file__).resolve().parent / "tools"
HTTP_PEER = TOOLS / "http_peer.py"
MESH = ["10.77.0.0/16", "fd77::/64"]
WEB, ECHO = 8080, 8081


def wrk(nodes, host, port, seconds, workload="client"):
    """wrk from a workload of node a, a new connection per request (each
    goes through capture, the tunnel and admission afresh)."""
    t = nodes.topology
    return t.spawn(t.node, ["wrk", "-t1", "-c8", f"-d{seconds}s", "--timeout", "30s", "-H", "Connection: close",
                            f"http://{host}:{port}/wrk"], cgroup=nodes.cgroups.directory(workload))


def wrk_result(proc, timeout):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"wrk failed: {err}\n{out}"
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    # The slowest request: how long a connection waited while the agents changed.
    slowest = re.search(r"Latency\s+\S+\s+\S+\s+(\S+)", out)
    return {"requests": requests, "socket_errors": sum(int(n) for n in errors.groups()) if errors else 0,
            "non_2xx": int(non2xx.group(1)) if non2xx else 0, "slowest": slowest.group(1) if slowest else "?", "output": out}


class Lab:
    """Two nodes: a client workload on a, a web server and an echo server on b."""

    def __init__(self, tmp, **b_settings):
        self.nodes = TwoNodes(tmp, "restart")
        self.tmp = Path(tmp)
        n = self.nodes
        try:
            self.a_workloads = [n.workload("client", namespace="shop", serviceAccount="client")]
            self.b_workloads = [n.workload("web", namespace="shop", serviceAccount="web", ports=[WEB, ECHO])]
            t = n.topology
            t.serve(t.remote, [sys.executable, str(HTTP_PEER), "serve", str(WEB), str(self.tmp / "web-requests")],
                    cgroup=n.cgroups.directory("web"), what="the web server")
            t.server("echo", ECHO, ns=t.remote, cgroup=n.cgroups.directory("web"))
            self.b_settings = {"meshNetworks": MESH, **b_settings}
            self.b = n.agent("b", self.b_workloads, **self.b_settings).start()
            self.a = n.agent("a", self.a_workloads, meshNetworks=MESH).start()
        except BaseException:
            n.close()
            raise

    def second(self, which, first, **settings):
        """Another agent for the same node and config as `first` (same admin
        socket, hence the same handover socket), with its own log."""
        workloads = self.a_workloads if which == "a" else self.b_workloads
        merged = {**(self.b_settings if which == "b" else {"meshNetworks": MESH}), **settings}
        agent = self.nodes.agent(which, workloads, directory=self.tmp / f"{which}-{uuid.uuid4().hex[:6]}", **merged)
        agent.admin_socket = first.admin_socket
        agent.write_config(workloads)
        return agent

    def close(self):
        self.nodes.close()


@pytest.fixture
def lab(tmp_path):
    lab = Lab(tmp_path)
    try:
        yield lab
    finally:
        lab.close()


def take_over(lab, which, first):
    """Starts a second agent beside `first`, waits until it serves and `first`
    has handed over, then stops `first`, which drains and exits cleanly."""
    second = lab.second(which, first).start()
    wait_for(lambda: "took over: this one accepts nothing new" in first.log(), timeout=20,
             what=f"node {which}'s first agent to hand over")
    assert "took over the listening socket" in second.log(), second.log()[-2000:]
    first.proc.send_signal(signal.SIGTERM)
    assert first.proc.wait(timeout=30) == 0, first.log()[-2000:]
    assert "the agent that took over keeps table" in first.log()
    return second


@pytest.mark.parametrize("which", ["b", "a"])
def test_a_second_agent_takes_over_under_load_without_a_refused_connection(lab, which):
    """As a DaemonSet rolling update with maxSurge: the new agent starts while
    the old one runs, the old hands its sockets over and drains on SIGTERM.
    Node b's takeover moves the tunnel listener, node a's the outbound
    listener and the capture table."""
    load = wrk(lab.nodes, lab.nodes.ip("b"), WEB, 14)
    time.sleep(3)  # the load runs through the first agents before the takeover starts
    first = lab.b if which == "b" else lab.a
    second = take_over(lab, which, first)
    result = wrk_result(load, timeout=60)
    print(f"takeover on node {which} under load:", {k: v for k, v in result.items() if k != "output"})
    assert result["requests"] > 200, result["output"]
    assert result["socket_errors"] == 0 and result["non_2xx"] == 0, result["output"]
    # The new agent serves on its own now, capture included.
    assert second.alive()
    assert lab.nodes.topology.run_in(lab.nodes.namespace(which), "nft", "list", "table", "inet", "mesh_agent").returncode == 0
    probe = lab.nodes.topology.client(["echo", lab.nodes.ip("b"), ECHO, "after takeover"], cgroup=lab.nodes.cgroups.directory("client"))
    assert probe["ok"]


class FakeSystemd:
    """The service manager's side of the notify protocol: READY, and the
    descriptors a service stores with FDSTORE=1 (kept open here, as systemd
    keeps them across a restart)."""

    def __init__(self, path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.stored = {}

    def collect(self, timeout):
        """Reads notifications until `timeout` passes without one."""
        self.sock.settimeout(timeout)
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(self.sock, 4096, 16)
            except socket.timeout:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            if fields.get("FDSTORE") == "1":
                for fd in fds:
                    self.stored[fields["FDNAME"]] = fd

    def close(self):
        for fd in self.stored.values():
            os.close(fd)
        self.sock.close()


def test_a_restart_through_the_file_descriptor_store_refuses_no_connection(lab, tmp_path):
    """What systemctl restart does with FileDescriptorStoreMax=: the stopping
    agent's sockets stay open in systemd, connections wait in their queue,
    and the next process gets them back (LISTEN_FDS, LISTEN_FDNAMES)."""
    nodes = lab.nodes
    lab.b.kill()
    manager = FakeSystemd(tmp_path / "notify")
    try:
        first = lab.second("b", lab.b)
        first.start(env={"NOTIFY_SOCKET": manager.path})
        manager.collect(timeout=2)
        assert any(name.startswith("tunnel@") for name in manager.stored), manager.stored
        assert any(name.startswith("readiness@") for name in manager.stored), manager.stored

        load = wrk(nodes, nodes.ip("b"), WEB, 14)
        time.sleep(3)
        first.proc.send_signal(signal.SIGTERM)
        assert first.proc.wait(timeout=30) == 0, first.log()[-2000:]

        # The next process, as systemd starts it: the stored descriptors from 3 on.
        names = list(manager.stored)
        second = lab.second("b", first)
        stored = list(manager.stored.values())

        def as_systemd_passes_them():
            # Each stored descriptor to 3, 4, ... in order, through numbers
            # above all of them so that no move overwrites one not yet moved.
            high = [os.dup2(fd, 200 + i) for i, fd in enumerate(stored)]
            for i, fd in enumerate(high):
                os.dup2(fd, 3 + i)
            for fd in high:
                os.close(fd)

        stderr = open(second.stderr_path, "a")
        second.stderr_file = stderr
        env = {**os.environ, "LISTEN_FDS": str(len(names)), "LISTEN_FDNAMES": ":".join(names)}
        # LISTEN_PID must name the agent's process: sh execs nsenter, which
        # execs the agent, all in one process.
        second.proc = subprocess.Popen(
            ["sh", "-c", 'LISTEN_PID=$$ exec "$@"', "sh", *nodes.topology.nsenter(second.namespace),
             str(BIN / "mesh-agent"), "--config", str(second.config_path), "--log-level", "debug"],
            stdout=stderr, stderr=stderr, env=env, close_fds=False, preexec_fn=as_systemd_passes_them)
        nodes.topology.processes.append(second.proc)
        wait_for(lambda: "mesh-agent ready" in second.log() or second.proc.poll() is not None, timeout=30, what="the restarted agent")
        assert second.alive(), second.log()[-3000:]
        assert second.log().count("took over the listening socket") == len(names), second.log()[-3000:]

        result = wrk_result(load, timeout=60)
        print("restart through the fd store under load:", {k: v for k, v in result.items() if k != "output"})
        assert result["socket_errors"] == 0 and result["non_2xx"] == 0, result["output"]
        assert result["requests"] > 100, result["output"]
    finally:
        manager.close()


def test_kill_9_with_failure_mode_closed_leaks_no_plaintext_and_recovers_within_5_seconds(tmp_path):
    lab = Lab(tmp_path)
    nodes, t = lab.nodes, lab.nodes.topology
    try:
        lab.a.stop()
        first = lab.second("a", lab.a, failureMode="closed").start()
        marker = f"PLAINTEXT-MARKER-{uuid.uuid4().hex}"
        capture = tmp_path / "wire.pcap"
        tcpdump = start_capture(t, t.node, t.veth[0], capture)
        prober = t.spawn(t.node, [sys.executable, str(PEER), "repeat", nodes.ip("b"), str(ECHO), marker, "60"],
                         cgroup=nodes.cgroups.directory("client"), stdin=subprocess.PIPE)
        time.sleep(1)  # a second of attempts through the running agent
        first.proc.kill()
        first.proc.wait()
        time.sleep(2)  # attempts while no agent runs: refused at the redirect, never sent in the clear
        second = lab.second("a", first, failureMode="closed")
        started = time.time()
        second.start()
        time.sleep(2)
        prober.stdin.write("\n")
        prober.stdin.flush()
        out, _ = prober.communicate(timeout=30)
        attempts = json.loads(out)["attempts"]
        tcpdump.send_signal(signal.SIGINT)
        tcpdump.communicate(timeout=15)

        gap = [a for a in attempts if a[1] != "echoed"]
        assert gap, "no attempt fell between the two agents: the test did not test the gap"
        back = [a for a in attempts if a[0] >= started and a[1] == "echoed"]
        assert back, f"nothing got through after the new agent started: {attempts[-10:]}"
        recovered = back[0][0] - started
        print(f"kill -9, failureMode closed: {len(gap)} attempts refused in the gap, traffic back {recovered:.2f}s after the start")
        assert recovered < 5, f"traffic came back {recovered:.1f}s after the new agent started"
        raw = capture.read_bytes()
        assert len(raw) > 24, "the capture is empty"
        assert marker.encode() not in raw, "workload plaintext crossed the wire while the agent was down"
        assert "table inet mesh_agent" in second.log()
    finally:
        lab.close()


def drift_total(topology, ns):
    """mesh_agent_nft_drift_total by what was found."""
    url = "http://127.0.0.1:15020/metrics"
    out = topology.run_in(ns, sys.executable, "-c",
                          f"import urllib.request; print(urllib.request.urlopen('{url}', timeout=5).read().decode())").stdout
    totals = {}
    for line in out.splitlines():
        match = re.match(r'mesh_agent_nft_drift_total\{found="(\w+)"\} (\d+)', line)
        if match:
            totals[match.group(1)] = int(match.group(2))
    return totals


@pytest.mark.parametrize("drift,found", [
    (["delete", "table", "inet", "mesh_agent"], "missing"),
    (["flush", "chain", "inet", "mesh_agent", "output"], "differs"),
    (["delete", "element", "inet", "mesh_agent", "permissive_ports", "{", str(WEB), "}"], "differs"),
])
def test_each_kind_of_drift_is_repaired_within_seconds_and_counted(lab, drift, found):
    t = lab.nodes.topology
    ns = lab.nodes.namespace("b")
    desired = t.run_in(ns, "nft", "list", "table", "inet", "mesh_agent").stdout
    before = drift_total(t, ns).get(found, 0)
    t.run_in(ns, "nft", *drift)
    assert t.run_in(ns, "nft", "list", "table", "inet", "mesh_agent", check=False).stdout != desired
    wait_for(lambda: t.run_in(ns, "nft", "list", "table", "inet", "mesh_agent", check=False).stdout == desired, timeout=10,
             what=f"the agent to repair `nft {' '.join(drift)}`")
    assert drift_total(t, ns).get(found, 0) == before + 1
    assert lab.nodes.topology.client(["echo", lab.nodes.ip("b"), ECHO, "after repair"], cgroup=lab.nodes.cgroups.directory("client"))["ok"]
