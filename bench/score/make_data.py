"""The models and data files of the batch-scoring bench.

    python make_data.py logreg DIR ROWS
        DIR/logreg.onnx, DIR/logreg.parquet, DIR/logreg.csv: a logistic regression on 8 float
        features (input x [N, 8] named by `ferry.columns`), and ROWS rows of id, f0 … f7.
    python make_data.py churn-columns MODEL.onnx METRICS.json
        names the columns of a multi-column input in the model's `ferry.columns` metadata when
        the model does not (the churn template's metrics.json lists them).
    python make_data.py churn MODEL.onnx CUSTOMERS.csv DIR ROWS
        DIR/churn.parquet, DIR/churn.csv: ROWS customers drawn at random from CUSTOMERS.csv,
        each with a fresh id, holding the id and the columns the model reads; prints the id
        column's name.

Parquet files are snappy-compressed in row groups of about a million rows; CSV files hold the
same rows. Both are written chunk by chunk, so memory stays flat whatever ROWS is.
"""

import json
import os
import re
import sys

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from baseline import METADATA_KEY, input_columns

CHUNK = 1_000_000  # rows per chunk, and per Parquet row group
FEATURES = 8
SEED = 20240611


class Writers:
    """One Parquet and one CSV file, fed the same chunks."""

    def __init__(self, stem, schema):
        self.parquet = pq.ParquetWriter(stem + ".parquet", schema, compression="snappy")
        # Arrow quotes every header name; write a plain header line and let Arrow quote the
        # values that need it.
        self.csv_file = open(stem + ".csv", "wb")
        self.csv_file.write((",".join(schema.names) + "\n").encode())
        self.csv = pacsv.CSVWriter(self.csv_file, schema, write_options=pacsv.WriteOptions(
            include_header=False, quoting_style="needed"))

    def write(self, table):
        self.parquet.write_table(table, row_group_size=CHUNK)
        self.csv.write_table(table)

    def close(self):
        self.parquet.close()
        self.csv.close()
        self.csv_file.close()


def chunks(rows):
    for lo in range(0, rows, CHUNK):
        yield lo, min(lo + CHUNK, rows)


def features(rng, n):
    # Four decimals, as measured values usually come; float32 like the model's input.
    return np.round(rng.standard_normal((n, FEATURES)), 4).astype(np.float32)


def logreg(out_dir, rows):
    import onnx
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import LogisticRegression

    names = [f"f{i}" for i in range(FEATURES)]
    rng = np.random.default_rng(SEED)
    X = features(rng, 20_000)
    w = rng.normal(0, 1, FEATURES)
    y = (rng.random(len(X)) < 1 / (1 + np.exp(-(X @ w - 0.3)))).astype(np.int64)
    model = LogisticRegression(max_iter=1000).fit(X, y)

    onx = to_onnx(model, initial_types=[("x", FloatTensorType([None, FEATURES]))],
                  options={"zipmap": False}, target_opset={"": 17, "ai.onnx.ml": 3})
    rename = {onx.graph.output[0].name: "label", onx.graph.output[1].name: "probabilities"}
    for node in onx.graph.node:
        node.output[:] = [rename.get(o, o) for o in node.output]
    for value in list(onx.graph.input) + list(onx.graph.output):
        value.name = rename.get(value.name, value.name)
        value.type.tensor_type.shape.dim[0].dim_param = "N"
    entry = onx.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps({"x": names})
    onnx.checker.check_model(onx)
    path = os.path.join(out_dir, "logreg.onnx")
    with open(path, "wb") as f:
        f.write(onx.SerializeToString())

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    label, proba = sess.run(["label", "probabilities"], {"x": X[:1000]})
    assert label.dtype == np.int64 and label.shape == (1000,), (label.dtype, label.shape)
    assert proba.dtype == np.float32 and proba.shape == (1000, 2), (proba.dtype, proba.shape)
    assert np.max(np.abs(proba - model.predict_proba(X[:1000]))) < 1e-5

    schema = pa.schema([("id", pa.int64())] + [(n, pa.float32()) for n in names])
    out = Writers(os.path.join(out_dir, "logreg"), schema)
    for lo, hi in chunks(rows):
        X = features(rng, hi - lo)
        arrays = [pa.array(np.arange(lo, hi, dtype=np.int64))] + [pa.array(X[:, i]) for i in range(FEATURES)]
        out.write(pa.Table.from_arrays(arrays, schema=schema))
    out.close()


def churn_columns(model_path, metrics_path):
    import onnx

    onx = onnx.load(model_path)
    meta = {p.key: p.value for p in onx.metadata_props}
    named = json.loads(meta.get(METADATA_KEY, "{}"))
    features = []
    if os.path.isfile(metrics_path):
        with open(metrics_path) as f:
            features = json.load(f).get("features", [])
    changed = []
    for value in onx.graph.input:
        dims = value.type.tensor_type.shape.dim
        if len(dims) == 2 and dims[1].dim_value > 1 and value.name not in named:
            if len(features) != dims[1].dim_value:
                sys.exit(f"error: input {value.name} takes {dims[1].dim_value} columns; neither "
                         f"the model's `{METADATA_KEY}` nor {metrics_path} names them")
            named[value.name] = features
            changed.append(value.name)
    if changed:
        if METADATA_KEY in meta:
            for p in onx.metadata_props:
                if p.key == METADATA_KEY:
                    p.value = json.dumps(named)
        else:
            entry = onx.metadata_props.add()
            entry.key, entry.value = METADATA_KEY, json.dumps(named)
        onnx.save(onx, model_path)
        print(f"note: the model names no columns for {', '.join(changed)}; "
              f"set `{METADATA_KEY}` from {os.path.basename(metrics_path)}", file=sys.stderr)


def fresh_ids(template, lo, hi):
    numbers = pa.array(np.arange(lo + 1, hi + 1, dtype=np.int64))
    if pa.types.is_integer(template.type):
        return pc.cast(numbers, template.type)
    # Keep the ids' letters ("C00042" -> "C000000042"), so they stay text like the original.
    prefix = re.match(r"\D*", template[0].as_py() if len(template) else "").group()
    digits = pc.utf8_lpad(pc.cast(numbers, pa.string()), width=9, padding="0")
    return pc.binary_join_element_wise(pa.scalar(prefix), digits, "")


def churn(model_path, customers, out_dir, rows):
    sess = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    needed = []
    for _, _, _, columns in input_columns(sess):
        needed += [c for c in columns if c not in needed]
    # Column types as a reader of the file would infer them, except that the columns of the
    # model's string inputs stay text even where their values look like numbers.
    strings = {c for name, dtype, _, columns in input_columns(sess) if dtype is object for c in columns}
    base = pacsv.read_csv(customers, convert_options=pacsv.ConvertOptions(
        column_types={c: pa.string() for c in strings}))
    missing = [c for c in needed if c not in base.column_names]
    if missing:
        sys.exit(f"error: {customers} lacks the model's columns {', '.join(missing)}")
    others = [c for c in base.column_names if c not in needed]
    if not others:
        sys.exit(f"error: {customers} has no column besides the model's to serve as an id")
    id_column = others[0]
    base = base.select([id_column] + needed)

    rng = np.random.default_rng(SEED)
    out = Writers(os.path.join(out_dir, "churn"), base.schema)
    for lo, hi in chunks(rows):
        table = base.take(pa.array(rng.integers(0, base.num_rows, size=hi - lo)))
        table = table.set_column(0, id_column, fresh_ids(base.column(0).combine_chunks(), lo, hi))
        out.write(table.cast(base.schema))
    out.close()
    print(id_column)


def main():
    if len(sys.argv) >= 2 and sys.argv[1] == "logreg" and len(sys.argv) == 4:
        logreg(sys.argv[2], int(sys.argv[3]))
    elif len(sys.argv) >= 2 and sys.argv[1] == "churn-columns" and len(sys.argv) == 4:
        churn_columns(sys.argv[2], sys.argv[3])
    elif len(sys.argv) >= 2 and sys.argv[1] == "churn" and len(sys.argv) == 6:
        churn(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
