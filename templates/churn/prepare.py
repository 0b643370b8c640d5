"""Split the customers into a training set and a held-out set that training never sees.

    python prepare.py --data data/customers.csv --out data/split

Writes `train.csv` and `holdout.csv` (the same columns as the input) into the output
directory, stratified by the label so both keep the churn rate, and the same split for the
same seed: `ferry run` caches it until the data or this file changes.
"""

import argparse
import os
import sys

import pandas as pd
from sklearn.model_selection import train_test_split

LABEL = "churned_6m"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="data/customers.csv")
    ap.add_argument("--out", default="data/split")
    ap.add_argument("--holdout", type=float, default=0.2, help="share of customers held out")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()

    if not os.path.isfile(args.data):
        sys.exit(f"error: data file not found: {args.data}\n"
                 f"hint: generate it with `python generate_data.py --out {args.data}`")
    df = pd.read_csv(args.data)
    if LABEL not in df.columns:
        sys.exit(f"error: {args.data} has no `{LABEL}` column")
    train, holdout = train_test_split(
        df, test_size=args.holdout, random_state=args.seed, stratify=df[LABEL])
    os.makedirs(args.out, exist_ok=True)
    # Rows in file order within each part, so the files depend on the split alone.
    train.sort_index().to_csv(os.path.join(args.out, "train.csv"), index=False)
    holdout.sort_index().to_csv(os.path.join(args.out, "holdout.csv"), index=False)
    print(f"split {len(df)} customers: {len(train)} for training, {len(holdout)} held out "
          f"(churn rate {train[LABEL].mean():.1%} / {holdout[LABEL].mean():.1%})")


if __name__ == "__main__":
    main()
