#!/usr/bin/env python3
"""The laptop's far link of the testbed's `wan` profile (tests/testbed/up --profile wan).

    wan_link.py --netns NAME --rtt-ms 30 --mbit 100 --link 2201 --link 2202 [--ready FILE]

Listens on 127.0.0.1:PORT inside network namespace NAME (the laptop side, where
`tests/testbed/laptop` runs commands) and forwards each connection to 127.0.0.1:PORT of
the namespace it was started in (the testbed's published sshd ports). Each `--link` is
one link of its own, shaped in both directions as a slow WAN link is: the bytes of all
its connections share `--mbit` per direction (serialised one after the other), and each
byte arrives half the round trip after it left the link. The two servers' own network
(old <-> new, the containers' bridge) is not touched.

Why a relay and not tc: this machine's kernel has no netem (`tc qdisc add ... netem`
answers "Specified qdisc kind is unknown"), and tbf alone cannot delay. The relay keeps
the end-to-end flow control of what runs over it (SSH's channel windows see the delay),
and bounds what it buffers per direction so a fast sender is held back as by a real
bottleneck.

Writes FILE (one line, "ready") once every listener is open; runs until SIGTERM.

SIGUSR1 drops the link, as a laptop's Wi-Fi or VPN drops: nothing crosses any more in
either direction, and nobody is told (no reset, no EOF): the connections just go silent,
new ones too. SIGUSR2 brings it back; the connections that lived while it was down are
then aborted at both ends, as after a reconnect that changed the laptop's address, so
the servers' sshd see them end and the laptop side gets a reset if it still waits.
"""

import argparse
import asyncio
import ctypes
import os
import signal
import time

CLONE_NEWNET = 0x40000000
CHUNK = 64 * 1024
# Bytes queued per direction of a connection before the relay stops reading from it.
QUEUE_LIMIT = 4 << 20


def setns(fd):
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


class Link:
    """Up or down (SIGUSR1/SIGUSR2), shared by every connection of every port."""

    def __init__(self):
        self.up = asyncio.Event()
        self.up.set()
        # The transports of every open connection (both ends), and those that were
        # open at some time while the link was down: aborted when it comes back.
        self.open = set()
        self.doomed = set()

    def drop(self):
        self.up.clear()
        self.doomed |= self.open

    def restore(self):
        for t in self.doomed:
            t.abort()
        self.doomed.clear()
        self.up.set()

    def track(self, *transports):
        self.open.update(transports)
        if not self.up.is_set():
            self.doomed.update(transports)

    def forget(self, *transports):
        self.open.difference_update(transports)


LINK = None


class Direction:
    """One direction of a link: a serialisation clock shared by its connections."""

    def __init__(self, bytes_per_s, delay_s):
        self.bytes_per_s = bytes_per_s
        self.delay_s = delay_s
        self.free_at = 0.0

    def schedule(self, n):
        """When `n` bytes handed to the link now arrive at the far end."""
        start = max(time.monotonic(), self.free_at)
        self.free_at = start + n / self.bytes_per_s
        return self.free_at + self.delay_s


async def pipe(reader, writer, direction):
    queue = asyncio.Queue()
    queued = 0
    room = asyncio.Event()
    room.set()

    async def deliver():
        nonlocal queued
        while True:
            due, data = await queue.get()
            if data is None:
                break
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            await LINK.up.wait()
            writer.write(data)
            await writer.drain()
            queued -= len(data)
            if queued < QUEUE_LIMIT:
                room.set()
        if writer.can_write_eof():
            writer.write_eof()
        await writer.drain()

    sender = asyncio.create_task(deliver())
    try:
        while True:
            await room.wait()
            await LINK.up.wait()
            data = await reader.read(CHUNK)
            if not data:
                break
            queued += len(data)
            if queued >= QUEUE_LIMIT:
                room.clear()
            queue.put_nowait((direction.schedule(len(data)), data))
    except (ConnectionError, OSError):
        pass
    finally:
        # EOF travels the link too: it arrives after the last byte.
        queue.put_nowait((direction.schedule(0), None))
    try:
        await sender
    except (ConnectionError, OSError):
        pass


async def serve(listener, port, up, down):
    async def handle(client_r, client_w):
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            client_w.close()
            return
        ends = (client_w.transport, server_w.transport)
        LINK.track(*ends)
        await asyncio.gather(
            pipe(client_r, server_w, up), pipe(server_r, client_w, down),
            return_exceptions=True,
        )
        LINK.forget(*ends)
        for w in (client_w, server_w):
            w.close()

    server = await asyncio.start_server(handle, sock=listener)
    async with server:
        await server.serve_forever()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--netns", required=True)
    ap.add_argument("--rtt-ms", type=float, default=30.0)
    ap.add_argument("--mbit", type=float, default=100.0)
    ap.add_argument("--link", type=int, action="append", required=True)
    ap.add_argument("--ready")
    args = ap.parse_args()

    import socket

    # Listeners inside the laptop's namespace; the connections to the servers from
    # the namespace this started in (setns back before asyncio makes any).
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    laptop = os.open(f"/run/netns/{args.netns}", os.O_RDONLY)
    setns(laptop)
    listeners = {}
    for port in args.link:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen(64)
        s.setblocking(False)
        listeners[port] = s
    setns(home)

    rate = args.mbit * 1e6 / 8
    delay = args.rtt_ms / 2000.0

    async def run():
        global LINK
        LINK = Link()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR1, LINK.drop)
        loop.add_signal_handler(signal.SIGUSR2, LINK.restore)
        stop = loop.create_future()
        loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
        loop.add_signal_handler(signal.SIGINT, stop.set_result, None)
        tasks = [
            asyncio.create_task(
                serve(s, port, Direction(rate, delay), Direction(rate, delay))
            )
            for port, s in listeners.items()
        ]
        if args.ready:
            with open(args.ready, "w") as f:
                f.write("ready\n")
        await stop
        for t in tasks:
            t.cancel()

    asyncio.run(run())


if __name__ == "__main__":
    main()
