#!/bin/sh
# PostgreSQL 15 the way the official image runs it: a new, empty data directory gets
# initdb (trust authentication, user postgres) and the database packagist_db; the server
# runs as user postgres. SIGTERM is turned into a fast shutdown (SIGINT).
set -eu
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
PGDATA=${PGDATA:-/var/lib/postgresql/data}
export PGDATA

as_postgres() {
    setpriv --reuid=postgres --regid=postgres --init-groups "$@"
}

mkdir -p "$PGDATA" /var/run/postgresql
chown postgres:postgres "$PGDATA" /var/run/postgresql
chmod 0700 "$PGDATA"
chmod 2775 /var/run/postgresql

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    echo "postgres: initialising a new cluster in $PGDATA"
    as_postgres "$PGBIN/initdb" -D "$PGDATA" --auth=trust --username=postgres \
        --encoding=UTF8 --locale=C.UTF-8 >/dev/null
    echo "CREATE DATABASE packagist_db;" |
        as_postgres "$PGBIN/postgres" --single -D "$PGDATA" postgres >/dev/null
    echo "postgres: created database packagist_db"
fi

# Started directly (not through the function) so that $! is the server itself.
setpriv --reuid=postgres --regid=postgres --init-groups "$PGBIN/postgres" -D "$PGDATA" \
    -c listen_addresses='*' -c unix_socket_directories=/var/run/postgresql &
pid=$!
trap 'kill -INT "$pid" 2>/dev/null || true' TERM INT
status=0
wait "$pid" || status=$?
# A trapped signal interrupts wait; wait for the server to finish shutting down.
while kill -0 "$pid" 2>/dev/null; do
    wait "$pid" || status=$?
done
exit "$status"
