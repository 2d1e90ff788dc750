#!/usr/bin/env python3
"""Check item 7's result on every host of one tool: the files the 10 tasks manage exist
with the expected content, mode and type under BASE/<host>/ (all hosts are sshd servers on
this machine, so their files are read here directly). Exits 1 naming the first
differences: a run that did not do the work must not count.

    verify.py BASE HOST... [--save SNAPSHOT | --compare SNAPSHOT]

--save records every managed file's inode and mtime after a first run; --compare then
reports (exit 0, on stderr, and appends to SNAPSHOT.changed) any file that a re-run
rewrote, i.e. a re-run that was not a no-op.
"""

import argparse
import json
import os
import stat
import sys
from pathlib import Path

FLEET = Path(__file__).resolve().parent
MOTD = "Managed by the fleet benchmark.\n"


def expected(root, host):
    """path -> (kind, mode, content or link target); kind is 'dir', 'file' or 'link'."""
    app = f"{root}/etc/app"
    template = (FLEET / "templates/host.conf.j2").read_text()
    host_conf = template.replace("{{ inventory_hostname }}", host).replace("{{ root }}", root)
    return {
        app: ("dir", 0o755, None),
        f"{root}/log": ("dir", 0o750, None),
        f"{app}/app.conf": ("file", 0o644, (FLEET / "files/app.conf").read_text()),
        f"{root}/etc/motd": ("file", 0o644, MOTD),
        f"{app}/host.conf": ("file", 0o640, host_conf),
        f"{app}/hosts.allow": ("file", 0o644, "allow 127.0.0.1\n"),
        f"{app}/env": ("file", 0o644, "APP_ENV=production\n"),
        f"{app}/current": ("link", None, f"{app}/app.conf"),
        f"{root}/data/initialized": ("file", 0o644, "initialized\n"),
    }


def check(path, kind, mode, content):
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "missing"
    if kind == "link":
        if not stat.S_ISLNK(st.st_mode):
            return "not a symlink"
        target = os.readlink(path)
        return None if target == content else f"points to {target!r}, not {content!r}"
    if kind == "dir" and not stat.S_ISDIR(st.st_mode):
        return "not a directory"
    if kind == "file" and not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if stat.S_IMODE(st.st_mode) != mode:
        return f"mode {stat.S_IMODE(st.st_mode):04o}, not {mode:04o}"
    if content is not None:
        got = Path(path).read_text()
        if got != content:
            return f"content {got!r}, not {content!r}"
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("base")
    ap.add_argument("hosts", nargs="+")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--save")
    g.add_argument("--compare")
    args = ap.parse_args()
    problems, marks = [], {}
    for host in args.hosts:
        for path, (kind, mode, content) in expected(f"{args.base}/{host}", host).items():
            why = check(path, kind, mode, content)
            if why:
                problems.append(f"{host}: {path}: {why}")
            elif kind != "dir":
                st = os.lstat(path)
                marks[path] = [st.st_ino, st.st_mtime_ns]
    if problems:
        print(f"{len(problems)} difference(s) under {args.base}:", file=sys.stderr)
        print("\n".join(problems[:20]), file=sys.stderr)
        sys.exit(1)
    if args.save:
        Path(args.save).write_text(json.dumps(marks))
    if args.compare:
        before = json.loads(Path(args.compare).read_text())
        rewritten = sorted(p for p, m in marks.items() if before.get(p) != m)
        if rewritten:
            with open(args.compare + ".changed", "a") as f:
                f.write(f"{len(rewritten)} of {len(marks)} files rewritten, e.g. {rewritten[0]}\n")
            print(f"re-run was not a no-op: {len(rewritten)} files rewritten", file=sys.stderr)
        Path(args.compare).write_text(json.dumps(marks))


if __name__ == "__main__":
    main()
