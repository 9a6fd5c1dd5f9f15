#!/usr/bin/env python3
"""Finds one line of a mesh-agent access log and prints its main fields, for the
demo (deploy/demo/demo.sh).

  accesslog.py FILE [--after N] KEY=VALUE...

Waits up to 10 s for an entry (from line N+1 on) whose fields equal every
KEY=VALUE ("null" matches a missing identity), prints it, one field a line, and
exits 0; exits 1 when none comes. A line is written when its connection closes.
"""
import json
import sys
import time

SHOWN = ["direction", "tls", "reason", "action", "src_identity", "src_workload", "src_addr",
         "dst_identity", "dst_workload", "dst_addr", "bytes_received", "bytes_sent"]
# Shown only when the line has them: requests on inspected (L7) connections.
SHOWN_IF_PRESENT = ["protocol", "method", "path", "status", "policy"]


def entries(path, after):
    try:
        with open(path) as log:
            lines = log.read().splitlines()[after:]
    except FileNotFoundError:
        return []
    result = []
    for line in lines:
        try:
            result.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # the line being written
    return result


def matches(entry, wanted):
    return all(("null" if entry.get(key) is None else str(entry.get(key))) == value for key, value in wanted.items())


def main(argv):
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    path, after, wanted = argv[0], 0, {}
    rest = argv[1:]
    while rest:
        if rest[0] == "--after":
            after, rest = int(rest[1]), rest[2:]
            continue
        key, _, value = rest.pop(0).partition("=")
        wanted[key] = value
    deadline = time.time() + 10
    while True:
        found = [e for e in entries(path, after) if matches(e, wanted)]
        if found:
            entry = found[-1]
            shown = SHOWN + [key for key in SHOWN_IF_PRESENT if key in entry and entry.get("protocol") == "http"]
            width = max(len(k) for k in shown)
            for key in shown:
                value = entry.get(key)
                print(f"    {key:<{width}}  {'null' if value is None else value}")
            return 0
        if time.time() > deadline:
            wanted_text = ", ".join(f"{k}={v}" for k, v in wanted.items())
            print(f"no access-log entry with {wanted_text} in {path}", file=sys.stderr)
            for entry in entries(path, after)[-3:]:
                print(f"  (last entries: {json.dumps(entry)})", file=sys.stderr)
            return 1
        time.sleep(0.1)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
