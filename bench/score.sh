#!/usr/bin/env bash
# Batch scoring: `ferry score` against the way it is usually done in Python (one process:
# pandas reads the whole file, onnxruntime runs the model in batches, pandas writes the result),
# on the same generated files, for two models and two input formats:
#   logreg  a logistic regression on 8 float columns (input x [N, 8], named by the model's
#           `ferry.columns` metadata): how fast plain numeric scoring can go
#   churn   the churn template's model, trained here by the template's train.py on its
#           data/customers.csv, reading the raw customer columns
# each from Parquet (snappy, ~1M-row row groups) and from CSV, ROWS rows. Both sides write the
# same format they read, the id column kept and every model output; the two results are then
# compared (row count, labels exactly, the largest difference of the probabilities).
# Figures: wall time of the whole command (rows/s = ROWS / wall), peak RSS, speedup, and the goals.
# Each side starts with its input file in the page cache (read once, untimed, just before).
#
# Usage: bash bench/score.sh                 (FERRY=path/to/ferry to use another binary)
#        ROWS=200000 bash bench/score.sh      (default 10,000,000 rows)
#        BATCH=65536 bash bench/score.sh      (rows per model run on both sides; by default Python
#                                              runs 65,536 and ferry chooses by the table's width)
# Installs a Python venv (pandas, pyarrow, numpy, onnxruntime, scikit-learn, skl2onnx, onnx; the
# versions the churn template pins) once, kept in ~/.cache/ferry-bench/score-venv (SCORE_VENV to
# use another). The data lives in a temporary directory (TMPDIR to put it elsewhere; about
# 4 GB at 10M rows) that is removed at the end. Takes about 5 minutes at 10M rows on 2 cores,
# most of it Python's.
# Memory: pandas holds the whole file, and more while reading it: the Python side of churn
# from Parquet peaks at about 20 GB at 10M rows. Where the available memory looks too small for
# that, the Python side reads, scores and writes in chunks of BATCH rows instead, which the table
# marks (PYTHON_READ=whole or PYTHON_READ=chunked to choose).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HERE="$REPO/bench/score"
TEMPLATE="$REPO/templates/churn"
ROWS=${ROWS:-10000000}
FERRY_BATCH=()
[ -n "${BATCH:-}" ] && FERRY_BATCH=(--batch-size "$BATCH")
BATCH=${BATCH:-65536}
PYTHON_READ=${PYTHON_READ:-auto}
case "$PYTHON_READ" in
    auto | whole | chunked) ;;
    *) echo "error: PYTHON_READ is auto, whole or chunked, not '$PYTHON_READ'" >&2; exit 2 ;;
esac
# A current release: the template does not use it, so nothing to agree with.
PYARROW=pyarrow==26.0.1
VENV=${SCORE_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/ferry-bench/score-venv}
PY="$VENV/bin/python"
# The scripts import one another; keep their bytecode out of the work tree.
export PYTHONDONTWRITEBYTECODE=1

now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
mb() { awk -v b="$(stat -c %s "$1")" 'BEGIN { printf "%.0f MB", b / 1e6 }'; }

# --- the Python side -------------------------------------------------------------------------
# The template's pins, so that the baseline runs the same pandas and onnxruntime as a churn project.
want=()
for pkg in numpy pandas scikit-learn onnx skl2onnx onnxruntime protobuf; do
    pin=$(grep -iE "^$pkg[[:space:]]*==" "$TEMPLATE/requirements.txt" | head -1 | tr -d ' \r' || true)
    want+=("${pin:-$pkg}")
done
want+=("$PYARROW")
STAMP="$VENV/.ferry-bench-score"
if [ "$(cat "$STAMP" 2>/dev/null)" != "${want[*]}" ] || ! "$PY" -c 'import pandas, pyarrow, onnxruntime, sklearn, skl2onnx, onnx' 2>/dev/null; then
    mkdir -p "$(dirname "$VENV")"
    if command -v uv >/dev/null; then
        echo "installing the Python side into $VENV (uv): ${want[*]}" >&2
        [ -x "$PY" ] || uv venv -q --python "$(command -v python3)" "$VENV"
        uv pip install -q --python "$PY" "${want[@]}"
    else
        echo "installing the Python side into $VENV (pip): ${want[*]}" >&2
        [ -x "$PY" ] || python3 -m venv "$VENV"
        "$PY" -m pip install -q "${want[@]}"
    fi
    echo "${want[*]}" >"$STAMP"
fi

# --- ferry -----------------------------------------------------------------------------------
if [ -z "${FERRY:-}" ]; then
    echo "building ferry (release)" >&2
    (cd "$REPO" && cargo build --release --locked -q)
    FERRY="$REPO/target/release/ferry"
fi
HAVE_SCORE=1
if ! "$FERRY" score --help >/dev/null 2>&1; then
    HAVE_SCORE=
    echo "error: \`$FERRY score\` does not run (no score command in this build?);" \
        "measuring the Python side only, and exiting 1 at the end" >&2
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ferry-bench-score.XXXXXX")
cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT
trap 'exit 130' INT TERM
RES="$WORK/results"
mkdir -p "$WORK/data" "$WORK/out" "$RES" "$WORK/churn/data"

# measure KEY CMD...: runs CMD; its stdout and stderr go to $RES/KEY.out and KEY.err, its wall
# time, peak RSS and exit status to KEY.run. GNU time where there is one; else a parent that
# asks the kernel for its child's peak RSS.
measure() {
    local key=$1 t0 rc=0
    shift
    t0=$(now)
    if [ -x /usr/bin/time ]; then
        /usr/bin/time -f %M -o "$RES/$key.rss" "$@" >"$RES/$key.out" 2>"$RES/$key.err" || rc=$?
    else
        python3 -c 'import resource, subprocess, sys
rc = subprocess.call(sys.argv[2:])
open(sys.argv[1], "w").write(f"{resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}\n")
sys.exit(rc)' "$RES/$key.rss" "$@" >"$RES/$key.out" 2>"$RES/$key.err" || rc=$?
    fi
    echo "wall=$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }') rss_kb=$(tail -1 "$RES/$key.rss" 2>/dev/null) rc=$rc" >"$RES/$key.run"
    return "$rc"
}
# warm FILE: reads FILE once, untimed, so that each side starts with it in the page cache. Without
# it the order decides: the whole-file pandas read can take most of the memory and push the data
# out of the cache, and whichever side runs next reads it from disk.
warm() {
    cat "$1" >/dev/null
}
field() { # KEY.run FIELD
    sed -n "s/.*\b$2=\([^ ]*\).*/\1/p" "$RES/$1.run"
}

CPU=$(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)
echo "machine: $(nproc) cores ($CPU), $(free -g | awk '/Mem/ {print $2}') GiB, $(uname -r)"
"$PY" -c 'import sys, pandas, pyarrow, numpy, onnxruntime
print(f"python {sys.version.split()[0]}: pandas {pandas.__version__}, pyarrow {pyarrow.__version__}, numpy {numpy.__version__}, onnxruntime {onnxruntime.__version__}")'
echo "ferry: $("$FERRY" --version 2>/dev/null | head -1 || true) ($FERRY)"
echo "rows: $ROWS, batch: $BATCH rows (python), ${FERRY_BATCH[1]:-chosen by the table width} (ferry)"
# Other work on the machine takes CPU and memory from both sides; the load shows how much.
LOAD_BEFORE=$(cut -d' ' -f1 /proc/loadavg)
echo "load average (1 min) before the runs: $LOAD_BEFORE"

# --- data ------------------------------------------------------------------------------------
echo "== data"
t0=$(now)
"$PY" "$HERE/make_data.py" logreg "$WORK/data" "$ROWS"
echo "  logreg: model, $ROWS rows to Parquet ($(mb "$WORK/data/logreg.parquet")) and CSV ($(mb "$WORK/data/logreg.csv")) in $(secs "$t0" "$(now)") s"

t0=$(now)
cp "$TEMPLATE/generate_data.py" "$TEMPLATE/train.py" "$WORK/churn/"
if [ -f "$TEMPLATE/data/customers.csv" ]; then
    cp "$TEMPLATE/data/customers.csv" "$WORK/churn/data/"
else
    (cd "$WORK/churn" && "$PY" generate_data.py --out data/customers.csv >/dev/null)
fi
if ! (cd "$WORK/churn" && "$PY" train.py --data data/customers.csv --out artifacts/model.onnx) >"$WORK/train.log" 2>&1; then
    cat "$WORK/train.log" >&2
    echo "error: the churn template's train.py failed" >&2
    exit 1
fi
cp "$WORK/churn/artifacts/model.onnx" "$WORK/data/churn.onnx"
"$PY" "$HERE/make_data.py" churn-columns "$WORK/data/churn.onnx" "$WORK/churn/artifacts/metrics.json"
echo "  churn: trained in $(secs "$t0" "$(now)") s ($(grep -o 'test ROC AUC [0-9.]*' "$WORK/train.log" || echo 'trained'))"
t0=$(now)
CHURN_ID=$("$PY" "$HERE/make_data.py" churn "$WORK/data/churn.onnx" "$WORK/churn/data/customers.csv" "$WORK/data" "$ROWS")
echo "  churn: $ROWS rows ($CHURN_ID and the model's $(head -1 "$WORK/data/churn.csv" | tr ',' '\n' | tail -n +2 | wc -l) columns) to Parquet ($(mb "$WORK/data/churn.parquet")) and CSV ($(mb "$WORK/data/churn.csv")) in $(secs "$t0" "$(now)") s"
"$PY" -c 'import collections, onnxruntime as ort, sys
s = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
kinds = collections.Counter(f"{i.type[7:-1]} {i.shape}".replace("'"'"'", "") for i in s.get_inputs())
print(f"  churn model: {len(s.get_inputs())} inputs (" + ", ".join(f"{n} {k}" for k, n in kinds.items()) +
      "); outputs " + ", ".join(f"{o.name} {o.type[7:-1]} {o.shape}".replace("'"'"'", "") for o in s.get_outputs()))' "$WORK/data/churn.onnx"

# --- runs ------------------------------------------------------------------------------------
FAILED=
for model in logreg churn; do
    keep=id
    [ "$model" = logreg ] || keep=$CHURN_ID
    for fmt in parquet csv; do
        key=$model.$fmt
        input="$WORK/data/$model.$fmt"
        echo "== $model from $fmt"
        chunked=()
        [ "$PYTHON_READ" != chunked ] || chunked=(--chunked)
        if [ "$PYTHON_READ" = auto ]; then
            # About 26 bytes per cell at the peak of the whole-file read (measured: 20.4 GB for
            # 10M rows of 79 columns), and some room for everything else.
            cells=$(( ROWS * $(head -1 "$WORK/data/$model.csv" | tr ',' '\n' | wc -l) ))
            need_mb=$(( cells * 26 / 1000000 + 500 ))
            avail_mb=$(awk '/MemAvailable/ { printf "%d", $2 * 1024 / 1e6 }' /proc/meminfo)
            if [ "$need_mb" -gt "$avail_mb" ]; then
                echo "  python: the whole file would take about $need_mb MB, $avail_mb MB is available:" \
                    "reading it in chunks of $BATCH rows instead (PYTHON_READ=whole to insist)"
                chunked=(--chunked)
            fi
        fi
        warm "$input"
        if ! measure "$key.python" "$PY" "$HERE/baseline.py" "$WORK/data/$model.onnx" "$input" \
            "$WORK/out/$key.python.$fmt" --keep "$keep" --batch-size "$BATCH" ${chunked[@]+"${chunked[@]}"}; then
            cat "$RES/$key.python.err" >&2
            echo "error: the Python baseline failed on $key" >&2
            exit 1
        fi
        "$PY" "$HERE/report.py" python "$RES" "$key"
        if [ -z "$HAVE_SCORE" ]; then
            rm -f "$WORK/out/$key.python.$fmt"
            continue
        fi
        output="$WORK/out/$key.ferry.$fmt"
        cmd=("$FERRY" score "$input" --output "$output" --model "$WORK/data/$model.onnx"
            --keep "$keep" ${FERRY_BATCH[@]+"${FERRY_BATCH[@]}"} --json --force)
        echo "  ferry:  ${cmd[*]}"
        warm "$input"
        if ! measure "$key.ferry" "${cmd[@]}"; then
            echo "  ferry score failed (exit $(field "$key.ferry" rc)):" >&2
            tail -20 "$RES/$key.ferry.err" | sed 's/^/    /' >&2
            FAILED=1
            rm -f "$WORK/out/$key.python.$fmt" "$output"
            continue
        fi
        sha256sum "$output" >"$RES/$key.ferry.sha256"
        echo "  ferry:  $(field "$key.ferry" wall) s, peak RSS $(awk -v k="$(field "$key.ferry" rss_kb)" 'BEGIN { printf "%.0f", k * 1024 / 1e6 }') MB; it reports: $("$PY" -c 'import json, sys; j = json.load(open(sys.argv[1])); print(f"{j[\"rows\"]:,} rows, {j[\"rows_per_second\"]:,.0f} rows/s, output sha256 {j[\"output_sha256\"][:12]}")' "$RES/$key.ferry.out" 2>/dev/null || tail -1 "$RES/$key.ferry.out")"
        "$PY" "$HERE/compare.py" "$WORK/out/$key.python.$fmt" "$output" --model "$WORK/data/$model.onnx" \
            --keep "$keep" >"$RES/$key.compare.json" 2>"$RES/$key.compare.err" || { FAILED=1; cat "$RES/$key.compare.err" >&2; }
        "$PY" "$HERE/report.py" compare "$RES" "$key"
        rm -f "$WORK/out/$key.python.$fmt" "$output"
    done
done

# --- figures ---------------------------------------------------------------------------------
echo
echo "== batch scoring, $ROWS rows, batches of $BATCH (python), ${FERRY_BATCH[1]:-by width} (ferry); $(nproc) cores ($CPU)"
echo "   rows/s = rows / wall time of the whole command (start, read, score, write); RSS: peak"
echo "   load average (1 min): $LOAD_BEFORE before the data was made, $(cut -d' ' -f1 /proc/loadavg) now (fair figures want both near 0)"
status=0
"$PY" "$HERE/report.py" table "$RES" "$ROWS" || status=1
if [ -z "$HAVE_SCORE" ]; then
    echo "error: \`$FERRY score\` is not there: only the Python side was measured" >&2
    status=1
fi
[ -z "$FAILED" ] || status=1
echo
echo "reproduce: bash bench/score.sh"
exit "$status"
