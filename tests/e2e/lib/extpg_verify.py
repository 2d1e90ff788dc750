#!/usr/bin/env python3
"""The new side against the seed snapshot, PostgreSQL read from the external server the
suite starts on the new host node (127.0.0.1:5433, as the postgres superuser over the
node's Unix socket, so no password is needed here); Redis and storage as
tests/testbed/verify reads them. Exit 0 identical, 1 differences, 2 unreadable."""

import json
import os
import shlex
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.join(ROOT, "tests", "testbed", "lib"))
import snapshot  # noqa: E402


class ExternalPgSide(snapshot.NewSide):
    def psql(self, args):
        inner = shlex.join(["psql", "-h", "/tmp", "-p", "5433"] + args)
        return snapshot.ssh_argv(2202, "su postgres -s /bin/sh -c " + shlex.quote(inner))


def main():
    with open(os.path.join(snapshot.STATE, "snapshot.json")) as f:
        expected = json.load(f)
    side = ExternalPgSide("default")
    try:
        actual = {"side": "new", "postgres": snapshot.pg_snapshot(side),
                  "redis": snapshot.redis_snapshot(side), "storage": side.storage_hashes()}
    except (snapshot.SnapshotError, OSError) as e:
        print(f"cannot read the new side: {e}")
        return 2
    diffs = snapshot.compare(expected, actual, "new")
    for d in diffs:
        print(d)
    if not diffs:
        print("external PostgreSQL, Redis and storage identical to the seed "
              f"({snapshot.summary(actual)})")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
