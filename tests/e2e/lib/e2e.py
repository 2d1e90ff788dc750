#!/usr/bin/env python3
"""Helpers of the acceptance suite (tests/e2e/run): ferry's JSON report and --events.

    e2e.py boundaries PLAYBOOK INVENTORY
        every task boundary as "host<TAB>task", playbook order, per host (the inventory's
        groups decide which host runs a task)
    e2e.py kill-at --events FILE (--task-start HOST TASK | --progress WHAT [--min-bytes N]
                   [--of-task TASK])
                   --stdout FILE --stderr FILE -- CMD...
        run CMD, poll FILE every 10 ms, SIGKILL CMD (by pid) right after the first event
        that matches. Exit 0: killed there (prints the matching event); 1: CMD ended
        before the event appeared (prints its exit status).
    e2e.py hook-at --events FILE (--task-start HOST TASK | --progress WHAT [--min-bytes N]
                   [--of-task TASK]) [--pause]
                   --hook SHELL --hook-log FILE --stdout FILE --stderr FILE -- CMD...
        run CMD; right after the first matching event run the shell command SHELL (with
        --pause, CMD is SIGSTOPped while it runs and SIGCONTed after), then let CMD finish.
        Prints {"event": ..., "hook": status, "exit": CMD's status}. Exit 0 when the event
        came and the hook succeeded; 1 otherwise.
    e2e.py before EVENTS HOST EDGE EDGE
        an EDGE is start:TASK or end:TASK (of HOST's task, from the --events file); exit 0
        when the first happened no later than the second, 1 (saying when each was) if not
    e2e.py artifacts JOURNAL              "name host path sha256 size" per recorded artifact
    e2e.py summary REPORT                 "host ok=N changed=N skipped=N failed=N" lines
    e2e.py expect-unchanged REPORT        every task ok or skipped, changed=0 everywhere
    e2e.py expect-status REPORT STATUS HOST TASK...
        each named task on HOST has STATUS (ok, changed, would_change, skipped)
    e2e.py changes REPORT HOST TASK       the task's change lines
    e2e.py notes REPORT HOST TASK         the task's notes (how it was done: a stream's route)
    e2e.py failed REPORT                  the failed tasks with their errors
"""

import json
import os
import signal
import subprocess
import sys
import time
import tomllib


def die(msg, code=2):
    print(msg, file=sys.stderr)
    sys.exit(code)


def load_report(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        die(f"cannot read the JSON report {path}: {e}")


def boundaries(playbook, inventory):
    with open(playbook, "rb") as f:
        pb = tomllib.load(f)
    with open(inventory, "rb") as f:
        inv = tomllib.load(f)
    members = {}
    default_groups = inv.get("defaults", {}).get("groups", [])
    for name, host in inv.get("hosts", {}).items():
        members.setdefault(name, []).append(name)
        for g in host.get("groups", default_groups):
            members.setdefault(g, []).append(name)
    for g, group in inv.get("groups", {}).items():
        members.setdefault(g, []).extend(group.get("hosts", []))
    members["all"] = list(inv.get("hosts", {}))
    for task in pb.get("task", []):
        for host in members.get(task["hosts"], []):
            print(f"{host}\t{task['name']}")


def read_events(path, pos):
    """New complete lines from `pos` on; returns (events, new_pos)."""
    try:
        with open(path, "rb") as f:
            f.seek(pos)
            data = f.read()
    except FileNotFoundError:
        return [], pos
    end = data.rfind(b"\n")
    if end < 0:
        return [], pos
    events = []
    for line in data[: end + 1].splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            pass
    return events, pos + end + 1


def kill_at(args):
    sep = args.index("--")
    opts, cmd = args[:sep], args[sep + 1:]
    events_path = opts[opts.index("--events") + 1]
    out = open(opts[opts.index("--stdout") + 1], "wb")
    err = open(opts[opts.index("--stderr") + 1], "wb")
    match = event_matcher(opts)
    if os.path.exists(events_path):
        os.unlink(events_path)
    proc = subprocess.Popen(cmd, stdout=out, stderr=err)
    pos = 0
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        events, pos = read_events(events_path, pos)
        for e in events:
            if match(e):
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                print(json.dumps(e))
                return 0
        if proc.poll() is not None:
            # One last look: the event may have been written just before the exit.
            events, pos = read_events(events_path, pos)
            if any(match(e) for e in events):
                print("ended right after the event (no kill needed)")
                return 1
            print(f"ferry exited ({proc.returncode}) before the event appeared")
            return 1
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    print("timed out waiting for the event (10 min)")
    return 1


def event_matcher(opts):
    """The event kill-at and hook-at wait for: a task's start, or a progress event."""
    if "--task-start" in opts:
        i = opts.index("--task-start")
        host, task = opts[i + 1], opts[i + 2]
        return lambda e: e.get("event") == "task_start" and e.get("host") == host and e.get("task") == task
    what = opts[opts.index("--progress") + 1]
    # --min-bytes N: only a progress event at N bytes or more (well into the stream).
    least = int(opts[opts.index("--min-bytes") + 1]) if "--min-bytes" in opts else 0
    # --of-task TASK: only the progress of that task (an artifact moves in several).
    of_task = opts[opts.index("--of-task") + 1] if "--of-task" in opts else None
    return lambda e: (e.get("event") == "progress" and e.get("what") == what
                      and (e.get("bytes") or 0) >= least
                      and (of_task is None or e.get("task") == of_task))


def hook_at(args):
    sep = args.index("--")
    opts, cmd = args[:sep], args[sep + 1:]
    events_path = opts[opts.index("--events") + 1]
    hook = opts[opts.index("--hook") + 1]
    hook_log = open(opts[opts.index("--hook-log") + 1], "wb")
    out = open(opts[opts.index("--stdout") + 1], "wb")
    err = open(opts[opts.index("--stderr") + 1], "wb")
    pause = "--pause" in opts
    match = event_matcher(opts)
    if os.path.exists(events_path):
        os.unlink(events_path)
    proc = subprocess.Popen(cmd, stdout=out, stderr=err)
    pos = 0
    deadline = time.monotonic() + 600
    fired, hook_status = None, None
    while time.monotonic() < deadline and proc.poll() is None:
        events, pos = read_events(events_path, pos)
        for e in events:
            if fired is None and match(e):
                fired = e
                if pause:
                    os.kill(proc.pid, signal.SIGSTOP)
                try:
                    hook_status = subprocess.run(["bash", "-c", hook], stdout=hook_log,
                                                 stderr=subprocess.STDOUT, timeout=300).returncode
                except subprocess.TimeoutExpired:
                    hook_status = "timeout"
                if pause:
                    os.kill(proc.pid, signal.SIGCONT)
        time.sleep(0.01)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        print(json.dumps({"event": fired, "hook": hook_status, "exit": "killed after 10 min"}))
        return 1
    print(json.dumps({"event": fired, "hook": hook_status, "exit": proc.returncode}))
    return 0 if fired is not None and hook_status == 0 else 1


def event_time(ts):
    """Seconds since the epoch of an RFC 3339 UTC timestamp, to the nanosecond."""
    import calendar
    day, _, rest = ts.partition("T")
    clock = rest.rstrip("Z").split("+")[0]
    whole, _, frac = clock.partition(".")
    t = time.strptime(f"{day}T{whole}", "%Y-%m-%dT%H:%M:%S")
    return calendar.timegm(t) + float(f"0.{frac or 0}")


def before(args):
    path, host, first, second = args
    events, _ = read_events(path, 0)

    def when(edge):
        kind, _, task = edge.partition(":")
        name = {"start": "task_start", "end": "task_end"}.get(kind)
        if name is None:
            die(f"an edge is start:TASK or end:TASK, not {edge!r}")
        for e in events:
            if e.get("event") == name and e.get("host") == host and e.get("task") == task:
                return event_time(e["ts"]), e["ts"]
        die(f"no {name} of {host} / {task} in {path}", 1)

    (a, a_ts), (b, b_ts) = when(first), when(second)
    if a <= b:
        return 0
    print(f"{first} at {a_ts} is after {second} at {b_ts}")
    return 1


def artifacts(path):
    with open(path) as f:
        journal = json.load(f)
    hosts = journal.get("hosts", journal)
    for tasks in hosts.values():
        if not isinstance(tasks, dict):
            continue
        for record in tasks.values():
            for a in (record.get("artifacts") or {}).values():
                print(f"{a['name']} {a['host']} {a['path']} {a['sha256']} {a['size']}")
    return 0


def main():
    if len(sys.argv) < 2:
        die(__doc__)
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "boundaries":
        boundaries(*args)
        return 0
    if cmd == "kill-at":
        return kill_at(args)
    if cmd == "hook-at":
        return hook_at(args)
    if cmd == "before":
        return before(args)
    if cmd == "artifacts":
        return artifacts(args[0])
    report = load_report(args[0])
    tasks = report.get("tasks", [])
    if cmd == "downtime":
        # A complete migration's summary: ended, the total covers every stage that
        # worked, and each store moved (the report's `downtime`).
        d = report.get("downtime")
        if not d:
            die("no downtime summary in the report", 1)
        problems = []
        if not d["ended"] or d["began_before_run"]:
            problems.append(f"ended={d['ended']} began_before_run={d['began_before_run']}")
        for stage in d["stages"]:
            if stage["name"] in ("PostgreSQL", "Redis", "storage") and not stage["span_ms"]:
                problems.append(f"stage {stage['name']} has no time: {stage}")
            if (stage["span_ms"] or 0) > d["total_ms"]:
                problems.append(f"stage {stage['name']} is longer than the downtime")
        for p in problems:
            print(p)
        print(f"downtime {d['total_ms']} ms: " + ", ".join(
            f"{s['name']} {s['span_ms']}" for s in d["stages"]), file=sys.stderr)
        return 1 if problems else 0
    if cmd == "summary":
        for host, s in sorted(report.get("hosts", {}).items()):
            print(f"{host} ok={s['ok']} changed={s['changed']} skipped={s['skipped']} "
                  f"failed={s['failed']} unreachable={s['unreachable']}")
        return 0
    if cmd == "expect-unchanged":
        bad = [f"{t['host']} / {t['task']}: {t['status']} {t['changes']} {t.get('error') or ''}"
               for t in tasks if t["status"] not in ("ok", "skipped")]
        bad += [f"{h}: changed={s['changed']} failed={s['failed']}"
                for h, s in report["hosts"].items() if s["changed"] or s["failed"] or s["unreachable"]]
        if not tasks:
            bad.append("no tasks in the report")
        for b in bad:
            print(b)
        return 1 if bad else 0
    if cmd == "expect-status":
        status, host, names = args[1], args[2], args[3:]
        by_name = {t["task"]: t for t in tasks if t["host"] == host}
        bad = 0
        for n in names:
            t = by_name.get(n)
            if t is None:
                print(f"{host} / {n}: not in the report")
                bad += 1
            elif t["status"] != status:
                print(f"{host} / {n}: {t['status']}, expected {status} "
                      f"{t['changes']} {t.get('error') or ''}")
                bad += 1
        return 1 if bad else 0
    if cmd == "changes":
        host, name = args[1], args[2]
        for t in tasks:
            if t["host"] == host and t["task"] == name:
                for c in t["changes"]:
                    print(c)
        return 0
    if cmd == "notes":
        host, name = args[1], args[2]
        for t in tasks:
            if t["host"] == host and t["task"] == name:
                for n in t.get("notes") or []:
                    print(n)
        return 0
    if cmd == "failed":
        for t in tasks:
            if t["status"] == "failed":
                print(f"{t['host']} / {t['task']}: {t.get('error')}")
        for h, s in report.get("hosts", {}).items():
            if s.get("unreachable"):
                print(f"{h}: unreachable")
        return 0
    die(f"unknown command {cmd}\n{__doc__}")


if __name__ == "__main__":
    sys.exit(main())
