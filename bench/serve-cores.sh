#!/usr/bin/env bash
# How the server uses the cores, in one run, with one load generator (wrk) and the same settings
# for every target:
#   (m) a compute-bound model (bench/serve/make_mlp.py: FP32 [N, 8] -> 1,024 -> 1,024 -> 1),
#       64-row requests: `ferry serve-model` with one instance and one thread (the server before
#       instances existed), with the instances and threads it derives from the CPUs (the
#       default), with one instance and every core as intra-op threads; beside it onnxruntime
#       itself, in-process, one session with every core, running the same 64-row batch back to
#       back (bench/serve/ort_inprocess.py): no HTTP, no JSON, the ceiling.
#   (l) a light model (the churn model of bench/serve.sh), 1-row requests: one instance against
#       the default, to show light models lose nothing.
# Every server runs natively on 127.0.0.1 (no container in between), on the same binary.
#
# Usage: bash bench/serve-cores.sh            (FERRY=path/to/ferry to use another binary)
#        DURATION=10 ROUNDS=2 LIGHT_PAIRS=2 CONNECTIONS=64 THREADS=1 bash bench/serve-cores.sh
# Every target is measured ROUNDS times, interleaved with the others; the best round counts.
# The light model's two settings are measured LIGHT_PAIRS times a round, as back-to-back pairs
# in alternating order; its goal is on the median of the pairs' ratios.
# Installs what it lacks: wrk (apt-get), a Python venv with onnx, onnxruntime and numpy (pip,
# kept in ~/.cache/ferry-bench; BENCH_VENV for another). About 3 minutes once those are there.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HERE="$REPO/bench/serve"
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
ROUNDS=${ROUNDS:-2}
LIGHT_PAIRS=${LIGHT_PAIRS:-2}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-1}           # wrk threads; every thread wrk takes is a core less for the server
CORES=$(nproc)

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi; }
if ! command -v wrk >/dev/null; then
    echo "installing wrk (apt-get)" >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk >/dev/null 2>&1 \
        || { as_root apt-get update -q >/dev/null 2>&1; as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk >/dev/null 2>&1; } \
        || { echo "error: wrk is missing; install it" >&2; exit 1; }
fi
VENV=${BENCH_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/ferry-bench/venv}
if ! "$VENV/bin/python" -c 'import onnx, onnxruntime, numpy' 2>/dev/null; then
    echo "installing onnx, onnxruntime and numpy into $VENV (pip)" >&2
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q onnx onnxruntime numpy
fi
if [ -z "${FERRY:-}" ]; then
    echo "building ferry (release)" >&2
    (cd "$REPO" && cargo build --release --locked -q)
    FERRY="$REPO/target/release/ferry"
fi

WORK=$(mktemp -d)
PIDS=()
cleanup() {
    trap - EXIT INT TERM
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_ready() { # url seconds
    local i
    for i in $(seq $(( $2 * 50 ))); do
        curl -sf -o /dev/null "$1/v2/health/ready" && return 0
        sleep 0.02
    done
    echo "error: $1 not ready after $2 s" >&2; return 1
}

CPU=$(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)
echo "machine: $CORES cores ($CPU); ferry: $("$FERRY" --version) ($FERRY); onnxruntime $("$VENV/bin/python" -c 'import onnxruntime; print(onnxruntime.__version__)')"
echo "load: wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s after ${WARMUP}s of warm-up, same for every target"

"$VENV/bin/python" "$HERE/make_mlp.py" "$WORK"
MLP="$WORK/mlp.onnx"
CHURN="$REPO/tests/fixtures/server/churn.onnx"

# start KEY MODEL_NAME MODEL_PATH INSTANCES THREADS: a native server; its URL in $WORK/KEY.url.
start() {
    local key=$1 name=$2 path=$3 instances=$4 threads=$5 port settings=""
    port=$(free_port)
    [ "$instances" = default ] || settings=", \"instances\": $instances, \"threads\": $threads"
    cat > "$WORK/$key.json" <<EOF
{"host": "127.0.0.1", "port": $port,
 "models": [{"name": "$name", "variants": [{"name": "main", "path": "$path", "weight": 1}]$settings}]}
EOF
    "$FERRY" serve-model --config "$WORK/$key.json" 2> "$WORK/$key.log" &
    PIDS+=($!)
    echo "http://127.0.0.1:$port" > "$WORK/$key.url"
    wait_ready "http://127.0.0.1:$port" 30
}
start m_one     mlp   "$MLP"   1 1
start m_default mlp   "$MLP"   default -
start m_intra   mlp   "$MLP"   1 "$CORES"
start l_one     churn "$CHURN" 1 1
start l_default churn "$CHURN" default -
for key in m_one m_default m_intra l_one l_default; do
    printf '  %-10s %s\n' "$key" "$(sed -n 's/^ferry serve-model: serving \(.*\) on http.*/\1/p' "$WORK/$key.log" | head -1)"
done

# Every server answers the 64-row request as onnxruntime does.
"$VENV/bin/python" - "$WORK" "$HERE" <<'EOF'
import json, subprocess, sys, urllib.request
work, here = sys.argv[1:]
def post(url, body):
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)
body = open(f"{work}/infer-mlp-64.json", "rb").read()
ort = subprocess.run([sys.executable, f"{here}/ort_inprocess.py", f"{work}/mlp.onnx", f"{work}/infer-mlp-64.json", "0.2", "1"],
                     check=True, capture_output=True, text=True).stdout
want = json.loads(next(l for l in ort.splitlines() if l.startswith("OUTPUT "))[7:])
for key in ("m_one", "m_default", "m_intra"):
    url = open(f"{work}/{key}.url").read().strip() + "/v2/models/mlp/infer"
    got = post(url, body)["outputs"][0]["data"][:8]
    assert max(abs(a - b) for a, b in zip(got, want)) < 1e-5, (key, got, want)
churn = open(f"{here}/infer-1.json", "rb").read()
one, default = (post(open(f"{work}/{k}.url").read().strip() + "/v2/models/churn/infer", churn)["outputs"] for k in ("l_one", "l_default"))
assert one == default, (one, default)
EOF
echo "answers checked: every mlp server agrees with onnxruntime in-process; both churn servers agree"

run() { # KEY URL BODY
    local key=$1 url=$2 body=$3 out
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"${WARMUP}s" -s "$HERE/post.lua" "$url" -- "$body" > /dev/null
    out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --timeout 10s -s "$HERE/post.lua" "$url" -- "$body")
    grep '^RESULT' <<< "$out" | sed 's/^RESULT //' > "$WORK/$key.r$tag"
    printf '  %-12s %s\n' "$key" "$(cat "$WORK/$key.r$tag")"
}
for round in $(seq "$ROUNDS"); do
    echo
    echo "== round $round of $ROUNDS"
    tag=$round
    for key in m_one m_default m_intra; do
        run "$key" "$(cat "$WORK/$key.url")/v2/models/mlp/infer" "$WORK/infer-mlp-64.json"
    done
    "$VENV/bin/python" "$HERE/ort_inprocess.py" "$MLP" "$WORK/infer-mlp-64.json" "$DURATION" "$CORES" \
        | sed -n 's/^RESULT //p' > "$WORK/m_ort.r$round"
    printf '  %-12s %s\n' m_ort "$(cat "$WORK/m_ort.r$round")"
    # The light model's two settings differ by less than this machine's drift from one run to
    # the next, so they are measured in pairs, back to back, in alternating order.
    for pair in $(seq "$LIGHT_PAIRS"); do
        tag="$round$pair"
        keys="l_one l_default"
        [ $(( (round + pair) % 2 )) = 0 ] || keys="l_default l_one"
        for key in $keys; do
            run "$key" "$(cat "$WORK/$key.url")/v2/models/churn/infer" "$HERE/infer-1.json"
        done
    done
done

python3 - "$WORK" <<EOF
import os, sys
work = sys.argv[1]
r, runs = {}, {}
for name in os.listdir(work):
    if ".r" in name and name.split(".r")[-1].isdigit():
        key = name.rsplit(".r", 1)[0]
        with open(os.path.join(work, name)) as f:
            x = {k: float(v) for k, v in (kv.split("=") for kv in f.read().split())}
        runs.setdefault(key, {})[name.rsplit(".r", 1)[1]] = x["rps"]
        if key not in r or x["rps"] > r[key]["rps"]:
            r[key] = x
print()
print("== summary: $CORES cores ($CPU), wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s, best of $ROUNDS rounds")
labels = {
    "m_one": ("(m) ferry, 1 instance x 1 thread", 64),
    "m_default": ("(m) ferry, default instances and threads", 64),
    "m_intra": ("(m) ferry, 1 instance x $CORES threads", 64),
    "m_ort": ("(m) onnxruntime in-process, $CORES threads, same batches", 64),
    "l_one": ("(l) churn, ferry 1 instance x 1 thread", 1),
    "l_default": ("(l) churn, ferry default instances and threads", 1),
}
print(f"{'target':58} {'rows':>4} {'req/s':>9} {'rows/s':>10} {'p50 ms':>7} {'p99 ms':>7}")
for key, (label, rows) in labels.items():
    x = r[key]
    p50 = f"{x['p50_ms']:7.2f}" if "p50_ms" in x else f"{'':7}"
    p99 = f"{x['p99_ms']:7.2f}" if "p99_ms" in x else f"{'':7}"
    print(f"{label:58} {rows:4} {x['rps']:9.0f} {x['rps'] * rows:10.0f} {p50} {p99}")
errors = sum(x.get("errors", 0) for x in r.values())
print()
fails = 0
def goal(text, value, target, ok):
    global fails
    fails += not ok
    print(f"  {'PASS' if ok else 'FAIL'}  {text:60} {value:>8}   goal {target}")
print("goals")
d, one, ort = r["m_default"]["rps"], r["m_one"]["rps"], r["m_ort"]["rps"]
goal("compute-bound, default vs 1 instance", f"{d / one:.2f}x", ">= 1.7x", d >= 1.7 * one)
goal("compute-bound, default vs onnxruntime in-process", f"{d / ort:.2f}x", ">= 0.9x", d >= 0.9 * ort)
# Each pair's ratio; the median of them, which drift between pairs does not move.
pairs = sorted(runs["l_default"][t] / runs["l_one"][t] for t in runs["l_default"] if t in runs["l_one"])
light = pairs[len(pairs) // 2] if len(pairs) % 2 else (pairs[len(pairs) // 2 - 1] + pairs[len(pairs) // 2]) / 2
goal("light model (churn, 1 row), default vs 1 instance, median pair", f"{light:.2f}x", ">= 0.95x", light >= 0.95)
print(f"{'':8}(pairs, default / 1 instance: {', '.join(f'{x:.2f}' for x in pairs)})")
if errors:
    print(f"  note: {errors:.0f} failed requests (socket errors or non-2xx)")
print()
print(f"{fails} goal(s) not met" if fails else "every goal met")
EOF
echo
echo "reproduce: bash bench/serve-cores.sh"
