#!/bin/sh
# The new host's built-in blob storage: Garage (a real S3 server) in pod minio-0.
#   blobstore.sh          run the server; on its first start lay out the one-node
#                         cluster, import the key from the Secret, create the buckets
#   blobstore.sh ready    the readiness probe: every bucket answers with that key
# Data and config live on the pod's volume (/data), so they survive a restart of the pod
# and go with its PVC. Listens on the node's loopback (hostNetwork): S3 on :9000.
set -eu
GARAGE=/usr/local/bin/garage
CONF=/data/garage.toml
: "${S3_BUCKETS:=packagist}"

if [ "${1:-}" = ready ]; then
  [ -e /data/.configured ] || exit 1
  # shellcheck disable=SC2086 # a list of bucket names
  exec python3 /opt/ferry-src/tests/testbed/shared/s3tool.py ready $S3_BUCKETS
fi

[ -x "$GARAGE" ] || { echo "blobstore: no $GARAGE on the node" >&2; exit 1; }
mkdir -p /data/meta /data/blocks
if [ ! -s /data/rpc_secret ]; then
  od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >/data/rpc_secret.part
  mv /data/rpc_secret.part /data/rpc_secret
fi
cat >"$CONF" <<CONF
metadata_dir = "/data/meta"
data_dir = "/data/blocks"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:3901"
rpc_public_addr = "127.0.0.1:3901"
rpc_secret = "$(cat /data/rpc_secret)"
[s3_api]
s3_region = "${S3_REGION:-us-east-1}"
api_bind_addr = "127.0.0.1:9000"
root_domain = ".s3.testbed.invalid"
[admin]
api_bind_addr = "127.0.0.1:3903"
CONF
"$GARAGE" -c "$CONF" server &
server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server; exit 0' TERM INT

# The first start lays the cluster out. Each step is done once and marked on the volume
# (a retry would fail: a layout version applies once, a key or bucket is created once),
# and the steps that need the new layout to be live are retried: a start that failed
# half-way (a bucket created before the layout was ready) finishes on the pod's restart
# instead of failing the same way forever.
if [ ! -e /data/.configured ]; then
  g() { "$GARAGE" -c "$CONF" "$@"; }
  # step NAME CMD...: run CMD until it succeeds (60 s at most), once per volume.
  step() {
    name=$1; shift
    [ -e "/data/.step-$name" ] && return 0
    i=0
    until out=$("$@" 2>&1); do
      i=$((i + 1))
      [ $i -lt 120 ] || { echo "blobstore: $name failed: $out" >&2; exit 1; }
      sleep 0.5
    done
    touch "/data/.step-$name"
  }
  i=0
  until node=$(g node id -q 2>/dev/null); do
    i=$((i + 1)); [ $i -lt 120 ] || { echo "blobstore: garage did not start" >&2; exit 1; }
    sleep 0.5
  done
  node=${node%%@*}
  step layout-assign g layout assign -z testbed -c 20G "$node"
  step layout-apply g layout apply --version 1
  step key-import g key import --yes -n packagist "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY"
  # shellcheck disable=SC2086 # a list of bucket names
  for b in $S3_BUCKETS; do
    step "bucket-create-$b" g bucket create "$b"
    step "bucket-allow-$b" g bucket allow --read --write --owner "$b" --key packagist
  done
  touch /data/.configured
  echo "blobstore: configured buckets $S3_BUCKETS"
fi
echo "blobstore: serving S3 on 127.0.0.1:9000"
wait $server
