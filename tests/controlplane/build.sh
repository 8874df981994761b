#!/bin/sh
# Kubernetes' own control plane for the cluster tests (tests/controlplane.py starts it): kube-apiserver,
# kube-controller-manager, kube-scheduler and kubectl of the release go.mod names, built into OUT (default: the
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

# kubectl of the same release, for `kubectl kustomize` (tasks/cluster.py renders infra/k8s with it): the tests
# take it from bin/ here (the Makefile puts that folder first on their PATH), not from whatever the machine has
mkdir -p "$out/bin"
if ! "$out/bin/kubectl" version --client 2>/dev/null | grep -q "Client Version: $version"; then
  echo "building kubectl $version ..."
  (cd "$here" && GOFLAGS=-mod=readonly go build -trimpath -ldflags "$flags" -o "$out/bin/kubectl.partial" \
    "k8s.io/kubernetes/cmd/kubectl")
  mv "$out/bin/kubectl.partial" "$out/bin/kubectl"
fi

# Kueue (sigs.k8s.io/kueue) for the tests of the gpu pool's queues (tests/kueue.py): its controller manager, built
# from the module of the release KUEUE names (its own go.sum pins what it imports; `go install pkg@version` keeps
# to it), and that release's CRDs, conversion patches and webhook manifests beside it. About 2 minutes the first
# time on 2 cores.
KUEUE=v0.17.0
if ! [ -x "$out/kueue" ] || ! [ "$(cat "$out/kueue.version" 2>/dev/null)" = "$KUEUE" ]; then
  echo "building kueue $KUEUE ..."
  mkdir -p "$out/kueue.partial"
  GOBIN="$out/kueue.partial" GOFLAGS=-buildvcs=false go install -trimpath \
    -ldflags "-s -w -X sigs.k8s.io/kueue/pkg/version.GitVersion=$KUEUE" "sigs.k8s.io/kueue/cmd/kueue@$KUEUE"
  src=$(GOFLAGS=-mod=mod go mod download -json "sigs.k8s.io/kueue@$KUEUE" | awk -F'"' '$2 == "Dir" {print $4}')
  rm -rf "$out/kueue-manifests" && mkdir -p "$out/kueue-manifests/crd" "$out/kueue-manifests/patches"
  cp "$src"/config/components/crd/bases/*.yaml "$out/kueue-manifests/crd/"
  # the conversion webhooks the release's kustomization turns on (a commented line is one it leaves off)
  for patch in $(sed -n 's|^- path: patches/\(webhook_in_.*\.yaml\)$|\1|p' "$src/config/components/crd/kustomization.yaml"); do
    cp "$src/config/components/crd/patches/$patch" "$out/kueue-manifests/patches/"
  done
  cp "$src/config/components/webhook/manifests.yaml" "$out/kueue-manifests/webhooks.yaml"
  chmod -R u+w "$out/kueue-manifests"
  mv "$out/kueue.partial/kueue" "$out/kueue" && rmdir "$out/kueue.partial"
  echo "$KUEUE" > "$out/kueue.version"
fi

# The Gateway API's HTTPRoute CRD (standard channel) of the release GATEWAY_API names, for the tests that
# apply mlyard's HTTPRoutes to the API server (its schema and validation rules are the release's own).
GATEWAY_API=v1.5.0
crd="$out/gateway-api/gateway.networking.k8s.io_httproutes.yaml"
if ! [ -f "$crd" ] || ! [ "$(cat "$out/gateway-api/version" 2>/dev/null)" = "$GATEWAY_API" ]; then
  src=$(GOFLAGS=-mod=mod go mod download -json "sigs.k8s.io/gateway-api@$GATEWAY_API" | awk -F'"' '$2 == "Dir" {print $4}')
  mkdir -p "$out/gateway-api"
  cp "$src/config/crd/standard/gateway.networking.k8s.io_httproutes.yaml" "$crd" && chmod u+w "$crd"
  echo "$GATEWAY_API" > "$out/gateway-api/version"
fi

# Prometheus's promtool (github.com/prometheus/prometheus, the module of the release PROMETHEUS names, pinned by
# its own go.sum), for the tests of the monitoring component's alert rules (tests/infra/test_alerts.py): `check
# rules` reads them as Prometheus does, `test rules` fires each on series made for it. About 6 minutes the first
# time on 2 cores, nothing after.
PROMETHEUS=v0.316.0
if ! [ -x "$out/promtool" ] || ! [ "$(cat "$out/promtool.version" 2>/dev/null)" = "$PROMETHEUS" ]; then
  echo "building promtool $PROMETHEUS ..."
  mkdir -p "$out/promtool.partial"
  GOBIN="$out/promtool.partial" GOFLAGS=-buildvcs=false go install -trimpath -ldflags "-s -w" \
    "github.com/prometheus/prometheus/cmd/promtool@$PROMETHEUS"
  mv "$out/promtool.partial/promtool" "$out/promtool" && rmdir "$out/promtool.partial"
  echo "$PROMETHEUS" > "$out/promtool.version"
fi

# The Prometheus operator's ServiceMonitor and PrometheusRule CRDs, generated by controller-gen (the tool its
# project generates them with) from the Go types of the release PROMETHEUS_OPERATOR names (its module
# pkg/apis/monitoring; the module of the whole operator is not served), for the test that applies the monitoring
# component to the API server (tests/infra/test_k8s_install.py): their schemas are the release's own.
PROMETHEUS_OPERATOR=v0.95.2
CONTROLLER_TOOLS=v0.23.0
if ! [ -f "$out/prometheus-operator/monitoring.coreos.com_prometheusrules.yaml" ] || \
   ! [ "$(cat "$out/prometheus-operator/version" 2>/dev/null)" = "$PROMETHEUS_OPERATOR" ]; then
  echo "generating the Prometheus operator's CRDs ($PROMETHEUS_OPERATOR) ..."
  src=$(GOFLAGS=-mod=mod go mod download -json \
    "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring@$PROMETHEUS_OPERATOR" | awk -F'"' '$2 == "Dir" {print $4}')
  work=$(mktemp -d)
  cp -r "$src/." "$work/" && chmod -R u+w "$work"
  rm -rf "$out/prometheus-operator" && mkdir -p "$out/prometheus-operator"
  (cd "$work" && GOFLAGS=-mod=mod go run "sigs.k8s.io/controller-tools/cmd/controller-gen@$CONTROLLER_TOOLS" \
    crd:crdVersions=v1,allowDangerousTypes=true paths=./v1 output:crd:artifacts:config="$out/prometheus-operator")
  rm -rf "$work"
  echo "$PROMETHEUS_OPERATOR" > "$out/prometheus-operator/version"
fi
