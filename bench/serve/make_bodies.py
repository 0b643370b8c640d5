"""Writes the request bodies of bench/serve.sh from the churn template's data (real rows):
infer-1.json (one row) and infer-64.json (64 rows), Open Inference Protocol v2 requests for the
churn model's input `features` (FP32 [N, 78]: every CSV column but customer_id and churned_6m).

    python3 bench/serve/make_bodies.py    (from the repository root)
"""

import csv
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "..", "templates", "churn", "data", "customers.csv")

with open(DATA, newline="") as f:
    reader = csv.DictReader(f)
    names = [c for c in reader.fieldnames if c not in ("customer_id", "churned_6m")]
    rows = [[json.loads(r[c]) for c in names] for _, r in zip(range(64), reader)]
assert len(names) == 78, len(names)

for n in (1, 64):
    body = {"inputs": [{"name": "features", "shape": [n, len(names)], "datatype": "FP32",
                        "data": [v for row in rows[:n] for v in row]}]}
    with open(os.path.join(HERE, f"infer-{n}.json"), "w") as out:
        json.dump(body, out, separators=(",", ":"))
        out.write("\n")
