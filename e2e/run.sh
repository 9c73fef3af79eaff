#!/usr/bin/env bash
# Portway's end-to-end suite on kind.
#
#   e2e/run.sh [ipv4|ipv6|dual-stack]        (default: ipv4)
#   e2e/run.sh --print-plan [variant]         print the config, pod subnet and chart arguments a
#                                             run would use, and exit (needs no tool; tested)
#
# 1. Checks for docker (with a reachable daemon), kind, kubectl, helm and cargo. If one is missing
#    it prints a single line starting with "SKIP" and exits 0 without running anything; it never
#    reports a pass it did not see. PORTWAY_E2E_REQUIRE=1 (CI) turns that skip into a failure.
# 2. Builds the release binaries (in a Debian bookworm container when the host's glibc is newer
#    than bookworm's, so they run in the images), the two images (scripts/build-images.sh), and
#    the test binary, before any cluster exists.
# 3. Creates the cluster from e2e/kind/<variant>.yaml: kube-controller-manager does not allocate
#    pod CIDRs, Portway does.
# 4. Loads Portway's images and the backend image into the nodes (`kind load docker-image`) and
#    installs the chart with e2e/kind/values.yaml and a default ClusterCIDR equal to the variant's
#    networking.podSubnet; waits until every node has a pod CIDR and is Ready (kindnet needs the
#    CIDR first).
# 5. Runs the Rust tests of e2e/tests/kind against the cluster: first all but the upgrade and
#    uninstall tests; then, alone, the upgrade test (it restarts every agent and upgrades the
#    release); then `helm uninstall` and the check that nothing of Portway is left.
# 6. Deletes the cluster on exit (also on failure or Ctrl-C, after `kind export logs` on failure)
#    unless PORTWAY_E2E_KEEP=1.
#
# Environment:
#   PORTWAY_E2E_KEEP=1          keep the cluster; prints its KUBECONFIG and how to delete it
#   PORTWAY_E2E_REQUIRE=1       a missing tool fails the run instead of skipping it
#   PORTWAY_E2E_CLUSTER         cluster name (default: portway-e2e-<variant>)
#   PORTWAY_E2E_LOGS            where `kind export logs` writes on failure
#                               (default: target/e2e-logs/<variant>)
#   PORTWAY_E2E_TEST_THREADS    tests run at once in phase 1 (default: 2)
#   PORTWAY_E2E_BACKEND_IMAGE   backend image (default: registry.k8s.io/e2e-test-images/agnhost:2.53)
#   PORTWAY_E2E_BUILDER_IMAGE   image that builds the binaries when the host glibc is too new
#                               (default: rust:<rust-toolchain.toml channel>-bookworm)
#   PORTWAY_BIN_DIR             use these `portway` and `portway-agent` binaries (glibc <= 2.36)
#   PORTWAY_IMAGE_TAG           tag of Portway's images (default: e2e)
#   KIND_NODE_IMAGE             node image (default: the kind release's own)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

print_plan=0
if [ "${1:-}" = --print-plan ]; then
  print_plan=1
  shift
fi
variant=${1:-ipv4}
case "$variant" in
  ipv4 | ipv6 | dual-stack) ;;
  -h | --help)
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 0
    ;;
  *)
    echo "usage: $0 [--print-plan] [ipv4|ipv6|dual-stack]" >&2
    exit 2
    ;;
esac
config="$repo/e2e/kind/$variant.yaml"
values="$repo/e2e/kind/values.yaml"
cluster=${PORTWAY_E2E_CLUSTER:-portway-e2e-$variant}
logs=${PORTWAY_E2E_LOGS:-$repo/target/e2e-logs/$variant}
threads=${PORTWAY_E2E_TEST_THREADS:-2}
backend_image=${PORTWAY_E2E_BACKEND_IMAGE:-registry.k8s.io/e2e-test-images/agnhost:2.53}
tag=${PORTWAY_IMAGE_TAG:-e2e}
namespace=portway-system
release=portway

log() { echo "e2e ($variant): $*" >&2; }
die() {
  log "FAIL: $*"
  exit 1
}
skip() {
  echo "SKIP e2e ($variant): $*"
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
if [ "$print_plan" = 1 ]; then # what a run would use, for e2e/tests/kind (no tools needed)
  printf 'config=%s\ncluster=%s\npod_subnet=%s\ncidr_v4=%s\ncidr_v6=%s\n' \
    "$config" "$cluster" "$pod_subnet" "$cidr_v4" "$cidr_v6"
  printf 'chart_arg=%s\n' "${chart_args[@]}"
  exit 0
fi

# --- 1. tools ---------------------------------------------------------------------------------
command -v docker >/dev/null 2>&1 || skip "docker not found (kind needs Docker; see docs/e2e.md)"
docker info >/dev/null 2>&1 || skip "docker is installed but its daemon is not reachable (docker info failed)"
command -v kind >/dev/null 2>&1 || skip "kind not found (https://kind.sigs.k8s.io/docs/user/quick-start/#installation)"
command -v kubectl >/dev/null 2>&1 || skip "kubectl not found"
helm=$(command -v helm 2>/dev/null || true)
if [ -z "$helm" ] && [ -x "$repo/target/tools/bin/helm" ]; then helm="$repo/target/tools/bin/helm"; fi
[ -n "$helm" ] || skip "helm not found (bash scripts/install-test-deps.sh puts one in target/tools/bin)"
command -v cargo >/dev/null 2>&1 || skip "cargo not found"

log "cluster $cluster, pod subnet $pod_subnet (IPv4 '${cidr_v4}', IPv6 '${cidr_v6}')"

work=$(mktemp -d "${TMPDIR:-/tmp}/portway-e2e-$variant.XXXXXX")
kubeconfig="$work/kubeconfig"
# Every kubectl and helm call of this script talks to this cluster only, never ~/.kube/config.
export KUBECONFIG=$kubeconfig
created=0
diagnose() { # what a failed run looked like, on stderr (the full logs go to $logs)
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
      mkdir -p "$logs"
      if kind export logs "$logs" --name "$cluster" >/dev/null 2>&1; then
        log "cluster logs exported to $logs"
      fi
    fi
    if [ "${PORTWAY_E2E_KEEP:-0}" = 1 ]; then
      log "keeping cluster $cluster: export KUBECONFIG=$kubeconfig; delete it with: kind delete cluster --name $cluster"
    else
      log "deleting cluster $cluster"
      kind delete cluster --name "$cluster" >&2 || log "kind delete cluster failed; delete $cluster by hand"
    fi
  fi
  if [ "${PORTWAY_E2E_KEEP:-0}" != 1 ] || [ "$created" != 1 ]; then rm -rf "$work"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if kind get clusters 2>/dev/null | grep -qx "$cluster"; then
  die "a kind cluster named $cluster exists already; delete it (kind delete cluster --name $cluster) or set PORTWAY_E2E_CLUSTER"
fi

# --- 2. binaries, images, test binary ----------------------------------------------------------
glibc_ok() { # the host's glibc is at most Debian bookworm's 2.36
  local v
  v=$(ldd --version 2>/dev/null | head -n 1 | grep -oE '[0-9]+\.[0-9]+$' || true)
  [ -n "$v" ] && [ "$(printf '%s\n2.36\n' "$v" | sort -V | tail -n 1)" = 2.36 ]
}
bin_dir=${PORTWAY_BIN_DIR:-}
if [ -z "$bin_dir" ]; then
  if glibc_ok; then
    log "cargo build --release (host glibc fits Debian bookworm)"
    cargo build --release --locked -p portway-operator --bin portway -p portway-node-agent --bin portway-agent >&2
    bin_dir=${CARGO_TARGET_DIR:-$repo/target}/release
  else
    channel=$(sed -n 's/^channel[[:space:]]*=[[:space:]]*"\(.*\)"/\1/p' "$repo/rust-toolchain.toml")
    builder=${PORTWAY_E2E_BUILDER_IMAGE:-rust:${channel}-bookworm}
    log "host glibc is newer than bookworm's 2.36: building the binaries in $builder"
    docker run --rm -u "$(id -u):$(id -g)" -v "$repo:/src" -w /src \
      -e HOME=/tmp -e RUSTUP_TOOLCHAIN="$channel" \
      -e CARGO_HOME=/src/target/bookworm-cargo-home -e CARGO_TARGET_DIR=/src/target/bookworm \
      "$builder" \
      cargo build --release --locked -p portway-operator --bin portway -p portway-node-agent --bin portway-agent >&2
    bin_dir=$repo/target/bookworm/release
  fi
fi
PORTWAY_BIN_DIR=$bin_dir PORTWAY_IMAGE_TAG=$tag bash "$repo/scripts/build-images.sh" docker >&2
if ! docker image inspect "$backend_image" >/dev/null 2>&1; then
  log "docker pull $backend_image"
  docker pull "$backend_image" >&2
fi
log "building the test binary"
cargo test -p portway-e2e --locked --test kind --no-run >&2

# --- 3. cluster ---------------------------------------------------------------------------------
create_args=(create cluster --name "$cluster" --config "$config" --kubeconfig "$kubeconfig")
if [ -n "${KIND_NODE_IMAGE:-}" ]; then create_args+=(--image "$KIND_NODE_IMAGE"); fi
log "kind ${create_args[*]}"
created=1
kind "${create_args[@]}" >&2

# --- 4. images, chart, nodes ready --------------------------------------------------------------
kind load docker-image --name "$cluster" "portway/operator:$tag" "portway/agent:$tag" "$backend_image" >&2
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
run_tests() { # <log> <cargo test args...>: fails when a test failed or skipped
  local out=$1
  shift
  local rc=0
  cargo test -p portway-e2e --locked --test kind -- "$@" 2>&1 | tee "$out" || rc=$?
  if [ "$rc" != 0 ]; then return "$rc"; fi
  # libtest may print a SKIP line in the middle of another test's line.
  if grep -qE '(^| )SKIP [a-z0-9_]+[ :]' "$out"; then
    log "a test skipped although the cluster is there:"
    grep -E '(^| )SKIP [a-z0-9_]+[ :]' "$out" >&2
    return 1
  fi
  if ! grep -qE '^test result: ok\. [1-9][0-9]* passed' "$out"; then
    log "no test ran"
    return 1
  fi
}
log "phase 1: the suite"
run_tests "$work/phase1.log" --ignored --skip uninstall --skip upgrades --test-threads="$threads" ||
  die "phase 1 failed"
log "phase 2: upgrades and restarts under traffic (alone: every agent restarts)"
PORTWAY_E2E_ALLOW_UPGRADE=1 run_tests "$work/phase2.log" --ignored upgrades --test-threads=1 ||
  die "phase 2 failed"
log "phase 3: helm uninstall leaves nothing behind"
PORTWAY_E2E_ALLOW_UNINSTALL=1 run_tests "$work/phase3.log" --ignored uninstall --test-threads=1 ||
  die "phase 3 failed"
passed1=$(grep -cE '^test .* \.\.\. ok$' "$work/phase1.log" || true)
passed2=$(grep -cE '^test .* \.\.\. ok$' "$work/phase2.log" || true)
passed3=$(grep -cE '^test .* \.\.\. ok$' "$work/phase3.log" || true)
echo "PASS e2e ($variant): $((passed1 + passed2 + passed3)) tests passed on kind cluster $cluster"
