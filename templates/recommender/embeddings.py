"""Learn user and item embeddings by implicit alternating least squares, twice: on the
training part of the interactions (what `evaluate.py` scores on the held-out part) and on
all of them (what the served model uses).

    python embeddings.py --data data/prepared --out artifacts/embeddings

Writes `heldout.npz` and `full.npz` (`user_f`, `item_f`: one row per user and per item, in
the order of `interactions.npz`'s ids) and `hyperparameters.json`.
"""

import argparse
import json
import os
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from train import fail, fit_als  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="data/prepared")
    ap.add_argument("--out", default="artifacts/embeddings")
    ap.add_argument("--factors", type=int, default=16, help="embedding size")
    ap.add_argument("--alpha", type=float, default=5.0, help="confidence of an observed interaction")
    ap.add_argument("--reg", type=float, default=30.0, help="L2 regularisation")
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    for name in ("factors", "iterations"):
        if getattr(args, name) < 1:
            fail(f"--{name} must be at least 1")

    d = np.load(os.path.join(args.data, "interactions.npz"))
    n_users, n_items = len(d["user_ids"]), len(d["item_ids"])
    hyper = {"factors": args.factors, "alpha": args.alpha, "reg": args.reg,
             "iterations": args.iterations, "seed": args.seed}
    os.makedirs(args.out, exist_ok=True)
    for name, users, items in (("heldout", d["train_users"], d["train_items"]),
                               ("full", d["users"], d["items"])):
        start = time.perf_counter()
        user_f, item_f = fit_als(users, items, n_users, n_items, args.factors, args.alpha,
                                 args.reg, args.iterations, args.seed)
        np.savez(os.path.join(args.out, f"{name}.npz"), user_f=user_f, item_f=item_f)
        print(f"{name}: fitted on {len(users)} interactions in {time.perf_counter() - start:.1f}s")
    with open(os.path.join(args.out, "hyperparameters.json"), "w") as f:
        json.dump(hyper, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
