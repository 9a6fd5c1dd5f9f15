"""mesh-agent-cni chained after the real reference plugins (Debian's
containernetworking-plugins: bridge with host-local IPAM), invoked the way a
container runtime invokes a conflist (CNI_* environment, each plugin's config
on stdin, the previous result as prevResult), against a stand-in agent that
speaks the enrollment protocol on a Unix socket.

Everything lives in namespaces the test makes: a "node" namespace in which the
plugins run (so the bridge is made there, not on the host) and a "pod"
namespace they put the interface in. The subnet is 10.77.N.0/24, the IPAM
state is in a directory of the test's own, and all of it is removed even when
a test fails. No packet is sent anywhere.
"""
import itertools
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest

from conftest import BIN, sh

CNI_BIN = Path("/usr/lib/cni")
PLUGIN = BIN / "mesh-agent-cni"
_counter = itertools.count(1)


class StandInAgent:
    """The agent's side of the enrollment protocol: one JSON request line per
    connection, one response line. Records each request, and for ADD, what the
    pod's namespace looked like when the request came (the address must
    already be there: the plugin runs after the interface plugin)."""

    def __init__(self, path, answer=None):
        self.path = str(path)
        self.answer = answer or (lambda request: {"version": 1, "ok": True, "captured": request["command"] != "DEL"})
        self.requests = []
        self.addresses_seen = []
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        os.chmod(self.path, 0o600)
        self.listener.listen(16)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            with connection:
                connection.settimeout(10)
                data = b""
                while b"\n" not in data:
                    chunk = connection.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                if b"\n" not in data:
                    continue
                request = json.loads(data.split(b"\n", 1)[0])
                self.requests.append(request)
                if request["command"] == "ADD":
                    shown = sh("nsenter", f"--net={request['netns']}", "ip", "-j", "addr", "show", "dev", request["ifName"], check=False)
                    self.addresses_seen.append(shown.stdout)
                connection.sendall(json.dumps(self.answer(request)).encode() + b"\n")

    def close(self):
        self.listener.close()
        self.thread.join(timeout=5)


class Conflist:
    """A runtime's view of one network: bridge + host-local, then mesh-agent-cni."""

    def __init__(self):
        if os.geteuid() != 0:
            pytest.skip("the CNI test needs root (network namespaces, bridges)")
        missing = [p for p in ("bridge", "host-local") if not (CNI_BIN / p).exists()]
        if missing:
            pytest.skip(f"{', '.join(missing)} not in {CNI_BIN}: apt-get install containernetworking-plugins")
        if not PLUGIN.exists():
            pytest.skip(f"{PLUGIN} is not built: swift build --product mesh-agent-cni")
        self.index = (os.getpid() * 7 + next(_counter)) % 250 + 1
        tag = f"{os.getpid() % 10000}x{self.index}"
        self.node = f"ma-{tag}-cninode"
        self.pod = f"ma-{tag}-cnipod"
        self.bridge = f"macni{tag}"[:15]
        self.network = f"macni-{tag}"
        self.container_id = f"ctr{tag}"
        self.pod_uid = "8e2b6f1c"
        self.tmp = Path(tempfile.mkdtemp(prefix="ma-cni-"))
        self.ipam_dir = self.tmp / "ipam"
        self.socket = self.tmp / "cni.sock"
        self.made = []
        self.agent = None
        # The binary run for the mesh-agent-cni entries: the built one, or a copy `install` made.
        self.mesh_plugin = PLUGIN
        try:
            for ns in (self.node, self.pod):
                sh("ip", "netns", "add", ns)
                self.made.append(ns)
            sh("ip", "-n", self.node, "link", "set", "lo", "up")
        except Exception:
            self.close()
            raise
        self.plugins = [
            {"type": "bridge", "bridge": self.bridge, "isGateway": True,
             "ipam": {"type": "host-local", "subnet": f"10.77.{self.index}.0/24", "dataDir": str(self.ipam_dir)}},
            {"type": "mesh-agent-cni", "agentSocket": str(self.socket), "timeoutSeconds": 5},
        ]

    def start_agent(self, answer=None):
        self.agent = StandInAgent(self.socket, answer)
        return self.agent

    def stop_agent(self):
        if self.agent:
            self.agent.close()
            self.agent = None
            self.socket.unlink(missing_ok=True)

    def _exec(self, plugin, command, prev_result=None):
        config = {"cniVersion": "1.0.0", "name": self.network, **plugin}
        if prev_result is not None:
            config["prevResult"] = prev_result
        env = {
            "CNI_COMMAND": command, "CNI_CONTAINERID": self.container_id, "CNI_NETNS": f"/run/netns/{self.pod}",
            "CNI_IFNAME": "lo" if plugin["type"] == "loopback" else "eth0", "CNI_PATH": str(CNI_BIN),
            "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;K8S_POD_UID={self.pod_uid}",
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        }
        binary = self.mesh_plugin if plugin["type"] == "mesh-agent-cni" else CNI_BIN / plugin["type"]
        # The plugins run in the node namespace, as a runtime runs them in its own.
        return subprocess.run(["nsenter", f"--net=/run/netns/{self.node}", str(binary)], input=json.dumps(config),
                              env=env, capture_output=True, text=True, timeout=30)

    def add(self):
        """ADD through the list; returns (final result, the failing run or None)."""
        result = None
        for plugin in self.plugins:
            run = self._exec(plugin, "ADD", result)
            if run.returncode != 0:
                return result, run
            result = json.loads(run.stdout)
        return result, None

    def check(self, result):
        for plugin in self.plugins:
            run = self._exec(plugin, "CHECK", result)
            if run.returncode != 0:
                return run
        return None

    def delete(self, result):
        """DEL in reverse order, with the ADD's final result when there is one."""
        for plugin in reversed(self.plugins):
            run = self._exec(plugin, "DEL", result)
            if run.returncode != 0:
                return run
        return None

    def pod_addresses(self):
        shown = sh("ip", "-n", self.pod, "-j", "addr", "show", "dev", "eth0", check=False)
        if shown.returncode != 0:
            return []
        return [a["local"] for link in json.loads(shown.stdout) for a in link.get("addr_info", []) if a["family"] == "inet"]

    def allocations(self):
        """The addresses host-local holds (its state: one file per address)."""
        directory = self.ipam_dir / self.network
        if not directory.exists():
            return []
        return sorted(p.name for p in directory.iterdir() if p.name.startswith("10.77."))

    def close(self):
        self.stop_agent()
        for ns in reversed(self.made):
            sh("ip", "netns", "delete", ns, check=False)
        self.made = []
        shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture
def conflist():
    c = Conflist()
    try:
        yield c
    finally:
        c.close()


def cni_error(run):
    """The CNI error result a failing plugin printed."""
    assert run.stdout, f"no error result on stdout; stderr: {run.stderr}"
    return json.loads(run.stdout)


def test_add_enrolls_the_namespace_with_its_address_then_check_and_del(conflist):
    agent = conflist.start_agent()
    result, failed = conflist.add()
    assert failed is None, f"ADD failed: {failed.stdout} {failed.stderr}"

    address = next(ip["address"] for ip in result["ips"]).split("/")[0]
    assert address.startswith(f"10.77.{conflist.index}.")
    assert conflist.pod_addresses() == [address]
    # The final result is the bridge's, passed through unchanged.
    assert [i.get("sandbox") for i in result["interfaces"]][-1] == f"/run/netns/{conflist.pod}"

    assert len(agent.requests) == 1
    request = agent.requests[0]
    assert request == {
        "version": 1, "command": "ADD", "containerID": conflist.container_id, "netns": f"/run/netns/{conflist.pod}",
        "ifName": "eth0", "network": conflist.network, "podNamespace": "shop", "podName": "web-0", "podUID": "8e2b6f1c",
        "addresses": [address], "cniVersion": "1.0.0",
    }
    # The address was on the pod's interface when the agent was asked.
    assert address in agent.addresses_seen[0]

    failed = conflist.check(result)
    assert failed is None, f"CHECK failed: {failed.stdout} {failed.stderr}"
    assert [r["command"] for r in agent.requests] == ["ADD", "CHECK"]

    assert conflist.allocations() == [address]
    failed = conflist.delete(result)
    assert failed is None, f"DEL failed: {failed.stdout} {failed.stderr}"
    assert [r["command"] for r in agent.requests] == ["ADD", "CHECK", "DEL"]
    assert conflist.allocations() == [], "host-local still holds the pod's address after DEL"
    assert conflist.pod_addresses() == []
    # DEL is idempotent: again, and with the agent gone.
    conflist.stop_agent()
    failed = conflist.delete(result)
    assert failed is None, f"a second DEL failed: {failed.stdout} {failed.stderr}"


def test_add_without_agent_fails_and_del_cleans_up(conflist):
    result, failed = conflist.add()
    assert failed is not None, "ADD succeeded with no agent listening"
    error = cni_error(failed)
    assert error["code"] == 11
    assert error["msg"] == "ADD shop/web-0 (container %s): the mesh agent is not running" % conflist.container_id
    assert str(conflist.socket) in error["details"]
    assert "mesh-agent-cni: error 11" in failed.stderr
    # The bridge had given the pod an address; the runtime's DEL after a
    # failed ADD gives it back.
    assert len(conflist.allocations()) == 1
    failed = conflist.delete(result)
    assert failed is None, f"DEL failed: {failed.stdout} {failed.stderr}"
    assert conflist.allocations() == []


def test_add_refused_by_the_agent_reports_its_reason(conflist):
    conflist.start_agent(lambda request: {"version": 1, "ok": False, "error": f"cannot enter {request['netns']}: test refusal"})
    result, failed = conflist.add()
    assert failed is not None, "ADD succeeded though the agent refused"
    error = cni_error(failed)
    assert error["code"] == 100
    assert error["details"] == f"cannot enter /run/netns/{conflist.pod}: test refusal"
    failed = conflist.delete(result)
    assert failed is not None, "DEL succeeded though the agent refuses everything"
    conflist.stop_agent()
    failed = conflist.delete(result)
    assert failed is None, f"DEL without the agent failed: {failed.stdout} {failed.stderr}"
    assert conflist.allocations() == []


def installer(command, conflist, *flags):
    return subprocess.run([str(PLUGIN), command, "--cni-bin-dir", str(conflist.tmp / "bin"), "--cni-conf-dir", str(conflist.tmp / "net.d"),
                           *flags], capture_output=True, text=True, timeout=60)


def test_install_chains_the_plugin_into_the_bridge_conflist_and_uninstall_restores_it(conflist):
    conf_dir, bin_dir = conflist.tmp / "net.d", conflist.tmp / "bin"
    conf_dir.mkdir()
    bin_dir.mkdir()
    # Before the network plugin has written its config: a clear refusal, and nothing installed.
    refused = installer("install", conflist, "--agent-socket", str(conflist.socket))
    assert refused.returncode == 1
    assert "the network plugin has not written its config yet" in refused.stderr and str(conf_dir) in refused.stderr
    assert list(bin_dir.iterdir()) == []

    # What the network plugin wrote: the bridge with host-local, as the reference plugins expect it.
    bridge_only = [conflist.plugins[0]]
    original = {"cniVersion": "1.0.0", "name": conflist.network, "plugins": bridge_only}
    primary = conf_dir / "10-bridge.conflist"
    primary.write_text(json.dumps(original, indent=2))
    primary.chmod(0o640)
    later = conf_dir / "99-loopback.conf"
    later.write_text(json.dumps({"cniVersion": "1.0.0", "name": "lo", "type": "loopback"}))

    installed = installer("install", conflist, "--agent-socket", str(conflist.socket))
    assert installed.returncode == 0, installed.stderr
    plugin = bin_dir / "mesh-agent-cni"
    assert plugin.read_bytes() == PLUGIN.read_bytes() and os.access(plugin, os.X_OK)
    chained = json.loads(primary.read_text())
    assert chained["plugins"] == bridge_only + [{"type": "mesh-agent-cni", "agentSocket": str(conflist.socket)}]
    assert {k: v for k, v in chained.items() if k != "plugins"} == {"cniVersion": "1.0.0", "name": conflist.network}
    assert primary.stat().st_mode & 0o7777 == 0o640, "the network plugin's file keeps its mode"
    # The copy runs on a node that has no Swift runtime: in a root holding only it and /proc
    # (a private mount namespace, so the mount goes with the process).
    bare = conflist.tmp / "bare-root"
    (bare / "proc").mkdir(parents=True)
    shutil.copy2(plugin, bare / "mesh-agent-cni")
    version = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                              f"mount -t proc proc {bare}/proc && exec chroot {bare} /mesh-agent-cni"],
                             input='{"cniVersion": "1.0.0"}', env={**os.environ, "CNI_COMMAND": "VERSION"},
                             capture_output=True, text=True, timeout=30)
    assert version.returncode == 0, f"the installed plugin does not run without the Swift toolchain: {version.stderr}"
    assert "1.0.0" in json.loads(version.stdout)["supportedVersions"]
    assert json.loads(later.read_text())["type"] == "loopback", "only the file the runtime uses is chained"
    assert sorted(p.name for p in conf_dir.iterdir()) == ["10-bridge.conflist", "99-loopback.conf"], "no temporary file left"

    again = installer("install", conflist, "--agent-socket", str(conflist.socket))
    assert again.returncode == 0, again.stderr
    assert json.loads(primary.read_text()) == chained
    assert "nothing to change" in again.stdout

    # The chained list, as a runtime runs it, with the binary install put there.
    conflist.plugins = chained["plugins"]
    conflist.mesh_plugin = plugin
    agent = conflist.start_agent()
    result, failed = conflist.add()
    assert failed is None, f"ADD failed: {failed.stdout} {failed.stderr}"
    address = result["ips"][0]["address"].split("/")[0]
    assert address.startswith(f"10.77.{conflist.index}.") and conflist.pod_addresses() == [address]
    assert [(r["command"], r["addresses"]) for r in agent.requests] == [("ADD", [address])]
    failed = conflist.delete(result)
    assert failed is None, f"DEL failed: {failed.stdout} {failed.stderr}"
    assert [r["command"] for r in agent.requests] == ["ADD", "DEL"]
    assert conflist.allocations() == []

    removed = installer("uninstall", conflist)
    assert removed.returncode == 0, removed.stderr
    assert json.loads(primary.read_text()) == original
    assert primary.stat().st_mode & 0o7777 == 0o640
    assert not plugin.exists()
    assert sorted(p.name for p in conf_dir.iterdir()) == ["10-bridge.conflist", "99-loopback.conf"]
