"""The demos are smoke tests too: each exits non-zero when something it shows
does not happen, and must leave nothing behind."""
import os
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
