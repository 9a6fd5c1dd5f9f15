#!/usr/bin/env python3
"""Plaintext capture cost: iperf3 through the agent vs. direct TCP, in one run.

Builds the integration tests' two-host topology (network namespaces joined by a
veth pair), runs an iperf3 server on the remote host and the iperf3 client on the
node twice per case: once in a workload cgroup (captured and proxied by the
agent) and once in a cgroup the agent does not know (direct). Also reports the
agent's CPU seconds per GB proxied. Run as root: MESH_AGENT_BIN=.build/release.
"""
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "Tests" / "integration"))
from conftest import Agent, Cgroups, Topology  # noqa: E402

SECONDS = int(os.environ.get("BENCH_SECONDS", "8"))


def agent_cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def iperf(topology, cgroup, streams):
    proc = topology.spawn(topology.node, ["iperf3", "-c", topology.remote_ip, "-t", str(SECONDS), "-P", str(streams), "-J"], cgroup=cgroup)
    out, err = proc.communicate(timeout=SECONDS + 60)
    if proc.returncode != 0:
        raise SystemExit(f"iperf3 failed: {out[-500:]} {err}")
    result = json.loads(out)
    return result["end"]["sum_received"]["bits_per_second"] / 1e9, result["end"]["sum_received"]["bytes"]


def main():
    topology = Topology()
    cgroups = Cgroups("bench")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cgroups.make("captured")
            cgroups.make("direct")
            agent = Agent(topology, Path(tmp), [{"name": "bench", "cgroup": cgroups.path("captured")}])
            agent.start()
            agent_pid = agent.proc.pid  # nsenter execs the agent in place
            topology.spawn(topology.remote, ["iperf3", "-s"])
            time.sleep(0.5)
            rows = []
            for streams in (1, 4):
                direct, _ = iperf(topology, cgroups.directory("direct"), streams)
                before = agent_cpu_seconds(agent_pid)
                captured, moved = iperf(topology, cgroups.directory("captured"), streams)
                cpu = agent_cpu_seconds(agent_pid) - before
                rows.append({"streams": streams, "direct_gbps": round(direct, 2), "captured_gbps": round(captured, 2),
                             "ratio": round(captured / direct, 3), "agent_cpu_s_per_gb": round(cpu / (moved / 1e9), 3)})
            captured_lines = [e for e in agent.entries() if e.get("src_identity")]
            assert captured_lines, "the captured runs did not go through the agent"
            agent.stop()
    finally:
        topology.close()
        cgroups.close()
    print(f"{'streams':>7} {'direct Gbit/s':>14} {'through agent':>14} {'ratio':>6} {'agent CPU s/GB':>15}")
    for r in rows:
        print(f"{r['streams']:>7} {r['direct_gbps']:>14} {r['captured_gbps']:>14} {r['ratio']:>6} {r['agent_cpu_s_per_gb']:>15}")
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    (out / "capture-throughput.json").write_text(json.dumps({"seconds": SECONDS, "nproc": os.cpu_count(), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
