#!/usr/bin/env python3
"""Time several contenders side by side, interleaved: run 1 of every contender, then
run 2 of every contender, ... so that drift on a shared machine (other builds, page
cache, thermal) hits all of them alike. Prints one JSON object: name -> stats.

    measure.py --runs N --warmup W spec.json

spec.json: [{"name": "ferry", "cmd": "...", "before": "...", "after": "..."}, ...]
`cmd` is timed (bash -c, wall clock); `before`/`after` run untimed around every run
(cleanup, fresh control sockets). A failing `cmd` (non-zero exit) aborts with its output:
a benchmark whose contender fails measures nothing.
"""

import argparse
import json
import statistics
import subprocess
import sys
import time


def run_untimed(what, cmd):
    if not cmd:
        return
    p = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"{what} failed (exit {p.returncode}):\n$ {cmd}\n{p.stdout}\n{p.stderr}")


def run_timed(name, cmd):
    start = time.perf_counter()
    p = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if p.returncode != 0:
        sys.exit(
            f"contender {name!r} failed (exit {p.returncode}):\n$ {cmd}\n"
            f"--- stdout\n{p.stdout[-4000:]}\n--- stderr\n{p.stderr[-4000:]}"
        )
    return elapsed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("spec")
    args = ap.parse_args()
    with open(args.spec) as f:
        spec = json.load(f)
    times = {c["name"]: [] for c in spec}
    for i in range(args.warmup + args.runs):
        for c in spec:
            run_untimed(f"{c['name']}: before", c.get("before"))
            t = run_timed(c["name"], c["cmd"])
            run_untimed(f"{c['name']}: after", c.get("after"))
            if i >= args.warmup:
                times[c["name"]].append(t)
            print(f"  run {i + 1 - args.warmup:>3} {c['name']:<28} {t:8.3f} s"
                  + ("  (warm-up)" if i < args.warmup else ""), file=sys.stderr)
    out = {
        name: {
            "median": statistics.median(ts),
            "min": min(ts),
            "max": max(ts),
            "runs": len(ts),
        }
        for name, ts in times.items()
    }
    json.dump(out, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
