# shellcheck shell=bash
# Packages, the Docker daemon, and the images the testbed runs. Sourced by `up`.

DEBIAN_MIRROR=${TESTBED_DEBIAN_MIRROR:-http://deb.debian.org/debian}
BASE_INCLUDE=openssh-server,postgresql-15,redis-server,tar,gzip,procps,ca-certificates,python3,util-linux,socat,python3-boto3
# Bump when the rootfs recipe (trim, image changes) changes: it is part of the cache key.
BASE_RECIPE=2
BASE_KEY=$(sha256_of_text "bookworm|$BASE_INCLUDE|$BASE_RECIPE")
BASE_TARBALL=$CACHE/base-rootfs-$BASE_KEY.tar.zst
BASE_IMAGE=ferry-testbed/base:$BASE_KEY
BASE_PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# command -> Debian package providing it
declare -A NEEDED_PACKAGES=(
  [dockerd]=docker.io [debootstrap]=debootstrap [ssh]=openssh-client
  [ssh-keygen]=openssh-client [busybox]=busybox-static [zstd]=zstd [python3]=python3
  [psql]=postgresql-client [setsid]=util-linux [sha256sum]=coreutils [ip]=iproute2
)

ensure_packages() {
  local cmd missing=()
  for cmd in "${!NEEDED_PACKAGES[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("${NEEDED_PACKAGES[$cmd]}")
  done
  # busybox-static specifically: the image needs a static binary.
  dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q "install ok installed" ||
    missing+=(busybox-static)
  if ((${#missing[@]})); then
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    log "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${missing[@]}" >/dev/null
  fi
  [[ -x $DOCKER ]] || die "$DOCKER missing after installing docker.io"
  [[ -f $KUBECTL_SRC ]] || die "kubectl for the new host not found at $KUBECTL_SRC (a static kubectl 1.32 binary is expected there; install google-cloud-cli-kubectl or put one there)"
  command -v cargo >/dev/null 2>&1 || die "cargo not found: the Rust toolchain is needed to build the Kubernetes simulator (tests/k8s-sim)"
}

# Start dockerd unless one answers already. Only a daemon started here is recorded in
# state/dockerd.pid, and only that one is stopped by `down`.
ensure_dockerd() {
  if docker_ok; then return 0; fi
  local pidfile=$STATE/dockerd.pid pid
  if [[ -f $pidfile ]] && pid=$(<"$pidfile") && [[ -d /proc/$pid ]] &&
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == dockerd ]]; then
    log "dockerd (pid $pid, started by an earlier up) is not answering yet; waiting"
  else
    log "starting dockerd (overlay2; log: $STATE/dockerd.log)"
    setsid /usr/sbin/dockerd --storage-driver=overlay2 --host=unix:///var/run/docker.sock \
      </dev/null >>"$STATE/dockerd.log" 2>&1 &
    echo $! >"$pidfile"
  fi
  local i
  for ((i = 0; i < 120; i++)); do
    docker_ok && return 0
    sleep 0.5
  done
  tail -n 20 "$STATE/dockerd.log" >&2 || true
  die "dockerd did not come up within 60s (log above)"
}

image_exists() { "$DOCKER" image inspect "$1" >/dev/null 2>&1; }

build_base_tarball() {
  local root=$CACHE/rootfs.tmp debs=$CACHE/debootstrap-debs
  mkdir -p "$debs"
  rm -rf "$root"
  log "debootstrap bookworm (minbase + $BASE_INCLUDE); debs cached in $debs"
  if ! debootstrap --variant=minbase --include="$BASE_INCLUDE" --cache-dir="$debs" \
    bookworm "$root" "$DEBIAN_MIRROR" >"$CACHE/debootstrap.log" 2>&1; then
    tail -n 30 "$CACHE/debootstrap.log" >&2
    die "debootstrap failed (full log: $CACHE/debootstrap.log)"
  fi
  # Trim what no test reads; drop what must not be baked in (host keys, the cluster
  # the postgresql package created: containers make their own).
  rm -rf "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
    "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
    "$root"/etc/ssh/ssh_host_* "$root"/etc/postgresql/15/main "$root"/var/lib/postgresql/15/main
  find "$root"/usr/share/locale -mindepth 1 -maxdepth 1 ! -name 'locale.alias' -exec rm -rf {} +
  mkdir -p "$root"/srv/manager/bin "$root"/data
  tar -C "$root" --numeric-owner -cf - . | zstd -q -T0 -3 -o "$BASE_TARBALL.part"
  mv "$BASE_TARBALL.part" "$BASE_TARBALL"
  rm -rf "$root"
}

ensure_base_image() {
  if image_exists "$BASE_IMAGE"; then return 0; fi
  [[ -s $BASE_TARBALL ]] || build_base_tarball
  log "importing $BASE_IMAGE from $BASE_TARBALL"
  zstd -dc "$BASE_TARBALL" | "$DOCKER" import \
    --change "ENV PATH=$BASE_PATH" --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null
}

BUSYBOX_IMAGE=
ensure_busybox_image() {
  local key dir
  key=$(sha256sum /bin/busybox | cut -c1-16)
  BUSYBOX_IMAGE=ferry-testbed/busybox:$key
  if image_exists "$BUSYBOX_IMAGE"; then return 0; fi
  dir=$(mktemp -d)
  mkdir -p "$dir/bin" "$dir/tmp"
  cp /bin/busybox "$dir/bin/busybox"
  local applet
  for applet in sh sleep ls cat echo ps; do ln -s busybox "$dir/bin/$applet"; done
  tar -C "$dir" --numeric-owner -cf - . |
    "$DOCKER" import --change 'ENV PATH=/bin' --change 'CMD ["/bin/sh"]' - "$BUSYBOX_IMAGE" >/dev/null
  rm -rf "$dir"
}

# The names the old host's containers run under, as a real install has them; the ui
# image's tag carries the application version (read by ferry's preflight).
tag_packagist_images() {
  "$DOCKER" tag "$BASE_IMAGE" "packagist/ui:$PACKAGIST_VERSION"
  "$DOCKER" tag "$BASE_IMAGE" packagist/postgres:15
  "$DOCKER" tag "$BASE_IMAGE" packagist/redis:7
  local c
  for c in repo web worker; do
    "$DOCKER" tag "$BUSYBOX_IMAGE" "packagist/$c:$PACKAGIST_VERSION"
  done
}

# Garage for the object-store testbed: `cargo install` from crates.io (its own
# Cargo.lock, --locked), only the SQLite metadata engine; kept in the cache like the base
# image, keyed by version.
ensure_garage() {
  [[ -x $GARAGE_BIN ]] && return 0
  local root=$CACHE/garage-$GARAGE_VERSION t
  t=$(now)
  log "building garage $GARAGE_VERSION (cargo install, once; cached in $root)"
  rm -rf "$root.tmp"
  cargo install -q --locked --root "$root.tmp" "garage@$GARAGE_VERSION" \
    --no-default-features --features bundled-libs,sqlite ||
    die "building garage $GARAGE_VERSION failed (cargo's output above)"
  rm -rf "$root"
  mv "$root.tmp" "$root"
  log "garage built in $(elapsed "$t")s"
}
