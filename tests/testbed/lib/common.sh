# shellcheck shell=bash
# shellcheck disable=SC2034 # the variables are used by the scripts that source this
# Shared by tests/testbed/{up,down,verify,selftest}: paths, names, logging, and the
# small helpers that talk to Docker and to the two hosts.
#
# Everything the testbed creates on the machine's Docker Engine carries the label
# ferry.testbed.root=<this testbed dir>, so `down` removes only what this checkout
# created (container names are global on the machine: a second checkout's testbed
# must be taken down before this one can come up).

TESTBED=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REPO=$(cd "$TESTBED/../.." && pwd)
STATE=$TESTBED/state
# Several checkouts may share one cache (the images are shared by the daemon anyway).
CACHE=${TESTBED_CACHE:-$TESTBED/cache}
SHARED=$TESTBED/shared

# Debian's client; another `docker` may be earlier on PATH.
DOCKER=/usr/bin/docker

OLD_PORT=2201
NEW_PORT=2202
SSH_KEY=$STATE/id_ed25519
KNOWN_HOSTS=$STATE/known_hosts
OLD_DATA=$STATE/old-data
OLD_STORAGE=$OLD_DATA/packagist
PACKAGIST_VERSION=1.12.10
KUBECTL_SRC=/usr/lib/google-cloud-sdk/bin/kubectl.1.32
SIM_BIN=$STATE/bin/k8s-sim
# The new host's built-in blob storage (--blob-store s3): Garage, a real S3 server from
# crates.io, built once into the cache (cold: ~10 min on 2 idle cores).
GARAGE_VERSION=2.5.0
GARAGE_BIN=$CACHE/garage-$GARAGE_VERSION/bin/garage
BLOBSTORE_ENV=$STATE/blobstore.env

LABEL_ROOT=ferry.testbed.root
LABEL_CONFIG=ferry.testbed.config

PACKAGIST_CONTAINERS=(packagist-postgres packagist-redis packagist-ui packagist-repo packagist-web packagist-worker)

log() { printf '==> %s\n' "$*" >&2; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }
die() {
  printf 'testbed: %s\n' "$*" >&2
  exit 1
}

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

need_root() {
  [[ $(id -u) -eq 0 ]] || die "must run as root (installs packages, starts dockerd, debootstraps)"
}

# ssh options for the testbed hosts: our key only, our known_hosts only, strict checking.
ssh_opts() {
  printf '%s\n' -i "$SSH_KEY" -o IdentitiesOnly=yes -o BatchMode=yes \
    -o StrictHostKeyChecking=yes -o UserKnownHostsFile="$KNOWN_HOSTS" \
    -o GlobalKnownHostsFile=/dev/null -o ConnectTimeout=5 -o LogLevel=ERROR
}

# ssh_host old|new COMMAND...: run a command on a testbed host (no TTY, ever).
ssh_host() {
  local which=$1
  shift
  local port=$OLD_PORT
  [[ $which == new ]] && port=$NEW_PORT
  local opts
  mapfile -t opts < <(ssh_opts)
  ssh "${opts[@]}" -p "$port" root@127.0.0.1 "$@"
}

docker_ok() { "$DOCKER" info >/dev/null 2>&1; }

container_exists() { "$DOCKER" container inspect "$1" >/dev/null 2>&1; }

container_label() {
  "$DOCKER" container inspect -f "{{ index .Config.Labels \"$2\" }}" "$1" 2>/dev/null || true
}

container_running() {
  [[ $("$DOCKER" container inspect -f '{{.State.Running}}' "$1" 2>/dev/null || true) == true ]]
}

# Refuse to touch a container of the same name that another checkout's testbed (or
# something else entirely) created.
assert_ours_or_absent() {
  local name=$1 root
  container_exists "$name" || return 0
  root=$(container_label "$name" "$LABEL_ROOT")
  [[ $root == "$TESTBED" ]] ||
    die "a container named $name exists but was not created by this testbed ($TESTBED; its label says '${root:-none}'). Take it down first (its own tests/testbed/down, or docker rm -f $name if you know it is stale)."
}

sha256_of_text() { printf '%s' "$1" | sha256sum | cut -c1-16; }
