"""Generate a synthetic implicit-feedback data set: which user watched which title.

Items belong to genres and have a hidden taste vector near their genre's centre and a
popularity (a few hits, a long tail). Users like one to three genres, have a taste vector
built from them, and an activity level. Each user's interactions are drawn without replacement
with probability growing with taste match and item popularity, so that a model which learns
the tastes beats recommending the most popular items. The output is deterministic for a given
--seed.

    python generate_data.py --seed 7 --users 3000 --items 1000 --out data/interactions.csv

Writes `interactions.csv` (user_id,item_id: one row per interaction, ids from 1) and
`items.csv` (item_id,genre,title) beside it.
"""

import argparse
import csv
import os
import sys

import numpy as np

GENRES = ("drama", "comedy", "thriller", "documentary", "animation", "science fiction",
          "romance", "horror", "crime", "family", "music", "history")
DIMS = 16             # size of the hidden taste space
MIN_PER_USER = 5      # every user has at least this many interactions
MAX_PER_USER = 120    # and at most this many


def generate(n_users, n_items, seed):
    rng = np.random.default_rng(seed)
    n_genres = len(GENRES)

    # --- items: a genre, a taste vector near its centre, a popularity ---------------
    centres = rng.normal(0.0, 1.0, size=(n_genres, DIMS))
    genre_share = rng.dirichlet(np.full(n_genres, 3.0))
    item_genre = rng.choice(n_genres, size=n_items, p=genre_share)
    item_vec = centres[item_genre] + rng.normal(0.0, 0.45, size=(n_items, DIMS))
    item_vec /= np.linalg.norm(item_vec, axis=1, keepdims=True)
    # Zipf-like: rank r gets weight r^-0.9, shuffled so that ids say nothing about popularity.
    log_pop = -0.9 * np.log(rng.permutation(n_items) + 1.0)

    # --- users: favourite genres, a taste vector, an activity level --------------------
    n_fav = rng.choice([1, 2, 3], size=n_users, p=[0.35, 0.45, 0.20])
    user_vec = np.empty((n_users, DIMS))
    for u in range(n_users):
        fav = rng.choice(n_genres, size=n_fav[u], replace=False, p=genre_share)
        weights = rng.dirichlet(np.ones(n_fav[u]))
        user_vec[u] = weights @ centres[fav] + rng.normal(0.0, 0.3, size=DIMS)
    user_vec /= np.linalg.norm(user_vec, axis=1, keepdims=True)
    activity = np.clip(np.round(rng.lognormal(np.log(18), 0.7, size=n_users)),
                       MIN_PER_USER, min(MAX_PER_USER, n_items)).astype(int)

    # --- interactions: Gumbel top-k draws without replacement -------------------------
    # How much taste matters against popularity: high enough that tastes dominate, low
    # enough that the hits still show up everywhere.
    sharpness = 6.0
    rows = []
    for u in range(n_users):
        logits = sharpness * (item_vec @ user_vec[u]) + log_pop
        keys = logits + rng.gumbel(size=n_items)
        chosen = np.argpartition(-keys, activity[u])[:activity[u]]
        # The order within a user is random: the file says nothing about time.
        for i in rng.permutation(chosen):
            rows.append((u + 1, int(i) + 1))

    items = [(i + 1, GENRES[item_genre[i]], f"{GENRES[item_genre[i]].title()} #{i + 1}")
             for i in range(n_items)]
    return rows, items


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--users", type=int, default=3000)
    ap.add_argument("--items", type=int, default=1000)
    ap.add_argument("--out", default="data/interactions.csv",
                    help="interactions file; items.csv is written to the same directory")
    args = ap.parse_args()
    if args.users < 1:
        sys.exit("error: --users must be at least 1")
    if args.items < MIN_PER_USER:
        sys.exit(f"error: --items must be at least {MIN_PER_USER} (each user has that many interactions)")

    rows, items = generate(args.users, args.items, args.seed)
    out_dir = os.path.dirname(args.out) or "."
    os.makedirs(out_dir, exist_ok=True)
    with open(args.out, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["user_id", "item_id"])
        w.writerows(rows)
    items_path = os.path.join(out_dir, "items.csv")
    with open(items_path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["item_id", "genre", "title"])
        w.writerows(items)
    print(f"wrote {args.out}: {len(rows)} interactions of {args.users} users with "
          f"{args.items} items ({len(rows) / args.users:.1f} per user), and {items_path}")


if __name__ == "__main__":
    main()
