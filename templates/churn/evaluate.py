"""Score the exported ONNX model on the held-out customers, as the server would.

    python evaluate.py --model artifacts/model.onnx --data data/split/holdout.csv \
        --out reports/evaluation.json

The model runs in ONNX Runtime (not scikit-learn), on customers training never saw; the
numbers go to a JSON file that `ferry run` checks against the bars in ferry.yaml and
`ferry promote` asks for.
"""

import argparse
import json
import os
import sys

import numpy as np
import onnxruntime as ort
import pandas as pd
from sklearn.metrics import accuracy_score, roc_auc_score

ID_COLUMN = "customer_id"
LABEL = "churned_6m"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="artifacts/model.onnx")
    ap.add_argument("--data", default="data/split/holdout.csv")
    ap.add_argument("--out", default="reports/evaluation.json")
    args = ap.parse_args()

    df = pd.read_csv(args.data)
    features = [c for c in df.columns if c not in (ID_COLUMN, LABEL)]
    X = df[features].to_numpy(dtype=np.float32)
    y = df[LABEL].to_numpy(dtype=np.int64)

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    sess = ort.InferenceSession(args.model, options, providers=["CPUExecutionProvider"])
    expected = sess.get_inputs()[0].shape[1]
    if expected != len(features):
        sys.exit(f"error: the model takes {expected} features, {args.data} has {len(features)}")
    label, proba = sess.run(["label", "probabilities"], {sess.get_inputs()[0].name: X})
    churn = proba[:, 1]
    auc = float(roc_auc_score(y, churn))
    acc = float(accuracy_score(y, label))
    # Of the 10% of customers the model ranks riskiest, the share that did churn: what a
    # retention team calling them would find.
    top = np.argsort(-churn)[: max(1, len(y) // 10)]
    evaluation = {
        "auc": round(auc, 4),
        "accuracy": round(acc, 4),
        "precision_top_decile": round(float(y[top].mean()), 4),
        "churn_rate": round(float(y.mean()), 4),
        "customers": int(len(y)),
    }
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(evaluation, f, indent=2)
        f.write("\n")
    print(f"held-out: ROC AUC {auc:.3f}, accuracy {acc:.3f}, "
          f"top-decile precision {evaluation['precision_top_decile']:.3f} on {len(y)} customers")


if __name__ == "__main__":
    main()
