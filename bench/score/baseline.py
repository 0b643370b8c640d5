"""Batch scoring the way it is usually written in Python: one process, pandas and onnxruntime.

    python baseline.py MODEL.onnx INPUT.{parquet,csv} OUTPUT.{parquet,csv} --keep id [--batch-size 65536] [--chunked]

Reads the whole file with pandas, builds one array per model input, runs the model in batches
with a default InferenceSession, writes the kept columns and every output with pandas, and
prints one JSON object (rows, seconds, rows_per_second and the time of each phase: read,
score (inputs, inference, output frame), write).
With --chunked it reads, scores and writes one batch at a time instead (pyarrow's batches of a
Parquet file, pandas' chunks of a CSV file), for files whose frame would not fit in memory.

Columns map to inputs the way `ferry score` maps them, so that both write the same table: an
input [N] or [N, 1] takes the column of its own name, an input [N, k] the k columns the model
lists under its `ferry.columns` metadata; an output [N] becomes one column named after it, an
output [N, k] the columns listed for it there, else `<output>_0 … <output>_{k-1}`.
"""

import argparse
import json
import os
import resource
import sys
import time

import numpy as np
import onnxruntime as ort
import pandas as pd

METADATA_KEY = "ferry.columns"

DTYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
    "tensor(string)": object,
}


def metadata_columns(sess):
    text = sess.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    return json.loads(text) if text else {}


def input_columns(sess):
    """[(input name, numpy dtype, rank, [columns])] in the model's order."""
    meta = metadata_columns(sess)
    mapping = []
    for spec in sess.get_inputs():
        if spec.type not in DTYPES:
            sys.exit(f"error: input {spec.name} has type {spec.type}, which a table cannot fill")
        shape = spec.shape
        if len(shape) == 1 or (len(shape) == 2 and shape[1] == 1):
            columns = meta.get(spec.name, [spec.name])
        elif len(shape) == 2:
            if spec.name not in meta:
                sys.exit(f"error: input {spec.name} {shape} has no `{METADATA_KEY}` entry naming its columns")
            columns = meta[spec.name]
        else:
            sys.exit(f"error: input {spec.name} has shape {shape}; a table fills [N] or [N, k] only")
        mapping.append((spec.name, DTYPES[spec.type], len(shape), list(columns)))
    return mapping


def output_names(sess, name, width):
    listed = metadata_columns(sess).get(name)
    if listed and len(listed) == width:
        return list(listed)
    return [f"{name}_{i}" for i in range(width)]


def read(path):
    if path.endswith(".parquet"):
        return pd.read_parquet(path)
    if path.endswith(".csv"):
        return pd.read_csv(path)
    sys.exit(f"error: {path}: not .parquet or .csv")


def write(df, path):
    if path.endswith(".parquet"):
        df.to_parquet(path, index=False)
    else:
        df.to_csv(path, index=False)


def build_inputs(df, mapping):
    feeds = {}
    for name, dtype, rank, columns in mapping:
        if dtype is object:
            values = df[columns].astype(str).to_numpy(dtype=object)
        else:
            values = df[columns].to_numpy(dtype=dtype)
        feeds[name] = values.reshape(-1) if rank == 1 else values
    return feeds


def outputs_frame(sess, outputs, results, kept):
    table = dict(kept)
    for name, value in zip(outputs, results):
        if value.ndim == 1:
            table[name] = value
        else:
            value = value.reshape(len(value), -1)
            for i, column in enumerate(output_names(sess, name, value.shape[1])):
                table[column] = value[:, i]
    return pd.DataFrame(table)


def chunks(path, batch_size):
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size):
            yield batch.to_pandas()
    elif path.endswith(".csv"):
        yield from pd.read_csv(path, chunksize=batch_size)
    else:
        sys.exit(f"error: {path}: not .parquet or .csv")


def score_chunked(sess, mapping, outputs, args, keep):
    """Returns (rows, seconds reading, seconds scoring, seconds writing)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows, t_read, t_infer, t_write = 0, 0.0, 0.0, 0.0
    writer = None
    t = time.perf_counter()
    for df in chunks(args.input, args.batch_size):
        t_read += time.perf_counter() - t
        t = time.perf_counter()
        feeds = build_inputs(df, mapping)
        out = outputs_frame(sess, outputs, sess.run(outputs, feeds),
                            {column: df[column].to_numpy() for column in keep})
        t_infer += time.perf_counter() - t
        t = time.perf_counter()
        if args.output.endswith(".parquet"):
            table = pa.Table.from_pandas(out, preserve_index=False)
            writer = writer or pq.ParquetWriter(args.output, table.schema)
            writer.write_table(table)
        else:
            out.to_csv(args.output, index=False, mode="a" if rows else "w", header=not rows)
        rows += len(out)
        t_write += time.perf_counter() - t
        t = time.perf_counter()
    if writer:
        writer.close()
    return rows, t_read, t_infer, t_write


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("input")
    ap.add_argument("output")
    ap.add_argument("--keep", default="", help="comma-separated columns copied to the output")
    ap.add_argument("--batch-size", type=int, default=65536)
    ap.add_argument("--chunked", action="store_true", help="read, score and write batch by batch")
    args = ap.parse_args()
    keep = [c for c in args.keep.split(",") if c]

    start = time.perf_counter()
    sess = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    mapping = input_columns(sess)
    outputs = [o.name for o in sess.get_outputs()]
    t_load = time.perf_counter()

    if args.chunked:
        rows, read_s, infer_s, write_s = score_chunked(sess, mapping, outputs, args, keep)
    else:
        t = time.perf_counter()
        df = read(args.input)
        read_s = time.perf_counter() - t

        t = time.perf_counter()
        feeds = build_inputs(df, mapping)
        rows = len(df)
        parts = {name: [] for name in outputs}
        for lo in range(0, rows, args.batch_size):
            batch = {name: values[lo:lo + args.batch_size] for name, values in feeds.items()}
            for name, value in zip(outputs, sess.run(outputs, batch)):
                parts[name].append(value)
        results = [np.concatenate(parts[name]) for name in outputs]
        out = outputs_frame(sess, outputs, results, {column: df[column].to_numpy() for column in keep})
        infer_s = time.perf_counter() - t

        t = time.perf_counter()
        write(out, args.output)
        write_s = time.perf_counter() - t
    end = time.perf_counter()

    seconds = end - start
    print(json.dumps({
        "rows": rows,
        "seconds": round(seconds, 3),
        "rows_per_second": round(rows / seconds, 1) if seconds > 0 else None,
        "read": "chunked" if args.chunked else "whole",
        "load_model_seconds": round(t_load - start, 3),
        "read_seconds": round(read_s, 3),
        "score_seconds": round(infer_s, 3),
        "write_seconds": round(write_s, 3),
        "output_bytes": os.path.getsize(args.output),
        # ru_maxrss is in kB on Linux
        "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }))


if __name__ == "__main__":
    main()
