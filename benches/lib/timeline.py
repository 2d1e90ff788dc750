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
    for e in events:
        key = (e.get("host"), e.get("task"))
        if e["event"] == "task_start":
            start[key] = ts(e["ts"])
        elif e["event"] == "task_end":
            end = ts(e["ts"])
            begun = start.get(key, end)
            total = e.get("duration_ms", 0) / 1000
            work = end - begun
            rows.append((begun - t0, key[0], key[1], e["status"], work, max(0.0, total - work)))
    last = max(ts(e["ts"]) for e in events) - t0
    if markdown:
        print("| start (s) | host | task | status | work (s) | waited (s) |")
        print("|---:|---|---|---|---:|---:|")
        for r in rows:
            print(f"| {r[0]:.1f} | {r[1]} | {r[2]} | {r[3]} | {r[4]:.1f} | {r[5]:.1f} |")
        print(f"\nlast event at {last:.1f} s")
    else:
        for r in rows:
            print(f"{r[0]:7.1f}s  {r[1]:<4} {r[2]:<34} {r[3]:<8} work {r[4]:6.1f}s  waited {r[5]:6.1f}s")
        print(f"last event at {last:.1f}s")


if __name__ == "__main__":
    main()
