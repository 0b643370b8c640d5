#!/usr/bin/env bash
# Figures for the local loop, on this machine, with the real Docker engine:
#   - base bootstrap (offline mode) and first build, step by step
#   - `ferry build` on an unchanged project
#   - `ferry dev` until Jupyter answers, with the image present
#   - `ferry build` after a requirements change
#   - image sizes
# Usage: bash bench/local.sh            (FERRY=path/to/ferry to use another binary)
#        RUNS=20 bash bench/local.sh    (repetitions of the quick measurements)
# Images it makes are tagged ferry/ferry-bench*; remove them with
#   docker rmi $(docker images -q 'ferry/ferry-bench*')
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUNS=${RUNS:-10}
if [ -z "${FERRY:-}" ]; then
    (cd "$REPO" && cargo build --release --locked -q)
    FERRY="$REPO/target/release/ferry"
fi
WORK=$(mktemp -d)
cleanup() { (cd "$WORK/p" 2>/dev/null && "$FERRY" down -q >/dev/null 2>&1) || true; rm -rf "$WORK"; }
trap cleanup EXIT

now() { date +%s.%N; }
ms() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", (b - a) * 1000 }'; }
stats() { sort -n | awk '{ v[NR] = $1; s += $1 } END { printf "median %d ms, min %d ms, max %d ms (n=%d)", v[int((NR + 1) / 2)], v[1], v[NR], NR }'; }

echo "machine: $(nproc) cores, $(free -g | awk '/Mem/ {print $2}') GiB; docker $(docker version --format '{{.Server.Version}}')"
"$FERRY" init "$WORK/p" --template churn --offline --name ferry-bench -q
cd "$WORK/p"
# A package list of its own gives the bench a base of its own, so the bootstrap is measured.
sed -i 's/system_packages: \[libgomp1\]/system_packages: [libgomp1, bc]/' ferry.yaml

echo
echo "== first build (offline base bootstrap, wheels, environment image, project image)"
t0=$(now)
"$FERRY" build 2>&1 | grep -E '^✓' | sed 's/^/  /'
echo "  total: $(ms "$t0" "$(now)") ms"

echo
echo "== ferry build, unchanged project"
for _ in $(seq "$RUNS"); do
    t0=$(now); "$FERRY" build -q >/dev/null; ms "$t0" "$(now)"; echo
done | stats; echo

echo
echo "== ferry dev until Jupyter answers (image present)"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
for _ in $(seq 3); do
    t0=$(now); "$FERRY" dev --detach -q --port "$port" >/dev/null; ms "$t0" "$(now)"; echo
    "$FERRY" down -q >/dev/null
done | stats; echo

echo
echo "== ferry build after a requirements change (one small package added)"
echo "six==1.16.0" >> requirements.txt
t0=$(now)
"$FERRY" build 2>&1 | grep -E '^✓' | sed 's/^/  /'
echo "  total: $(ms "$t0" "$(now)") ms"

echo
echo "== image sizes"
for img in $(docker images --format '{{.Repository}}:{{.Tag}}' | grep -E '^(ferry-base|ferry/ferry-bench)' | sort); do
    printf '  %-45s %s\n' "$img" "$(docker image inspect -f '{{.Size}}' "$img" | awk '{ printf "%.0f MB", $1 / 1e6 }')"
done
