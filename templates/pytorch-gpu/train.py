"""Train the machine-failure model with PyTorch and export it to ONNX.

    python train.py --data data/machines.csv --out artifacts/model.onnx

Trains a small MLP on the ten readings of data/machines.csv (on the GPU when
PyTorch sees one, else on the CPU, saying so), exports it with torch.onnx.export
(one FP32 input `features` [N, 10]; outputs `logit` [N, 1] and `probability`
[N, 1], N dynamic), checks the ONNX model against PyTorch with ONNX Runtime, and
writes metrics.json next to the model.
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
from torch import nn

LABEL = "failed_7d"
INPUT_NAME = "features"
OUTPUT_NAMES = ["logit", "probability"]
MAX_ABS_DIFF = 1e-4


def load(path):
    if not os.path.isfile(path):
        sys.exit(f"error: data file not found: {path}\n"
                 f"hint: generate it with `python generate_data.py --out {path}`")
    with open(path) as f:
        header = f.readline().strip().split(",")
    if LABEL not in header:
        sys.exit(f"error: {path} has no `{LABEL}` column")
    data = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float64, ndmin=2)
    label_at = header.index(LABEL)
    features = [c for c in header if c != LABEL]
    X = np.delete(data, label_at, axis=1).astype(np.float32)
    y = data[:, label_at].astype(np.float32)
    return X, y, features


class FailureModel(nn.Module):
    """Standardises the readings inside the model, so clients send raw values."""

    def __init__(self, mean, std, hidden=64):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean))
        self.register_buffer("std", torch.as_tensor(std))
        self.net = nn.Sequential(
            nn.Linear(len(mean), hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, 1),
        )

    def forward(self, features):
        logit = self.net((features - self.mean) / self.std)
        return logit, torch.sigmoid(logit)


def pick_device():
    if torch.cuda.is_available():
        print(f"training on cuda: {torch.cuda.get_device_name(0)}")
        return torch.device("cuda")
    print("warning: PyTorch sees no CUDA GPU; training on the CPU (slower, same result).\n"
          "  In a container, the GPU must be given to it: train.resources.gpu in ferry.yaml and\n"
          "  the NVIDIA Container Toolkit on the Docker host (or a GPU node in a cluster).",
          file=sys.stderr)
    return torch.device("cpu")


def auc(y, score):
    """ROC AUC as the probability that a positive outranks a negative (ties count half)."""
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score))
    ranks[order] = np.arange(1, len(score) + 1)
    for s in np.unique(score):  # average ranks of ties
        tied = score == s
        ranks[tied] = ranks[tied].mean()
    pos = y == 1
    n_pos, n_neg = pos.sum(), (~pos).sum()
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def train(model, X, y, device, epochs, batch_size, seed):
    gen = torch.Generator().manual_seed(seed)
    Xt, yt = torch.from_numpy(X).to(device), torch.from_numpy(y).unsqueeze(1).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    pos_weight = torch.tensor([(1 - y.mean()) / max(y.mean(), 1e-6)], device=device)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    model.train()
    for epoch in range(epochs):
        perm = torch.randperm(len(X), generator=gen).to(device)
        total = 0.0
        for i in range(0, len(X), batch_size):
            idx = perm[i:i + batch_size]
            opt.zero_grad()
            logit, _ = model(Xt[idx])
            loss = loss_fn(logit, yt[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        if epoch % 10 == 9 or epoch == epochs - 1:
            print(f"epoch {epoch + 1}/{epochs}: loss {total / len(X):.4f}")
    model.eval()


def export_onnx(model, n_features, path):
    model = model.to("cpu").eval()
    example = torch.zeros(8, n_features, dtype=torch.float32)
    batch = torch.export.Dim("batch")
    # The batch dimension is dynamic on the input and, through it, on both outputs.
    torch.onnx.export(
        model, (example,), path,
        input_names=[INPUT_NAME], output_names=OUTPUT_NAMES,
        dynamic_shapes={"features": {0: batch}},
        dynamo=True, external_data=False,
    )


def verify(path, model, X):
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(path)
    m = onnx.load(path)
    for value in list(m.graph.input) + list(m.graph.output):
        dim = value.type.tensor_type.shape.dim[0]
        if dim.HasField("dim_value"):
            sys.exit(f"error: {value.name} has a fixed batch dimension {dim.dim_value} in the ONNX model")
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    inputs = [(i.name, i.shape, i.type) for i in sess.get_inputs()]
    outputs = [o.name for o in sess.get_outputs()]
    assert [i[0] for i in inputs] == [INPUT_NAME], inputs
    assert outputs == OUTPUT_NAMES, outputs
    with torch.no_grad():
        expected = model(torch.from_numpy(X))[1].numpy()
    # Two batch sizes: the dynamic axis really is dynamic.
    got = np.concatenate([sess.run(["probability"], {INPUT_NAME: X[:1]})[0],
                          sess.run(["probability"], {INPUT_NAME: X[1:]})[0]])
    diff = float(np.max(np.abs(got - expected)))
    print(f"onnx check: inputs {inputs}, outputs {outputs}")
    print(f"onnx check: max |p_onnx - p_torch| = {diff:.2e} on {len(X)} rows")
    if diff > MAX_ABS_DIFF:
        sys.exit(f"error: ONNX model differs from PyTorch by {diff:.2e} (> {MAX_ABS_DIFF:g})")
    return diff


def main():
    ap = argparse.ArgumentParser(description="Train the machine-failure model and export it to ONNX.")
    ap.add_argument("--data", default="data/machines.csv")
    ap.add_argument("--out", default="artifacts/model.onnx")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=256)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    X, y, features = load(args.data)
    rng = np.random.default_rng(args.seed)
    test = rng.random(len(y)) < 0.25
    X_train, y_train, X_test, y_test = X[~test], y[~test], X[test], y[test]
    print(f"loaded {args.data}: {len(y)} rows, {len(features)} features, "
          f"failure rate {y.mean():.1%}")

    device = pick_device()
    model = FailureModel(X_train.mean(axis=0), X_train.std(axis=0) + 1e-6).to(device)
    start = time.perf_counter()
    train(model, X_train, y_train, device, args.epochs, args.batch_size, args.seed)
    seconds = time.perf_counter() - start
    model = model.to("cpu")
    with torch.no_grad():
        proba = model(torch.from_numpy(X_test))[1].numpy().ravel()
    test_auc = auc(y_test, proba)
    acc = float(((proba >= 0.5) == (y_test == 1)).mean())
    print(f"trained in {seconds:.1f}s on {device.type}: test ROC AUC {test_auc:.3f}, accuracy {acc:.3f}")

    out_dir = os.path.dirname(args.out) or "."
    os.makedirs(out_dir, exist_ok=True)
    export_onnx(model, len(features), args.out)
    max_diff = verify(args.out, model, X_test)

    metrics = {
        "auc": round(test_auc, 4),
        "accuracy": round(acc, 4),
        "device": device.type,
        "train_seconds": round(seconds, 2),
        "n_train": int(len(y_train)),
        "n_test": int(len(y_test)),
        "onnx_max_abs_diff": max_diff,
        "input": {"name": INPUT_NAME, "dtype": "float32", "shape": [None, len(features)]},
        "outputs": {"logit": "float32 [N, 1]", "probability": "float32 [N, 1], P(failure within 7 days)"},
        "features": features,
    }
    metrics_path = os.path.join(out_dir, "metrics.json")
    with open(metrics_path, "w") as f:
        json.dump(metrics, f, indent=2)
        f.write("\n")
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes) and {metrics_path}")


if __name__ == "__main__":
    main()
