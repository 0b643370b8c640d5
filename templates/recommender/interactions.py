"""Read the interactions, number users and items densely, and hold out part of each user's
interactions for the evaluation.

    python interactions.py --data data/interactions.csv --out data/prepared

Writes `interactions.npz` into the output directory: the user and item ids (`user_ids`,
`item_ids`; row r of an embedding is the r-th id), every interaction as row numbers (`users`,
`items`), and the training and held-out parts (`train_users`, `train_items`, `test_users`,
`test_items`). The same data and seed give the same split.
"""

import argparse
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from train import Index, fail, load, split  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="data/interactions.csv")
    ap.add_argument("--out", default="data/prepared")
    ap.add_argument("--test-share", type=float, default=0.2,
                    help="share of each user's interactions held out")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    if not 0 < args.test_share < 1:
        fail("--test-share must be between 0 and 1")

    pairs = load(args.data)
    user_index, item_index = Index(pairs[:, 0]), Index(pairs[:, 1])
    users, items = user_index.rows(pairs[:, 0]), item_index.rows(pairs[:, 1])
    train, test = split(users, items, args.test_share, np.random.default_rng(args.seed))
    os.makedirs(args.out, exist_ok=True)
    np.savez(os.path.join(args.out, "interactions.npz"),
             user_ids=user_index.ids, item_ids=item_index.ids, users=users, items=items,
             train_users=train[0], train_items=train[1], test_users=test[0], test_items=test[1])
    print(f"loaded {args.data}: {len(pairs)} interactions, {len(user_index)} users, "
          f"{len(item_index)} items (density {len(pairs) / (len(user_index) * len(item_index)):.2%}); "
          f"{len(test[0])} held out for the evaluation")


if __name__ == "__main__":
    main()
