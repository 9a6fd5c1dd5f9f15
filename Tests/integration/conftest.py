"""Integration test harness: real network namespaces, cgroups, nftables and the
real agent binary.

Every test gets its own namespaces ("node" runs the agent and the workloads,
"remote" is another host on a veth link), its own cgroup directories and its own
processes, and removes all of them even when it fails. For node-to-node tests,
`TwoNodes` / the `two_nodes` fixture runs an agent in each of the two namespaces,
with node CAs issued from one shared root. Traffic goes only to
addresses inside those namespaces (10.77.0.0/16, fd77::/64) or loopback.
"""
import itertools
import json
import os
import signal
import re
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
PEER = HERE / "tools" / "peer.py"
BIN = Path(os.environ.get("MESH_AGENT_BIN", REPO / ".build" / "debug"))
TRUST_DOMAIN = "cluster.local"


def spiffe(sa, namespace="shop"):
    """A workload's SPIFFE ID in the tests' trust domain."""
    return f"spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/{sa}"


def principal(sa, namespace="shop"):
    """The same identity as policies write it: without the scheme."""
    return f"{TRUST_DOMAIN}/ns/{namespace}/sa/{sa}"


def http_exchange(topology, cgroup, host, port, requests, pipeline=False):
    """Raw HTTP/1.1 requests on one connection from a workload of the node
    namespace (tools/http_peer.py); the answers as it prints them."""
    args = ["pipeline" if pipeline else "send", host, str(port), json.dumps(requests)]
    proc = topology.spawn(topology.node, [sys.executable, str(HERE / "tools" / "http_peer.py")] + args, cgroup=cgroup)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, f"http client failed: {err}"
    return json.loads(out)

_counter = itertools.count(1)

# In CI every test must run: a test that skips there (not root, no cgroup v2,
# a tool missing) would let the suite pass without testing anything.
IN_CI = os.environ.get("CI") == "true"
# How long a helper process may take to say it is ready.
START_TIMEOUT = 20


def _fail_skips_in_ci(report):
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, where every test must run: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_skips_in_ci(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _fail_skips_in_ci(outcome.get_result())


def read_line(stream, timeout, what):
    """The next line of a helper's output, or a failure naming `what` if none
    comes within `timeout` seconds (a helper that hangs must not hang the suite)."""
    box = {}
    reader = threading.Thread(target=lambda: box.setdefault("line", stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if "line" not in box:
        raise AssertionError(f"{what}: nothing within {timeout}s")
    return box["line"]


def sh(*cmd, check=True, timeout=30, **kw):
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=timeout, **kw)


def cgroup2_mount():
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        if right.split(" ")[0] == "cgroup2":
            return Path(left.split(" ")[4])
    pytest.skip("no cgroup v2 mount")


def wait_for(predicate, timeout=10.0, interval=0.05, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Topology:
    """Two hosts joined by a veth pair: 'node' (agent + workloads) and 'remote'."""

    def __init__(self):
        if os.geteuid() != 0:
            pytest.skip("integration tests need root (network namespaces, nftables, cgroups)")
        self.index = (os.getpid() * 7 + next(_counter)) % 250 + 1
        tag = f"{os.getpid() % 10000}x{self.index}"
        self.node = f"ma-{tag}-node"
        self.remote = f"ma-{tag}-remote"
        self.veth = (f"ma{tag}a", f"ma{tag}b")
        self.node_ip = f"10.77.{self.index}.1"
        self.remote_ip = f"10.77.{self.index}.2"
        self.node_ip6 = f"fd77::{self.index:x}:1"
        self.remote_ip6 = f"fd77::{self.index:x}:2"
        self.processes = []
        self.created = []
        try:
            for ns in (self.node, self.remote):
                sh("ip", "netns", "add", ns)
                self.created.append(ns)
                sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "link", "add", self.veth[0], "netns", self.node, "type", "veth", "peer", "name", self.veth[1], "netns", self.remote)
            for ns, dev, ip, ip6 in ((self.node, self.veth[0], self.node_ip, self.node_ip6), (self.remote, self.veth[1], self.remote_ip, self.remote_ip6)):
                sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "brd", "+", "dev", dev)
                sh("ip", "-n", ns, "addr", "add", f"{ip6}/64", "dev", dev, "nodad")
                sh("ip", "-n", ns, "link", "set", dev, "up")
        except Exception:
            self.close()
            raise

    def nsenter(self, ns):
        return ["nsenter", f"--net=/run/netns/{ns}"]

    def run_in(self, ns, *cmd, check=True, timeout=30):
        return sh(*self.nsenter(ns), *cmd, check=check, timeout=timeout)

    def spawn(self, ns, cmd, cgroup=None, **kw):
        """Starts cmd inside namespace ns, first moving it into cgroup (a directory)."""
        full = self.nsenter(ns) + list(cmd)
        if cgroup is not None:
            full = ["sh", "-c", f'echo $$ > "{cgroup}/cgroup.procs" && exec "$@"', "sh"] + full
        proc = subprocess.Popen(full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
        self.processes.append(proc)
        return proc

    def server(self, mode="echo", port=8080, ns=None, cgroup=None, record=None, bind=None):
        """A peer.py server in namespace ns (default: remote), optionally in a
        workload cgroup; with `record`, it appends one line per accepted
        connection to that file (so a test can show nothing was dialled); with
        `bind` (a list of addresses), it listens on those only."""
        args = [sys.executable, str(PEER), "serve", mode, str(port), str(record or "")] + ([",".join(bind)] if bind else [])
        return self.serve(ns or self.remote, args, cgroup=cgroup, what=f"test server {mode} on port {port}")

    def serve(self, ns, argv, cgroup=None, what="a test server"):
        """Starts a server that prints "listening" once it is, and waits for
        that line (at most START_TIMEOUT seconds)."""
        proc = self.spawn(ns, argv, cgroup=cgroup)
        try:
            line = read_line(proc.stdout, START_TIMEOUT, f"{what} did not say it was listening")
        except AssertionError:
            proc.kill()
            raise AssertionError(f"{what} did not start within {START_TIMEOUT}s: {proc.stderr.read()}")
        assert line.strip() == "listening", f"{what} did not start: {proc.stderr.read()}"
        return proc

    def client(self, args, cgroup=None, timeout=120, ns=None):
        """Runs a peer.py client in namespace ns (default: node), in cgroup;
        returns its JSON result."""
        proc = self.spawn(ns or self.node, [sys.executable, str(PEER)] + [str(a) for a in args], cgroup=cgroup)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            raise AssertionError(f"client {args} did not finish within {timeout}s: {err}")
        assert proc.returncode == 0, f"client {args} failed: {err}"
        return json.loads(out)

    def nft(self, *args, check=True):
        return self.run_in(self.node, "nft", *args, check=check)

    def has_table(self):
        return self.nft("list", "table", "inet", "mesh_agent", check=False).returncode == 0

    def close(self):
        for proc in self.processes:
            if proc.poll() is None:
                proc.kill()
            try:
                proc.communicate(timeout=10)
            except Exception:
                pass
        for ns in reversed(self.created):
            sh("ip", "netns", "delete", ns, check=False)
        self.created = []


class Cgroups:
    """Workload cgroups below a directory of this test's own."""

    def __init__(self, name):
        self.mount = cgroup2_mount()
        self.base_rel = f"/ma-test-{os.getpid()}-{next(_counter)}-{name}"[:60]
        self.base = self.mount / self.base_rel.lstrip("/")
        self.base.mkdir()

    def path(self, name):
        """The cgroup path as the agent's config writes it."""
        return f"{self.base_rel}/{name}"

    def make(self, name):
        directory = self.base / name
        directory.mkdir(parents=True, exist_ok=True)
        return directory

    def directory(self, name):
        return self.base / name

    def close(self):
        # Deepest first; any process left in them is one this test started.
        directories = sorted((p for p in self.base.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
        for directory in directories + [self.base]:
            procs = directory / "cgroup.procs"
            if procs.exists():
                for pid in procs.read_text().split():
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            for _ in range(100):
                try:
                    directory.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.05)


def agentctl(*args, check=True, timeout=30):
    return sh(str(BIN / "agentctl"), *[str(a) for a in args], check=check, timeout=timeout)


def make_ca(directory, trust_domain=TRUST_DOMAIN, node="test-node"):
    """An offline root and a node intermediate, made the way operators make them."""
    directory = Path(directory)
    if not (directory / "node" / "intermediate.pem").exists():
        agentctl("ca", "init", "--trust-domain", trust_domain, "--out", directory / "root")
        agentctl("ca", "issue-intermediate", "--ca", directory / "root", "--name", node, "--out", directory / "node")
    return directory / "node"


def make_node_cas(directory, nodes, trust_domain=TRUST_DOMAIN):
    """One offline root (DIR/root) and an intermediate per node (DIR/NODE), each
    with intermediate.pem, intermediate.key and bundle.pem; returns {node: DIR/NODE}."""
    directory = Path(directory)
    if not (directory / "root" / "root.pem").exists():
        agentctl("ca", "init", "--trust-domain", trust_domain, "--out", directory / "root")
    result = {}
    for node in nodes:
        if not (directory / node / "intermediate.pem").exists():
            agentctl("ca", "issue-intermediate", "--ca", directory / "root", "--name", node, "--out", directory / node)
        result[node] = directory / node
    return result


class Agent:
    """The real mesh-agent binary, running in the node namespace (or in
    `namespace`, e.g. the remote one when both ends run an agent).

    `ca` is a directory with intermediate.pem, intermediate.key and bundle.pem;
    without it the agent gets a CA of its own below tmp_path (or `ca_dir`).
    Settings written to the config when given: node, meshNetworks (a list),
    mtlsMode, policyDir, rootNamespace, certificateTTL, failureMode, drainTimeout,
    http (a dict), limits (a dict), accessLogRequests ("all" or "denied"), graph (a dict; the database is
    tmp_path/graph.db unless it says).
    """

    def __init__(self, topology, tmp_path, workloads, namespace=None, ca=None, **settings):
        self.topology = topology
        self.namespace = namespace or topology.node
        self.tmp_path = tmp_path
        self.config_path = tmp_path / "agent.yaml"
        self.access_log = tmp_path / "access.log"
        self.stderr_path = tmp_path / "agent.stderr"
        self.admin_socket = tmp_path / "admin.sock"
        self.graph_db = tmp_path / "graph.db"
        self.ca = Path(ca) if ca is not None else make_ca(settings.pop("ca_dir", tmp_path / "ca"))
        self.settings = settings
        self.write_config(workloads)
        self.proc = None

    def write_config(self, workloads, **overrides):
        settings = {**self.settings, **overrides}
        lines = [
            f"trustDomain: {TRUST_DOMAIN}",
            f"node: {settings.get('node', 'test-node')}",
            (f"accessLog: {{path: {self.access_log}, requests: {settings['accessLogRequests']}}}"
             if settings.get("accessLogRequests") else f"accessLog: {self.access_log}"),
            f"failureMode: {settings.get('failureMode', 'open')}",
            f"drainTimeout: {settings.get('drainTimeout', '5s')}",
            f"certificateTTL: {settings.get('certificateTTL', '24h')}",
            f"adminSocket: {self.admin_socket}",
            "ca:",
            f"  certificate: {self.ca / 'intermediate.pem'}",
            f"  key: {self.ca / 'intermediate.key'}",
            f"  trustBundle: {self.ca / 'bundle.pem'}",
        ]
        if settings.get("meshNetworks") is not None:
            lines.append(f"meshNetworks: [{', '.join(json.dumps(str(n)) for n in settings['meshNetworks'])}]")
        for key in ("mtlsMode", "policyDir", "rootNamespace", "captureMode"):
            if settings.get(key) is not None:
                lines.append(f"{key}: {settings[key]}")
        if settings.get("http") is not None:
            lines.append(f"http: {json.dumps(settings['http'])}")
        if settings.get("limits") is not None:
            lines.append(f"limits: {json.dumps(settings['limits'])}")
        if settings.get("workloadSources") is not None:
            lines.append(f"workloadSources: {json.dumps(settings['workloadSources'])}")
        # The graph database beside the agent's other files, never the host's
        # /var/lib/mesh-agent; `graph` (a dict) adds or overrides keys.
        lines.append(f"graph: {json.dumps({'database': str(self.graph_db), **(settings.get('graph') or {})})}")
        lines.append("workloads:")
        for w in workloads:
            lines += [
                f"  - name: {w['name']}",
                f"    namespace: {w.get('namespace', 'test')}",
                f"    cgroup: {w['cgroup']}",
            ]
            if w.get("serviceAccount"):
                lines.append(f"    serviceAccount: {w['serviceAccount']}")
            if w.get("labels"):
                lines.append(f"    labels: {json.dumps(w['labels'])}")
            if w.get("ports"):
                lines.append(f"    ports: [{', '.join(str(p) for p in w['ports'])}]")
            for key in ("captureMode", "netns"):
                if w.get(key):
                    lines.append(f"    {key}: {w[key]}")
            if w.get("captureExclusions"):
                lines.append(f"    captureExclusions: {json.dumps(w['captureExclusions'])}")
        if not workloads:
            lines[-1] = "workloads: []"
        self.config_path.write_text("\n".join(lines) + "\n")

    def start(self, expect_ready=True, env=None):
        """env: extra environment variables for the agent (e.g. NOTIFY_SOCKET)."""
        self.stderr_file = open(self.stderr_path, "a")
        self.proc = subprocess.Popen(
            self.topology.nsenter(self.namespace) + [str(BIN / "mesh-agent"), "--config", str(self.config_path), "--log-level", "debug"],
            stdout=self.stderr_file, stderr=self.stderr_file, env={**os.environ, **(env or {})},
        )
        self.topology.processes.append(self.proc)
        if expect_ready:
            wait_for(lambda: "mesh-agent ready" in self.log() or self.proc.poll() is not None, timeout=30, what="the agent to become ready")
            assert self.proc.poll() is None, f"agent exited with {self.proc.returncode}:\n{self.log()}"
        return self

    def log(self):
        return self.stderr_path.read_text() if self.stderr_path.exists() else ""

    def stop(self, sig=signal.SIGTERM, timeout=30):
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=timeout)
        self.stderr_file.close()
        return code

    def reload(self):
        self.proc.send_signal(signal.SIGHUP)

    def ctl(self, *args, check=True):
        """agentctl against this agent's admin socket."""
        return agentctl(*args, "--socket", self.admin_socket, check=check)

    def metrics(self):
        """The agent's Prometheus text, from its metrics port in its namespace."""
        return self.topology.run_in(self.namespace, sys.executable, "-c",
                                    "import urllib.request; print(urllib.request.urlopen("
                                    "'http://127.0.0.1:15020/metrics', timeout=10).read().decode())").stdout

    def entries(self):
        if not self.access_log.exists():
            return []
        entries = []
        lines = self.access_log.read_text().splitlines()
        for index, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                if index != len(lines) - 1:  # only the line being written may be partial
                    raise
        return entries

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def rss_kib(self):
        """Resident memory of the agent process (the binary nsenter exec'd)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def find_entry(self, predicate, timeout=5.0, what="an access-log entry", since=0):
        """The first access-log entry (from index `since` on) for which
        predicate(entry) holds, waiting for it."""
        def find():
            for entry in self.entries()[since:]:
                if predicate(entry):
                    return entry
            return None
        return wait_for(find, timeout=timeout, what=what)

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if getattr(self, "stderr_file", None) is not None and not self.stderr_file.closed:
            self.stderr_file.close()

    def entry_for_port(self, local_port, timeout=5.0, src_identity=None):
        """The entry of the connection from `local_port`; with `src_identity`,
        only that workload's (an earlier test's connection may have used the
        same ephemeral port)."""
        def find():
            for entry in self.entries():
                if entry.get("src_addr", "") and entry["src_addr"].rsplit(":", 1)[1] == str(local_port) \
                        and (src_identity is None or entry.get("src_identity") == src_identity):
                    return entry
            return None
        return wait_for(find, timeout=timeout, what=f"an access-log entry for source port {local_port}")


class TwoNodes:
    """Two nodes joined by a veth pair, each able to run its own agent: node "a"
    is the topology's `node` namespace, node "b" its `remote` one. Both node CAs
    are issued from one shared root (DIR/ca/root -> DIR/ca/node-a, DIR/ca/node-b).
    Workload cgroups for either node live below one test directory (`cgroups`)."""

    def __init__(self, tmp_path, name):
        self.tmp = Path(tmp_path)
        self.agents = []
        self.topology = Topology()
        try:
            self.cgroups = Cgroups(name)
        except BaseException:
            self.topology.close()
            raise
        try:
            self.cas = make_node_cas(self.tmp / "ca", ["node-a", "node-b"])
        except BaseException:
            self.close()
            raise

    def namespace(self, which):
        return self.topology.node if which == "a" else self.topology.remote

    def ip(self, which, family="ipv4"):
        t = self.topology
        if family == "ipv4":
            return t.node_ip if which == "a" else t.remote_ip
        return t.node_ip6 if which == "a" else t.remote_ip6

    def agent(self, which, workloads, directory=None, **settings):
        """An agent (not started) for node "a" or "b", with its own config, admin
        socket, access log and node CA (default: that node's CA under the shared root)."""
        directory = Path(directory or self.tmp / which)
        directory.mkdir(parents=True, exist_ok=True)
        settings.setdefault("node", f"node-{which}")
        settings.setdefault("ca", self.cas[f"node-{which}"])
        agent = Agent(self.topology, directory, workloads, namespace=self.namespace(which), **settings)
        self.agents.append(agent)
        return agent

    def workload(self, name, namespace="test", **extra):
        """A workload entry whose cgroup directory exists."""
        self.cgroups.make(name)
        return {"name": name, "namespace": namespace, "cgroup": self.cgroups.path(name), **extra}

    def close(self):
        for agent in self.agents:
            try:
                agent.kill()
            except Exception:
                pass
        self.topology.close()
        if getattr(self, "cgroups", None) is not None:
            self.cgroups.close()


@pytest.fixture
def two_nodes(tmp_path, request):
    nodes = TwoNodes(tmp_path, request.node.name.split("[")[0][-20:])
    try:
        yield nodes
    finally:
        nodes.close()


@pytest.fixture
def topology():
    topo = Topology()
    try:
        yield topo
    finally:
        topo.close()


@pytest.fixture
def cgroups(request):
    groups = Cgroups(request.node.name.split("[")[0][-20:])
    try:
        yield groups
    finally:
        groups.close()


@pytest.fixture
def make_agent(topology, tmp_path):
    agents = []

    def make(workloads, **settings):
        agent = Agent(topology, tmp_path, workloads, **settings)
        agents.append(agent)
        return agent

    yield make
    for agent in agents:
        if agent.proc is not None and agent.proc.poll() is None:
            agent.proc.kill()
            agent.proc.wait()


class Pods:
    """A pod namespace on each of the two nodes, routed between them:
    pod a 10.77.P.2 behind node a (10.77.P.1), pod b 10.77.Q.2 behind node b."""

    def __init__(self, nodes):
        self.nodes = nodes
        t = nodes.topology
        self.created = []
        self.pod = {"a": f"{t.node}-pod", "b": f"{t.remote}-pod"}
        subnet = {"a": (t.index + 100) % 250 + 1, "b": (t.index + 175) % 250 + 1}
        self.ip = {which: f"10.77.{subnet[which]}.2" for which in "ab"}
        try:
            for which in "ab":
                node, pod = nodes.namespace(which), self.pod[which]
                sh("ip", "netns", "add", pod)
                self.created.append(pod)
                sh("ip", "-n", pod, "link", "set", "lo", "up")
                host_end, pod_end = f"{t.veth[0][:-1]}{which}h", f"{t.veth[0][:-1]}{which}p"
                sh("ip", "link", "add", host_end, "netns", node, "type", "veth", "peer", "name", pod_end, "netns", pod)
                sh("ip", "-n", node, "addr", "add", f"10.77.{subnet[which]}.1/24", "dev", host_end)
                sh("ip", "-n", node, "link", "set", host_end, "up")
                sh("ip", "-n", pod, "addr", "add", f"{self.ip[which]}/24", "dev", pod_end)
                sh("ip", "-n", pod, "link", "set", pod_end, "up")
                sh("ip", "-n", pod, "route", "add", "default", "via", f"10.77.{subnet[which]}.1")
                t.run_in(node, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
            sh("ip", "-n", t.node, "route", "add", f"10.77.{subnet['b']}.0/24", "via", t.remote_ip)
            sh("ip", "-n", t.remote, "route", "add", f"10.77.{subnet['a']}.0/24", "via", t.node_ip)
        except BaseException:
            self.close()
            raise

    def netns(self, which):
        return f"/run/netns/{self.pod[which]}"

    def close(self):
        for pod in reversed(self.created):
            sh("ip", "netns", "delete", pod, check=False)
        self.created = []


@pytest.fixture
def pods(tmp_path, request):
    nodes = TwoNodes(tmp_path, request.node.name.split("[")[0][-20:])
    try:
        pods = Pods(nodes)
    except BaseException:
        nodes.close()
        raise
    try:
        yield pods
    finally:
        for agent in nodes.agents:
            if agent.alive():
                agent.stop()
        pods.close()
        nodes.close()


class KubeletCgroups:
    """Pod cgroups where a kubelet with the cgroupfs driver makes them."""

    def __init__(self):
        self.root = Path(cgroup2_mount())
        self.made = []

    def pod(self, uid):
        path = self.root / "kubepods" / "besteffort" / f"pod{uid}"
        for directory in (self.root / "kubepods", self.root / "kubepods" / "besteffort", path):
            if not directory.exists():
                directory.mkdir()
                self.made.append(directory)
        return path

    def close(self):
        for directory in reversed(self.made):
            try:
                directory.rmdir()
            except OSError:
                pass


# ---------------------------------------------------------------- the wire

def start_capture(topology, ns, device, path):
    # --immediate-mode: without it, packets that arrived shortly before SIGINT
    # can be counted "received by filter" yet never written.
    proc = topology.spawn(ns, ["tcpdump", "-i", device, "-w", str(path), "-U", "-s", "0", "-n", "-Z", "root",
                               "--immediate-mode", "tcp"])
    line = read_line(proc.stderr, 15, "tcpdump did not start")
    assert "listening on" in line, f"tcpdump did not start: {line}"
    return proc


def stop_capture(proc, path):
    # The last segments of the exchange (ACKs, FINs) may still be on their way
    # to the file: stop once it has not grown for a while.
    sizes = []

    def settled():
        sizes.append(path.stat().st_size if path.exists() else 0)
        return len(sizes) >= 4 and len(set(sizes[-4:])) == 1

    wait_for(settled, timeout=10, interval=0.05, what=f"the capture {path.name} to stop growing")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=15)
    assert re.search(r"^0 packets dropped by kernel", err, re.M), f"the capture is incomplete: {err}"


def pcap_segments(path):
    """(source port, destination port, payload) of every TCP segment in a pcap file."""
    data = Path(path).read_bytes()
    assert len(data) > 24, "the capture is empty"
    magic = data[:4]
    endian = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    linktype = struct.unpack(endian + "I", data[20:24])[0]
    segments = []
    offset = 24
    while offset + 16 <= len(data):
        _, _, included, _ = struct.unpack(endian + "IIII", data[offset:offset + 16])
        packet = data[offset + 16:offset + 16 + included]
        offset += 16 + included
        if linktype == 1:
            ethertype, l3 = struct.unpack(">H", packet[12:14])[0], packet[14:]
        elif linktype == 113:
            ethertype, l3 = struct.unpack(">H", packet[14:16])[0], packet[16:]
        elif linktype == 276:
            ethertype, l3 = struct.unpack(">H", packet[0:2])[0], packet[20:]
        else:
            raise AssertionError(f"unexpected pcap link type {linktype}")
        if ethertype == 0x0800 and len(l3) >= 20:
            header, proto = (l3[0] & 15) * 4, l3[9]
            l4 = l3[header:struct.unpack(">H", l3[2:4])[0]]
        elif ethertype == 0x86DD and len(l3) >= 40:
            proto = l3[6]
            l4 = l3[40:40 + struct.unpack(">H", l3[4:6])[0]]
        else:
            continue
        if proto != 6 or len(l4) < 20:
            continue
        sport, dport = struct.unpack(">HH", l4[:4])
        segments.append((sport, dport, l4[(l4[12] >> 4) * 4:]))
    return segments
