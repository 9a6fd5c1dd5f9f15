#!/usr/bin/env python3
"""make bench: every path on one two-node topology, in one run.

Two network namespaces joined by a veth pair are the nodes. On node B, nginx and
iperf3 listen twice: on ports the workload "orders" declares (reached through
the mesh) and on ports no workload declares (reached directly, by passthrough
and by HAProxy). The paths:

  direct           client on A -> server on B, no proxy
  mesh             the client in workload cgroup "checkout": both agents, HBONE mTLS
  mesh-passthrough the client in "checkout" to an address outside meshNetworks:
                   node A's agent proxies plaintext
  haproxy-mtls     client on A -> HAProxy on A (plain in, TLS 1.3 out with a
                   client certificate) -> HAProxy on B (TLS in, verify required,
                   plain out) -> server; one thread each, P-256 certificates

and what is measured on each: iperf3 with 1 and 4 streams, wrk keep-alive (16
connections) and wrk with "Connection: close" against nginx. For the mesh also:
agent memory per idle proxied connection, agent RSS at idle with 100
workloads, agent CPU per GB, and the request-rate cost of an L7 policy. For
pods (captureMode netns): pod-to-pod keep-alive and new-connection rates
through the mesh, beside host mode's; and on a third node alone, CNI ADD to
capture installed for BENCH_ENROLLED_PODS (200) pods made by the reference
bridge plugin, with the agent's memory per enrolled pod.

Results go to bench/results/<time>.json; docs/benchmarks.md and
docs/benchmarks.svg are written from them. Run as root from the repository:
  python3 bench/run.py            (BENCH_SECONDS, BENCH_ROUNDS, BENCH_IDLE_CONNECTIONS, BENCH_EVENT_LOOPS, BENCH_GRAPH, MESH_AGENT_BIN)

To look at one part while working on it, BENCH_PATHS (e.g. "mesh haproxy-mtls")
and BENCH_PARTS (any of "iperf wrk idle policy workloads pods graph enrollment micro") narrow the run; a
narrowed run prints its JSON and writes no result or report. BENCH_PROFILE=DIR
records `perf record -g` of both agents during each mesh measurement into DIR.
"""
import contextlib
import datetime
import json
import os
import platform
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(os.environ.get("MESH_AGENT_BIN", ROOT / ".build" / "release"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "6"))
# Each measurement is taken ROUNDS times, the paths taking turns within a round,
# and the median is reported: on a shared machine one sample of a path can land
# in a slow moment the others missed, and a ratio of single samples swings by
# 10-20% from run to run.
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
# BENCH_GRAPH=off runs the agents without the service graph, to measure what it costs.
GRAPH_OFF = os.environ.get("BENCH_GRAPH") == "off"
# BENCH_EVENT_LOOPS=N runs both agents with limits.eventLoops N (default: one per core).
EVENT_LOOPS = f", eventLoops: {int(os.environ['BENCH_EVENT_LOOPS'])}" if os.environ.get("BENCH_EVENT_LOOPS") else ""
IDLE_CONNECTIONS = int(os.environ.get("BENCH_IDLE_CONNECTIONS", "10000"))
TAG = f"mb{os.getpid()}"
A, B, C = f"ma-{TAG}-a", f"ma-{TAG}-b", f"ma-{TAG}-c"
A_IP, B_IP = "10.77.252.1", "10.77.252.2"
A_IP_OUTSIDE, B_IP_OUTSIDE = "10.77.253.1", "10.77.253.2"   # outside meshNetworks: passthrough
MESH_HTTP, OTHER_HTTP, MESH_IPERF, OTHER_IPERF = 8080, 8081, 5201, 5202
HAPROXY_HTTP, HAPROXY_IPERF, HAPROXY_TLS_HTTP, HAPROXY_TLS_IPERF = 18080, 15211, 18443, 15443
ALL_PATHS = ["direct", "mesh", "mesh-passthrough", "haproxy-mtls"]
ALL_PARTS = ["iperf", "wrk", "idle", "policy", "workloads", "pods", "graph", "enrollment", "micro"]
# Pods (captureMode netns): a pod namespace behind each node, routed between them.
POD_A, POD_B = f"ma-{TAG}-pa", f"ma-{TAG}-pb"
POD_A_IP, POD_B_IP = "10.77.250.2", "10.77.251.2"
POD_NETWORKS = "10.77.250.0/23"
POD_HTTP = 8080
ENROLLED_PODS = int(os.environ.get("BENCH_ENROLLED_PODS", "200"))
CNI_BIN = Path("/usr/lib/cni")
PATHS = os.environ.get("BENCH_PATHS", " ".join(ALL_PATHS)).split()
PARTS = os.environ.get("BENCH_PARTS", " ".join(ALL_PARTS)).split()
PROFILE = os.environ.get("BENCH_PROFILE")
for name in PATHS:
    if name not in ALL_PATHS:
        sys.exit(f"BENCH_PATHS: unknown path {name!r}; the paths are {' '.join(ALL_PATHS)}")
for name in PARTS:
    if name not in ALL_PARTS:
        sys.exit(f"BENCH_PARTS: unknown part {name!r}; the parts are {' '.join(ALL_PARTS)}")
COMPLETE = PATHS == ALL_PATHS and PARTS == ALL_PARTS
if PROFILE and not shutil.which("perf"):
    sys.exit("BENCH_PROFILE needs perf: apt-get install linux-perf")


def log(message):
    print(message, file=sys.stderr, flush=True)


def run(*cmd, check=True, capture=True, timeout=600, **kw):
    return subprocess.run([str(c) for c in cmd], check=check, capture_output=capture, text=True, timeout=timeout, **kw)


def cgroup2_mount():
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        if right.split(" ")[0] == "cgroup2":
            return Path(left.split(" ")[4])
    sys.exit("no cgroup v2 mount")


class Bench:
    def __init__(self):
        self.work = Path(tempfile.mkdtemp(prefix="mesh-agent-bench."))
        self.cg = cgroup2_mount()
        self.cgroups = []
        self.processes = []
        self.namespaces = []

    # ------------------------------------------------------------ plumbing

    def ns(self, name):
        return ["nsenter", f"--net=/run/netns/{name}"]

    def cgroup(self, name):
        path = self.cg / f"ma-{TAG}-{name}"
        path.mkdir(exist_ok=True)
        if path not in self.cgroups:
            self.cgroups.append(path)
        return path

    def command(self, namespace, cmd, cgroup=None):
        full = self.ns(namespace) + [str(c) for c in cmd]
        if cgroup is not None:
            full = ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(cgroup)] + full
        return full

    def spawn(self, namespace, cmd, cgroup=None, **kw):
        proc = subprocess.Popen(self.command(namespace, cmd, cgroup), **kw)
        self.processes.append(proc)
        return proc

    def output(self, namespace, cmd, cgroup=None, timeout=600):
        return subprocess.run(self.command(namespace, cmd, cgroup), capture_output=True, text=True, timeout=timeout, check=True).stdout

    def close(self):
        for proc in reversed(self.processes):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.processes):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for path in reversed(self.cgroups):
            for pid in (path / "cgroup.procs").read_text().split() if path.exists() else []:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            for _ in range(50):
                try:
                    path.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)
        for namespace in self.namespaces:
            run("ip", "netns", "delete", namespace, check=False)
        shutil.rmtree(self.work, ignore_errors=True)

    # ------------------------------------------------------------ topology

    def topology(self):
        for namespace in (A, B, C):
            run("ip", "netns", "add", namespace)
            self.namespaces.append(namespace)
            run("ip", "-n", namespace, "link", "set", "lo", "up")
        run("ip", "link", "add", f"v{TAG}", "netns", A, "type", "veth", "peer", "name", f"w{TAG}", "netns", B)
        for namespace, device, addresses in ((A, f"v{TAG}", (A_IP, A_IP_OUTSIDE)), (B, f"w{TAG}", (B_IP, B_IP_OUTSIDE))):
            for address in addresses:
                run("ip", "-n", namespace, "addr", "add", f"{address}/24", "dev", device)
            run("ip", "-n", namespace, "link", "set", device, "up")
        if "pods" in PARTS:
            for node, pod, pod_ip, peer_ip, far in ((A, POD_A, POD_A_IP, B_IP, POD_B_IP), (B, POD_B, POD_B_IP, A_IP, POD_A_IP)):
                gateway = pod_ip.rsplit(".", 1)[0] + ".1"
                run("ip", "netns", "add", pod)
                self.namespaces.append(pod)
                run("ip", "-n", pod, "link", "set", "lo", "up")
                run("ip", "link", "add", f"h{pod[-2:]}{TAG}"[:15], "netns", node, "type", "veth", "peer", "name", "eth0", "netns", pod)
                run("ip", "-n", node, "addr", "add", f"{gateway}/24", "dev", f"h{pod[-2:]}{TAG}"[:15])
                run("ip", "-n", node, "link", "set", f"h{pod[-2:]}{TAG}"[:15], "up")
                run("ip", "-n", pod, "addr", "add", f"{pod_ip}/24", "dev", "eth0")
                run("ip", "-n", pod, "link", "set", "eth0", "up")
                run("ip", "-n", pod, "route", "add", "default", "via", gateway)
                run(*self.ns(node), "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
                run("ip", "-n", node, "route", "add", far.rsplit(".", 1)[0] + ".0/24", "via", peer_ip)

    def certificates(self):
        """A mesh CA (agentctl) for the agents, and P-256 certificates from one
        CA for the HAProxy pair."""
        run(BIN / "agentctl", "ca", "init", "--trust-domain", "cluster.local", "--out", self.work / "root")
        for node in ("a", "b", "c"):
            run(BIN / "agentctl", "ca", "issue-intermediate", "--ca", self.work / "root", "--name", f"node-{node}", "--out", self.work / node)
        pki = self.work / "haproxy"
        pki.mkdir()
        run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
            "-subj", "/CN=bench-ca", "-keyout", pki / "ca.key", "-out", pki / "ca.pem")
        for side in ("a", "b"):
            run("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", f"/CN=haproxy-{side}",
                "-keyout", pki / f"{side}.key", "-out", pki / f"{side}.csr")
            run("openssl", "x509", "-req", "-in", pki / f"{side}.csr", "-CA", pki / "ca.pem", "-CAkey", pki / "ca.key",
                "-CAcreateserial", "-days", "2", "-out", pki / f"{side}.crt")
            (pki / f"{side}.pem").write_text((pki / f"{side}.crt").read_text() + (pki / f"{side}.key").read_text())
        return pki

    def agent_config(self, node, workloads, mesh_networks, mtls="STRICT", policies=None):
        directory = self.work / node
        policy_dir = policies or directory / "policies"
        policy_dir.mkdir(exist_ok=True)
        lines = [
            "trustDomain: cluster.local", f"node: node-{node}", f"adminSocket: {directory}/admin.sock",
            f"accessLog: {directory}/access.log", f"policyDir: {policy_dir}", f"mtlsMode: {mtls}",
            "accessLogLimit: {linesPerSecond: 0}",
            f"graph: {{database: {directory}/graph.db, enabled: {'false' if GRAPH_OFF else 'true'}}}",
            f"ca: {{certificate: {directory}/intermediate.pem, key: {directory}/intermediate.key, trustBundle: {directory}/bundle.pem}}",
            f"meshNetworks: [{mesh_networks}]", f"limits: {{maxConnections: 100000{EVENT_LOOPS}}}", "workloads:",
        ]
        lines += workloads
        path = directory / "agent.yaml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def start_agent(self, namespace, config, node):
        stderr = open(self.work / node / "agent.log", "w")
        proc = self.spawn(namespace, [BIN / "mesh-agent", "--config", config], stdout=stderr, stderr=stderr)
        for _ in range(300):
            if "mesh-agent ready" in (self.work / node / "agent.log").read_text():
                return proc
            if proc.poll() is not None:
                break
            time.sleep(0.1)
        sys.exit(f"agent {node} did not start:\n{(self.work / node / 'agent.log').read_text()[-2000:]}")

    def servers(self, orders):
        nginx = self.work / "nginx.conf"
        nginx.write_text(f"""
daemon off; worker_processes 1; worker_rlimit_nofile 20000; pid {self.work}/nginx.pid; error_log {self.work}/nginx.err;
events {{ worker_connections 19000; }}
http {{
  access_log off; keepalive_requests 1000000; keepalive_timeout 300s; client_header_timeout 300s;
  client_body_temp_path {self.work}/nginx-body; proxy_temp_path {self.work}/nginx-proxy;
  fastcgi_temp_path {self.work}/nginx-fcgi; uwsgi_temp_path {self.work}/nginx-uwsgi; scgi_temp_path {self.work}/nginx-scgi;
  server {{ listen {MESH_HTTP} reuseport backlog=65535; listen {OTHER_HTTP} backlog=65535; location / {{ return 200 "ok\\n"; }} }}
}}
""")
        self.spawn(B, ["nginx", "-c", nginx], cgroup=orders, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for port in (MESH_IPERF, OTHER_IPERF):
            self.spawn(B, ["iperf3", "-s", "-p", port], cgroup=orders, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def haproxy(self, pki):
        common = "global\n  nbthread 1\n  maxconn 9000\n  ssl-default-server-options ssl-min-ver TLSv1.3\n  ssl-default-bind-options ssl-min-ver TLSv1.3\n" \
                 "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 300s\n  timeout server 300s\n"
        a = common + f"""
frontend http
  bind 127.0.0.1:{HAPROXY_HTTP}
  default_backend http
backend http
  server b {B_IP}:{HAPROXY_TLS_HTTP} ssl crt {pki}/a.pem ca-file {pki}/ca.pem verify required verifyhost haproxy-b
frontend iperf
  bind 127.0.0.1:{HAPROXY_IPERF}
  default_backend iperf
backend iperf
  server b {B_IP}:{HAPROXY_TLS_IPERF} ssl crt {pki}/a.pem ca-file {pki}/ca.pem verify required verifyhost haproxy-b
"""
        b = common + f"""
frontend http
  bind {B_IP}:{HAPROXY_TLS_HTTP} ssl crt {pki}/b.pem ca-file {pki}/ca.pem verify required
  default_backend http
backend http
  server nginx 127.0.0.1:{OTHER_HTTP}
frontend iperf
  bind {B_IP}:{HAPROXY_TLS_IPERF} ssl crt {pki}/b.pem ca-file {pki}/ca.pem verify required
  default_backend iperf
backend iperf
  server iperf 127.0.0.1:{OTHER_IPERF}
"""
        haproxies = {}
        for namespace, name, text in ((A, "a", a), (B, "b", b)):
            path = self.work / f"haproxy-{name}.cfg"
            path.write_text(text)
            run("haproxy", "-c", "-f", path)
            haproxies[name] = self.spawn(namespace, ["haproxy", "-db", "-f", path], stdout=subprocess.DEVNULL,
                                         stderr=open(self.work / f"haproxy-{name}.log", "w"))
        return haproxies

    # ------------------------------------------------------------ measurements

    def targets(self, path):
        """(namespace, cgroup, http url, iperf host, iperf port) for a path."""
        client = self.cgroup("checkout")
        return {
            "direct": (A, None, f"http://{B_IP}:{OTHER_HTTP}/", B_IP, OTHER_IPERF),
            "mesh": (A, client, f"http://{B_IP}:{MESH_HTTP}/", B_IP, MESH_IPERF),
            "mesh-passthrough": (A, client, f"http://{B_IP_OUTSIDE}:{OTHER_HTTP}/", B_IP_OUTSIDE, OTHER_IPERF),
            "haproxy-mtls": (A, None, f"http://127.0.0.1:{HAPROXY_HTTP}/", "127.0.0.1", HAPROXY_IPERF),
        }[path]

    def iperf(self, path, streams):
        namespace, cgroup, _, host, port = self.targets(path)
        out = self.output(namespace, ["iperf3", "-c", host, "-p", port, "-t", SECONDS, "-P", streams, "-J"], cgroup)
        report = json.loads(out)
        if "error" in report:
            logs = "".join(f"\n--- {f.name}:\n{f.read_text()[-1500:]}" for f in sorted(self.work.glob("haproxy-*.log")))
            sys.exit(f"iperf3 on {path} failed: {report['error']}{logs if path == 'haproxy-mtls' else ''}")
        end = report["end"]
        return {"gbit_s": round(end["sum_received"]["bits_per_second"] / 1e9, 3), "bytes": end["sum_received"]["bytes"]}

    def wrk(self, path, close):
        namespace, cgroup, url, _, _ = self.targets(path)
        cmd = ["wrk", "-t2", "-c16", f"-d{SECONDS}s", "--latency"] + (["-H", "Connection: close"] if close else []) + [url]
        out = self.output(namespace, cmd, cgroup)
        return parse_wrk(out)

    @contextlib.contextmanager
    def cpu_of(self, processes):
        """User and system CPU seconds the processes spend inside the block."""
        spent = types.SimpleNamespace(user=0.0, system=0.0, total=0.0)
        before = {name: self.cpu_split(proc) for name, proc in processes.items()}
        yield spent
        for name, proc in processes.items():
            user, system = self.cpu_split(proc)
            spent.user += user - before[name][0]
            spent.system += system - before[name][1]
        spent.total = spent.user + spent.system

    def cpu_split(self, proc):
        """(user, system) CPU seconds of a process so far."""
        fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) / os.sysconf("SC_CLK_TCK"), int(fields[12]) / os.sysconf("SC_CLK_TCK")

    def rss_kib(self, proc):
        for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def idle_connections(self, agents, count):
        """Agent memory per idle proxied connection: `count` connections from the
        workload to nginx through the mesh, opened and left idle."""
        holder_code = (
            "import socket,sys,resource,time\n"
            "s,h=resource.getrlimit(resource.RLIMIT_NOFILE); resource.setrlimit(resource.RLIMIT_NOFILE,(h,h))\n"
            "n=int(sys.argv[3]); socks=[]\n"
            "for i in range(n):\n"
            "  c=socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=30); socks.append(c)\n"
            "print(len(socks),flush=True); sys.stdin.readline()\n")
        before = {name: self.rss_kib(proc) for name, proc in agents.items()}
        holder = self.spawn(A, [sys.executable, "-c", holder_code, B_IP, MESH_HTTP, count], cgroup=self.cgroup("checkout"),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        opened = int(holder.stdout.readline().strip() or 0)
        time.sleep(3)
        during = {name: self.rss_kib(proc) for name, proc in agents.items()}
        holder.stdin.write("\n")
        holder.stdin.flush()
        holder.wait(timeout=60)
        return {
            "connections": opened,
            "rss_kib_before": before, "rss_kib_with_connections": during,
            "kib_per_connection": {name: round((during[name] - before[name]) / max(opened, 1), 2) for name in agents},
        }

    def idle_with_workloads(self, count=100):
        """RSS of an agent at idle with `count` present workloads (node C, alone)."""
        entries = []
        for index in range(count):
            cgroup = self.cgroup(f"w{index}")
            entries.append(f"  - {{name: w{index}, namespace: bench, cgroup: /{cgroup.name}, ports: [{20000 + index}]}}")
        config = self.agent_config("c", entries, "10.77.254.0/24")
        agent = self.start_agent(C, config, "c")
        for _ in range(100):
            status = json.loads(run(BIN / "agentctl", "status", "-o", "json", "--socket", self.work / "c" / "admin.sock").stdout)
            if status["certificates"] >= count + 1:
                break
            time.sleep(0.2)
        time.sleep(2)
        rss = self.rss_kib(agent)
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=30)
        return {"workloads": count, "certificates": status["certificates"], "rss_kib": rss}

    def pod_to_pod(self, agents, host_mode):
        """Keep-alive and new-connection rates from a pod on node A to a pod on
        node B, both captured in their own namespaces, with the host-mode mesh
        path's figures of this run beside them."""
        nginx = self.work / "nginx-pod.conf"
        nginx.write_text(f"""
daemon off; worker_processes 1; worker_rlimit_nofile 20000; pid {self.work}/nginx-pod.pid; error_log {self.work}/nginx-pod.err;
events {{ worker_connections 19000; }}
http {{
  access_log off; keepalive_requests 1000000; keepalive_timeout 300s;
  client_body_temp_path {self.work}/nginx-pod-body; proxy_temp_path {self.work}/nginx-pod-proxy;
  fastcgi_temp_path {self.work}/nginx-pod-fcgi; uwsgi_temp_path {self.work}/nginx-pod-uwsgi; scgi_temp_path {self.work}/nginx-pod-scgi;
  server {{ listen {POD_HTTP} backlog=65535; location / {{ return 200 "ok\\n"; }} }}
}}
""")
        self.spawn(POD_B, ["nginx", "-c", nginx], cgroup=self.cgroup("pod-server"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://{POD_B_IP}:{POD_HTTP}/"
        for _ in range(100):
            status = json.loads(run(BIN / "agentctl", "workloads", "-o", "json", "--socket", self.work / "a" / "admin.sock").stdout)
            if any(w["name"] == "pod-client" and w.get("state", "").startswith("captured") for w in status):
                break
            time.sleep(0.1)
        samples = {"wrk_keepalive": [], "wrk_close": []}
        for _ in range(ROUNDS):
            for name, close in (("wrk_keepalive", False), ("wrk_close", True)):
                cmd = ["wrk", "-t2", "-c16", f"-d{SECONDS}s", "--latency"] + (["-H", "Connection: close"] if close else []) + [url]
                with self.cpu_of(agents) as cpu:
                    sample = parse_wrk(self.output(POD_A, cmd, self.cgroup("pod-client")))
                sample["proxy_cpu_us_per_request"] = round(cpu.total / max(sample["requests_s"] * SECONDS, 1) * 1e6, 1)
                samples[name].append(sample)
        access = (self.work / "a" / "access.log").read_text()
        assert "spiffe://cluster.local/ns/shop/sa/checkout" in access and POD_B_IP in access, "the pod's connections did not go through the mesh"
        result = {name: median_sample(taken) for name, taken in samples.items()}
        for name in samples:
            if name in host_mode:
                result[name]["host_mode_requests_s"] = host_mode[name]["requests_s"]
                result[name]["pod_vs_host"] = round(result[name]["requests_s"] / host_mode[name]["requests_s"], 3)
        return result

    def enrollment(self, count):
        """On node C, alone: `count` pods made as a runtime makes them (the
        loopback, bridge and host-local plugins, then mesh-agent-cni), each
        timed from mesh-agent-cni's start to its return, which is when the
        agent has the pod's table and listeners in place; the agent's RSS
        before, at half and at the end."""
        cni_socket = self.work / "c" / "cni.sock"
        (self.work / "c").mkdir(exist_ok=True)
        config = self.agent_config("c", [], "10.77.64.0/18").read_text().replace(
            "workloads:\n", f"workloads: []\nworkloadSources: {{cni: {{socket: {cni_socket}}}}}\n")
        (self.work / "c" / "agent.yaml").write_text(config)
        agent = self.start_agent(C, self.work / "c" / "agent.yaml", "c")
        kubepods = self.cg / "kubepods" / "besteffort"
        made = []
        for directory in (self.cg / "kubepods", kubepods):
            if not directory.exists():
                directory.mkdir()
                made.append(directory)
        network = {"cniVersion": "1.0.0", "name": f"bench-{TAG}"}
        plugins = [
            {"type": "bridge", "bridge": f"br{TAG}"[:15], "isGateway": True,
             "ipam": {"type": "host-local", "subnet": "10.77.64.0/18", "dataDir": str(self.work / "ipam")}},
            {"type": "mesh-agent-cni", "agentSocket": str(cni_socket), "timeoutSeconds": 30},
        ]
        latencies, rss = [], {"0": self.rss_kib(agent)}
        pods = []
        try:
            for index in range(count):
                uid = f"00000000-0000-4000-8000-{index:012d}"
                pod = f"ma-{TAG}-p{index}"
                run("ip", "netns", "add", pod)
                pods.append((pod, uid))
                (kubepods / f"pod{uid}").mkdir()
                env = {"CNI_CONTAINERID": f"bench{index}", "CNI_NETNS": f"/run/netns/{pod}", "CNI_PATH": str(CNI_BIN),
                       "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME=pod-{index};K8S_POD_UID={uid}", "PATH": os.environ["PATH"]}
                self.cni(C, {"type": "loopback"}, network, {**env, "CNI_COMMAND": "ADD", "CNI_IFNAME": "lo"})
                result = self.cni(C, plugins[0], network, {**env, "CNI_COMMAND": "ADD", "CNI_IFNAME": "eth0"})
                started = time.perf_counter()
                self.cni(C, plugins[1], {**network, "prevResult": result}, {**env, "CNI_COMMAND": "ADD", "CNI_IFNAME": "eth0"})
                latencies.append((time.perf_counter() - started) * 1000)
                if index + 1 in (count // 2, count):
                    time.sleep(2)
                    rss[str(index + 1)] = self.rss_kib(agent)
            status = json.loads(run(BIN / "agentctl", "workloads", "-o", "json", "--socket", self.work / "c" / "admin.sock").stdout)
            captured = sum(1 for w in status if w.get("state", "").startswith("captured"))
        finally:
            agent.send_signal(signal.SIGTERM)
            agent.wait(timeout=60)
            for pod, uid in pods:
                run("ip", "netns", "delete", pod, check=False)
                with contextlib.suppress(OSError):
                    (kubepods / f"pod{uid}").rmdir()
            for directory in reversed(made):
                with contextlib.suppress(OSError):
                    directory.rmdir()
            run(*self.ns(C), "ip", "link", "delete", f"br{TAG}"[:15], check=False)

        def percentile(values, fraction):
            ordered = sorted(values)
            return round(ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))], 1)

        first = latencies[: count // 2]
        return {
            "pods": count, "captured": captured,
            "add_ms_p50_first_half": percentile(first, 0.5), "add_ms_p99_first_half": percentile(first, 0.99),
            "add_ms_p50": percentile(latencies, 0.5), "add_ms_p99": percentile(latencies, 0.99), "add_ms_max": round(max(latencies), 1),
            "rss_kib": rss,
            "kib_per_pod": round((rss[str(count)] - rss["0"]) / count, 1),
        }

    def cni(self, namespace, plugin, network, env):
        """One CNI plugin invocation as a runtime makes it; its result."""
        binary = BIN / "mesh-agent-cni" if plugin["type"] == "mesh-agent-cni" else CNI_BIN / plugin["type"]
        done = subprocess.run(self.ns(namespace) + [str(binary)], input=json.dumps({**network, **plugin}), env=env,
                              capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            sys.exit(f"CNI {plugin['type']} {env['CNI_COMMAND']} failed: {done.stdout} {done.stderr}")
        return json.loads(done.stdout) if done.stdout.strip() else None

    def policy_cost(self, agents):
        """Keep-alive requests/s through the mesh with an L4-only policy, then an
        L7 one with a log line per request (the default), then the same L7 one
        with lines for refused requests only (accessLog.requests: denied)."""
        policies = self.work / "b" / "policies"
        head = ("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: bench, namespace: shop}\n"
                "spec:\n  rules:\n  - from: [{source: {principals: [\"cluster.local/ns/shop/sa/checkout\"]}}]\n")
        l7 = head + "    to: [{operation: {methods: [\"GET\"], paths: [\"/\", \"/api/*\"]}}]\n"
        kinds = (("l4", head, "all"), ("l7", l7, "all"), ("l7_denied_only", l7, "denied"))
        samples = {kind: [] for kind, _, _ in kinds}
        config = self.work / "b" / "agent.yaml"
        plain_config = config.read_text()
        access_log = f"accessLog: {self.work / 'b' / 'access.log'}"
        if access_log not in plain_config:
            sys.exit(f"node B's config does not say {access_log!r}; the policy measurement cannot switch request logging")
        for _ in range(ROUNDS):
            for kind, text, requests in kinds:
                self.reload_b(plain_config.replace(access_log, f"accessLog: {{path: {self.work / 'b' / 'access.log'}, requests: {requests}}}"))
                generation = self.generation()
                (policies / "bench.yaml").write_text(text)
                for _ in range(100):
                    if self.generation() > generation:
                        break
                    time.sleep(0.1)
                else:
                    sys.exit("node B did not load the bench policy")
                with self.cpu_of({"b": agents["b"]}) as cpu, self.profiled("mesh", f"policy_{kind}"):
                    sample = self.wrk("mesh", close=False)
                # Node B's agent decides the requests: its CPU is where L7 costs.
                sample["node_b_cpu_us_per_request"] = round(cpu.total / max(sample["requests_s"] * SECONDS, 1) * 1e6, 1)
                samples[kind].append(sample)
        (policies / "bench.yaml").unlink()
        self.reload_b(plain_config)
        result = {kind: median_sample(taken) for kind, taken in samples.items()}
        result["l7_cost"] = round(1 - result["l7"]["requests_s"] / result["l4"]["requests_s"], 3)
        result["l7_denied_only_cost"] = round(1 - result["l7_denied_only"]["requests_s"] / result["l4"]["requests_s"], 3)
        return result

    def graph_cost(self, agents, configs):
        """Mesh keep-alive requests/s and new connections/s without the
        service graph, with it, and with it and `graph.http: true` (the
        requests of spliced connections watched too), the agents restarted
        between them, ROUNDS times each in turn. Leaves the agents running as
        they were."""
        states = ("off", "on", "http")
        samples = {state: {"wrk_keepalive": [], "wrk_close": []} for state in states}
        texts = {node: Path(config).read_text() for node, config in configs.items()}
        graph_line = {"off": "enabled: false}", "on": "enabled: true}", "http": "enabled: true, http: true}"}
        for _ in range(ROUNDS):
            for state in states:
                for node, config in configs.items():
                    text = texts[node]
                    for line in graph_line.values():
                        text = text.replace(line, graph_line[state])
                    agents[node].send_signal(signal.SIGTERM)
                    agents[node].wait(timeout=60)
                    Path(config).write_text(text)
                    agents[node] = self.start_agent(A if node == "a" else B, config, node)
                time.sleep(1.5)
                for name, close in (("wrk_keepalive", False), ("wrk_close", True)):
                    with self.cpu_of(agents) as cpu, self.profiled("mesh", f"graph_{state}_{name}", agents):
                        sample = self.wrk("mesh", close=close)
                    sample["proxy_cpu_us_per_request"] = round(cpu.total / max(sample["requests_s"] * SECONDS, 1) * 1e6, 1)
                    samples[state][name].append(sample)
        for node, config in configs.items():
            Path(config).write_text(texts[node])
        result = {state: {name: median_sample(taken) for name, taken in measured.items()} for state, measured in samples.items()}
        for name in ("wrk_keepalive", "wrk_close"):
            result[f"{name}_cost"] = round(1 - result["on"][name]["requests_s"] / result["off"][name]["requests_s"], 3)
            # What watching the requests adds to the graph's own cost.
            result[f"{name}_http_cost"] = round(1 - result["http"][name]["requests_s"] / result["on"][name]["requests_s"], 3)
        return result

    def reload_b(self, config_text):
        """Node B's agent with `config_text` as its config, applied by a reload."""
        (self.work / "b" / "agent.yaml").write_text(config_text)
        run(BIN / "agentctl", "reload", "--socket", self.work / "b" / "admin.sock")

    def measure_path(self, path, proxies):
        """One round of a path's measurements; `proxies` are the processes that
        carry it, whose CPU is the cost of proxying."""
        measured = {}
        if "iperf" in PARTS:
            with self.cpu_of(proxies) as cpu, self.profiled(path, "iperf_1"):
                measured["iperf_1"] = self.iperf(path, 1)
            if proxies:
                measured["iperf_1"]["proxy_cpu_s_per_gb"] = round(cpu.total / (measured["iperf_1"]["bytes"] / 1e9), 3)
            with self.profiled(path, "iperf_4"):
                measured["iperf_4"] = self.iperf(path, 4)
        if "wrk" in PARTS:
            for name, close in (("wrk_keepalive", False), ("wrk_close", True)):
                with self.cpu_of(proxies) as cpu, self.profiled(path, name):
                    measured[name] = self.wrk(path, close=close)
                if proxies:
                    requests = max(measured[name]["requests_s"] * SECONDS, 1)
                    measured[name]["proxy_cpu_us_per_request"] = round(cpu.total / requests * 1e6, 1)
                    measured[name]["proxy_user_us_per_request"] = round(cpu.user / requests * 1e6, 1)
        return measured

    @contextlib.contextmanager
    def profiled(self, path, measurement, agents=None):
        """perf record of both agents (`agents`, or the running ones) while a
        mesh measurement runs (BENCH_PROFILE)."""
        if not PROFILE or not path.startswith("mesh"):
            yield
            return
        directory = Path(PROFILE)
        directory.mkdir(parents=True, exist_ok=True)
        pids = ",".join(str(proc.pid) for proc in (agents or self.agents).values())
        perf = subprocess.Popen(["perf", "record", "-g", "-q", "-p", pids, "-o", directory / f"{path}-{measurement}.data"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            yield
        finally:
            perf.send_signal(signal.SIGINT)
            perf.wait(timeout=60)

    def generation(self):
        return json.loads(run(BIN / "agentctl", "policies", "-o", "json", "--socket", self.work / "b" / "admin.sock").stdout)["generation"]

    # ------------------------------------------------------------ the run

    def main(self):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        self.topology()
        pki = self.certificates()
        checkout, orders = self.cgroup("checkout"), self.cgroup("orders")
        pods_a, pods_b, networks = [], [], "10.77.252.0/24"
        if "pods" in PARTS:
            networks += f", {POD_NETWORKS}"
            pods_a = [f"  - {{name: pod-client, namespace: shop, serviceAccount: checkout, cgroup: /{self.cgroup('pod-client').name}, "
                      f"captureMode: netns, netns: /run/netns/{POD_A}}}"]
            pods_b = [f"  - {{name: pod-server, namespace: shop, serviceAccount: orders, cgroup: /{self.cgroup('pod-server').name}, "
                      f"captureMode: netns, netns: /run/netns/{POD_B}, ports: [{POD_HTTP}]}}"]
        config_a = self.agent_config("a", [f"  - {{name: checkout, namespace: shop, cgroup: /{checkout.name}}}"] + pods_a, networks)
        config_b = self.agent_config("b", [f"  - {{name: orders, namespace: shop, cgroup: /{orders.name}, ports: [{MESH_IPERF}, {MESH_HTTP}]}}"] + pods_b,
                                     networks)
        agents = {"a": self.start_agent(A, config_a, "a"), "b": self.start_agent(B, config_b, "b")}
        self.servers(orders)
        haproxies = self.haproxy(pki)
        time.sleep(1.5)

        self.agents = agents
        rounds = {path: {} for path in PATHS}
        for round_number in range(1, ROUNDS + 1):
            for path in PATHS:
                log(f"round {round_number}/{ROUNDS}, path {path}")
                measured = self.measure_path(path, {} if path == "direct" else haproxies if path == "haproxy-mtls" else agents)
                for name, sample in measured.items():
                    rounds[path].setdefault(name, []).append(sample)
                log(f"  {json.dumps(measured)}")
        results = {"rounds": ROUNDS, "paths": {path: {name: median_sample(samples) for name, samples in measured.items()}
                                               for path, measured in rounds.items()}}
        if "idle" in PARTS:
            log("idle connections")
            results["idle_connections"] = self.idle_connections(agents, IDLE_CONNECTIONS)
            log(f"  {json.dumps(results['idle_connections'])}")
        if "policy" in PARTS:
            log("L7 policy cost")
            results["policy"] = self.policy_cost(agents)
            log(f"  {json.dumps(results['policy'])}")
        if "workloads" in PARTS:
            log("100 workloads at idle")
            results["idle_100_workloads"] = self.idle_with_workloads()
            log(f"  {json.dumps(results['idle_100_workloads'])}")
        if "pods" in PARTS:
            log("pod to pod")
            results["pods"] = self.pod_to_pod(agents, results["paths"].get("mesh", {}))
            log(f"  {json.dumps(results['pods'])}")
        if "graph" in PARTS:
            log("the service graph's cost")
            results["graph"] = self.graph_cost(agents, {"a": config_a, "b": config_b})
            log(f"  {json.dumps(results['graph'])}")
        if "enrollment" in PARTS:
            log(f"CNI enrollment of {ENROLLED_PODS} pods")
            results["enrollment"] = self.enrollment(ENROLLED_PODS)
            log(f"  {json.dumps(results['enrollment'])}")
        if "micro" in PARTS:
            results["micro"] = micro_benchmarks()
        results["machine"] = machine()
        results["seconds_per_run"] = SECONDS
        return results


def median_sample(samples):
    """The sample whose headline number (Gbit/s or requests/s) is the median, whole,
    so that its latency and CPU figures belong to the same run; with every
    round's headline number beside it."""
    key = "gbit_s" if "gbit_s" in samples[0] else "requests_s"
    ordered = sorted(samples, key=lambda sample: sample[key])
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    chosen["rounds"] = [sample[key] for sample in samples]
    return chosen


def parse_wrk(text):
    def milliseconds(value):
        number, unit = re.match(r"([\d.]+)(\w+)", value).groups()
        return round(float(number) * {"us": 0.001, "ms": 1, "s": 1000}[unit], 3)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    p50 = milliseconds(re.search(r"^\s+50%\s+(\S+)", text, re.M).group(1))
    p99 = milliseconds(re.search(r"^\s+99%\s+(\S+)", text, re.M).group(1))
    errors = re.search(r"Socket errors: (.*)", text)
    return {"requests_s": round(rps, 1), "p50_ms": p50, "p99_ms": p99, "socket_errors": errors.group(1) if errors else None}


def micro_benchmarks():
    """`micro-bench`'s lines, "NAME   N ns/UNIT  (...)", as {NAME: {"ns": N, "per": UNIT}}."""
    out = run(BIN / "micro-bench").stdout
    results = {}
    for line in out.splitlines():
        found = re.match(r"(\S.*?)\s{2,}(\d+) ns/(\w+)", line)
        if found:
            results[found.group(1)] = {"ns": int(found.group(2)), "per": found.group(3)}
    results.update(allocations())
    return results


def allocations():
    """Heap allocations per 16 KiB chunk echoed on a tunnel stream (`micro-bench
    allocations` under Tests/integration/tools/malloc_counter.c), as
    {NAME: {"allocations": N, "per": "chunk"}}."""
    with tempfile.TemporaryDirectory() as directory:
        library = Path(directory) / "malloc_counter.so"
        run(shutil.which("cc") or "clang", "-shared", "-fPIC", "-O2", "-o", library,
            ROOT / "Tests" / "integration" / "tools" / "malloc_counter.c", "-ldl")
        out = subprocess.run([BIN / "micro-bench", "allocations"], env={"LD_PRELOAD": str(library)},
                             capture_output=True, text=True, check=True).stdout
    found = re.search(r"(\S.*?)\s{2,}([\d.]+) allocations/chunk", out)
    return {found.group(1): {"allocations": float(found.group(2)), "per": "chunk"}} if found else {}


def machine():
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), "?")
    return {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(),
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "time": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "haproxy": run("haproxy", "-v").stdout.splitlines()[0], "openssl": run("openssl", "version").stdout.strip()}


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("make bench needs root (network namespaces, nftables, cgroups)")
    bench = Bench()
    try:
        results = bench.main()
    finally:
        bench.close()
    if not COMPLETE:
        print(json.dumps(results, indent=2))
        sys.exit(0)
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    stamp = results["machine"]["time"].replace(":", "")
    (out / f"{stamp}.json").write_text(json.dumps(results, indent=2) + "\n")
    subprocess.run([sys.executable, str(ROOT / "bench" / "report.py"), str(out / f"{stamp}.json")], check=True)
