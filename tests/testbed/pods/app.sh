#!/bin/sh
# Stand-in for a Packagist application container (ui, sidecar, repo, worker): it idles
# until Kubernetes stops it. SIGTERM ends it at once, as a well-behaved app would.
name=${1:-app}
echo "$name: started on $(hostname)"
trap 'echo "$name: stopping"; exit 0' TERM INT
while :; do
    sleep 3600 &
    wait $!
done
