"""Capture and identity on one node: the real agent, kernel, cgroups and sockets."""
import os
import signal
import subprocess
import time

import pytest

from conftest import BIN, PEER, TRUST_DOMAIN, wait_for

PORT = 8080


def identity(name, namespace="test"):
    return f"spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/{name}"


def workload(cgroups, name):
    cgroups.make(name)
    return {"name": name, "cgroup": cgroups.path(name)}


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_workload_connection_is_captured_and_attributed(topology, cgroups, make_agent, family):
    agent = make_agent([workload(cgroups, "orders")]).start()
    topology.server("echo", PORT)
    host = topology.remote_ip if family == "ipv4" else topology.remote_ip6

    result = topology.client(["echo", host, PORT, "hello through the agent"], cgroup=cgroups.directory("orders"))
    assert result["ok"]

    entry = agent.entry_for_port(result["local_port"])
    assert entry["direction"] == "outbound"
    assert entry["src_identity"] == identity("orders")
    assert entry["src_workload"] == "test/orders"
    expected_dst = f"{host}:{PORT}" if family == "ipv4" else f"[{host}]:{PORT}"
    assert entry["dst_addr"] == expected_dst
    assert entry["action"] == "allow"
    assert entry["tls"] == "none"
    assert entry["bytes_received"] == len("hello through the agent")
    assert entry["bytes_sent"] == len("hello through the agent")
    assert entry["duration_ms"] >= 0


def test_same_node_destination_names_both_workloads(topology, cgroups, make_agent):
    server = workload(cgroups, "backend")
    server["ports"] = [PORT]
    agent = make_agent([workload(cgroups, "frontend"), server]).start()
    topology.server("echo", PORT, ns=topology.node, cgroup=cgroups.directory("backend"))
    topology.server("echo", PORT + 1, ns=topology.node)

    local = topology.client(["echo", topology.node_ip, PORT, "to my neighbour"], cgroup=cgroups.directory("frontend"))
    entry = agent.entry_for_port(local["local_port"])
    assert entry["reason"] == "same-node"
    assert entry["src_identity"] == identity("frontend")
    assert entry["dst_workload"] == "test/backend"
    assert entry["dst_identity"] == identity("backend")
    assert entry["bytes_sent"] == len("to my neighbour")

    # A port on this node that no workload serves is not a workload destination.
    other = topology.client(["echo", topology.node_ip, PORT + 1, "to nobody in particular"], cgroup=cgroups.directory("frontend"))
    entry = agent.entry_for_port(other["local_port"])
    assert entry["reason"] == "passthrough"
    assert entry["dst_identity"] is None


def test_process_in_another_cgroup_is_not_captured(topology, cgroups, make_agent):
    agent = make_agent([workload(cgroups, "orders")]).start()
    cgroups.make("bystander")
    topology.server("echo", PORT)

    bystander = topology.client(["echo", topology.remote_ip, PORT, "not mine"], cgroup=cgroups.directory("bystander"))
    assert bystander["ok"]
    # A captured connection made afterwards shows the log is being written ...
    captured = topology.client(["echo", topology.remote_ip, PORT, "mine"], cgroup=cgroups.directory("orders"))
    agent.entry_for_port(captured["local_port"])
    # ... and the bystander's connection is not in it.
    ports = [e["src_addr"].rsplit(":", 1)[1] for e in agent.entries()]
    assert str(bystander["local_port"]) not in ports


def kernel_splices(agent):
    """mesh_agent_kernel_splices_total by result."""
    counts = {}
    for line in agent.metrics().splitlines():
        if line.startswith("mesh_agent_kernel_splices_total{"):
            result = line.split('result="', 1)[1].split('"', 1)[0]
            counts[result] = float(line.rsplit(" ", 1)[1])
    return counts


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
@pytest.mark.parametrize("kernel_splice", [True, False], ids=["kernel", "event-loops"])
def test_large_transfer_is_intact_both_ways_with_half_close(topology, cgroups, make_agent, family, kernel_splice):
    agent = make_agent([workload(cgroups, "orders")], limits={"kernelSplice": kernel_splice}).start()
    topology.server("transfer", PORT)
    host = topology.remote_ip if family == "ipv4" else topology.remote_ip6
    up, down = 48 * 1024 * 1024, 24 * 1024 * 1024

    # The server answers only after the client's FIN arrives, so the answer
    # proves the half-close crossed the proxy and the other direction stayed open.
    result = topology.client(["transfer", host, PORT, up, down], cgroup=cgroups.directory("orders"), timeout=300)
    assert result["upload_ok"], "the server saw different bytes than the client sent"
    assert result["download_ok"], f"the client got {result['download_bytes']} bytes, not the {down} the server sent"

    entry = agent.entry_for_port(result["local_port"])
    assert entry["bytes_received"] == up + len(f"{down}\n")
    assert entry["bytes_sent"] == 65 + down
    # Which path carried it: the kernel's splice, or the event loops when it is off.
    assert kernel_splices(agent).get("spliced", 0) == (1 if kernel_splice else 0)


def test_a_spliced_connection_is_listed_and_counted_while_open(topology, cgroups, make_agent):
    import json
    agent = make_agent([workload(cgroups, "orders")]).start()
    topology.server("echo", PORT)
    holder = hold_client(topology, cgroups, "orders", 3)

    def listed():
        found = [e for e in json.loads(agent.ctl("connections", "-o", "json").stdout) if e["dst_addr"] == f"{topology.remote_ip}:{PORT}"]
        return found[0] if found and found[0]["bytes_received"] > 0 else None
    first = wait_for(listed, timeout=10, what="the held connection in agentctl connections, with bytes")
    assert first["reason"] == "passthrough" and first["src_identity"] == identity("orders")
    # The splicer counts as it moves bytes, not only at the end.
    wait_for(lambda: (listed() or first)["bytes_received"] > first["bytes_received"], timeout=10, what="its byte count to grow")
    assert kernel_splices(agent) == {"spliced": 1}

    held = json.loads(holder.communicate(timeout=30)[0])
    assert held["ok"], held
    sent = sum(len(f"ping {i}\n") for i in range(held["rounds"]))
    entry = agent.entry_for_port(held["local_port"])
    assert entry["bytes_received"] == sent and entry["bytes_sent"] == sent, entry
    wait_for(lambda: json.loads(agent.ctl("connections", "-o", "json").stdout) == [], timeout=10, what="the list to be empty")


def test_concurrent_connections_from_two_workloads_are_each_attributed(topology, cgroups, make_agent):
    agent = make_agent([workload(cgroups, "alpha"), workload(cgroups, "beta")]).start()
    topology.server("echo", PORT)

    clients = {
        name: topology.spawn(topology.node, [os.sys.executable, str(PEER), "many", topology.remote_ip, str(PORT), "250"], cgroup=cgroups.directory(name))
        for name in ("alpha", "beta")
    }
    import json
    results = {}
    for name, proc in clients.items():
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
        results[name] = json.loads(out)
        assert results[name]["ok"] == 250

    expected = {port: identity(name) for name, r in results.items() for port in r["local_ports"]}
    assert len(expected) == 500

    def all_logged():
        seen = {e["src_addr"].rsplit(":", 1)[1]: e for e in agent.entries() if e["src_addr"]}
        return seen if all(str(p) in seen for p in expected) else None

    seen = wait_for(all_logged, timeout=30, what="500 access-log entries")
    wrong = [(p, seen[str(p)]["src_identity"], who) for p, who in expected.items() if seen[str(p)]["src_identity"] != who]
    assert not wrong, f"{len(wrong)} connections attributed to the wrong workload, e.g. {wrong[:3]}"


def test_workload_whose_cgroup_appears_after_start_is_captured(topology, cgroups, make_agent):
    late = {"name": "late", "cgroup": cgroups.path("late")}  # not created yet
    agent = make_agent([late]).start()
    topology.server("echo", PORT)
    assert "workload test/late is present" not in agent.log()

    cgroups.make("late")

    def captured():
        result = topology.client(["echo", topology.remote_ip, PORT, "late"], cgroup=cgroups.directory("late"))
        ports = {e["src_addr"].rsplit(":", 1)[1]: e for e in agent.entries() if e["src_addr"]}
        return ports.get(str(result["local_port"]))

    entry = wait_for(captured, timeout=10, interval=0.3, what="the late workload to be captured")
    assert entry["src_identity"] == identity("late")


def test_removed_cgroup_leaves_the_capture_set(topology, cgroups, make_agent):
    agent = make_agent([workload(cgroups, "brief")]).start()
    wait_for(lambda: "workload test/brief is present" in agent.log(), what="the workload to be registered")
    cgroups.directory("brief").rmdir()
    wait_for(lambda: "left the registry" in agent.log(), timeout=5, what="the removed cgroup to leave the registry")
    listing = topology.nft("list", "set", "inet", "mesh_agent", "workloads_l2").stdout
    assert "elements" not in listing, listing


def test_reload_adds_and_removes_workloads_without_dropping_connections(topology, cgroups, make_agent, tmp_path):
    first = workload(cgroups, "first")
    # One level deeper than the first: adding it needs a new set and rule, so
    # the reload replaces the whole table while a connection is open.
    second = workload(cgroups, "deeper/second")
    second["name"] = "second"
    agent = make_agent([first]).start()
    record = tmp_path / "accepted"
    topology.server("echo", PORT, record=record)

    holder = hold_client(topology, cgroups, "first", 4)

    agent.write_config([first, second])
    agent.reload()
    wait_for(lambda: "workload test/second is present" in agent.log(), what="the reload to add the second workload")
    added = topology.client(["echo", topology.remote_ip, PORT, "now captured"], cgroup=cgroups.directory("deeper/second"))
    assert agent.entry_for_port(added["local_port"])["src_identity"] == identity("second")

    agent.write_config([first])
    agent.reload()
    wait_for(lambda: agent.log().count("reloaded") >= 2, what="the second reload")
    removed = topology.client(["echo", topology.remote_ip, PORT, "no longer captured"], cgroup=cgroups.directory("deeper/second"))
    # Not captured: the server saw the client's own port, not one the agent dialled from.
    # (The dual-stack test server writes IPv4 peers as ::ffff:a.b.c.d.)
    seen = [line.split()[1:] for line in record.read_text().splitlines()]
    assert [f"::ffff:{topology.node_ip}", str(removed["local_port"])] in seen, seen
    assert str(removed["local_port"]) not in [e["src_addr"].rsplit(":", 1)[1] for e in agent.entries()]

    import json
    out, err = holder.communicate(timeout=30)
    held = json.loads(out)
    assert held["ok"] and held["rounds"] > 20, f"the long-lived connection broke during reloads: {held}"


def test_invalid_reload_keeps_the_running_config(topology, cgroups, make_agent):
    agent = make_agent([workload(cgroups, "steady")]).start()
    topology.server("echo", PORT)
    agent.config_path.write_text("trustDomain: cluster.local\nworkloads: [{name: x, namespace: y}]\n")
    agent.reload()
    wait_for(lambda: "reload refused" in agent.log(), what="the reload to be refused")
    assert "workloads[0].cgroup: is required" in agent.log()
    result = topology.client(["echo", topology.remote_ip, PORT, "still captured"], cgroup=cgroups.directory("steady"))
    assert agent.entry_for_port(result["local_port"])["src_identity"] == identity("steady")


def test_sigterm_removes_the_table_in_failure_mode_open(topology, cgroups, make_agent):
    agent = make_agent([workload(cgroups, "orders")]).start()
    assert topology.has_table()
    listing = topology.nft("list", "table", "inet", "mesh_agent").stdout
    assert 'comment "' in listing, "every rule says why it is there"
    assert agent.stop() == 0
    assert not topology.has_table()


def test_failure_mode_closed_keeps_capture_and_restart_replaces_stale_table(topology, cgroups, make_agent):
    agent = make_agent([workload(cgroups, "orders")], failureMode="closed").start()
    assert agent.stop() == 0
    assert topology.has_table(), "failureMode closed must leave capture in place"

    # Make the stale table visibly different: an extra chain the agent never writes.
    topology.nft("add", "chain", "inet", "mesh_agent", "leftover")
    topology.server("echo", PORT)
    restarted = make_agent([workload(cgroups, "orders")], failureMode="closed")
    restarted.stderr_path = agent.tmp_path / "agent2.stderr"
    restarted.start()
    listing = topology.nft("list", "table", "inet", "mesh_agent").stdout
    assert "leftover" not in listing
    result = topology.client(["echo", topology.remote_ip, PORT, "after restart"], cgroup=cgroups.directory("orders"))
    assert result["ok"]
    restarted.entry_for_port(result["local_port"])


def test_agent_survives_a_client_that_resets_mid_stream(topology, cgroups, make_agent):
    agent = make_agent([workload(cgroups, "orders")]).start()
    topology.server("echo", PORT)
    for _ in range(5):
        reset = topology.client(["reset", topology.remote_ip, PORT], cgroup=cgroups.directory("orders"))
    agent.entry_for_port(reset["local_port"])
    assert agent.proc.poll() is None
    after = topology.client(["echo", topology.remote_ip, PORT, "still serving"], cgroup=cgroups.directory("orders"))
    assert after["ok"]
    agent.entry_for_port(after["local_port"])


def test_direct_connection_to_the_outbound_port_is_refused(topology, cgroups, make_agent):
    agent = make_agent([workload(cgroups, "orders")]).start()
    topology.server("echo", PORT)
    script = (
        "import socket; s=socket.create_connection(('127.0.0.1', 15001), timeout=5); "
        "s.sendall(b'x');\n"
        "try:\n  d=s.recv(10)\nexcept ConnectionResetError:\n  d=b''\n"
        "print(repr(d))"
    )
    out = topology.run_in(topology.node, os.sys.executable, "-c", script).stdout.strip()
    assert out == "b''", "a connection that was not redirected must be closed, not proxied"
    assert agent.proc.poll() is None


def test_connection_to_a_closed_port_is_logged_and_the_client_is_closed(topology, cgroups, make_agent):
    agent = make_agent([workload(cgroups, "orders")]).start()
    script = (
        "import socket, sys\n"
        f"s=socket.create_connection(('{topology.remote_ip}', 9), timeout=10)\n"
        "print(s.getsockname()[1]); sys.stdout.flush()\n"
        "try:\n  d=s.recv(10)\nexcept ConnectionResetError:\n  d=b''\n"
        "print(repr(d))"
    )
    proc = topology.spawn(topology.node, [os.sys.executable, "-c", script], cgroup=cgroups.directory("orders"))
    out, err = proc.communicate(timeout=30)
    port, data = out.split()
    assert data == "b''"
    entry = agent.entry_for_port(port)
    assert "connect to destination failed" in entry["reason"]


def test_invalid_config_exits_78_with_file_and_line(tmp_path):
    config = tmp_path / "agent.yaml"
    config.write_text("trustDomain: cluster.local\nports:\n  outbund: 1\n")
    result = subprocess.run([str(BIN / "mesh-agent"), "--config", str(config)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 78
    assert f"{config}:3: ports.outbund: unknown key" in result.stderr


def test_not_root_exits_77_and_says_why(tmp_path):
    config = tmp_path / "agent.yaml"
    config.write_text("trustDomain: cluster.local\naccessLog: '-'\n")
    config.chmod(0o644)
    tmp_path.chmod(0o755)
    result = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", str(BIN / "mesh-agent"), "--config", str(config)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 77, result.stderr
    assert "must run as root" in result.stderr


def test_agentctl_config_check(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("trustDomain: cluster.local\n")
    ok = subprocess.run([str(BIN / "agentctl"), "config", "check", str(good)], capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0 and "valid" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("trustDomain: cluster.local\nmark: 0x2000\n")
    fail = subprocess.run([str(BIN / "agentctl"), "config", "check", str(bad)], capture_output=True, text=True, timeout=30)
    assert fail.returncode == 1
    assert f"{bad}:2: mark:" in fail.stderr


def hold_client(topology, cgroups, name, seconds):
    """A connection kept open for `seconds`, with a round trip every 50 ms; waits
    until the agent is proxying it."""
    proc = topology.spawn(topology.node, [os.sys.executable, str(PEER), "hold", topology.remote_ip, str(PORT), str(seconds)], cgroup=cgroups.directory(name))
    wait_for(lambda: topology.run_in(topology.node, "ss", "-tn", "state", "established", "( sport = :15001 )").stdout.count("\n") >= 2, what="the held connection to be proxied")
    return proc


def test_sigterm_lets_open_connections_finish_within_the_drain_timeout(topology, cgroups, make_agent):
    import json
    agent = make_agent([workload(cgroups, "orders")], drainTimeout="20s").start()
    topology.server("echo", PORT)
    holder = hold_client(topology, cgroups, "orders", 3)
    started = time.time()
    agent.proc.send_signal(signal.SIGTERM)
    out, _ = holder.communicate(timeout=30)
    held = json.loads(out)
    assert held["ok"], f"the connection in flight was cut during drain: {held}"
    assert agent.proc.wait(timeout=30) == 0
    assert time.time() - started >= 2, "the agent exited before its open connection finished"
    assert "waiting up to" in agent.log()


def test_drain_timeout_closes_connections_still_open(topology, cgroups, make_agent):
    import json
    agent = make_agent([workload(cgroups, "orders")], drainTimeout="1s").start()
    topology.server("echo", PORT)
    holder = hold_client(topology, cgroups, "orders", 20)
    started = time.time()
    agent.proc.send_signal(signal.SIGTERM)
    assert agent.proc.wait(timeout=30) == 0
    assert time.time() - started < 10, "the agent waited past its drain timeout"
    assert "drain deadline passed" in agent.log()
    out, _ = holder.communicate(timeout=30)
    assert not json.loads(out)["ok"], "the connection should have been closed at the deadline"
