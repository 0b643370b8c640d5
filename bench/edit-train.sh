#!/usr/bin/env bash
# Edit → train: the time from invoking `ferry train` after a one-line change to train.py to the
# training command's first line of output, on this machine's Docker engine, for the project image
# written by ferry (the default) and, in the same run, built the classic way (FROM + COPY through
# the engine's builder: FERRY_PROJECT_IMAGE=build), which is what ferry did before.
# Also: `ferry build` after the same edit, for both.
# Usage: bash bench/edit-train.sh          (FERRY=path/to/ferry to use another binary)
#        RUNS=10 bash bench/edit-train.sh  (edits per way; default 5)
# Images it makes are tagged ferry/ferry-bench-edit*; the environment image is kept for the next
# run (remove with docker rmi $(docker images -q 'ferry/ferry-bench-edit*')).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUNS=${RUNS:-5}
if [ -z "${FERRY:-}" ]; then
    (cd "$REPO" && cargo build --release --locked -q)
    FERRY="$REPO/target/release/ferry"
fi
WORK=$(mktemp -d)
cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT

now() { date +%s.%N; }
ms() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", (b - a) * 1000 }'; }
stats() { sort -n | awk '{ v[NR] = $1 } END { printf "median %d ms, min %d ms, max %d ms (n=%d)", v[int((NR + 1) / 2)], v[1], v[NR], NR }'; }

echo "machine: $(nproc) cores, $(free -g | awk '/Mem/ {print $2}') GiB; docker $(docker version --format '{{.Server.Version}}'), storage driver $(docker info --format '{{.Driver}}')"
"$FERRY" init "$WORK/p" --template churn --offline --name ferry-bench-edit -q
cd "$WORK/p"
# The first line the command prints, so its start is seen whatever the training prints after.
sed -i '0,/^import argparse/s//print("bench: training started", flush=True)\nimport argparse/' train.py
echo "== first build (environment image; not timed here, see bench/local.sh)"
"$FERRY" build -q >/dev/null

# Seconds from invoking `ferry train` to the line above, then to the end of the run.
first_line() {
    local t0 line
    t0=$(now)
    while IFS= read -r line; do
        if [[ "$line" == *"bench: training started"* ]]; then
            ms "$t0" "$(now)" >"$WORK/first"
        fi
    done < <("$FERRY" train 2>&1)
    ms "$t0" "$(now)" >"$WORK/total"
}

edit=0
measure() {
    local way=$1
    echo
    echo "== $way: ferry train after a one-line edit of train.py (to the command's first output line; whole run in brackets)"
    for _ in $(seq "$RUNS"); do
        edit=$((edit + 1))
        echo "# edit $edit" >>train.py
        first_line
        echo "$(cat "$WORK/first") $(cat "$WORK/total")"
    done >"$WORK/$way.txt"
    printf '  first line: %s\n' "$(awk '{print $1}' "$WORK/$way.txt" | stats)"
    printf '  whole run:  %s\n' "$(awk '{print $2}' "$WORK/$way.txt" | stats)"
    echo "== $way: ferry build after a one-line edit of train.py"
    for _ in $(seq "$RUNS"); do
        edit=$((edit + 1))
        echo "# edit $edit" >>train.py
        t0=$(now); "$FERRY" build -q >/dev/null; ms "$t0" "$(now)"; echo
    done | stats
    echo
}

FERRY_PROJECT_IMAGE=write measure "written by ferry (default)"
FERRY_PROJECT_IMAGE=build measure "classic build (before)"
