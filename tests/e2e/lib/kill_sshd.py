#!/usr/bin/env python3
"""Kill the server side of one of ferry's SSH connections, run INSIDE a testbed host
(`docker exec -i HOST python3 - MODE ARG < kill_sshd.py`):

    --peer-port PORT   the sshd session processes holding a TCP connection to PORT
                       (the API tunnel: direct-tcpip to 127.0.0.1:6443)
    --serving TEXT     the sshd session process that is an ancestor of a process whose
                       command line contains TEXT (the bulk connection reading an artifact)

Kills (SIGKILL) each such `sshd: USER@notty` process and its `sshd: USER [priv]` monitor,
never the listening daemon (`sshd -D`). Prints what it killed; exit 1 if nothing matched.
"""
import os
import signal
import sys


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def ppid(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def pids():
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def is_session_sshd(pid):
    c = cmdline(pid)
    return c.startswith("sshd:") and "[listener]" not in c and " -D" not in c


def sockets_to(port):
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if int(f[2].rsplit(":", 1)[1], 16) == port and f[3] == "01":
                inodes.add(f[9])
    return inodes


def holders(inodes):
    out = []
    for pid in pids():
        if not is_session_sshd(pid):
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:[") and link[8:-1] in inodes:
                out.append(pid)
                break
    return out


def serving(text):
    out = []
    me = os.getpid()
    for pid in pids():
        if pid == me or text not in cmdline(pid) or "kill_sshd" in cmdline(pid):
            continue
        p = ppid(pid)
        while p > 1 and not is_session_sshd(p):
            p = ppid(p)
        if p > 1 and p not in out:
            out.append(p)
    return out


def main():
    mode, arg = sys.argv[1], sys.argv[2]
    found = holders(sockets_to(int(arg))) if mode == "--peer-port" else serving(arg)
    victims = []
    for pid in found:
        victims.append(pid)
        parent = ppid(pid)
        if is_session_sshd(parent) and "[priv]" in cmdline(parent):
            victims.append(parent)
    if not victims:
        print(f"no sshd session process matched {mode} {arg}")
        return 1
    for pid in victims:
        print(f"killing {pid}: {cmdline(pid)}")
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
