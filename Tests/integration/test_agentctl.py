"""agentctl status and workloads against a running agent, as tables and JSON."""
import json
import os

from conftest import BIN, TRUST_DOMAIN, wait_for


def test_status_and_workloads_say_what_the_agent_is_doing(topology, cgroups, make_agent, tmp_path):
    cgroups.make("orders")
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "strict-orders.yaml").write_text(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
        "metadata: {name: strict-orders, namespace: test}\n"
        "spec:\n  selector: {matchLabels: {app: orders}}\n  mtls: {mode: STRICT}\n"
        "  portLevelMtls:\n    9090: {mode: PERMISSIVE}\n")
    agent = make_agent([
        {"name": "orders", "cgroup": cgroups.path("orders"), "ports": [8080, 9090], "labels": {"app": "orders"}},
        {"name": "later", "cgroup": cgroups.path("later"), "ports": [7070]},
    ], policyDir=policies).start()

    status = json.loads(agent.ctl("status", "-o", "json").stdout)
    assert status["ready"] is True
    assert status["node"] == "test-node" and status["trust_domain"] == TRUST_DOMAIN and status["capture_mode"] == "host"
    assert status["workloads"] == 2 and status["workloads_present"] == 1, status
    assert status["peer_authentications"] == 1 and status["default_mtls_mode"] == "PERMISSIVE", status
    assert status["certificates"] == 2, "one for the present workload, one for the agent's tunnel listener"
    assert status["earliest_certificate_expiry"], status
    assert status["rules"] in ("installed", "in sync"), status
    # The drift check runs every ten seconds and finds the table as installed.
    wait_for(lambda: json.loads(agent.ctl("status", "-o", "json").stdout)["rules"] == "in sync", timeout=20,
             what="the periodic drift check to report the table in sync")
    table = agent.ctl("status").stdout
    assert "ready" in table and "in sync" in table and "1 present of 2 configured" in table, table

    workloads = {w["name"]: w for w in json.loads(agent.ctl("--socket", agent.admin_socket, "workloads", "-o", "json").stdout)}
    orders, later = workloads["orders"], workloads["later"]
    assert orders["present"] is True and orders["cgroup_id"] == os.stat(cgroups.directory("orders")).st_ino
    assert orders["identity"] == f"spiffe://{TRUST_DOMAIN}/ns/test/sa/orders"
    assert orders["mtls"] == {"8080": "STRICT", "9090": "PERMISSIVE"}, orders
    assert orders["labels"] == {"app": "orders"}
    assert later["present"] is False and later.get("cgroup_id") is None and later["mtls"] == {"7070": "PERMISSIVE"}
    assert later["source"] == "config" and later["capture_mode"] == "host" and later["state"].startswith("waiting"), later

    lines = agent.ctl("workloads").stdout.strip().splitlines()
    assert lines[0].split()[:5] == ["WORKLOAD", "IDENTITY", "SOURCE", "CAPTURE", "CGROUP"], lines
    assert all(" config " in line and " host " in line for line in lines[1:]), lines
    assert any("test/later" in line and "(not present)" in line for line in lines), lines
    assert any("8080 STRICT, 9090 PERMISSIVE" in line for line in lines), lines

    # A cgroup that appears later is reported present.
    cgroups.make("later")
    wait_for(lambda: json.loads(agent.ctl("status", "-o", "json").stdout)["workloads_present"] == 2, timeout=10,
             what="the new cgroup to be picked up")


def test_rules_shows_the_live_table_and_its_drift_and_reload_applies_a_new_config(topology, cgroups, make_agent):
    cgroups.make("orders")
    workloads = [{"name": "orders", "cgroup": cgroups.path("orders"), "ports": [8080]}]
    agent = make_agent(workloads).start()

    rules = agent.ctl("rules")
    assert rules.returncode == 0
    assert "table inet mesh_agent" in rules.stdout and "matches the desired ruleset" in rules.stdout, rules.stdout
    assert "tcp dport @permissive_ports redirect to :15006" in rules.stdout
    view = json.loads(agent.ctl("rules", "-o", "json").stdout)
    assert view["in_sync"] is True and view["drift"] == [] and "set permissive_ports" in view["live"], view

    # Someone adds a chain of their own to the agent's table.
    topology.nft("add", "chain", "inet", "mesh_agent", "intruder")
    drifted = agent.ctl("rules", check=False)
    if drifted.returncode == 0:
        # The periodic check repaired it between the two commands; it must say so.
        assert "differs from the desired ruleset" in agent.log(), agent.log()[-2000:]
    else:
        assert drifted.returncode == 1
        assert "differs from the desired ruleset" in drifted.stdout and "intruder" in drifted.stdout, drifted.stdout
    wait_for(lambda: agent.ctl("rules", check=False).returncode == 0, timeout=20, what="the agent to repair its table")
    assert "intruder" not in topology.nft("list", "table", "inet", "mesh_agent").stdout

    # agentctl reload does what SIGHUP does, and answers once it is done: a
    # workload added to the file is there when it returns.
    cgroups.make("added")
    agent.write_config(workloads + [{"name": "added", "cgroup": cgroups.path("added")}])
    assert "reloaded: 2 workload(s)" in agent.ctl("reload").stdout
    assert json.loads(agent.ctl("status", "-o", "json").stdout)["workloads"] == 2
    # A config that does not validate is refused, with the reason, and exit 1.
    good = agent.config_path.read_text()
    agent.config_path.write_text(good + "bogusKey: 1\n")
    refused = agent.ctl("reload", check=False)
    assert refused.returncode == 1 and "bogusKey" in refused.stderr and "stays in force" in refused.stderr, refused
    agent.config_path.write_text(good)
    assert json.loads(agent.ctl("status", "-o", "json").stdout)["workloads"] == 2


def test_the_admin_api_refuses_other_users_even_when_its_socket_file_lets_them_in(topology, cgroups, make_agent):
    """The socket file's mode is one guard; the agent also asks the kernel who
    connected (SO_PEERCRED) and answers only root and its own user."""
    import shutil
    import sys
    import tempfile
    from pathlib import Path

    from conftest import BIN, sh

    cgroups.make("orders")
    workloads = [{"name": "orders", "cgroup": cgroups.path("orders"), "ports": [8080]}]
    agent = make_agent(workloads)
    # pytest's tmp_path is root-only; the socket goes where nobody can reach
    # it, so that what refuses nobody is the agent, not the directory.
    shared = Path(tempfile.mkdtemp(prefix="ma-admin-"))
    try:
        shared.chmod(0o755)
        agent.admin_socket = shared / "admin.sock"
        agent.write_config(workloads)
        agent.start()
        assert agent.admin_socket.stat().st_mode & 0o777 == 0o600
        agent.admin_socket.chmod(0o666)  # the mistake this guards against

        def as_nobody(*args):
            return sh("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                      str(BIN / "agentctl"), *args, "--socket", str(agent.admin_socket), check=False)

        for refused in (as_nobody("status"), as_nobody("reload")):
            assert refused.returncode != 0, refused.stdout
            assert "403" in refused.stderr and "uid 65534" in refused.stderr, refused.stderr
            assert "only root may use the agent's admin API" in refused.stderr, refused.stderr
            assert "run agentctl as root (sudo agentctl" in refused.stderr, refused.stderr
            assert refused.stdout == "", refused.stdout

        # One warning naming the user and the loosened mode; the repeat is at debug.
        warnings = [line for line in agent.log().splitlines() if "admin API refused uid 65534" in line]
        assert len(warnings) == 2, warnings
        assert " warning " in warnings[0] and "mode 666" in warnings[0] and "chmod 600" in warnings[0], warnings
        assert " debug " in warnings[1] and " warning " not in warnings[1], warnings
        metrics = topology.run_in(topology.node, sys.executable, "-c",
                                  "import urllib.request; print(urllib.request.urlopen("
                                  "'http://127.0.0.1:15020/metrics', timeout=10).read().decode())").stdout
        assert "mesh_agent_admin_refused_total 2" in metrics, [m for m in metrics.splitlines() if "admin" in m]

        # Root still gets its answers through the same socket.
        assert json.loads(agent.ctl("status", "-o", "json").stdout)["ready"] is True
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_every_read_command_answers_as_a_table_and_as_json(topology, cgroups, make_agent, tmp_path):
    import subprocess as sp
    cgroups.make("orders")
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "orders.yaml").write_text(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: orders-get, namespace: test}\n"
        "spec:\n  selector: {matchLabels: {app: orders}}\n  rules:\n  - to: [{operation: {methods: [GET]}}]\n")
    agent = make_agent([{"name": "orders", "cgroup": cgroups.path("orders"), "ports": [8080], "labels": {"app": "orders"}}],
                       policyDir=policies).start()
    explain = ["policy", "explain", "--to-workload", "orders", "--port", "8080", "--method", "GET", "--path", "/"]
    headers = {
        ("status",): "FIELD", ("workloads",): "WORKLOAD", ("certs",): "IDENTITY", ("connections",): None, ("rules",): None,
        ("policies",): "KIND", tuple(explain): "FIELD",
    }
    for command, header in headers.items():
        table = agent.ctl(*command).stdout
        assert table.strip(), f"agentctl {' '.join(command)} printed nothing"
        if header:
            assert header in table.splitlines()[0] or any(line.startswith(header) for line in table.splitlines()), (command, table)
        json.loads(agent.ctl(*command, "-o", "json").stdout)
    assert "decision    allow" in agent.ctl(*explain).stdout
    # With no agent at the socket, every command says so and exits 1.
    gone = sp.run([str(BIN / "agentctl"), "status", "--socket", str(tmp_path / "nobody.sock")], capture_output=True, text=True, timeout=30)
    assert gone.returncode == 1 and "mesh-agent is not running" in gone.stderr, gone.stderr
