"""Running under systemd: the notify protocol spoken by the real agent (READY
only once capture is installed, watchdog pings, RELOADING/READY around SIGHUP,
STOPPING on SIGTERM), and the shipped unit file as systemd itself reads it."""
import os
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest

from conftest import BIN, REPO, wait_for


class NotifySocket:
    """What systemd listens on: a datagram socket; records each message with
    whether the capture table existed when it arrived."""

    def __init__(self, path, topology):
        self.path = str(path)
        self.topology = topology
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages = []
        self.stopped = False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stopped:
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append((time.time(), fields, self.topology.has_table()))

    def with_field(self, key, value="1"):
        return [m for m in self.messages if m[1].get(key) == value]

    def close(self):
        self.stopped = True
        self.thread.join(timeout=2)
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path, topology):
    listener = NotifySocket(tmp_path / "notify", topology)
    yield listener
    listener.close()


def test_agent_tells_systemd_it_is_ready_only_with_capture_installed_then_pings_and_stops(topology, cgroups, make_agent, notify_socket):
    cgroups.make("orders")
    agent = make_agent([{"name": "orders", "cgroup": cgroups.path("orders"), "ports": [8080]}])
    agent.start(env={"NOTIFY_SOCKET": notify_socket.path, "WATCHDOG_USEC": "2000000"})

    ready = wait_for(lambda: notify_socket.with_field("READY"), timeout=10, what="READY=1")
    first_time, first_fields, table_existed = ready[0]
    assert table_existed, "READY=1 came before the capture table was installed"
    assert "STATUS" in first_fields and "workload" in first_fields["STATUS"], first_fields
    assert notify_socket.messages[0][1].get("READY") == "1", f"something came before READY: {notify_socket.messages[:3]}"

    pings = wait_for(lambda: (lambda p: p if len(p) >= 3 else None)(notify_socket.with_field("WATCHDOG")), timeout=10,
                     what="three watchdog pings")
    assert all(t >= first_time for t, _, _ in pings), "a watchdog ping before READY"

    agent.reload()
    wait_for(lambda: notify_socket.with_field("RELOADING"), timeout=10, what="RELOADING=1 on SIGHUP")
    reloading_time = notify_socket.with_field("RELOADING")[0][0]
    wait_for(lambda: [m for m in notify_socket.with_field("READY") if m[0] >= reloading_time], timeout=10,
             what="READY=1 again after the reload")

    assert agent.stop() == 0
    stopping = notify_socket.with_field("STOPPING")
    assert stopping, f"no STOPPING=1 on SIGTERM: {notify_socket.messages[-3:]}"
    assert "draining" in stopping[0][1].get("STATUS", ""), stopping


def test_agent_without_notify_socket_runs_as_before_and_a_bad_one_is_only_a_warning(topology, cgroups, make_agent, tmp_path):
    cgroups.make("orders")
    agent = make_agent([{"name": "orders", "cgroup": cgroups.path("orders")}])
    agent.start(env={"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    assert agent.proc.poll() is None
    # The ready line is logged before READY=1 is sent, so the warning may follow it.
    wait_for(lambda: "cannot notify systemd" in agent.log(), timeout=10, what="the warning about the notify socket")
    assert "nobody-listens" in agent.log()
    assert agent.stop() == 0


def test_the_unit_file_is_one_systemd_accepts_without_warnings(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (make deps installs systemd)")
    unit = tmp_path / "mesh-agent.service"
    # The unit names installed paths; point them at the binaries under test.
    unit.write_text((REPO / "deploy" / "mesh-agent.service").read_text().replace("/usr/local/bin", str(BIN)))
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == "", \
        "systemd-analyze warned about the unit:\n" + result.stdout + result.stderr
    text = unit.read_text()
    for setting in ("Type=notify", "WatchdogSec=", "ExecReload=", "NoNewPrivileges=yes", "ProtectSystem=strict",
                    "CapabilityBoundingSet=", "RestartPreventExitStatus=77 78", "FileDescriptorStoreMax="):
        assert setting in text, setting


def test_sigusr1_reopens_the_access_log_after_rotation(topology, cgroups, make_agent):
    cgroups.make("orders")
    agent = make_agent([{"name": "orders", "cgroup": cgroups.path("orders")}]).start()
    topology.server("echo", 8080)

    def connect(text):
        result = topology.client(["echo", topology.remote_ip, 8080, text], cgroup=cgroups.directory("orders"))
        assert result["ok"]
        return result["local_port"]

    first = connect("before rotation")
    agent.entry_for_port(first)
    rotated = agent.access_log.with_name("access.log.1")
    agent.access_log.rename(rotated)  # what logrotate does, before it signals
    agent.proc.send_signal(signal.SIGUSR1)
    wait_for(lambda: "reopened the access log" in agent.log(), timeout=10, what="the reopen on SIGUSR1")

    second = connect("after rotation")
    entry = agent.entry_for_port(second)  # read from the path, i.e. the new file
    assert entry["bytes_received"] == len("after rotation")
    old_lines = rotated.read_text().splitlines()
    assert len(old_lines) == 1 and f":{first}\"" in old_lines[0], old_lines
    assert f":{second}\"" not in rotated.read_text()
    assert agent.proc.poll() is None
