#!/usr/bin/env bash
# The recommender walkthrough of README.md, step by step: data → train → serve → recommendations
# → the manifests for a cluster. Run it from any directory:
#
#   examples/recommender/walkthrough.sh [PROJECT_DIR]
#
# FERRY     the ferry binary (default: ferry on PATH)
# OFFLINE   1 (default): bootstrap the base image from Debian packages; 0: pull python:3.11-slim
# PORT      the model server's port on 127.0.0.1 (default 8080)
# REGISTRY  where `ferry render staging` pushes the serving image, e.g. 127.0.0.1:5000/ml;
#           without it the render step is left out
set -euo pipefail

FERRY=${FERRY:-ferry}
OFFLINE=${OFFLINE:-1}
PORT=${PORT:-8080}
REGISTRY=${REGISTRY:-}
PROJECT=${1:-recs-demo}

step() { printf '\n== %s\n' "$*"; }
# Each command is shown (on stderr, so that an answer redirected to a file stays clean) and run.
run() {
    local arg line='$'
    for arg in "$@"; do
        case $arg in
            *[!A-Za-z0-9_./:=@%+,-]*) line+=" '$arg'" ;;
            *) line+=" $arg" ;;
        esac
    done
    printf '%s\n' "$line" >&2
    "$@"
}

step "1. A project from the recommender template"
init_flags=(--template recommender)
[ "$OFFLINE" = 1 ] && init_flags+=(--offline)
run "$FERRY" init "$PROJECT" "${init_flags[@]}"
cd "$PROJECT"
NAME=$(sed -n 's/^name: *//p' ferry.yaml)
run "$FERRY" validate > /dev/null

step "2. The data: one row per (user, item) interaction"
run head -4 data/interactions.csv
printf '%s interactions, %s items\n' "$(($(wc -l < data/interactions.csv) - 1))" "$(($(wc -l < data/items.csv) - 1))"

step "3. The pipeline in the project's image (the first run builds it: a few minutes)"
# interactions -> embeddings -> train (the ONNX export) -> evaluate, its check on the lift.
run "$FERRY" run
python3 -c '
import json
m = json.load(open("reports/evaluation.json"))
k = m["k"]
for who in ("model", "popularity"):
    recall, ndcg = m[who + "_recall_at_%d" % k], m[who + "_ndcg_at_%d" % k]
    print(f"{who:>10}: recall@{k} {recall:.3f}  NDCG@{k} {ndcg:.3f}")
'
# Nothing changed: every step cached. An edit to evaluate.py: evaluate alone runs again.
run "$FERRY" run
echo "# top-k quality on held-out interactions" >> evaluate.py
run "$FERRY" run

step "4. Serve the model on 127.0.0.1:$PORT"
# Whatever happens next, the server does not outlive the walkthrough.
trap '"$FERRY" down --quiet >/dev/null 2>&1 || true' EXIT
run "$FERRY" serve --detach --port "$PORT"
URL="http://127.0.0.1:$PORT"

step "5. Recommendations"
run "$FERRY" predict --values '42;7'
run "$FERRY" predict request.json --json > recommendations.json
printf 'saved the answer for request.json (users 1, 2 and the unknown 3001) to recommendations.json\n'
# Any HTTP client will do; this is the KServe v1 form.
run curl -sS --fail-with-body -d '{"instances": [42]}' "$URL/v1/models/$NAME:predict" > user-42.json
python3 -c '
import csv, json
titles = {r["item_id"]: "%s (%s)" % (r["title"], r["genre"]) for r in csv.DictReader(open("data/items.csv"))}
watched = [r["item_id"] for r in csv.DictReader(open("data/interactions.csv")) if r["user_id"] == "42"]
print("user 42 watched:", ", ".join(titles[i] for i in watched[:6]), "...")
top = json.load(open("user-42.json"))["predictions"][0]
for rank, (item, score) in enumerate(zip(top["items"], top["scores"]), 1):
    print(f"{rank:>3}. {titles[str(item)]:<28} {score:.3f}")
'

step "6. The same model for a cluster"
if [ -n "$REGISTRY" ]; then
    printf '  staging: { target: kubernetes, context: staging, namespace: %s-staging, registry: %s }\n' \
        "$NAME" "$REGISTRY" >> ferry.yaml
    run "$FERRY" render staging --quiet > staging.yaml
    printf 'wrote staging.yaml: %s\n' "$(grep '^kind:' staging.yaml | sed 's/kind: //' | sort | uniq | paste -sd, -)"
    printf 'with a cluster context `staging`: %s promote staging\n' "$FERRY"
else
    printf 'REGISTRY is not set: left out (see README.md)\n'
fi

step "7. Stop the server"
run "$FERRY" down
trap - EXIT
