"""Workload certificates: issued by the node CA for each workload, shown by
agentctl certs, verified by openssl, rotated, and re-issued on a bundle change."""
import json
import subprocess
import time

from conftest import BIN, TRUST_DOMAIN, agentctl, make_ca, sh, wait_for


def workload(cgroups, name):
    cgroups.make(name)
    return {"name": name, "cgroup": cgroups.path(name)}


AGENT_IDENTITY = f"spiffe://{TRUST_DOMAIN}/ns/istio-system/sa/mesh-agent"


def all_certs(agent):
    return json.loads(agent.ctl("certs", "-o", "json").stdout)


def certs(agent):
    """The workloads' certificates (the agent also holds its own, for the tunnel)."""
    return [c for c in all_certs(agent) if c["identity"] != AGENT_IDENTITY]


def valid_certs(agent, count):
    return wait_for(lambda: (lambda c: c if len(c) == count and all(x["state"] == "valid" for x in c) else None)(certs(agent)),
                    timeout=15, what=f"{count} valid certificates")


def test_agent_issues_a_certificate_per_workload_that_openssl_verifies(topology, cgroups, make_agent, tmp_path):
    agent = make_agent([workload(cgroups, "orders"), workload(cgroups, "checkout")]).start()

    table = agent.ctl("certs").stdout
    lines = table.strip().splitlines()
    assert lines[0].split() == ["IDENTITY", "SERIAL", "NOT", "BEFORE", "NOT", "AFTER", "STATE"]
    assert len(lines) == 4, table
    assert all(line.split()[-1] == "valid" for line in lines[1:]), table

    listed = all_certs(agent)
    assert sorted(c["identity"] for c in listed) == [
        f"spiffe://{TRUST_DOMAIN}/ns/istio-system/sa/mesh-agent",
        f"spiffe://{TRUST_DOMAIN}/ns/test/sa/checkout",
        f"spiffe://{TRUST_DOMAIN}/ns/test/sa/orders",
    ], "one per workload, and the agent's own for the tunnel listener"
    for cert in listed:
        assert "PRIVATE KEY" not in cert["chain_pem"]
        leaf_pem = cert["chain_pem"].split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n"
        leaf = tmp_path / f"{cert['serial']}.pem"
        leaf.write_text(leaf_pem)
        verified = sh("openssl", "verify", "-CAfile", agent.ca / "bundle.pem", "-untrusted", agent.ca / "intermediate.pem", leaf, check=False)
        assert verified.returncode == 0, verified.stdout + verified.stderr
        text = sh("openssl", "x509", "-in", leaf, "-noout", "-text").stdout
        assert f"URI:{cert['identity']}" in text
        assert text.count("URI:") == 1
        assert "CA:FALSE" in text
        assert "TLS Web Server Authentication, TLS Web Client Authentication" in text
        assert "Digital Signature" in text
        assert "prime256v1" in text or "P-256" in text


def test_certificates_rotate_at_half_life_and_follow_workloads(topology, cgroups, make_agent):
    agent = make_agent([workload(cgroups, "rotating")], certificateTTL="6s").start()
    first = valid_certs(agent, 1)[0]["serial"]
    rotated = wait_for(lambda: (lambda c: c[0]["serial"] if c and c[0]["serial"] != first else None)(certs(agent)),
                       timeout=12, interval=0.5, what="the certificate to be re-issued at half-life")
    assert rotated != first
    assert certs(agent)[0]["state"] == "valid"

    cgroups.directory("rotating").rmdir()
    wait_for(lambda: certs(agent) == [], timeout=10, what="the certificate of a gone workload to be dropped")


def test_a_trust_bundle_change_reissues_and_a_corrupt_bundle_is_refused(topology, cgroups, make_agent, tmp_path):
    agent = make_agent([workload(cgroups, "orders")]).start()
    before = valid_certs(agent, 1)[0]["serial"]
    bundle = agent.ca / "bundle.pem"
    original = bundle.read_text()

    # A second root joins the bundle (the first step of a root rotation).
    other = make_ca(tmp_path / "other-ca", node="other")
    bundle.write_text(original + (other / "bundle.pem").read_text())
    after = wait_for(lambda: (lambda c: c[0]["serial"] if c[0]["serial"] != before else None)(certs(agent)),
                     timeout=10, what="re-issue after the bundle changed")
    assert "trust bundle" in agent.log() and "changed" in agent.log()

    bundle.write_text(original[: len(original) // 2])
    wait_for(lambda: "not reloaded, the previous roots stay in force" in agent.log(), timeout=10, what="the corrupt bundle to be refused")
    # The bundle is polled every tick: two more ticks of the agent's own clock
    # would have re-issued, had the refused bundle counted as a change.
    refused_at = json.loads(agent.ctl("status", "-o", "json").stdout)["uptime_seconds"]
    wait_for(lambda: json.loads(agent.ctl("status", "-o", "json").stdout)["uptime_seconds"] >= refused_at + 2, timeout=10,
             what="two more ticks of the agent")
    assert certs(agent)[0]["serial"] == after, "a refused bundle must not trigger re-issuing"
    assert agent.proc.poll() is None


def test_agent_without_its_ca_key_refuses_to_start_with_advice(topology, cgroups, make_agent):
    agent = make_agent([workload(cgroups, "orders")])
    (agent.ca / "intermediate.key").chmod(0o644)
    agent.start(expect_ready=False)
    code = agent.proc.wait(timeout=30)
    assert code != 0
    assert "chmod 600" in agent.log()


def test_agentctl_explains_a_missing_agent_and_a_non_root_user(tmp_path, topology, cgroups, make_agent):
    for args in (("certs", "--socket", tmp_path / "nothing.sock"), ("--socket", tmp_path / "nothing.sock", "connections")):
        missing = agentctl(*args, check=False)
        assert missing.returncode == 1, (args, missing.stderr)
        assert "mesh-agent is not running" in missing.stderr and "nothing.sock" in missing.stderr, (args, missing.stderr)

    agent = make_agent([workload(cgroups, "orders")]).start()
    tmp_path.chmod(0o755)
    result = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", str(BIN / "agentctl"), "certs", "--socket", str(agent.admin_socket)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "permission denied" in result.stderr and "root" in result.stderr


def test_sighup_with_a_corrupt_node_ca_keeps_the_old_one_and_a_new_one_reissues(topology, cgroups, make_agent, tmp_path):
    agent = make_agent([workload(cgroups, "orders")]).start()
    before = valid_certs(agent, 1)[0]["serial"]
    certificate = agent.ca / "intermediate.pem"
    original = certificate.read_text()

    certificate.write_text(original[:200])
    agent.reload()
    wait_for(lambda: "node CA not reloaded, the previous one stays in force" in agent.log(), what="the corrupt CA to be refused")
    assert certs(agent)[0]["serial"] == before
    assert certs(agent)[0]["state"] == "valid"

    # A new intermediate from the same root (e.g. after the old one's key was
    # rotated): SIGHUP picks it up and every workload gets a certificate under it.
    certificate.write_text(original)
    renewed_dir = tmp_path / "renewed"
    agentctl("ca", "issue-intermediate", "--ca", agent.ca.parent / "root", "--name", "test-node", "--out", renewed_dir)
    (agent.ca / "intermediate.key").unlink()
    (agent.ca / "intermediate.pem").write_text((renewed_dir / "intermediate.pem").read_text())
    key = agent.ca / "intermediate.key"
    key.touch(mode=0o600)
    key.write_text((renewed_dir / "intermediate.key").read_text())
    agent.reload()
    after = wait_for(lambda: (lambda c: c[0] if c[0]["serial"] != before else None)(certs(agent)), what="re-issue under the new intermediate")
    chain_intermediate = after["chain_pem"].split("-----END CERTIFICATE-----")[1] + "-----END CERTIFICATE-----\n"
    assert chain_intermediate.strip() == (renewed_dir / "intermediate.pem").read_text().strip()
