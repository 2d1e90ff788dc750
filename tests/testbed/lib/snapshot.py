#!/usr/bin/env python3
"""Snapshots of the testbed's three data stores, and their comparison.

    snapshot.py take --side old|new [--namespace NS] --out FILE
    snapshot.py compare --expected SEED.json --actual FILE --side old|new

A snapshot holds, for PostgreSQL `packagist_db`: every public table's row count and the
md5 of `COPY (SELECT * FROM t ORDER BY <primary key>) TO STDOUT` (session in UTC, ISO
dates); for Redis: per database 0-15 the key count and a digest over every key's name,
type and value (computed server-side by a Lua script, independent of RDB encoding and of
key order); for storage: every file under composer/ and artifacts/ with its sha256.

The old side is read through the machine's Docker Engine (packagist-postgres,
packagist-redis) and the old host's data dir on the machine. The new side is read over
SSH on the new host (127.0.0.1:2202, the testbed key and known_hosts, strict checking):
psql in pod postgres-0, redis-cli -p 9869 in pod redis-0 (both via kubectl exec), files
under /var/lib/packagist-new/storage on the node (/var/lib/packagist-new/<namespace>/storage
for a namespace other than `default`).
"""

import argparse
import hashlib
import json
import os
import shlex
import subprocess
import sys

TESTBED = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STATE = os.path.join(TESTBED, "state")
DOCKER = "/usr/bin/docker"
NEW_STORAGE = "/var/lib/packagist-new/storage"
STORAGE_DIRS = ("composer", "artifacts")
COMPOSER_CACHE_DB = "5"

PG_SESSION = ["SET TimeZone = 'UTC'", "SET DateStyle = 'ISO, YMD'",
              "SET IntervalStyle = 'postgres'", "SET extra_float_digits = 1",
              "SET bytea_output = 'hex'"]

PG_TABLES_SQL = """
SELECT c.relname,
       coalesce((SELECT string_agg(quote_ident(a.attname), ','
                                   ORDER BY array_position(i.indkey::int2[], a.attnum))
                 FROM pg_index i
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
                 WHERE i.indrelid = c.oid AND i.indisprimary), '')
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
ORDER BY c.relname
"""

# Returns one "db keys digest short" line per database. Keys named ttl:short:* (the seed's
# keys with TTLs of seconds to minutes, which expire during a migration) are only
# counted, as `short`; every other key, with a TTL or not, is digested. Per key: sha1 of its type, name and
# value (hash fields and set members digested order-independently); the database
# digest is the sum of the key digests (two 48-bit halves), so no sorting is needed
# and neither KEYS order nor locale matters.
REDIS_DIGEST_LUA = r"""
local M = 281474976710656
local function add(acc, h)
  acc[1] = (acc[1] + tonumber(string.sub(h, 1, 12), 16)) % M
  acc[2] = (acc[2] + tonumber(string.sub(h, 13, 24), 16)) % M
end
local function fmt(acc) return string.format('%.0f-%.0f', acc[1], acc[2]) end
local function lp(s) return #s .. ':' .. s end
local out = {}
for db = 0, 15 do
  redis.call('SELECT', db)
  local all = redis.call('KEYS', '*')
  local keys = {}
  local short = 0
  for _, k in ipairs(all) do
    if string.sub(k, 1, 10) == 'ttl:short:' then short = short + 1 else keys[#keys + 1] = k end
  end
  local total = {0, 0}
  for _, k in ipairs(keys) do
    local t = redis.call('TYPE', k)['ok']
    local body
    if t == 'string' then
      body = lp(redis.call('GET', k))
    elseif t == 'list' then
      local parts = {}
      for _, v in ipairs(redis.call('LRANGE', k, 0, -1)) do parts[#parts + 1] = lp(v) end
      body = table.concat(parts, ',')
    elseif t == 'hash' then
      local kv = redis.call('HGETALL', k)
      local acc = {0, 0}
      for i = 1, #kv, 2 do add(acc, redis.sha1hex(lp(kv[i]) .. '=' .. lp(kv[i + 1]))) end
      body = (#kv / 2) .. ':' .. fmt(acc)
    elseif t == 'set' then
      local m = redis.call('SMEMBERS', k)
      local acc = {0, 0}
      for _, v in ipairs(m) do add(acc, redis.sha1hex(lp(v))) end
      body = #m .. ':' .. fmt(acc)
    elseif t == 'zset' then
      local parts = {}
      for _, v in ipairs(redis.call('ZRANGE', k, 0, -1, 'WITHSCORES')) do parts[#parts + 1] = lp(v) end
      body = table.concat(parts, ',')
    else
      body = '?'
    end
    add(total, redis.sha1hex(t .. '|' .. lp(k) .. '|' .. body))
  end
  out[#out + 1] = db .. ' ' .. #keys .. ' ' .. fmt(total) .. ' ' .. short
end
return out
"""


class SnapshotError(Exception):
    pass


def run(argv, stdin=None):
    p = subprocess.run(argv, input=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if p.returncode != 0:
        raise SnapshotError(f"command failed ({p.returncode}): {shlex.join(argv)}\n"
                            f"{p.stderr.decode(errors='replace').strip()}")
    return p.stdout


def ssh_argv(port, command):
    return ["ssh", "-i", os.path.join(STATE, "id_ed25519"), "-o", "IdentitiesOnly=yes",
            "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", "UserKnownHostsFile=" + os.path.join(STATE, "known_hosts"),
            "-o", "GlobalKnownHostsFile=/dev/null", "-o", "ConnectTimeout=5",
            "-o", "LogLevel=ERROR", "-p", str(port), "root@127.0.0.1", command]


class OldSide:
    """packagist-* containers on the machine's Docker Engine."""

    def psql(self, args):
        return [DOCKER, "exec", "-i", "packagist-postgres", "psql"] + args

    def redis_cli(self, args):
        return [DOCKER, "exec", "-i", "packagist-redis", "redis-cli"] + args

    def storage_hashes(self):
        root = os.path.join(STATE, "old-data", "packagist")
        out = {}
        for top in STORAGE_DIRS:
            for dirpath, _, files in os.walk(os.path.join(root, top)):
                for f in files:
                    full = os.path.join(dirpath, f)
                    h = hashlib.sha256()
                    with open(full, "rb") as fh:
                        for chunk in iter(lambda: fh.read(1 << 20), b""):
                            h.update(chunk)
                    out[os.path.relpath(full, root)] = h.hexdigest()
        return out


class NewSide:
    """The Kubernetes node: pods via kubectl exec, files on the node, over SSH."""

    def __init__(self, namespace):
        self.ns = namespace

    def kubectl_exec(self, pod, args):
        cmd = ["kubectl", "-n", self.ns, "exec", "-i", pod, "--"] + args
        return ssh_argv(2202, shlex.join(cmd))

    def psql(self, args):
        return self.kubectl_exec("postgres-0", ["psql"] + args)

    def redis_cli(self, args):
        return self.kubectl_exec("redis-0", ["redis-cli", "-p", "9869"] + args)

    def storage_dir(self):
        # The ui pod's storage (hostPath in tests/testbed/manifests): the default
        # namespace at NEW_STORAGE, any other under /var/lib/packagist-new/<namespace>/.
        if self.ns == "default":
            return NEW_STORAGE
        return f"/var/lib/packagist-new/{self.ns}/storage"

    def blobstore_env(self):
        """The blob store's settings when the testbed runs one (`up --blob-store s3`)."""
        path = os.path.join(STATE, "blobstore.env")
        if not os.path.exists(path):
            return None
        env = {}
        with open(path) as f:
            for line in f:
                k, _, v = line.strip().partition("=")
                if k:
                    env[k] = v
        return env

    def storage_hashes(self):
        env = self.blobstore_env()
        if env is not None:
            return self.bucket_hashes(env)
        return self.dir_hashes()

    def bucket_hashes(self, env):
        # Every object of the namespace's bucket, read with the S3 API on the node:
        # keys are archive paths (dist/..., artifact/...), compared as the seed's
        # composer/... and artifacts/... files.
        bucket = env["S3_BUCKET"] if self.ns == "default" else self.ns
        assigns = " ".join(f"{k}={shlex.quote(env[k])}" for k in
                           ("S3_ENDPOINT", "S3_REGION", "AWS_ACCESS_KEY_ID",
                            "AWS_SECRET_ACCESS_KEY"))
        script = f"{assigns} python3 /opt/testbed/s3tool.py hashes {shlex.quote(bucket)}"
        objects = json.loads(run(ssh_argv(2202, script)).decode())
        out = {}
        for key, (_size, digest) in objects.items():
            top, _, rest = key.partition("/")
            name = {"dist": "composer", "artifact": "artifacts"}.get(top, top)
            out[f"{name}/{rest}"] = digest
        return out

    def dir_hashes(self):
        script = (f"cd {shlex.quote(self.storage_dir())} && "
                  "for d in " + " ".join(STORAGE_DIRS) + "; do "
                  "[ -d \"$d\" ] && find \"$d\" -type f -print0; done "
                  "| xargs -0 -r sha256sum")
        out = {}
        for line in run(ssh_argv(2202, script)).decode().splitlines():
            digest, path = line.split("  ", 1)
            out[path] = digest
        return out


def pg_snapshot(side):
    base = ["-X", "-q", "-v", "ON_ERROR_STOP=1", "-U", "postgres", "-d", "packagist_db"]
    listing = run(side.psql(base + ["-At", "-F", "\t", "-c", PG_TABLES_SQL])).decode()
    tables = [line.split("\t") for line in listing.splitlines() if line]
    if not tables:
        return {}
    args = list(base)
    for s in PG_SESSION:
        args += ["-c", s]
    for name, pk in tables:
        qn = '"' + name.replace('"', '""') + '"'
        order = pk if pk else "t::text"
        args += ["-c", f"COPY (SELECT count(*) FROM public.{qn}) TO STDOUT",
                 "-c", f"COPY (SELECT * FROM public.{qn} t ORDER BY {order}) TO STDOUT"]
    proc = subprocess.Popen(side.psql(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    result = {}
    for name, pk in tables:
        count_line = proc.stdout.readline()
        try:
            count = int(count_line)
        except ValueError:
            proc.kill()
            err = proc.stderr.read().decode(errors="replace")
            raise SnapshotError(f"reading table {name}: unexpected {count_line!r}\n{err}")
        h = hashlib.md5()
        for _ in range(count):
            h.update(proc.stdout.readline())
        result[name] = {"rows": count, "md5": h.hexdigest(), "primary_key": pk}
    rest = proc.stdout.read()
    err = proc.stderr.read().decode(errors="replace")
    if proc.wait() != 0 or rest:
        raise SnapshotError(f"psql snapshot failed: {err.strip()} {rest[:200]!r}")
    return result


def redis_snapshot(side):
    out = run(side.redis_cli(["EVAL", REDIS_DIGEST_LUA, "0"])).decode()
    result = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[0].isdigit():
            result[parts[0]] = {"keys": int(parts[1]), "digest": parts[2],
                                "short_ttl": int(parts[3])}
    if len(result) != 16:
        raise SnapshotError(f"unexpected redis digest output: {out[:500]!r}")
    return result


def take(side_name, namespace):
    side = OldSide() if side_name == "old" else NewSide(namespace)
    return {
        "side": side_name,
        "postgres": pg_snapshot(side),
        "redis": redis_snapshot(side),
        "storage": side.storage_hashes(),
    }


def compare(expected, actual, side_name, limit=40):
    """Differences as report lines (empty: identical). On the new side Redis db 5 (the
    Composer endpoint cache) must be empty; every other database must match."""
    diffs = []
    exp_pg, act_pg = expected["postgres"], actual["postgres"]
    for t in sorted(set(exp_pg) | set(act_pg)):
        e, a = exp_pg.get(t), act_pg.get(t)
        if a is None:
            diffs.append(f"- postgres table {t}: missing ({e['rows']} rows expected)")
        elif e is None:
            diffs.append(f"+ postgres table {t}: not in the seed ({a['rows']} rows)")
        elif e["rows"] != a["rows"]:
            diffs.append(f"~ postgres table {t}: {a['rows']} rows, expected {e['rows']}")
        elif e["md5"] != a["md5"]:
            diffs.append(f"~ postgres table {t}: same {a['rows']} rows, different content "
                         f"(md5 {a['md5']}, expected {e['md5']})")
    for db in sorted(set(expected["redis"]) | set(actual["redis"]), key=int):
        e = dict(expected["redis"].get(db, {"keys": 0, "digest": "0-0"}))
        a = actual["redis"].get(db, {"keys": 0, "digest": "0-0"})
        if side_name == "new" and db == COMPOSER_CACHE_DB:
            e = {"keys": 0, "digest": "0-0"}
            what = " (the Composer cache must be flushed)"
        else:
            what = ""
        if e["keys"] != a["keys"]:
            diffs.append(f"~ redis db {db}: {a['keys']} keys, expected {e['keys']}{what}")
        elif e["digest"] != a["digest"]:
            diffs.append(f"~ redis db {db}: same {a['keys']} keys, different content")
        # Short-lived keys may have expired (no more than the seed had), never multiplied.
        if a.get("short_ttl", 0) > e.get("short_ttl", 0):
            diffs.append(f"~ redis db {db}: {a['short_ttl']} short-lived keys, more than "
                         f"the {e.get('short_ttl', 0)} seeded")
    exp_st, act_st = expected["storage"], actual["storage"]
    for path in sorted(set(exp_st) | set(act_st)):
        e, a = exp_st.get(path), act_st.get(path)
        if a is None:
            diffs.append(f"- storage {path}: missing")
        elif e is None:
            diffs.append(f"+ storage {path}: not in the seed")
        elif e != a:
            diffs.append(f"~ storage {path}: sha256 {a[:16]}..., expected {e[:16]}...")
    if len(diffs) > limit:
        diffs = diffs[:limit] + [f"... and {len(diffs) - limit} more differences"]
    return diffs


def summary(snap):
    pg_rows = sum(t["rows"] for t in snap["postgres"].values())
    keys = {db: v["keys"] for db, v in snap["redis"].items() if v["keys"]}
    return (f"postgres: {len(snap['postgres'])} tables, {pg_rows} rows; "
            f"redis keys per db: {keys}; storage: {len(snap['storage'])} files")


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("take")
    t.add_argument("--side", choices=["old", "new"], required=True)
    t.add_argument("--namespace", default="default")
    t.add_argument("--out", required=True)
    v = sub.add_parser("verify", help="take a snapshot of a side and compare with the seed")
    v.add_argument("--side", choices=["old", "new"], required=True)
    v.add_argument("--namespace", default="default")
    v.add_argument("--expected", default=os.path.join(STATE, "snapshot.json"))
    a = ap.parse_args()
    try:
        if a.cmd == "take":
            snap = take(a.side, a.namespace)
            tmp = a.out + ".part"
            with open(tmp, "w") as f:
                json.dump(snap, f, indent=1, sort_keys=True)
            os.replace(tmp, a.out)
            print(summary(snap), file=sys.stderr)
            return 0
        with open(a.expected) as f:
            expected = json.load(f)
        actual = take(a.side, a.namespace)
        diffs = compare(expected, actual, a.side)
        label = f"{a.side} side" + (f" (namespace {a.namespace})" if a.side == "new" else "")
        if diffs:
            print(f"verify: the {label} DIFFERS from the seed snapshot {a.expected}:")
            for d in diffs:
                print("  " + d)
            return 1
        print(f"verify: the {label} is identical to the seed snapshot "
              f"({summary(actual)}" + ("; redis db 5 empty" if a.side == "new" else "") + ")")
        return 0
    except (SnapshotError, OSError) as e:
        print(f"verify: could not read the {a.side} side: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
