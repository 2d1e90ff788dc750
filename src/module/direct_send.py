# ferry's sender for the direct route (route = "direct"): runs on the OLD host and
# writes to ssh's stdin (SSH is the argv of `ssh … new-node`, whose forced command
# appends to the node's part) what comes after the first SKIP bytes of either
# - the storage's archive (storage_stage): the tar SOURCE (a shell command) prints,
#   framed exactly as ferry's StoredGzip does (deflate stored blocks of 65535 bytes, a
#   fixed header: the same tar always gives the same archive, whatever the route), with
#   every file in it hashed; or
# - a file (transfer: the database dump, the Redis backup), as it is.
# Either way the whole of it is hashed.
#
#   python3 send.py send SKIP SOURCE -- SSH...     the archive; prints `progress N`
#                                                  lines, then one `result {json}` line
#   python3 send.py send-file SKIP PATH -- SSH...  the file; prints the same
#   python3 send.py prefix N SOURCE                sha256 of the archive's first N bytes
#
# It dies with ferry: ferry holds this process's stdin open for as long as it waits;
# EOF there (ferry stopped, its connection lost) kills the tar and the ssh at once, so
# no second sender ever runs beside a re-run's. Python's standard library only.
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import threading
import time
import zlib

BLOCK = 65535
HEADER = bytes([0x1F, 0x8B, 8, 0, 0, 0, 0, 0, 0, 0xFF])


class Done(BaseException):
    """The prefix is hashed: stop (never caught by tarfile's own handlers)."""


class Sink:
    """The archive's bytes: all hashed, those after `skip` hashed again and sent."""

    def __init__(self, skip, out, limit=None):
        self.skip, self.out, self.limit = skip, out, limit
        self.total = 0
        self.all = hashlib.sha256()
        self.sent = hashlib.sha256()

    def write(self, data):
        if self.limit is not None:
            data = data[: self.limit - self.total]
        start = self.total
        self.total += len(data)
        self.all.update(data)
        if self.total > self.skip:
            rest = data[max(0, self.skip - start):]
            if self.skip:  # else what is sent is all: hashed once
                self.sent.update(rest)
            if self.out is not None:
                self.out.write(rest)
        if self.limit is not None and self.total >= self.limit:
            raise Done()


class Framer:
    """A gzip member of stored blocks, as ferry's StoredGzip (stored_gzip.rs)."""

    def __init__(self, sink):
        self.sink, self.crc, self.size = sink, 0, 0
        self.pending = bytearray()
        sink.write(HEADER)

    def block(self, last, data):
        n = len(data)
        self.sink.write(bytes([1 if last else 0]) + n.to_bytes(2, "little")
                        + (n ^ 0xFFFF).to_bytes(2, "little"))
        if n:
            self.sink.write(data)

    def push(self, data):
        self.crc = zlib.crc32(data, self.crc)
        self.size += len(data)
        view = memoryview(data)
        if self.pending:
            take = min(BLOCK - len(self.pending), len(view))
            self.pending += view[:take]
            view = view[take:]
            if len(self.pending) < BLOCK:
                return
            self.block(False, self.pending)
            self.pending = bytearray()
        while len(view) >= BLOCK:
            self.block(False, view[:BLOCK])
            view = view[BLOCK:]
        self.pending += view

    def finish(self):
        if self.pending:
            self.block(False, self.pending)
        self.block(True, b"")
        self.sink.write(self.crc.to_bytes(4, "little")
                        + (self.size & 0xFFFFFFFF).to_bytes(4, "little"))


class Tee:
    """The tar as tarfile reads it, every byte framed on the way."""

    def __init__(self, raw, framer, tick):
        self.raw, self.framer, self.tick = raw, framer, tick

    def read(self, n=-1):
        data = self.raw.read(n if n and n > 0 else 1 << 16)
        if data:
            self.framer.push(data)
            self.tick()
        return data


def frame(source, sink, tick, hashes):
    """Frame SOURCE's output into `sink`; hash its files into `hashes` unless None."""
    tar = subprocess.Popen(["sh", "-c", source], stdout=subprocess.PIPE, bufsize=0)
    framer = Framer(sink)
    tee = Tee(tar.stdout, framer, tick)
    try:
        if hashes is None:
            while tee.read(1 << 16):
                pass
            framer.finish()
            return tar
        with tarfile.open(fileobj=tee, mode="r|", bufsize=1 << 20) as archive:
            for member in archive:
                if member.isfile():
                    h = hashlib.sha256()
                    f = archive.extractfile(member)
                    while True:
                        chunk = f.read(1 << 20)
                        if not chunk:
                            break
                        h.update(chunk)
                    hashes[member.name] = h.hexdigest()
        while tee.read(1 << 16):
            pass
        framer.finish()
    except Done:
        tar.kill()
    except BaseException:
        tar.kill()
        raise
    return tar


def send_file(path, sink, tick):
    """PATH's bytes into `sink` (all of them: the sink hashes the skipped prefix too)."""
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 20)
            if not chunk:
                return
            sink.write(chunk)
            tick()


def main():
    mode = sys.argv[1]
    out = sys.stdout
    if mode == "prefix":
        limit, source = int(sys.argv[2]), sys.argv[3]
        sink = Sink(limit, None, limit)
        tar = frame(source, sink, lambda: None, None)
        tar.wait()
        out.write("result " + json.dumps({"bytes": sink.total, "sha256": sink.all.hexdigest()}) + "\n")
        return 0
    skip, source = int(sys.argv[2]), sys.argv[3]
    ssh_argv = sys.argv[sys.argv.index("--") + 1:]
    ssh = subprocess.Popen(ssh_argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
    far = {}

    def drain(name, stream):
        far[name] = stream.read().decode("utf-8", "replace")

    readers = [threading.Thread(target=drain, args=(n, s), daemon=True)
               for n, s in (("stdout", ssh.stdout), ("stderr", ssh.stderr))]
    for r in readers:
        r.start()

    def watchdog():
        # ferry's end of this process's stdin: EOF means ferry is gone.
        while sys.stdin.buffer.read(1 << 10):
            pass
        ssh.kill()
        os._exit(3)  # the tar dies on its next write (SIGPIPE)

    threading.Thread(target=watchdog, daemon=True).start()
    sink = Sink(skip, ssh.stdin)
    hashes = {}
    last = [time.monotonic()]

    def tick():
        now = time.monotonic()
        if now - last[0] >= 0.2:
            last[0] = now
            out.write("progress %d\n" % sink.total)
            out.flush()

    error = None
    tar = None
    try:
        if mode == "send-file":
            send_file(source, sink, tick)
        else:
            tar = frame(source, sink, tick, hashes)
    except BrokenPipeError:
        error = "the ssh to the new node stopped reading"
    except Exception as e:  # reported to ferry, which decides
        error = "%s: %s" % (type(e).__name__, e)
    try:
        ssh.stdin.close()
    except BrokenPipeError:
        pass
    ssh_rc = ssh.wait()
    for r in readers:
        r.join()
    tar_rc = tar.wait() if tar is not None else None
    out.write("result " + json.dumps({
        "bytes": sink.total,
        "sha256": sink.all.hexdigest(),
        "sent_sha256": (sink.sent if skip else sink.all).hexdigest(),
        "tar_rc": tar_rc,
        "ssh_rc": ssh_rc,
        "far_stdout": far.get("stdout", ""),
        "far_stderr": far.get("stderr", "")[-4000:],
        "error": error,
        "hashes": hashes,
    }) + "\n")
    out.flush()
    # Not a normal exit: the watchdog thread may be blocked reading stdin.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
