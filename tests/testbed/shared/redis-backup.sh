#!/bin/sh
# /usr/local/bin/redis-backup.sh of packagist-redis: write /data/dump.rdb now.
set -eu
out=$(redis-cli SAVE)
[ "$out" = "OK" ] || { echo "redis-backup: SAVE answered: $out" >&2; exit 1; }
[ -s /data/dump.rdb ] || { echo "redis-backup: /data/dump.rdb missing" >&2; exit 1; }
echo "Redis backup written to /data/dump.rdb"
