#!/usr/bin/env bash
# Installs a real Kubernetes API server and etcd (no kubelet, no controllers) into the install
# cache: builds integration-tests/kube (k8s.io/kubernetes and go.etcd.io/etcd/server/v3 from the
# Go module proxy) with the machine's Go, keyed by a hash of that module's files; concurrent runs
# install once (lib/cache.sh). Prints the folder that holds the two programs:
#
#   BIN="$(scripts/kube-apiserver.sh)"; "$BIN/etcd" ...; "$BIN/kube-apiserver" ...
#
# How to start them on 127.0.0.1: integration-tests/kube/README.md. The first build takes about
# 5 minutes on 2 cores and about 3 GiB of Go caches, which are removed once it has succeeded.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
. "$HERE/lib/cache.sh"
SRC="$(cd "$HERE/../integration-tests/kube" && pwd)"
CACHE="${SLUICE_CACHE:-${HOME:-/root}/.cache/sluice}"
command -v go >/dev/null || { echo "go (1.26 or newer) is needed" >&2; exit 1; }
HASH=$(cd "$SRC" && cat go.mod go.sum cmd/*/main.go | sha256sum | cut -c1-16)
OUT="$CACHE/kube/$HASH"
# The Go caches stay in the cache folder while a build has not yet succeeded, so an interrupted
# build goes on from where it was.
GODIR="$CACHE/kube/go"
install() {
  local kube_version etcd_version
  kube_version=$(sed -n 's/^[[:space:]]*k8s\.io\/kubernetes \(v[0-9.]*\)$/\1/p' "$SRC/go.mod")
  etcd_version=$(sed -n 's/^[[:space:]]*go\.etcd\.io\/etcd\/server\/v3 \(v[0-9.]*\)$/\1/p' "$SRC/go.mod")
  mkdir -p "$1/bin"
  (
    cd "$SRC"
    export GOMODCACHE="$GODIR/mod" GOCACHE="$GODIR/build" GOFLAGS="-mod=readonly -modcacherw -buildvcs=false"
    export CGO_ENABLED=0 GOWORK=off
    # Without these the programs call themselves v0.0.0-master (kubectl warns of version skew).
    local x="-X k8s.io/component-base/version.gitVersion=$kube_version"
    x="$x -X k8s.io/component-base/version.gitMajor=$(echo "$kube_version" | cut -d. -f1 | tr -d v)"
    x="$x -X k8s.io/component-base/version.gitMinor=$(echo "$kube_version" | cut -d. -f2)"
    x="$x -X k8s.io/component-base/version.gitTreeState=clean"
    x="$x -X go.etcd.io/etcd/api/v3/version.GitSHA=$etcd_version"
    nice -n 10 go build -trimpath -ldflags="-s -w $x" -o "$1/bin/" ./cmd/kube-apiserver ./cmd/etcd >&2
  )
  "$1/bin/kube-apiserver" --version >&2
  "$1/bin/etcd" --version >&2
  # About 2.2 GiB of build cache and 0.7 GiB of modules: the programs are what is kept.
  rm -rf "$GODIR"
}
cache_install "$OUT" install
echo "$OUT/bin"
