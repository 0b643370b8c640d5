"""Score the exported ONNX model on the held-out customers, as the server would.

    python evaluate.py --model artifacts/model.onnx --data data/split/holdout.csv \
        --out reports/evaluation.json

The model runs in ONNX Runtime (not scikit-learn), on customers training never saw, fed the
CSV's columns as they are, by name (the preprocessing is part of the model); the numbers go
to a JSON file that `ferry run` checks against the bars in ferry.yaml and
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

LABEL = "churned_6m"
# How a CSV column is read for a model input of each ONNX element type.
DTYPES = {"tensor(string)": object, "tensor(float)": np.float32, "tensor(double)": np.float64,
          "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_}


def read_inputs(sess, path):
    """The CSV's labels, and its columns as the model's inputs: each input takes the column of
    its name, as `ferry score` and `ferry predict --csv` feed them; other columns are ignored."""
    inputs = sess.get_inputs()
    text = [i.name for i in inputs if i.type == "tensor(string)"]
    df = pd.read_csv(path, dtype=dict.fromkeys(text, str))
    missing = [i.name for i in inputs if i.name not in df.columns]
    if missing:
        sys.exit(f"error: {path} has no column for the model input(s) {', '.join(missing)}")
    if LABEL not in df.columns:
        sys.exit(f"error: {path} has no `{LABEL}` column")
    feed = {}
    for i in inputs:
        if i.type not in DTYPES:
            sys.exit(f"error: the model input {i.name} has type {i.type}, which a CSV cannot give")
        column = df[i.name].fillna("") if i.name in text else df[i.name]
        values = column.to_numpy(dtype=DTYPES[i.type])
        # An input of shape [N, 1] takes the column as one value per row, one of shape [N] as is.
        feed[i.name] = values.reshape(-1, 1) if len(i.shape) == 2 else values
    return feed, df[LABEL].to_numpy(dtype=np.int64)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="artifacts/model.onnx")
    ap.add_argument("--data", default="data/split/holdout.csv")
    ap.add_argument("--out", default="reports/evaluation.json")
    args = ap.parse_args()

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    sess = ort.InferenceSession(args.model, options, providers=["CPUExecutionProvider"])
    feed, y = read_inputs(sess, args.data)
    label, proba = sess.run(["label", "probabilities"], feed)
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
