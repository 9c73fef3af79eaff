#!/usr/bin/env bash
# Portway's end-to-end suite, on kind or on the local cluster harness (portway-cluster).
#
#   e2e/run.sh [--cluster kind|local] [ipv4|ipv6|dual-stack]   (default: kind, ipv4)
#   e2e/run.sh --print-plan [variant]         print the config, pod subnet and chart arguments a
#                                             run would use, and exit (needs no tool; tested)
#
# The same tests (e2e/tests/kind) run against either cluster:
#   kind   Docker + kind, nodes are containers (CI's e2e workflow).
#   local  portway-cluster (e2e/src/cluster): nodes are network namespaces of this machine with
#          their own containerd, kubelet and kube-proxy, from upstream binaries in PORTWAY_K8S_BIN
#          (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy);
#          needs root, containerd, runc, the CNI plugins and podman (docs/e2e.md).
#
# 1. Checks for the cluster's tools (kind: docker with a reachable daemon and kind; local:
#    PORTWAY_K8S_BIN, root, containerd, runc, ctr, podman, CNI plugins), kubectl, helm and cargo.
#    If one is missing it prints a single line starting with "SKIP" and exits 0 without running
#    anything; it never reports a pass it did not see. PORTWAY_E2E_REQUIRE=1 (CI) turns that
#    skip into a failure.
# 2. Builds the two images with their static binaries (scripts/build-images.sh) and the test
#    binary, before any cluster exists (local: also portway-cluster, the static test programs and
#    the harness images).
# 3. Creates the cluster from e2e/kind/<variant>.yaml: kube-controller-manager does not allocate
#    pod CIDRs, Portway does.
# 4. Loads Portway's images and the backend image into the nodes (`kind load docker-image`,
#    `portway-cluster load`) and
#    installs the chart with e2e/kind/values.yaml and a default ClusterCIDR equal to the variant's
#    networking.podSubnet; waits until every node has a pod CIDR and is Ready (kindnet needs the
#    CIDR first).
# 5. Runs the Rust tests of e2e/tests/kind against the cluster, in phases: all but the serial,
#    upgrade and uninstall tests (PORTWAY_E2E_TEST_THREADS at once); the `serial_*` tests one at
#    a time (they stop a kubelet, drain a node, replace the operator); the upgrade test alone (it
#    restarts every agent and upgrades the release); then `helm uninstall` and the check that
#    nothing of Portway is left. Prints "e2e (<cluster> <variant>): N passed, N failed" (a test
#    that skipped counts as failed).
# 6. Deletes the cluster on exit (also on failure or Ctrl-C, after exporting its logs on failure)
#    unless PORTWAY_E2E_KEEP=1.
#
# Environment:
#   PORTWAY_E2E_KEEP=1          keep the cluster; prints its KUBECONFIG and how to delete it
#   PORTWAY_E2E_REQUIRE=1       a missing tool fails the run instead of skipping it
#   PORTWAY_E2E_CLUSTER         cluster name (default: portway-e2e-<variant>)
#   PORTWAY_E2E_LOGS            where the cluster's logs go on failure
#                               (default: target/e2e-logs/<cluster>-<variant>)
#   PORTWAY_K8S_BIN             local: the folder of upstream Kubernetes binaries
#   PORTWAY_E2E_TEST_THREADS    tests run at once in phase 1 (default: 2)
#   PORTWAY_E2E_BACKEND_IMAGE   backend image (default: registry.k8s.io/e2e-test-images/agnhost:2.53
#                               on kind, the harness's netexec stand-in on local)
#   PORTWAY_BIN_DIR             use these static `portway` and `portway-agent` binaries
#                               (scripts/build-static.sh) instead of building them
#   PORTWAY_IMAGE_TAG           tag of Portway's images (default: e2e)
#   KIND_NODE_IMAGE             node image (default: the kind release's own)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

print_plan=0
kind_of_cluster=kind
while [ $# -gt 0 ]; do
  case "$1" in
    --print-plan) print_plan=1 ;;
    --cluster)
      kind_of_cluster=${2:-}
      shift
      ;;
    --cluster=*) kind_of_cluster=${1#--cluster=} ;;
    *) break ;;
  esac
  shift
done
case "$kind_of_cluster" in
  kind | local) ;;
  *)
    echo "usage: $0 [--cluster kind|local] [--print-plan] [ipv4|ipv6|dual-stack]" >&2
    exit 2
    ;;
esac
variant=${1:-ipv4}
case "$variant" in
  ipv4 | ipv6 | dual-stack) ;;
  -h | --help)
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 0
    ;;
  *)
    echo "usage: $0 [--cluster kind|local] [--print-plan] [ipv4|ipv6|dual-stack]" >&2
    exit 2
    ;;
esac
config="$repo/e2e/kind/$variant.yaml"
values="$repo/e2e/kind/values.yaml"
cluster=${PORTWAY_E2E_CLUSTER:-portway-e2e-$variant}
logs=${PORTWAY_E2E_LOGS:-$repo/target/e2e-logs/$kind_of_cluster-$variant}
threads=${PORTWAY_E2E_TEST_THREADS:-2}
if [ "$kind_of_cluster" = local ]; then
  # The harness builds it (e2e/testbins, portway-cluster images); no registry is needed.
  default_backend=localhost/portway-cluster/agnhost:pwc1
  what="local $variant"
else
  default_backend=registry.k8s.io/e2e-test-images/agnhost:2.53
  what=$variant
fi
backend_image=${PORTWAY_E2E_BACKEND_IMAGE:-$default_backend}
tag=${PORTWAY_IMAGE_TAG:-e2e}
next_tag=$tag-next
namespace=portway-system
release=portway

log() { echo "e2e ($what): $*" >&2; }
die() {
  log "FAIL: $*"
  exit 1
}
skip() {
  echo "SKIP e2e ($what): $*"
  if [ "${PORTWAY_E2E_REQUIRE:-0}" = 1 ]; then
    log "PORTWAY_E2E_REQUIRE=1: a skip is a failure here"
    exit 1
  fi
  exit 0
}

[ -f "$config" ] || die "$config is missing"
# The pod subnet of the variant: the default ClusterCIDR must hand out exactly these ranges.
pod_subnet=$(sed -n 's/^[[:space:]]*podSubnet:[[:space:]]*"\{0,1\}\([^"#[:space:]]*\)"\{0,1\}.*$/\1/p' "$config" | head -n 1)
[ -n "$pod_subnet" ] || die "$config has no networking.podSubnet"
cidr_v4=""
cidr_v6=""
IFS=, read -r -a subnets <<<"$pod_subnet"
for s in "${subnets[@]}"; do
  case "$s" in
    *:*) cidr_v6=$s ;;
    *) cidr_v4=$s ;;
  esac
done

chart_args=("$release" "$repo/charts/portway" --namespace "$namespace"
  --values "$values" --set-string "image.tag=$tag" --set-string "agent.image.tag=$tag"
  --set-string "clusterCIDR.default.ipv4=$cidr_v4" --set-string "clusterCIDR.default.ipv6=$cidr_v6")
# IPv6 Services in the Pod dataplane need net.ipv6.conf.all.forwarding in the agent pods, which
# the IPv6 variants' kubelets allow (their KubeletConfiguration patch); docs/install.md.
if [ -n "$cidr_v6" ]; then chart_args+=(--set agent.forwardingSysctls=true); fi
if [ "$print_plan" = 1 ]; then # what a run would use, for e2e/tests/kind (no tools needed)
  printf 'config=%s\ncluster=%s\npod_subnet=%s\ncidr_v4=%s\ncidr_v6=%s\n' \
    "$config" "$cluster" "$pod_subnet" "$cidr_v4" "$cidr_v6"
  printf 'chart_arg=%s\n' "${chart_args[@]}"
  exit 0
fi

# --- 1. tools ---------------------------------------------------------------------------------
target=${CARGO_TARGET_DIR:-$repo/target}
pwc="$target/debug/portway-cluster"
if [ "$kind_of_cluster" = kind ]; then
  command -v docker >/dev/null 2>&1 || skip "docker not found (kind needs Docker; see docs/e2e.md)"
  docker info >/dev/null 2>&1 || skip "docker is installed but its daemon is not reachable (docker info failed)"
  command -v kind >/dev/null 2>&1 || skip "kind not found (https://kind.sigs.k8s.io/docs/user/quick-start/#installation)"
else
  [ -n "${PORTWAY_K8S_BIN:-}" ] ||
    skip "PORTWAY_K8S_BIN is not set (a folder with etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet and kube-proxy; see docs/e2e.md)"
  for b in etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy; do
    [ -x "$PORTWAY_K8S_BIN/$b" ] || skip "PORTWAY_K8S_BIN=$PORTWAY_K8S_BIN has no $b"
  done
  [ "$(id -u)" = 0 ] || skip "the local cluster needs root (network namespaces, cgroups, mounts)"
  for t in ip nsenter containerd containerd-shim-runc-v2 runc ctr iptables podman docker-registry; do
    command -v "$t" >/dev/null 2>&1 || skip "$t not found (apt-get install containerd runc containernetworking-plugins iptables podman docker-registry)"
  done
  for p in bridge host-local portmap loopback; do
    [ -x "/usr/lib/cni/$p" ] || skip "/usr/lib/cni/$p not found (apt-get install containernetworking-plugins)"
  done
  podman image exists debian:bookworm-slim || podman image exists docker.io/library/debian:bookworm-slim ||
    skip "podman has no debian:bookworm-slim for Portway's images (../shared/tools/local-base-image.sh makes one offline)"
fi
command -v kubectl >/dev/null 2>&1 || skip "kubectl not found"
helm=$(command -v helm 2>/dev/null || true)
if [ -z "$helm" ] && [ -x "$repo/target/tools/bin/helm" ]; then helm="$repo/target/tools/bin/helm"; fi
[ -n "$helm" ] || skip "helm not found (bash scripts/install-test-deps.sh puts one in target/tools/bin)"
command -v cargo >/dev/null 2>&1 || skip "cargo not found"

log "cluster $cluster ($kind_of_cluster), pod subnet $pod_subnet (IPv4 '${cidr_v4}', IPv6 '${cidr_v6}')"

work=$(mktemp -d "${TMPDIR:-/tmp}/portway-e2e-$variant.XXXXXX")
kubeconfig="$work/kubeconfig"
created=0
cluster_exists() {
  if [ "$kind_of_cluster" = kind ]; then
    kind get clusters 2>/dev/null | grep -qx "$cluster"
  else
    [ -x "$pwc" ] && "$pwc" kubeconfig --name "$cluster" >/dev/null 2>&1
  fi
}
cluster_delete() {
  if [ "$kind_of_cluster" = kind ]; then
    kind delete cluster --name "$cluster" >&2 || log "kind delete cluster failed; delete $cluster by hand"
  else
    "$pwc" down --name "$cluster" >&2 || log "portway-cluster down left something behind (see above)"
  fi
}
cluster_export_logs() {
  mkdir -p "$logs"
  if [ "$kind_of_cluster" = kind ]; then
    kind export logs "$logs" --name "$cluster" >/dev/null 2>&1 && log "cluster logs exported to $logs"
  else
    "$pwc" status --name "$cluster" >"$logs/status.txt" 2>&1 || true
    local state=${PORTWAY_CLUSTER_STATE:-/var/tmp/portway-cluster}/$cluster
    if [ -d "$state/logs" ]; then
      cp -r "$state/logs" "$logs/" && log "cluster logs copied to $logs"
    fi
  fi
}
diagnose() { # what a failed run looked like, on stderr (the full logs go to $logs)
  # Only this run's cluster: before `up` finished there is none to ask (and never ~/.kube/config).
  if [ "${KUBECONFIG:-}" != "$kubeconfig" ] || [ ! -f "$kubeconfig" ]; then
    log "no cluster API to ask: the cluster did not come up (its logs follow)"
    return 0
  fi
  log "state of the cluster after the failure:"
  kubectl get nodes -o wide >&2 || true
  kubectl get pods -A -o wide >&2 || true
  kubectl get loadbalancerpools,clustercidrs,serviceloadbalancers -A >&2 || true
  kubectl -n "$namespace" logs deployment/portway-operator --tail=200 >&2 || true
}
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ "$created" = 1 ]; then
    if [ "$rc" != 0 ]; then
      diagnose
      cluster_export_logs || true
    fi
    if [ "${PORTWAY_E2E_KEEP:-0}" = 1 ]; then
      if [ "$kind_of_cluster" = kind ]; then
        log "keeping cluster $cluster: export KUBECONFIG=$kubeconfig; delete it with: kind delete cluster --name $cluster"
      else
        log "keeping cluster $cluster: export KUBECONFIG=$kubeconfig PORTWAY_E2E_NODE_EXEC=$pwc; delete it with: $pwc down --name $cluster"
      fi
    else
      log "deleting cluster $cluster"
      cluster_delete
    fi
  fi
  if [ "${PORTWAY_E2E_KEEP:-0}" != 1 ] || [ "$created" != 1 ]; then rm -rf "$work"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- 2. binaries, images, test binary ----------------------------------------------------------
engine=docker
if [ "$kind_of_cluster" = local ]; then
  engine=podman
  log "building portway-cluster and the static test programs (musl)"
  cargo build --locked -p portway-e2e --bin portway-cluster >&2
  cargo build --locked --release --target x86_64-unknown-linux-musl -p portway-e2e-testbins >&2
fi
if cluster_exists; then
  die "a $kind_of_cluster cluster named $cluster exists already; delete it or set PORTWAY_E2E_CLUSTER"
fi
# The images' static binaries are built by build-images.sh (scripts/build-static.sh) unless
# PORTWAY_BIN_DIR names ready ones.
PORTWAY_IMAGE_TAG=$tag bash "$repo/scripts/build-images.sh" "$engine" >&2
# A second tag of the same images, for the tests that upgrade the release to a new image.
for image in operator agent; do
  "$engine" tag "docker.io/portway/$image:$tag" "docker.io/portway/$image:$next_tag" >&2
done
if [ "$kind_of_cluster" = kind ]; then
  if ! docker image inspect "$backend_image" >/dev/null 2>&1; then
    log "docker pull $backend_image"
    docker pull "$backend_image" >&2
  fi
else
  log "building the harness images (pause, agnhost netexec and DNS stand-ins, kube-controller-manager)"
  "$pwc" images >&2
fi
log "building the test binary"
cargo test -p portway-e2e --locked --test kind --no-run >&2

# --- 3. cluster ---------------------------------------------------------------------------------
created=1
if [ "$kind_of_cluster" = kind ]; then
  create_args=(create cluster --name "$cluster" --config "$config" --kubeconfig "$kubeconfig")
  if [ -n "${KIND_NODE_IMAGE:-}" ]; then create_args+=(--image "$KIND_NODE_IMAGE"); fi
  log "kind ${create_args[*]}"
  kind "${create_args[@]}" >&2
else
  log "portway-cluster up --variant $variant --name $cluster"
  "$pwc" up --variant "$variant" --name "$cluster" >&2
  kubeconfig=$("$pwc" kubeconfig --name "$cluster")
fi
# Every kubectl and helm call of this script talks to this cluster only, never ~/.kube/config.
export KUBECONFIG=$kubeconfig

# --- 4. images, chart, nodes ready --------------------------------------------------------------
if [ "$kind_of_cluster" = kind ]; then
  kind load docker-image --name "$cluster" "portway/operator:$tag" "portway/agent:$tag" \
    "portway/operator:$next_tag" "portway/agent:$next_tag" "$backend_image" >&2
else
  "$pwc" load --name "$cluster" "docker.io/portway/operator:$tag" "docker.io/portway/agent:$tag" \
    "docker.io/portway/operator:$next_tag" "docker.io/portway/agent:$next_tag" "$backend_image" >&2
fi
log "helm install ${chart_args[*]}"
"$helm" install "${chart_args[@]}" --create-namespace --wait --timeout 5m >&2
log "waiting for every node to get a pod CIDR and turn Ready"
kubectl wait --for=condition=Ready nodes --all --timeout=300s >&2
kubectl -n kube-system rollout status deployment/coredns --timeout=300s >&2
kubectl get nodes -o custom-columns='NAME:.metadata.name,READY:.status.conditions[?(@.type=="Ready")].status,POD-CIDRS:.spec.podCIDRs' >&2

# --- 5. tests ---------------------------------------------------------------------------------
export PORTWAY_E2E_KUBECONFIG=$kubeconfig
export PORTWAY_E2E_VARIANT=$variant
export PORTWAY_E2E_NAMESPACE=$namespace
export PORTWAY_E2E_RELEASE=$release
export PORTWAY_E2E_BACKEND_IMAGE=$backend_image
export PORTWAY_E2E_HELM=$helm
export PORTWAY_E2E_NEXT_IMAGE_TAG=$next_tag
if [ "$kind_of_cluster" = local ]; then
  export PORTWAY_E2E_NODE_EXEC=$pwc PORTWAY_E2E_NODE_CTL=$pwc
fi
passed=0
failed=0
run_tests() { # <log> <cargo test args...>: counts into passed/failed; fails when a test failed or skipped
  local out=$1
  shift
  local rc=0 p f s
  cargo test -p portway-e2e --locked --test kind -- "$@" 2>&1 | tee "$out" || rc=$?
  p=$(sed -n 's/^test result: [A-Za-z]*\. \([0-9]*\) passed; \([0-9]*\) failed.*/\1/p' "$out" | tail -n 1)
  f=$(sed -n 's/^test result: [A-Za-z]*\. \([0-9]*\) passed; \([0-9]*\) failed.*/\2/p' "$out" | tail -n 1)
  # libtest may print a SKIP line in the middle of another test's line; a skip is no pass.
  s=$(grep -oE '(^| )SKIP [a-z0-9_]+[ :]' "$out" | sort -u | wc -l)
  if [ -z "$p" ]; then # no result line: the test binary crashed
    p=0
    f=1
  fi
  if [ "$s" -gt 0 ]; then
    log "a test skipped although the cluster is there:"
    grep -E '(^| )SKIP [a-z0-9_]+[ :]' "$out" >&2
    p=$((p > s ? p - s : 0))
    f=$((f + s))
  fi
  passed=$((passed + p))
  failed=$((failed + f))
  if [ "$rc" != 0 ] || [ "$f" != 0 ]; then return 1; fi
  if [ "$p" = 0 ]; then
    log "no test ran"
    failed=$((failed + 1))
    return 1
  fi
}
phase_failed=0
log "phase 1: the suite"
run_tests "$work/phase1.log" --ignored --skip uninstall --skip upgrades --skip serial_ \
  --test-threads="$threads" || phase_failed=1
log "phase 2: tests that disturb nodes or the operator, one at a time"
run_tests "$work/phase2.log" --ignored serial_ --test-threads=1 || phase_failed=1
log "phase 3: upgrades and restarts under traffic (alone: every agent restarts)"
PORTWAY_E2E_ALLOW_UPGRADE=1 run_tests "$work/phase3.log" --ignored upgrades --test-threads=1 ||
  phase_failed=1
log "phase 4: helm uninstall leaves nothing behind"
PORTWAY_E2E_ALLOW_UNINSTALL=1 run_tests "$work/phase4.log" --ignored uninstall --test-threads=1 ||
  phase_failed=1
echo "e2e ($kind_of_cluster $variant): $passed passed, $failed failed"
[ "$phase_failed" = 0 ] || die "$failed failed (logs above)"
