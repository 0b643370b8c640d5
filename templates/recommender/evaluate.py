"""Score the embeddings learnt without the held-out interactions: recall@k and NDCG@k of the
k best unseen items per user against the held-out items, beside recommending the most popular
items.

    python evaluate.py --data data/prepared --embeddings artifacts/embeddings --out reports/evaluation.json

`recall_lift` (the model's recall@k over the baseline's) is what `ferry run` checks.
"""

import argparse
import json
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from train import csr, ranking_metrics, top_k  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="data/prepared")
    ap.add_argument("--embeddings", default="artifacts/embeddings")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--out", default="reports/evaluation.json")
    args = ap.parse_args()

    d = np.load(os.path.join(args.data, "interactions.npz"))
    e = np.load(os.path.join(args.embeddings, "heldout.npz"))
    n_users, n_items, k = len(d["user_ids"]), len(d["item_ids"]), args.k
    train = (d["train_users"], d["train_items"])
    seen = csr(*train, n_users)
    held_out = csr(d["test_users"], d["test_items"], n_users)
    model_top, _ = top_k(e["user_f"] @ e["item_f"].T, *seen, k)
    popularity = np.bincount(train[1], minlength=n_items).astype(np.float32)
    popular_top, _ = top_k(np.tile(popularity, (n_users, 1)), *seen, k)
    result = {"k": k, "n_test": int(len(d["test_users"]))}
    for name, top in (("model", model_top), ("popularity", popular_top)):
        recall, ndcg = ranking_metrics(top, *held_out, k)
        result[f"{name}_recall_at_{k}"] = round(recall, 4)
        result[f"{name}_ndcg_at_{k}"] = round(ndcg, 4)
        result[f"{name}_catalogue_coverage"] = round(len(np.unique(top)) / n_items, 4)
    result["recall_lift"] = round(result[f"model_recall_at_{k}"]
                                  / max(result[f"popularity_recall_at_{k}"], 1e-9), 4)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print(f"held-out evaluation ({result['n_test']} interactions): "
          f"recall@{k} {result[f'model_recall_at_{k}']:.3f}, NDCG@{k} {result[f'model_ndcg_at_{k}']:.3f}; "
          f"most-popular baseline: recall@{k} {result[f'popularity_recall_at_{k}']:.3f}, "
          f"NDCG@{k} {result[f'popularity_ndcg_at_{k}']:.3f}; lift {result['recall_lift']:.2f}x")


if __name__ == "__main__":
    main()
