#!/usr/bin/env bash
# The old host ("Replicated Native"): Docker Engine and the six packagist-* containers,
# seeded once with the testbed's deterministic data (tests/testbed/seed/seed.py).
# Idempotent: containers are created when missing and started when stopped; the data is
# seeded only once per size (marker /var/lib/packagist-old/seeded-size).
#
# Environment: SEED_SIZE (small|medium|large, default small),
#              RESEED=1 to wipe and seed again.
set -euo pipefail

SRC=/opt/ferry-src
SEED=$SRC/tests/testbed/seed/seed.py
SHARED=$SRC/tests/testbed/shared
SEED_SIZE=${SEED_SIZE:-small}
RESEED=${RESEED:-0}
PACKAGIST_VERSION=1.12.10
DATA_DIR=/data/packagist              # blob storage, as the vendor's install has it
STATE=/var/lib/packagist-old          # PostgreSQL and Redis data, seed marker
DOCKER=/usr/bin/docker

log() { printf '[old] %s\n' "$*"; }
die() {
  printf '[old] error: %s\n' "$*" >&2
  exit 1
}

case $SEED_SIZE in small | medium | large) ;; *) die "SEED_SIZE must be small, medium or large, not '$SEED_SIZE'" ;; esac
[[ -f $SEED && -x $SHARED/console && -f $SHARED/redis-backup.sh ]] ||
  die "the repository at $SRC is incomplete (seed.py, console, redis-backup.sh); run 'vagrant rsync'"

# ---------------------------------------------------------------- Docker Engine
export DEBIAN_FRONTEND=noninteractive
if ! command -v dockerd >/dev/null 2>&1; then
  log "installing Docker Engine (Debian docker.io)"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends docker.io >/dev/null
fi
systemctl enable --now docker.service >/dev/null
for _ in $(seq 60); do "$DOCKER" info >/dev/null 2>&1 && break; sleep 1; done
"$DOCKER" info >/dev/null 2>&1 || die "the Docker daemon does not answer (journalctl -u docker)"

# ---------------------------------------------------------------- images
# Public images for the stores; the app containers from vagrant/images/app, whose build
# context is exactly the Dockerfile's directory plus the testbed's console.
"$DOCKER" image inspect postgres:15 >/dev/null 2>&1 || "$DOCKER" pull -q postgres:15
"$DOCKER" image inspect redis:7 >/dev/null 2>&1 || "$DOCKER" pull -q redis:7

build_app_image() {
  local component=$1 tag="packagist/$1:$PACKAGIST_VERSION"
  log "building $tag"
  tar -C "$SRC" -cf - vagrant/images/app tests/testbed/shared/console |
    "$DOCKER" build -q -f vagrant/images/app/Dockerfile \
      --build-arg "COMPONENT=$component" --build-arg "PACKAGIST_VERSION=$PACKAGIST_VERSION" \
      -t "$tag" - >/dev/null
}
for c in ui repo web worker; do build_app_image "$c"; done

# ---------------------------------------------------------------- containers
mkdir -p "$DATA_DIR" "$STATE/postgres" "$STATE/redis"

# Create NAME with the remaining arguments unless it exists; start it if stopped.
# (A changed definition needs `docker rm -f NAME` first; the data stays on the host.)
ensure_container() {
  local name=$1
  shift
  if "$DOCKER" container inspect "$name" >/dev/null 2>&1; then
    if [[ $("$DOCKER" container inspect -f '{{.State.Running}}' "$name") != true ]]; then
      log "starting $name"
      "$DOCKER" start "$name" >/dev/null
    fi
    return 0
  fi
  log "creating $name"
  "$DOCKER" run -d --name "$name" --hostname "$name" --restart unless-stopped "$@" >/dev/null
}

app_labels=(--label "com.packagist.version=$PACKAGIST_VERSION")

ensure_container packagist-postgres --label com.packagist.component=postgres \
  -e POSTGRES_HOST_AUTH_METHOD=trust -e POSTGRES_DB=packagist_db \
  -e POSTGRES_INITDB_ARGS="--encoding=UTF8 --locale=C.UTF-8" \
  -v "$STATE/postgres:/var/lib/postgresql/data" \
  postgres:15
# The vendor's backup script inside packagist-redis is the testbed's (redis-cli SAVE).
ensure_container packagist-redis --label com.packagist.component=redis \
  -v "$STATE/redis:/data" \
  -v "$SHARED/redis-backup.sh:/usr/local/bin/redis-backup.sh:ro" \
  redis:7 redis-server --port 6379 --dir /data --appendonly no --databases 16 \
  --save "900 1 300 10 60 10000"
ensure_container packagist-ui "${app_labels[@]}" --label com.packagist.component=ui \
  -v "$DATA_DIR:/data/packagist" "packagist/ui:$PACKAGIST_VERSION"
for c in repo web worker; do
  ensure_container "packagist-$c" "${app_labels[@]}" --label "com.packagist.component=$c" \
    "packagist/$c:$PACKAGIST_VERSION"
done

postgres_ready() {
  "$DOCKER" exec packagist-postgres psql -XAtq -U postgres -d packagist_db -c 'SELECT 1' >/dev/null 2>&1
}
redis_ready() { [[ $("$DOCKER" exec packagist-redis redis-cli PING 2>/dev/null) == PONG ]]; }
for _ in $(seq 120); do postgres_ready && break; sleep 1; done
postgres_ready || die "packagist-postgres does not accept connections to packagist_db (docker logs packagist-postgres)"
for _ in $(seq 60); do redis_ready && break; sleep 1; done
redis_ready || die "packagist-redis does not answer PING (docker logs packagist-redis)"

# ---------------------------------------------------------------- seed (once per size)
seeded=$(cat "$STATE/seeded-size" 2>/dev/null || true)
if [[ $RESEED == 1 || $seeded != "$SEED_SIZE" ]]; then
  rm -f "$STATE/seeded-size"
  log "seeding ($SEED_SIZE) with $SEED"
  "$DOCKER" exec packagist-postgres psql -XAq -v ON_ERROR_STOP=1 -U postgres -d postgres \
    -c 'DROP DATABASE IF EXISTS packagist_db WITH (FORCE)' -c 'CREATE DATABASE packagist_db'
  python3 "$SEED" sql --size "$SEED_SIZE" |
    "$DOCKER" exec -i packagist-postgres psql -XAq -v ON_ERROR_STOP=1 -U postgres -d packagist_db >/dev/null
  "$DOCKER" exec packagist-redis redis-cli FLUSHALL >/dev/null
  python3 "$SEED" redis --size "$SEED_SIZE" |
    "$DOCKER" exec -i packagist-redis redis-cli --pipe >"$STATE/redis-seed.log"
  grep -q 'errors: 0' "$STATE/redis-seed.log" ||
    die "Redis seeding reported errors: $(cat "$STATE/redis-seed.log")"
  "$DOCKER" exec packagist-redis redis-cli SAVE >/dev/null
  rm -rf "${DATA_DIR:?}/composer" "${DATA_DIR:?}/artifacts"
  python3 "$SEED" files --size "$SEED_SIZE" --dir "$DATA_DIR"
  echo "$SEED_SIZE" >"$STATE/seeded-size"
else
  log "already seeded ($seeded); RESEED=1 vagrant provision old to seed again"
fi

db_size=$("$DOCKER" exec packagist-postgres psql -XAtq -U postgres -d packagist_db \
  -c "SELECT pg_size_pretty(pg_database_size('packagist_db'))")
log "ready: $("$DOCKER" ps --filter name=packagist- --format '{{.Names}}' | sort | tr '\n' ' ')"
log "database $db_size, storage $(du -sh "$DATA_DIR" | cut -f1)"
