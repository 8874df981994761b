#!/bin/sh
# Kubernetes' own control plane for the cluster tests (tests/controlplane.py starts it): kube-apiserver,
# kube-controller-manager and kube-scheduler of the release go.mod names, built into OUT (default: the
# venv's controlplane/), each skipped when OUT holds it already at that release. Go's build cache makes a
# build after the first one take seconds; the first takes 15-20 minutes on 2 cores. Nothing but the Go
# module proxy is asked: go.sum pins every module.
#
# A release is built with the Go minor it names (1.36 -> go1.26): with a newer one, 1.36's apiserver
# serves a broken /openapi/v2 (Go 1.27 turns on its jsonv2 experiment).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/../../.venv/controlplane}
version=$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" {print $3}' "$here/go.mod")
minor=$(echo "$version" | cut -d. -f2)
if ! command -v go >/dev/null; then
  echo "tests/controlplane/build.sh: no Go toolchain on PATH: install Go 1.$((minor - 10)) (go.dev/dl or the machine's image) to build Kubernetes $version for the cluster tests" >&2
  exit 1
fi
go_minor=$(go env GOVERSION | sed -E 's/^go1\.([0-9]+).*/\1/')
if [ "$go_minor" != "$((minor - 10))" ]; then
  echo "tests/controlplane/build.sh: Kubernetes $version builds with Go 1.$((minor - 10)), not $(go env GOVERSION)" >&2
  exit 1
fi
mkdir -p "$out"
out=$(cd "$out" && pwd)  # go build runs in this folder
pkg=k8s.io/component-base/version
flags="-s -w -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
for cmd in kube-apiserver kube-controller-manager kube-scheduler; do
  if [ -x "$out/$cmd" ] && "$out/$cmd" --version 2>/dev/null | grep -qx "Kubernetes $version"; then
    continue
  fi
  echo "building $cmd $version (Go's cache makes it quick after the first time) ..."
  (cd "$here" && GOFLAGS=-mod=readonly go build -trimpath -ldflags "$flags" -o "$out/$cmd.partial" "k8s.io/kubernetes/cmd/$cmd")
  mv "$out/$cmd.partial" "$out/$cmd"
done
