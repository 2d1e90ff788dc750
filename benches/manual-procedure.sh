#!/usr/bin/env bash
# The vendor's manual migration procedure (/work/shared/reference/packagist-migration.md),
# its commands run literally and in order from the operator's laptop over ssh/scp: the
# anchor for benchmark 4 of benches/run. Nothing here is clever on purpose: the three
# backup files are written on the old host, copied to the laptop with scp, from there to
# the new host with scp, then restored with kubectl on the node. Waits poll
# `kubectl get pods` once a second (an operator would be slower).
#
#   benches/manual-procedure.sh [--workdir DIR]
#
# Defaults to the local testbed (tests/testbed/up): old root@127.0.0.1:2201, new
# root@127.0.0.1:2202, key and known_hosts in tests/testbed/state/. Override with
# OLD_PORT, NEW_PORT, SSH_KEY, KNOWN_HOSTS.
#
# Note: on a new host whose Redis runs with `appendonly yes`, the procedure's step 3
# (delete the AOF, copy dump.rdb in) is the trap the README describes: Redis 7 starts
# with an empty dataset. The procedure is timed as written; benches/run verifies after it
# and says so when the data differ.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
WORKDIR=
while [ $# -gt 0 ]; do
	case $1 in
	--workdir) WORKDIR=$2; shift 2 ;;
	*) echo "unknown argument: $1" >&2; exit 2 ;;
	esac
done
WORKDIR=${WORKDIR:-$(mktemp -d /tmp/manual-migration.XXXXXX)}
mkdir -p "$WORKDIR"

OLD_PORT=${OLD_PORT:-2201}
NEW_PORT=${NEW_PORT:-2202}
SSH_KEY=${SSH_KEY:-$REPO/tests/testbed/state/id_ed25519}
KNOWN_HOSTS=${KNOWN_HOSTS:-$REPO/tests/testbed/state/known_hosts}
OPTS=(-F /dev/null -i "$SSH_KEY" -o UserKnownHostsFile="$KNOWN_HOSTS" -o BatchMode=yes)
BACKUP=/root/manual-migration # on both hosts

old() { ssh "${OPTS[@]}" -p "$OLD_PORT" root@127.0.0.1 "$@"; }
new() { ssh "${OPTS[@]}" -p "$NEW_PORT" root@127.0.0.1 "$@"; }
step() { printf '%(%H:%M:%S)T  %s\n' -1 "$*"; }

# Pods whose name starts with one of the given prefixes (deployment pods: NAME-…).
# shellcheck disable=SC2016 # expanded on the node
WAIT_GONE='until ! kubectl get pods --no-headers 2>/dev/null | grep -Eq "^($1)-"; do sleep 1; done'
# shellcheck disable=SC2016
WAIT_READY='until kubectl get pods --no-headers 2>/dev/null | awk -v re="^($1)-" '"'"'$1 ~ re { n++; split($2, r, "/"); if ($3 == "Running" && r[1] == r[2]) ok++ } END { exit !(n > 0 && n == ok) }'"'"'; do sleep 1; done'
wait_gone() { new "set -- '$1'; $WAIT_GONE"; }
wait_ready() { new "set -- '$1'; $WAIT_READY"; }

# ---------------------------------------------------------------------------------------
# Old host: back up (app stopped)
old mkdir -p "$BACKUP"

step "old 1: stop the app containers"
old docker stop packagist-worker packagist-web packagist-repo

step "old 2: storage archive"
old docker exec packagist-ui /srv/manager/bin/console packagist:self-hosted:migrate-storage export
old docker cp packagist-ui:/tmp/storage.tar.gz "$BACKUP/packagist_storage.tar.gz"
old docker exec packagist-ui rm /tmp/storage.tar.gz
old docker stop packagist-ui

step "old 3: PostgreSQL dump"
old "docker exec packagist-postgres pg_dump --clean --if-exists -U postgres -d packagist_db > $BACKUP/packagist_db.sql"
old docker stop packagist-postgres

step "old 4: Redis backup"
old docker exec packagist-redis /usr/local/bin/redis-backup.sh
old docker cp packagist-redis:/data/dump.rdb "$BACKUP/packagist_redis.rdb"
old docker stop packagist-redis

# ---------------------------------------------------------------------------------------
# The files to the new host, as COPY says:
#   laptop  (default) scp old → laptop, then laptop → new, as the vendor's guide reads;
#   three   scp -3: old → new through the laptop in one command, nothing kept on it;
#   direct  the careful admin: scp on the old host straight to the new one, with a key
#           and known_hosts already set up there (DIRECT_KEY, DIRECT_KNOWN_HOSTS and
#           DIRECT_TARGET=user@addr on the old host; benches/run prepares them untimed).
FILES=(packagist_storage.tar.gz packagist_db.sql packagist_redis.rdb)
new mkdir -p "$BACKUP"
case ${COPY:-laptop} in
laptop)
	step "copy the backups: old → laptop → new (scp)"
	scp "${OPTS[@]}" -q -P "$OLD_PORT" "${FILES[@]/#/root@127.0.0.1:$BACKUP/}" "$WORKDIR/"
	scp "${OPTS[@]}" -q -P "$NEW_PORT" "${FILES[@]/#/$WORKDIR/}" "root@127.0.0.1:$BACKUP/"
	;;
three)
	step "copy the backups: old → new through the laptop (scp -3)"
	for f in "${FILES[@]}"; do
		scp "${OPTS[@]}" -q -3 "scp://root@127.0.0.1:$OLD_PORT/$BACKUP/$f" "scp://root@127.0.0.1:$NEW_PORT/$BACKUP/$f"
	done
	;;
direct)
	step "copy the backups: old → new directly (scp on the old host)"
	old scp -q -i "$DIRECT_KEY" -o UserKnownHostsFile="$DIRECT_KNOWN_HOSTS" -o BatchMode=yes \
		"${FILES[@]/#/$BACKUP/}" "$DIRECT_TARGET:$BACKUP/"
	;;
*) echo "COPY must be laptop, three or direct" >&2; exit 2 ;;
esac

# ---------------------------------------------------------------------------------------
# New host: restore (app stopped until all data is back)

step "new 1: stop the app"
new kubectl scale deployment ui repo worker --replicas=0
wait_gone 'ui|repo|worker'

step "new 2: PostgreSQL"
new kubectl scale statefulset postgres --replicas=0
wait_gone 'postgres'
new kubectl delete pvc postgres-data-postgres-0
new kubectl scale statefulset postgres --replicas=1
wait_ready 'postgres'
new "kubectl exec -i statefulsets/postgres -- psql -q -U postgres -d packagist_db < $BACKUP/packagist_db.sql > /dev/null"

step "new 3: Redis"
pv=$(new kubectl get pvc redis-data-redis-0 -o "jsonpath={.spec.volumeName}")
new kubectl scale statefulset redis --replicas=0
wait_gone 'redis'
new rm -rf "/var/openebs/local/$pv/appendonly.aof" "/var/openebs/local/$pv/appendonlydir"
new cp "$BACKUP/packagist_redis.rdb" "/var/openebs/local/$pv/dump.rdb"
new kubectl scale statefulset redis --replicas=1
wait_ready 'redis'

step "new 4: storage"
new kubectl scale deployment ui --replicas=1
wait_ready 'ui'
ui=$(new "kubectl get pods --no-headers | awk '/^ui-/ {print \$1; exit}'")
new kubectl cp "$BACKUP/packagist_storage.tar.gz" "$ui:/tmp/packagist_storage.tar.gz" -c ui
new kubectl exec "$ui" -c ui -- /srv/manager/bin/console packagist:self-hosted:migrate-storage import /tmp/packagist_storage.tar.gz
new kubectl exec "$ui" -c ui -- rm /tmp/packagist_storage.tar.gz

step "new 5: start the app"
new kubectl scale deployment ui repo worker --replicas=1
wait_ready 'ui|repo|worker'

step "new 6: clear Redis database 5 only"
printf 'SELECT 5\nFLUSHDB\n' | new kubectl exec -i redis-0 -- redis-cli -p 9869

step "done"
