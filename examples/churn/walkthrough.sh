#!/usr/bin/env bash
# The churn walkthrough, end to end: data → notebook → pipeline (prepare → train → evaluate,
# cached) → serve → predict → promote.
# README.md beside this script explains each step; the test suite runs it (tests/examples.rs).
#
#   FERRY             the ferry binary (default: ferry on PATH)
#   WORKDIR           where the project is created (default: a new temporary directory)
#   SERVE_PORT        the local model server's port (default: 8080)
#   STAGING_REGISTRY  registry repository prefix for the staging cluster, e.g. 127.0.0.1:5000/ml;
#   KUBECONFIG        with it, the kubeconfig of the staging cluster. Without STAGING_REGISTRY
#                     the promote step is skipped, by name.
set -euo pipefail

FERRY=${FERRY:-ferry}
WORKDIR=${WORKDIR:-$(mktemp -d)}
SERVE_PORT=${SERVE_PORT:-8080}

step() { printf '\n== %s\n' "$*"; }
run() { printf '$ ferry %s\n' "$*"; "$FERRY" "$@"; }

step "init: the churn template, offline (base image from Debian packages)"
cd "$WORKDIR"
run init churn-demo --template churn --offline
cd churn-demo

# Two more environments: `data` runs the data generator in the same image as a run with a
# declared output (and no pipeline around it); `staging` is a cluster.
cat >> ferry.yaml <<YAML
  data:
    target: docker
    train:
      command: python generate_data.py --seed 11 --customers 3000 --out data/customers.csv
      inputs: null
      outputs: [data/customers.csv]
    pipeline: { prepare: null, evaluate: null }
YAML
if [ -n "${STAGING_REGISTRY:-}" ]; then
    cat >> ferry.yaml <<YAML
  staging:
    target: kubernetes
    namespace: churn-demo-staging
    registry: ${STAGING_REGISTRY}
    from: dev
YAML
fi

step "data: generate_data.py in the environment image, data/customers.csv collected"
run train --env data
head -c 200 data/customers.csv | head -n 1 | cut -c1-80

step "notebook: train.ipynb executed headless, parameters overridden"
run train --notebook train.ipynb -p seed=11
run runs

step "pipeline: prepare -> train -> evaluate, the held-out AUC checked"
run run
cat reports/evaluation.json

step "again: nothing changed, every step cached"
run run

step "an edit to evaluate.py: only evaluate runs again"
echo "# the held-out numbers, for the retention team" >>evaluate.py
run run --dry-run
run run
run runs show latest

step "score: the whole customer base through the model, no server, no feature code"
run score data/customers.csv --output scores.csv --keep customer_id
head -3 scores.csv

step "serve: the ONNX model in the serving image on 127.0.0.1:${SERVE_PORT}"
trap '"$FERRY" down >/dev/null 2>&1 || true' EXIT
run serve --detach --port "$SERVE_PORT"

step "predict: the example request, two customers"
run predict request.json
run down

if [ -n "${STAGING_REGISTRY:-}" ]; then
    step "promote: what dev runs, into staging (image by digest, server-side apply, rollout)"
    run promote staging --yes
    run status staging
else
    step "skipped: promote (set STAGING_REGISTRY and KUBECONFIG to promote to a cluster)"
fi

step "done: the project is in $WORKDIR/churn-demo"
