#!/usr/bin/env bash
# Pipelines: what ferry adds around a step, and a fully cached run.
#  1. The churn template's pipeline (prepare -> train -> evaluate, a check on the held-out
#     AUC): the first `ferry run`, then five fully cached runs (every step's key found, outputs
#     checked in place, checks evaluated, the run recorded).
#  2. Per-step overhead: a chain of five trivial steps (each reads the previous one's output and
#     writes a small file) forced to run, against five bare `docker run --rm` of the same
#     command in the same project image, read-only as steps are, in the same invocation.
# Usage: bash bench/pipeline.sh   (FERRY=path/to/ferry to use another binary)
# The projects live in a temporary directory; their images (ferry/ferry-bench-pipe*) are
# removed at the end; the offline base is built once if missing and kept.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -z "${FERRY:-}" ]; then
    (cd "$REPO" && cargo build --release --locked -q)
    FERRY="$REPO/target/release/ferry"
fi
WORK=$(mktemp -d)
cleanup() {
    docker images --format '{{.Repository}}:{{.Tag}}' | grep '^ferry/ferry-bench-pipe' |
        xargs -r docker rmi -f >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
median() { tr ' ' '\n' | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

echo "machine: $(nproc) cores, $(free -g | awk '/Mem/ {print $2}') GiB; docker $(docker version --format '{{.Server.Version}}'), storage driver $(docker info --format '{{.Driver}}')"

echo "== 1. churn: prepare -> train -> evaluate (the template's pipeline, held-out AUC checked)"
"$FERRY" init "$WORK/churn" --template churn --offline --name ferry-bench-pipe -q
cd "$WORK/churn"
"$FERRY" build -q >/dev/null
t0=$(now)
"$FERRY" run -q >/dev/null
echo "  first run (splits, trains, evaluates): $(secs "$t0" "$(now)") s"
times=()
for _ in 1 2 3 4 5; do
    t0=$(now)
    "$FERRY" run -q >/dev/null
    times+=("$(secs "$t0" "$(now)")")
done
cached=$(echo "${times[*]}" | median)
echo "  fully cached run, 5 times:      ${times[*]} s"
echo "  fully cached run, median:       $cached s   (goal: <= 1 s)"

echo "== 2. per-step overhead: a chain of 5 trivial steps, forced"
mkdir -p "$WORK/chain/seed"
cd "$WORK/chain"
echo seed >seed/s0
printf '.ferry/\nout*/\n' >.dockerignore
{
    echo "name: ferry-bench-pipe-chain"
    echo "environment:"
    echo "  bootstrap: bookworm"
    echo "  system_packages: [libgomp1]"
    echo "pipeline:"
    prev=seed/s0
    for i in 1 2 3 4 5; do
        echo "  s$i:"
        echo "    command: python3 -c \"open('out$i/s$i', 'w').write(open('$prev').read() + '$i')\""
        echo "    inputs: [$prev]"
        echo "    outputs: [out$i/s$i]"
        prev=out$i/s$i
    done
} >ferry.yaml
"$FERRY" run -q >/dev/null
image=$(docker images --format '{{.Repository}}:{{.Tag}}' | grep '^ferry/ferry-bench-pipe-chain:' | head -1)
force=()
for i in 1 2 3 4 5; do force+=(--force "s$i"); done
ferry_times=()
bare_times=()
for _ in 1 2 3; do
    t0=$(now)
    "$FERRY" run -q "${force[@]}" >/dev/null
    ferry_times+=("$(secs "$t0" "$(now)")")
    t0=$(now)
    for i in 1 2 3 4 5; do
        docker run --rm --read-only --tmpfs /tmp -v "$WORK/chain/seed:/workspace/seed:ro" -w /workspace \
            "$image" python3 -c "open('/tmp/s$i', 'w').write(open('seed/s0').read() + '$i')"
    done
    bare_times+=("$(secs "$t0" "$(now)")")
done
f=$(echo "${ferry_times[*]}" | median)
b=$(echo "${bare_times[*]}" | median)
echo "  ferry run, 5 steps forced:      ${ferry_times[*]} s (median $f s)"
echo "  docker run --rm, 5 containers:  ${bare_times[*]} s (median $b s)"
awk -v f="$f" -v b="$b" 'BEGIN {
    printf "  per step: ferry %.3f s, bare container %.3f s, overhead %.3f s   (goal: <= 0.5 s)\n", f / 5, b / 5, (f - b) / 5
}'
