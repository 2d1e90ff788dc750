#!/usr/bin/env python3
"""Where a ferry run's time went, from its `--events` JSON lines: per task and host, when
it started working (seconds after the run's first event), how long it worked, and how
long it had waited for `after` dependencies before that. `duration_ms` in the report
counts from the moment the host reached the task, waiting included; the task_start
event is emitted after the wait, so work = task_end.ts - task_start.ts.

    timeline.py EVENTS.jsonl [--markdown]
"""

import json
import sys
from datetime import datetime


def ts(s):
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def main():
    path = sys.argv[1]
    markdown = "--markdown" in sys.argv[2:]
    events = [json.loads(line) for line in open(path) if line.strip()]
    events = [e for e in events if "ts" in e]
    if not events:
        sys.exit(f"{path}: no events")
    t0 = min(ts(e["ts"]) for e in events)
    start = {}
    rows = []
    streams = {}  # (host, task, what) -> [first ts, last ts, last bytes]
    for e in events:
        key = (e.get("host"), e.get("task"))
        if e["event"] == "progress":
            k = key + (e.get("what"),)
            t = ts(e["ts"])
            s = streams.setdefault(k, [t, t, 0])
            s[1], s[2] = t, e.get("bytes") or 0
        elif e["event"] == "task_start":
            start[key] = ts(e["ts"])
        elif e["event"] == "task_end":
            end = ts(e["ts"])
            begun = start.get(key, end)
            total = e.get("duration_ms", 0) / 1000
            work = end - begun
            rows.append((begun - t0, key[0], key[1], e["status"], work, max(0.0, total - work)))
    last = max(ts(e["ts"]) for e in events) - t0
    stream_lines = []
    for (host, task, what), (a, b, n) in streams.items():
        rate = n / (b - a) / 2**20 if b > a else 0
        stream_lines.append(f"stream {host} / {task} / {what}: {n / 2**20:.1f} MiB from {a - t0:.1f}s to {b - t0:.1f}s ({b - a:.1f}s, {rate:.0f} MiB/s)")
    if markdown:
        print("| start (s) | host | task | status | work (s) | waited (s) |")
        print("|---:|---|---|---|---:|---:|")
        for r in rows:
            print(f"| {r[0]:.1f} | {r[1]} | {r[2]} | {r[3]} | {r[4]:.1f} | {r[5]:.1f} |")
        print(f"\nlast event at {last:.1f} s")
        for line in stream_lines:
            print(f"\n- {line}")
    else:
        for r in rows:
            print(f"{r[0]:7.1f}s  {r[1]:<4} {r[2]:<34} {r[3]:<8} work {r[4]:6.1f}s  waited {r[5]:6.1f}s")
        print(f"last event at {last:.1f}s")
        print("\n".join(stream_lines))


if __name__ == "__main__":
    main()
