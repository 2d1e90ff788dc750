#!/usr/bin/env bash
# The new host: single-node k3s, the OpenEBS LocalPV hostpath provisioner (StorageClass
# `openebs-hostpath`, BasePath /var/openebs/local, reclaimPolicy Delete, the default
# class), the kubeconfig also at /etc/kubernetes/admin.conf, and the Packagist-shaped
# workloads from tests/testbed/manifests (the same files the simulator loads with
# `up --blob-store fs`; the blob-s3 overlay, a real S3 server, is the simulator's default
# but its image is not built for the VM, so the VM's ui keeps files at /data/packagist).
# Idempotent: re-running re-applies the manifests and waits for the pods.
#
# Environment: K3S_CHANNEL (default v1.33), K3S_VERSION (exact version, overrides the
# channel), NODE_IP (the private-network address), OPENEBS_CHART_VERSION.
set -euo pipefail

SRC=/opt/ferry-src
MANIFESTS=$SRC/tests/testbed/manifests
K3S_CHANNEL=${K3S_CHANNEL:-v1.33}
K3S_VERSION=${K3S_VERSION:-}
NODE_IP=${NODE_IP:-}
OPENEBS_CHART_VERSION=${OPENEBS_CHART_VERSION:-4.4.0}
PACKAGIST_VERSION=1.12.10
K3S_KUBECONFIG=/etc/rancher/k3s/k3s.yaml
ADMIN_CONF=/etc/kubernetes/admin.conf
OPENEBS_BASE=/var/openebs/local
export KUBECONFIG=$K3S_KUBECONFIG

log() { printf '[new] %s\n' "$*"; }
die() {
  printf '[new] error: %s\n' "$*" >&2
  exit 1
}

[[ -d $MANIFESTS && -x $SRC/tests/testbed/shared/console ]] ||
  die "the repository at $SRC is incomplete (manifests, console); run 'vagrant rsync'"

# ---------------------------------------------------------------- k3s
# Its own local-path provisioner and Traefik are left out: OpenEBS LocalPV is the only
# (default) storage, as on the vendor's kURL-based install.
if ! command -v k3s >/dev/null 2>&1; then
  log "installing k3s (${K3S_VERSION:-channel $K3S_CHANNEL})"
  installer=$(mktemp)
  curl -sfL https://get.k3s.io -o "$installer"
  args=(server --disable local-storage --disable traefik --write-kubeconfig-mode 0600)
  [[ -n $NODE_IP ]] && args+=(--node-ip "$NODE_IP")
  if [[ -n $K3S_VERSION ]]; then
    INSTALL_K3S_VERSION=$K3S_VERSION sh "$installer" "${args[@]}"
  else
    INSTALL_K3S_CHANNEL=$K3S_CHANNEL sh "$installer" "${args[@]}"
  fi
  rm -f "$installer"
fi
systemctl enable --now k3s.service >/dev/null

for _ in $(seq 120); do
  [[ -s $K3S_KUBECONFIG ]] && kubectl get --raw /readyz >/dev/null 2>&1 && break
  sleep 2
done
kubectl get --raw /readyz >/dev/null 2>&1 || die "the k3s API server is not ready (journalctl -u k3s)"
kubectl wait --for=condition=Ready node --all --timeout=300s >/dev/null

# The path the vendor's install (and ferry's example inventory) uses; root only.
install -d -m 0755 /etc/kubernetes
install -m 0600 -o root -g root "$K3S_KUBECONFIG" "$ADMIN_CONF"
log "kubeconfig at $ADMIN_CONF"

# ---------------------------------------------------------------- OpenEBS LocalPV hostpath
# The provisioner through k3s's Helm controller; its own StorageClass is disabled: the
# class comes from tests/testbed/manifests/00-cluster.yaml (one definition for the
# simulator and for this VM).
install -d -m 0755 "$OPENEBS_BASE"
kubectl apply -f - >/dev/null <<YAML
apiVersion: helm.cattle.io/v1
kind: HelmChart
metadata:
  name: openebs-localpv
  namespace: kube-system
spec:
  repo: https://openebs.github.io/dynamic-localpv-provisioner
  chart: localpv-provisioner
  version: "$OPENEBS_CHART_VERSION"
  targetNamespace: openebs
  createNamespace: true
  valuesContent: |-
    hostpathClass:
      enabled: false
    analytics:
      enabled: false
YAML
log "waiting for the OpenEBS LocalPV provisioner"
for _ in $(seq 150); do
  kubectl -n openebs get deployment -o name 2>/dev/null | grep -q . && break
  sleep 2
done
kubectl -n openebs wait --for=condition=Available deployment --all --timeout=600s >/dev/null ||
  die "the OpenEBS LocalPV provisioner did not become available (kubectl -n openebs get pods)"

# ---------------------------------------------------------------- node files the pods use
# The manifests' hostPath volumes: the repository (the pods' scripts) at /opt/ferry-src is
# the synced folder itself; the ui pod's /srv/manager/bin/console is the testbed's console
# (a link into the repository, resolvable inside the pod, which mounts /opt/ferry-src).
install -d -m 0755 /srv/manager/bin /var/lib/packagist-new/storage
ln -sfn "$SRC/tests/testbed/shared/console" /srv/manager/bin/console

# The app images the manifests name are not published: the pods run the repository's
# scripts with /bin/sh, so any small Debian image serves. Tag one under each name in
# k3s's containerd (the pods' imagePullPolicy is IfNotPresent for a versioned tag).
base=docker.io/library/debian:bookworm-slim
k3s ctr -n k8s.io images ls -q | grep -qx "$base" || k3s ctr -n k8s.io images pull "$base" >/dev/null
for c in ui sidecar repo worker; do
  ref=docker.io/packagist/self-hosted-$c:$PACKAGIST_VERSION
  k3s ctr -n k8s.io images ls -q | grep -qx "$ref" || k3s ctr -n k8s.io images tag "$base" "$ref" >/dev/null
done

# ---------------------------------------------------------------- the workloads
log "applying $MANIFESTS"
kubectl apply -f "$MANIFESTS" >/dev/null

default_sc=$(kubectl get storageclass \
  -o jsonpath='{range .items[?(@.metadata.annotations.storageclass\.kubernetes\.io/is-default-class=="true")]}{.metadata.name}{"\n"}{end}')
[[ $default_sc == openebs-hostpath ]] ||
  die "expected openebs-hostpath to be the only default StorageClass, found: ${default_sc:-none}"

for ns in default packagist-alt; do
  for w in statefulset/postgres statefulset/redis deployment/ui deployment/repo deployment/worker; do
    kubectl -n "$ns" rollout status "$w" --timeout=600s >/dev/null ||
      die "$ns $w did not become ready (kubectl -n $ns describe $w)"
  done
done
kubectl -n default exec postgres-0 -- psql -XAtq -U postgres -d packagist_db -c 'SELECT 1' >/dev/null ||
  die "postgres-0 does not accept connections to packagist_db"
[[ $(kubectl -n default exec redis-0 -- redis-cli -p 9869 PING) == PONG ]] ||
  die "redis-0 does not answer PING on port 9869"
pv=$(kubectl -n default get pvc redis-data-redis-0 -o jsonpath='{.spec.volumeName}')
[[ -d $OPENEBS_BASE/$pv ]] || die "the Redis PV $pv has no directory under $OPENEBS_BASE"
log "ready: $(kubectl get pods -A --no-headers | awk '$1 == "default" || $1 == "packagist-alt" { n++ } END { print n + 0 }') Packagist pods; Redis PV at $OPENEBS_BASE/$pv"
