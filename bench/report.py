#!/usr/bin/env python3
"""Writes docs/benchmarks.md and docs/benchmarks.svg from one bench/results/*.json
(the newest when none is given). The performance targets are checked here, so
the page says which are met and by how much."""
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PATHS = ["direct", "mesh", "mesh-passthrough", "haproxy-mtls"]
# The two wrk measurements the graph and pod tables compare, and their titles.
WRK_RATES = (("wrk_keepalive", "keep-alive requests/s"), ("wrk_close", "new connections/s"))
METRICS = [
    ("iperf_1", "gbit_s", "throughput, 1 stream (Gbit/s)", True),
    ("iperf_4", "gbit_s", "throughput, 4 streams (Gbit/s)", True),
    ("wrk_keepalive", "requests_s", "keep-alive requests/s", True),
    ("wrk_keepalive", "p99_ms", "keep-alive p99 (ms)", False),
    ("wrk_close", "requests_s", "new connections/s", True),
    ("wrk_close", "p99_ms", "new connection p99 (ms)", False),
    ("iperf_1", "proxy_cpu_s_per_gb", "proxy CPU per GB, 1 stream (s)", False),
    ("wrk_keepalive", "proxy_cpu_us_per_request", "proxy CPU per keep-alive request (µs)", False),
    ("wrk_close", "proxy_cpu_us_per_request", "proxy CPU per new connection (µs)", False),
]


def value(results, path, metric, field):
    """A path's measurement; None where the path has none (direct has no proxy CPU)."""
    return results["paths"][path][metric].get(field)


def cell(number, field):
    if number is None:
        return "—"
    return f"{number:,.0f}" if field == "requests_s" or "_us_" in field else f"{number:,.2f}"


def ratio(a, b):
    if a is None or b is None:
        return None
    return a / b if b else float("inf")


def ratio_cell(number):
    return "—" if number is None else f"{number:.2f}"


def targets(results):
    mesh = lambda m, f: value(results, "mesh", m, f)  # noqa: E731
    haproxy = lambda m, f: value(results, "haproxy-mtls", m, f)  # noqa: E731
    direct = lambda m, f: value(results, "direct", m, f)  # noqa: E731
    idle = results["idle_connections"]["kib_per_connection"]
    haproxy_cpu = haproxy("iperf_1", "proxy_cpu_s_per_gb")
    rows = [
        ("mesh throughput, 1 stream ≥ 1.25× haproxy-mtls", ratio(mesh("iperf_1", "gbit_s"), haproxy("iperf_1", "gbit_s")), 1.25, "×"),
        ("mesh throughput, 4 streams ≥ 1.25× haproxy-mtls", ratio(mesh("iperf_4", "gbit_s"), haproxy("iperf_4", "gbit_s")), 1.25, "×"),
        ("mesh CPU per GB ≤ 0.8× haproxy-mtls's", ratio(mesh("iperf_1", "proxy_cpu_s_per_gb"), haproxy_cpu), 0.8, "×", True),
        ("mesh keep-alive requests/s ≥ 1.25× haproxy-mtls", ratio(mesh("wrk_keepalive", "requests_s"), haproxy("wrk_keepalive", "requests_s")), 1.25, "×"),
        ("mesh keep-alive p99 ≤ haproxy-mtls p99", ratio(haproxy("wrk_keepalive", "p99_ms"), mesh("wrk_keepalive", "p99_ms")), 1.0, "× (haproxy p99 / mesh p99)"),
        ("mesh new connections/s ≥ 10× haproxy-mtls", ratio(mesh("wrk_close", "requests_s"), haproxy("wrk_close", "requests_s")), 10.0, "×"),
        ("mesh new connections/s ≥ 0.35× direct", ratio(mesh("wrk_close", "requests_s"), direct("wrk_close", "requests_s")), 0.35, "×"),
        ("mesh-passthrough throughput ≥ 0.85× direct", ratio(value(results, "mesh-passthrough", "iperf_1", "gbit_s"), direct("iperf_1", "gbit_s")), 0.85, "×"),
    ]
    # Each agent's own cost: node A holds the client side of every idle
    # connection and node B the workload side.
    rows.append(("≤ 8 KiB memory per idle proxied connection (each agent)", max(idle.values()), 8.0, "KiB", True))
    rows.append(("≤ 32 MiB agent RSS at idle with 100 workloads", results["idle_100_workloads"]["rss_kib"] / 1024, 32.0, "MiB", True))
    rows.append(("L7 policy costs ≤ 15% of keep-alive requests/s", results["policy"]["l7_cost"] * 100, 15.0, "%", True))
    stream = results.get("micro", {}).get("HTTP/2 stream open+close")
    if stream:
        rows.append(("HBONE stream open+close ≤ 25 µs (micro-bench)", stream["ns"] / 1000, 25.0, "µs", True))
    out = []
    for row in rows:
        name, measured, goal, unit = row[:4]
        at_most = len(row) > 4
        met = measured <= goal if at_most else measured >= goal
        out.append((name, measured, goal, unit, met))
    return out


def svg(results):
    """Bars of each path's keep-alive requests/s, new connections/s and
    throughput, relative to direct."""
    width, bar, gap, left, top = 760, 14, 6, 230, 40
    groups = [("keep-alive requests/s", "wrk_keepalive", "requests_s"), ("new connections/s", "wrk_close", "requests_s"),
              ("throughput, 1 stream", "iperf_1", "gbit_s"), ("throughput, 4 streams", "iperf_4", "gbit_s")]
    colors = {"direct": "#9e9e9e", "mesh": "#1565c0", "mesh-passthrough": "#64b5f6", "haproxy-mtls": "#e65100"}
    height = top + len(groups) * (len(PATHS) * (bar + gap) + 24) + 40
    scale = (width - left - 80)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
             f'<text x="10" y="22" font-size="15" font-weight="bold">Each path relative to direct (1.0 = no proxy), {results["machine"]["time"]}</text>']
    y = top
    for title, metric, field in groups:
        parts.append(f'<text x="10" y="{y + 12}" font-weight="bold">{title}</text>')
        y += 18
        base = value(results, "direct", metric, field) or 1
        for path in PATHS:
            share = value(results, path, metric, field) / base
            length = max(1, min(share, 1.2) / 1.2 * scale)
            parts.append(f'<text x="{left - 8}" y="{y + bar - 3}" text-anchor="end">{path}</text>')
            parts.append(f'<rect x="{left}" y="{y}" width="{length:.1f}" height="{bar}" fill="{colors[path]}"/>')
            parts.append(f'<text x="{left + length + 6:.1f}" y="{y + bar - 3}">{share:.2f}</text>')
            y += bar + gap
        y += 6
    one = left + scale / 1.2
    parts.append(f'<line x1="{one:.1f}" y1="{top}" x2="{one:.1f}" y2="{y}" stroke="#333" stroke-dasharray="4 3"/>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def markdown(results, source):
    m = results["machine"]
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `make bench` (`bench/run.py`, then `bench/report.py`) from `{source}`. Do not edit by hand: run it again.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, Linux {m['kernel']}; {m['haproxy']}; {m['openssl']}. "
        f"Run at {m['time']}. Each measurement ran {results['seconds_per_run']} s, {results.get('rounds', 1)} times, the paths taking "
        "turns; the table gives the median round (`bench/results` has every round). Clients, proxies and servers share "
        "the same cores, so the ratios, not the absolute numbers, are what carries over to other machines.",
        "",
        "Paths: **direct** (no proxy), **mesh** (both agents, HBONE mutual TLS), **mesh-passthrough** (node A's agent proxying "
        "plaintext to a destination outside `meshNetworks`), **haproxy-mtls** (HAProxy on each node, TLS 1.3 with client "
        "certificates between them, one thread each, P-256).",
        "",
        "![each path relative to direct](benchmarks.svg)",
        "",
        "| measurement | " + " | ".join(PATHS) + " | mesh ÷ direct | mesh ÷ haproxy-mtls |",
        "|---|" + "---|" * (len(PATHS) + 2),
    ]
    for metric, field, title, _ in METRICS:
        cells = [cell(value(results, p, metric, field), field) for p in PATHS]
        mesh = value(results, "mesh", metric, field)
        lines.append(f"| {title} | " + " | ".join(cells) +
                     f" | {ratio_cell(ratio(mesh, value(results, 'direct', metric, field)))}"
                     f" | {ratio_cell(ratio(mesh, value(results, 'haproxy-mtls', metric, field)))} |")
    lines += ["", "Proxy CPU is the user and system time of the processes that carry the path (both agents for the mesh, "
              "both HAProxy processes for haproxy-mtls; node A's agent alone does the work of mesh-passthrough), "
              "from `/proc/PID/stat`, divided by what the measurement moved."]
    idle = results["idle_connections"]
    policy = results["policy"]
    lines += [
        "",
        "| mesh only | value |",
        "|---|---|",
        f"| memory per idle proxied connection ({idle['connections']:,} held) | node A {idle['kib_per_connection']['a']} KiB, node B {idle['kib_per_connection']['b']} KiB |",
        f"| agent RSS at idle, {results['idle_100_workloads']['workloads']} workloads with certificates | {results['idle_100_workloads']['rss_kib'] / 1024:.1f} MiB |",
        f"| keep-alive requests/s, L4-only policy → L7 policy | {policy['l4']['requests_s']:,.0f} → {policy['l7']['requests_s']:,.0f} ({policy['l7_cost'] * 100:.0f}% fewer) |",
    ]
    if "l7_denied_only" in policy:
        lines.append(f"| keep-alive requests/s, L7 policy logging refused requests only (`accessLog.requests: denied`) | "
                     f"{policy['l7_denied_only']['requests_s']:,.0f} ({policy['l7_denied_only_cost'] * 100:.0f}% fewer than L4) |")
    lines += [
        f"| node B's agent CPU per request, L4-only policy → L7 policy | {policy['l4'].get('node_b_cpu_us_per_request', '?')} µs → "
        f"{policy['l7'].get('node_b_cpu_us_per_request', '?')} µs |",
    ]
    graph = results.get("graph")
    if graph:
        lines += ["", "The service graph (target: ≤ 5% cost), mesh with it recorded and without, agents restarted between; "
                  "`graph.http: true` also watches the requests of the spliced connections (its cost is against graph on):", "",
                  "| measurement | graph off | graph on | cost | graph.http | its cost |", "|---|---|---|---|---|---|"]
        for name, title in WRK_RATES:
            http = graph.get("http", {}).get(name)
            lines.append(f"| {title} | {graph['off'][name]['requests_s']:,.0f} | {graph['on'][name]['requests_s']:,.0f} | "
                         f"{graph[name + '_cost'] * 100:.1f}% | "
                         + (f"{http['requests_s']:,.0f} | {graph[name + '_http_cost'] * 100:.1f}% |" if http else "— | — |"))
    lines += pod_lines(results)
    micro = results.get("micro", {})
    if micro:
        lines += ["", "Micro-benchmarks of the hot pure pieces (`make bench-micro`, release build, one core; heap allocations "
                  "counted with `micro-bench allocations` under Tests/integration/tools/malloc_counter.c):", "",
                  "| piece | measured |", "|---|---|"]
        for name, measured in micro.items():
            if "allocations" in measured:
                lines.append(f"| {name} | {measured['allocations']:,.1f} allocations per {measured['per']} |")
            else:
                lines.append(f"| {name} | {measured['ns']:,} ns per {measured['per']} |")
    lines += ["", "## Targets", "", "| target | measured | met |", "|---|---|---|"]
    for name, measured, goal, unit, met in targets(results):
        lines.append(f"| {name} | {measured:.2f} {unit} | {'yes' if met else '**no**'} |")
    notes = ROOT / "docs" / "benchmarks-notes.md"
    if notes.exists():
        lines += ["", notes.read_text().strip()]
    return "\n".join(lines) + "\n"


def pod_lines(results):
    """Pods captured in their own namespaces: pod-to-pod rates beside host
    mode's, and CNI enrollment on a node of its own. Runs from before pods
    existed have neither."""
    lines = []
    pods = results.get("pods")
    if pods:
        lines += ["", "Pods (`captureMode: netns`): a pod on node A to a pod on node B, each captured in its own network "
                  "namespace, against the host-mode mesh path of the same run:", "",
                  "| measurement | pod to pod | host mode | pod ÷ host | pod p99 (ms) |", "|---|---|---|---|---|"]
        for name, title in WRK_RATES:
            sample = pods.get(name)
            if not sample:
                continue
            host = sample.get("host_mode_requests_s")
            lines.append(f"| {title} | {sample['requests_s']:,.0f} | {'—' if host is None else f'{host:,.0f}'} | "
                         f"{ratio_cell(sample.get('pod_vs_host'))} | {cell(sample.get('p99_ms'), 'p99_ms')} |")
    enrollment = results.get("enrollment")
    if enrollment:
        half = enrollment["pods"] // 2
        rss = enrollment["rss_kib"]
        lines += ["", f"CNI enrollment on one node: {enrollment['pods']} pods made by the reference `bridge` and `host-local` "
                  "plugins, each followed by `mesh-agent-cni ADD`, timed from its start to its return (the pod's table and "
                  "listeners are in place then):", "",
                  "| measurement | value |", "|---|---|",
                  f"| `ADD` → capture installed, first {half} pods | p50 {enrollment['add_ms_p50_first_half']} ms, "
                  f"p99 {enrollment['add_ms_p99_first_half']} ms |",
                  f"| `ADD` → capture installed, all {enrollment['pods']} pods | p50 {enrollment['add_ms_p50']} ms, "
                  f"p99 {enrollment['add_ms_p99']} ms, slowest {enrollment['add_ms_max']} ms |",
                  f"| pods captured at the end | {enrollment['captured']} of {enrollment['pods']} |",
                  f"| agent RSS with 0 / {half} / {enrollment['pods']} pods | "
                  + " / ".join(f"{rss[k] / 1024:.1f} MiB" for k in ("0", str(half), str(enrollment["pods"])) if k in rss) + " |",
                  f"| agent memory per enrolled pod | {enrollment['kib_per_pod']} KiB |"]
    return lines


def main(argv):
    results_dir = ROOT / "bench" / "results"
    # Runs are named by their UTC time, so the newest sorts last.
    source = Path(argv[0]) if argv else max(results_dir.glob("20*.json"))
    results = json.loads(source.read_text())
    relative = source.resolve().relative_to(ROOT) if source.resolve().is_relative_to(ROOT) else source
    (ROOT / "docs" / "benchmarks.md").write_text(markdown(results, relative))
    (ROOT / "docs" / "benchmarks.svg").write_text(svg(results))
    print(f"wrote docs/benchmarks.md and docs/benchmarks.svg from {relative}")


if __name__ == "__main__":
    main(sys.argv[1:])
