#!/usr/bin/env bash
# Environment images, pip against uv in one run: `ferry build` of the churn template's
# environment (its requirements plus the notebook's, offline base already present), first with
# an empty ferry cache and no ferry.lock, then after a one-line change to requirements.txt, for
# each installer. FERRY_INSTALLER=pip: `pip download` resolves on the host and pip installs in
# a classic multi-stage build. FERRY_INSTALLER=uv (the default): uv resolves on the host, the
# wheels are fetched concurrently, and the virtualenv is installed on the host and written as
# layers by ferry.
# Usage: bash bench/env.sh                 (FERRY=path/to/ferry to use another binary;
#                                           INSTALLERS=uv to run one side only)
# Images it makes are tagged ferry/ferry-bench-env-* and removed at the end; the offline base
# (ferry-base) is built once if missing and kept.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -z "${FERRY:-}" ]; then
    (cd "$REPO" && cargo build --release --locked -q)
    FERRY="$REPO/target/release/ferry"
fi
WORK=$(mktemp -d)
cleanup() {
    docker images --format '{{.Repository}}:{{.Tag}}' | grep '^ferry/ferry-bench-env-' |
        xargs -r docker rmi -f >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

echo "machine: $(nproc) cores, $(free -g | awk '/Mem/ {print $2}') GiB; docker $(docker version --format '{{.Server.Version}}'), storage driver $(docker info --format '{{.Driver}}')"

echo "== the offline base (not timed)"
"$FERRY" init "$WORK/warm" --template churn --offline --name ferry-bench-env-warm -q
(cd "$WORK/warm" && : >requirements.txt && FERRY_CACHE_DIR="$WORK/cache-warm" "$FERRY" build -q >/dev/null)

declare -A first change
for installer in ${INSTALLERS:-pip uv}; do
    echo "== $installer"
    "$FERRY" init "$WORK/$installer" --template churn --offline --name "ferry-bench-env-$installer" -q
    cd "$WORK/$installer"
    export FERRY_INSTALLER=$installer FERRY_CACHE_DIR="$WORK/cache-$installer"
    t0=$(now)
    "$FERRY" build -q >/dev/null
    first[$installer]=$(secs "$t0" "$(now)")
    echo "  first environment image (empty wheel cache, no ferry.lock): ${first[$installer]} s"
    echo "tqdm==4.67.1" >>requirements.txt
    t0=$(now)
    "$FERRY" build -q >/dev/null
    change[$installer]=$(secs "$t0" "$(now)")
    echo "  after a one-line requirements change (tqdm added):          ${change[$installer]} s"
    unset FERRY_INSTALLER FERRY_CACHE_DIR
    cd "$WORK"
done

echo
printf '%-48s %8s %8s\n' "ferry build, churn template" "pip" "uv"
printf '%-48s %7ss %7ss\n' "first environment image" "${first[pip]:--}" "${first[uv]:--}"
printf '%-48s %7ss %7ss\n' "after a one-line requirements change" "${change[pip]:--}" "${change[uv]:--}"
