"""Compares two scored files (Parquet or CSV) of the same model, row by row.

    python compare.py EXPECTED ACTUAL --model MODEL.onnx [--keep id]

The row counts and the kept columns must agree; every other column of EXPECTED must be in
ACTUAL. Integer and text columns (`label`) are compared exactly; float columns by their largest
absolute difference, after rounding both sides to float32 when the model's output is float32
(a CSV writer may print a float32 with more digits than it holds, which is not a difference).
Prints one JSON object; exits 1 when the files differ beyond float noise.
"""

import argparse
import json
import re
import sys

import numpy as np
import onnxruntime as ort
import pandas as pd

from baseline import metadata_columns, read


def float32_columns(model):
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    meta = metadata_columns(sess)
    patterns = []
    for out in sess.get_outputs():
        if out.type == "tensor(float)":
            names = [re.escape(out.name)] + [re.escape(c) for c in meta.get(out.name, [])]
            patterns.append(f"{re.escape(out.name)}_[0-9]+")
            patterns.extend(names)
    return re.compile("|".join(f"(?:{p})" for p in patterns)) if patterns else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("expected")
    ap.add_argument("actual")
    ap.add_argument("--model", required=True)
    ap.add_argument("--keep", default="")
    args = ap.parse_args()
    keep = [c for c in args.keep.split(",") if c]
    f32 = float32_columns(args.model)

    a, b = read(args.expected), read(args.actual)
    result = {"rows": [len(a), len(b)], "columns": {}, "problems": []}
    if len(a) != len(b):
        result["problems"].append(f"row counts differ: {len(a)} against {len(b)}")
    missing = [c for c in a.columns if c not in b.columns]
    extra = [c for c in b.columns if c not in a.columns]
    if missing:
        result["problems"].append(f"missing columns: {', '.join(missing)} (has: {', '.join(b.columns)})")
    if extra:
        result["problems"].append(f"extra columns: {', '.join(extra)}")
    max_diff = 0.0
    n = min(len(a), len(b))
    for column in a.columns:
        if column not in b.columns:
            continue
        x, y = a[column].to_numpy()[:n], b[column].to_numpy()[:n]
        floats = np.issubdtype(x.dtype, np.floating) or np.issubdtype(y.dtype, np.floating)
        if floats and column not in keep:
            x, y = x.astype(np.float64), y.astype(np.float64)
            if f32 is not None and f32.fullmatch(column):
                x, y = x.astype(np.float32).astype(np.float64), y.astype(np.float32).astype(np.float64)
            both_nan = np.isnan(x) & np.isnan(y)
            diff = np.where(both_nan, 0.0, np.abs(x - y))
            worst = float(np.nanmax(np.where(np.isnan(diff), np.inf, diff))) if n else 0.0
            result["columns"][column] = {"max_abs_diff": worst}
            max_diff = max(max_diff, worst)
        else:
            if x.dtype != y.dtype:
                x, y = x.astype(str), y.astype(str)
            mismatches = int(np.sum(x != y))
            result["columns"][column] = {"mismatches": mismatches}
            if mismatches:
                first = int(np.argmax(x != y))
                result["problems"].append(
                    f"{column}: {mismatches} of {n} rows differ (first at row {first}: "
                    f"{x[first]} against {y[first]})")
    result["max_abs_diff"] = max_diff
    result["identical"] = not result["problems"] and max_diff == 0.0
    # Probabilities computed by the same runtime differ by a few ulps at most when the
    # batches or threads differ; anything larger is a different computation.
    if max_diff > 1e-5:
        result["problems"].append(f"float columns differ by up to {max_diff:.3g}")
    result["summary"] = (
        "identical" if result["identical"]
        else "; ".join(result["problems"]) if result["problems"]
        else f"max |diff| {max_diff:.2g}")
    print(json.dumps(result))
    sys.exit(1 if result["problems"] else 0)


if __name__ == "__main__":
    main()
