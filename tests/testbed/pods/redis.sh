#!/bin/sh
# Redis 7 on the PV mounted at /data, port 9869 as Private Packagist uses it.
# REDIS_APPENDONLY (yes|no) chooses the persistence mode; with "yes" an existing AOF is
# loaded in preference to dump.rdb, and a lone dump.rdb is ignored.
set -eu
exec redis-server \
    --port "${REDIS_PORT:-9869}" \
    --appendonly "${REDIS_APPENDONLY:-yes}" \
    --dir /data
