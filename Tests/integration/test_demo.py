"""The demos are smoke tests too: each exits non-zero when something it shows
does not happen, and must leave nothing behind."""
import os
import re
import subprocess
from pathlib import Path

import pytest

from conftest import BIN

DEMO = Path(__file__).resolve().parents[2] / "deploy" / "demo"


def leftovers():
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return sorted(line.split()[0] for line in namespaces.splitlines() if line.startswith("ma-demo"))


@pytest.mark.parametrize("script", ["demo.sh", "demo-host.sh"])
def test_the_demo_shows_what_it_says_and_cleans_up(script):
    done = subprocess.run(["bash", str(DEMO / script)], env={**os.environ, "MESH_AGENT_BIN": str(BIN)},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "✘" not in done.stdout + done.stderr
    assert "Cleaned up:" in done.stdout
    assert leftovers() == []


def test_the_journey_demo_walks_the_road_and_cleans_up():
    done = subprocess.run(["bash", str(DEMO / "journey.sh")], env={**os.environ, "MESH_AGENT_BIN": str(BIN)},
                          capture_output=True, text=True, timeout=180)
    out = done.stdout + done.stderr
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-4000:]
    assert "✘" not in out
    assert "the suggested policies pass agentctl policy check" in out
    assert "--- shop-orders.yaml" in out and 'istio.io/dry-run: "true"' in out and '"/orders/*"' in out, out
    assert "--- shop-ledger-strict.yaml" in out and "--- shop-orders-strict.yaml" not in out, out
    assert "would_deny: 1 on shop/orders-observed" in out
    assert "frontend  -> orders  DELETE /orders/7" in out and "403 RBAC: access denied" in out, out
    assert '"event":"new_edge"' in out and "lateral movement" in out, out
    assert "mesh-agent.io/expires:" in out and "expired: reporting is refused again" in out, out
    assert "Cleaned up:" in done.stdout
    assert leftovers() == []
    work = re.search(r"namespaces \(and the nftables tables in them\), (\S+)\.", done.stdout).group(1)
    assert not Path(work).exists()
    cgroup2 = next(line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines() if " - cgroup2 " in line)
    assert list(Path(cgroup2).glob("ma-demoj*")) == []
