"""Export the learnt embeddings as a top-k recommender in ONNX.

    python train.py --data data/prepared --embeddings artifacts/embeddings --out artifacts/model.onnx

The last training step of the pipeline in ferry.yaml: `interactions.py` numbers users and
items and holds part of the data out, `embeddings.py` learns user and item embeddings by
implicit alternating least squares (Hu, Koren and Volinsky 2008, numpy only), this script
exports the embeddings learnt on every interaction, and `evaluate.py` scores the ones learnt
without the held-out part. The functions here are the ones the other steps use.

The ONNX model takes `user_id` INT64 [N] and returns, per user, the k best items the user has
not interacted with yet: `items` INT64 [N, k] (item ids as in the data) and `scores` FP32
[N, k], best first. A user id the model has not seen gets the most popular items. Scoring,
masking and top-k all happen inside the graph, so the model server needs nothing else.
`reference.json` holds numpy's own top-k for a few users, to check a served model against.
"""

import argparse
import json
import os
import sys

# One BLAS thread: the matrices are small, and extra threads only fight over busy CPUs. Set
# before numpy is imported, which reads it once.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

# Conservative opsets so that older ONNX Runtime releases can load the model too.
OPSET = 17
ML_OPSET = 3
# Scores of items a user already has: below any real score, yet finite so JSON can carry it.
SEEN_SCORE = float(np.finfo(np.float32).min)
MAX_SCORE_DIFF = 1e-4


def fail(message, hint=None):
    sys.exit(f"error: {message}" + (f"\nhint: {hint}" if hint else ""))


def load(path):
    """The (user id, item id) pairs of `path`, duplicates removed."""
    if not os.path.isfile(path):
        fail(f"data file not found: {path}",
             f"generate it with `python generate_data.py --out {path}`")
    with open(path) as f:
        header = f.readline().strip().split(",")
    if header[:2] != ["user_id", "item_id"]:
        fail(f"{path}: the first line must be the header `user_id,item_id`, not `{','.join(header)}`")
    try:
        pairs = np.loadtxt(path, delimiter=",", skiprows=1, usecols=(0, 1), dtype=np.int64, ndmin=2)
    except ValueError as e:
        fail(f"{path}: {e}", "every row must be two integer ids: user_id,item_id")
    if len(pairs) == 0:
        fail(f"{path} has no interactions")
    return np.unique(pairs, axis=0)


class Index:
    """Dense row numbers 0..n-1 for arbitrary integer ids."""

    def __init__(self, ids):
        self.ids = np.unique(ids)

    def __len__(self):
        return len(self.ids)

    def rows(self, ids):
        return np.searchsorted(self.ids, ids)


def split(users, items, test_share, rng):
    """Holds out `test_share` of each user's interactions (at least one, if the user has three
    or more), so that every user is evaluated and keeps something to learn from."""
    order = np.lexsort((rng.random(len(users)), users))
    users, items = users[order], items[order]
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    counts = np.diff(np.r_[starts, len(users)])
    n_test = np.where(counts >= 3, np.maximum(1, np.round(counts * test_share)), 0).astype(int)
    position = np.arange(len(users)) - np.repeat(starts, counts)
    is_test = position < np.repeat(n_test, counts)
    return (users[~is_test], items[~is_test]), (users[is_test], items[is_test])


def csr(rows, cols, n_rows):
    order = np.argsort(rows, kind="stable")
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n_rows), out=indptr[1:])
    return indptr, cols[order]


def als_half_step(fixed, indptr, indices, alpha, reg):
    """Solves every row's least squares against the fixed side, all in one batched solve.

    With confidence 1 + alpha on observed pairs and 1 elsewhere, a row's normal equations are
    (F'F + alpha F_u'F_u + reg I) x = (1 + alpha) sum of F_u's rows, F_u being the rows of
    the fixed side that it interacted with.
    """
    n, d = len(indptr) - 1, fixed.shape[1]
    base = fixed.T @ fixed + reg * np.eye(d)
    a = np.broadcast_to(base, (n, d, d)).copy()
    b = np.zeros((n, d))
    for r in range(n):
        f = fixed[indices[indptr[r]:indptr[r + 1]]]
        if len(f):
            a[r] += alpha * (f.T @ f)
            b[r] = (1 + alpha) * f.sum(axis=0)
    return np.linalg.solve(a, b[:, :, None])[:, :, 0]


def fit_als(users, items, n_users, n_items, factors, alpha, reg, iterations, seed):
    rng = np.random.default_rng(seed)
    user_f = rng.normal(0, 0.01, size=(n_users, factors))
    item_f = rng.normal(0, 0.01, size=(n_items, factors))
    by_user = csr(users, items, n_users)
    by_item = csr(items, users, n_items)
    for _ in range(iterations):
        user_f = als_half_step(item_f, *by_user, alpha, reg)
        item_f = als_half_step(user_f, *by_item, alpha, reg)
    return user_f.astype(np.float32), item_f.astype(np.float32)


def top_k(scores, seen_indptr, seen_indices, k):
    """The k best columns of each row of `scores` outside that row's seen columns, best first;
    ties go to the lower column, as in ONNX TopK."""
    scores = mask_seen(scores, seen_indptr, seen_indices)
    best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return best, np.take_along_axis(scores, best, axis=1)


def mask_seen(scores, seen_indptr, seen_indices):
    scores = scores.copy()
    for r in range(len(scores)):
        scores[r, seen_indices[seen_indptr[r]:seen_indptr[r + 1]]] = SEEN_SCORE
    return scores


def ranking_metrics(recommended, test_indptr, test_indices, k):
    """Mean recall@k (hits over min(k, held-out items)) and NDCG@k with binary relevance."""
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    recalls, ndcgs = [], []
    for r in range(len(recommended)):
        held_out = test_indices[test_indptr[r]:test_indptr[r + 1]]
        if len(held_out) == 0:
            continue
        hits = np.isin(recommended[r], held_out)
        recalls.append(hits.sum() / min(k, len(held_out)))
        ndcgs.append((hits * discounts).sum() / discounts[:min(k, len(held_out))].sum())
    return float(np.mean(recalls)), float(np.mean(ndcgs))


def build_onnx(user_index, item_index, user_f, item_f, popularity, seen, k):
    """The serving graph: look the user up, score every item, hide what the user has seen,
    keep the k best.

    A user id outside the training data maps to one extra row: a zero embedding with a 1 in an
    extra column, against which every item's extra coordinate is its popularity, so new users
    get the most popular items through the same MatMul. The seen items are a padded table of
    item rows per user; padding points at one extra, dummy item column that is cut off before
    TopK.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    n_users, n_items, d = len(user_index), len(item_index), user_f.shape[1]
    users = np.zeros((n_users + 1, d + 1), dtype=np.float32)
    users[:n_users, :d] = user_f
    users[n_users, d] = 1.0
    items_t = np.zeros((d + 1, n_items + 1), dtype=np.float32)
    items_t[:d, :n_items] = item_f.T
    items_t[d, :n_items] = popularity / max(popularity.max(), 1.0)

    indptr, indices = seen
    counts = np.diff(indptr)
    width = max(int(counts.max()), 1)
    index_type = np.int16 if n_items < np.iinfo(np.int16).max else np.int32
    seen_table = np.full((n_users + 1, width), n_items, dtype=index_type)
    for r in range(n_users):
        seen_table[r, :counts[r]] = indices[indptr[r]:indptr[r + 1]]

    init = [
        numpy_helper.from_array(users, "user_embeddings"),
        numpy_helper.from_array(items_t, "item_embeddings_t"),
        numpy_helper.from_array(seen_table, "seen_items"),
        numpy_helper.from_array(item_index.ids.astype(np.int64), "item_ids"),
        numpy_helper.from_array(np.array([n_items], dtype=np.int64), "n_items"),
        numpy_helper.from_array(np.array([0], dtype=np.int64), "zero"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "one"),
        numpy_helper.from_array(np.array([k], dtype=np.int64), "k"),
        numpy_helper.from_array(np.array(SEEN_SCORE, dtype=np.float32), "seen_score"),
    ]
    nodes = [
        helper.make_node("LabelEncoder", ["user_id"], ["user_row"], domain="ai.onnx.ml",
                         keys_int64s=user_index.ids.astype(np.int64).tolist(),
                         values_int64s=list(range(n_users)), default_int64=n_users),
        helper.make_node("Gather", ["user_embeddings", "user_row"], ["user_vectors"], axis=0),
        helper.make_node("MatMul", ["user_vectors", "item_embeddings_t"], ["all_scores"]),
        helper.make_node("Gather", ["seen_items", "user_row"], ["seen_narrow"], axis=0),
        helper.make_node("Cast", ["seen_narrow"], ["seen"], to=TensorProto.INT64),
        helper.make_node("Shape", ["seen"], ["seen_shape"]),
        helper.make_node("Expand", ["seen_score", "seen_shape"], ["seen_scores"]),
        helper.make_node("ScatterElements", ["all_scores", "seen", "seen_scores"], ["masked"], axis=1),
        helper.make_node("Slice", ["masked", "zero", "n_items", "one"], ["unseen_scores"]),
        helper.make_node("TopK", ["unseen_scores", "k"], ["scores", "item_rows"],
                         axis=1, largest=1, sorted=1),
        helper.make_node("Gather", ["item_ids", "item_rows"], ["items"], axis=0),
    ]
    graph = helper.make_graph(
        nodes, "recommender",
        [helper.make_tensor_value_info("user_id", TensorProto.INT64, ["N"])],
        [helper.make_tensor_value_info("items", TensorProto.INT64, ["N", k]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", k])],
        init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                    helper.make_opsetid("ai.onnx.ml", ML_OPSET)])
    # The IR version of the opsets, not the newest the installed onnx knows.
    model.ir_version = 8
    model.doc_string = f"recommender: the top {k} unseen items per user from implicit-feedback embeddings"
    onnx.checker.check_model(model, full_check=True)
    return model


def reference(user_f, item_f, popularity, seen, k):
    """numpy's scores (seen items masked) and top k for every known user and for an unknown
    one (the last row)."""
    scores = np.vstack([user_f @ item_f.T, popularity[None, :] / max(popularity.max(), 1.0)])
    indptr, indices = seen
    scores = mask_seen(scores, np.r_[indptr, indptr[-1]], indices)
    best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return scores, best, np.take_along_axis(scores, best, axis=1)


def verify(path, user_index, item_index, ref_all, ref_rows, ref_scores):
    """Runs the exported model on every known user and a few unknown ids and compares with
    numpy. Items may differ only where numpy's scores of the two are tied within float error."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    sess = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    inputs = [(i.name, i.type, i.shape) for i in sess.get_inputs()]
    outputs = [(o.name, o.type, o.shape) for o in sess.get_outputs()]
    if [i[0] for i in inputs] != ["user_id"] or [o[0] for o in outputs] != ["items", "scores"]:
        fail(f"the exported model has inputs {inputs} and outputs {outputs}")
    unknown = np.array([user_index.ids.min() - 1, user_index.ids.max() + 1,
                        np.iinfo(np.int64).min, np.iinfo(np.int64).max], dtype=np.int64)
    ids = np.r_[user_index.ids.astype(np.int64), unknown]
    want_rows = np.r_[np.arange(len(user_index)), np.full(len(unknown), len(user_index))]
    items, scores = sess.run(None, {"user_id": ids})
    want_items = item_index.ids[ref_rows[want_rows]]
    want_scores = ref_scores[want_rows]
    score_diff = float(np.max(np.abs(scores - want_scores)))
    differ = items != want_items
    swapped = int(np.sum(np.any(differ, axis=1)))
    print(f"onnx check: inputs {inputs}, outputs {outputs}")
    print(f"onnx check: {len(ids)} users ({len(unknown)} unknown): max |score diff| {score_diff:.2e}, "
          f"{swapped} users with near-tied items in another order")
    if score_diff > MAX_SCORE_DIFF:
        fail(f"the ONNX model's scores differ from numpy's by {score_diff:.2e} (> {MAX_SCORE_DIFF:g})")
    for r, c in zip(*np.nonzero(differ)):
        row = want_rows[r]
        own = ref_all[row, item_index.rows(items[r, c])]
        if abs(own - ref_scores[row, c]) > MAX_SCORE_DIFF:
            fail(f"user {ids[r]}: the ONNX model recommends item {items[r, c]} (numpy score {own:.6g}) "
                 f"at rank {c + 1}, numpy item {want_items[r, c]} ({ref_scores[row, c]:.6g})")
    for r in np.flatnonzero(np.any(differ, axis=1)):
        if len(set(items[r])) != len(items[r]):
            fail(f"user {ids[r]}: the ONNX model recommends an item twice: {items[r].tolist()}")
    return score_diff, swapped


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="data/prepared", help="interactions.py's output")
    ap.add_argument("--embeddings", default="artifacts/embeddings", help="embeddings.py's output")
    ap.add_argument("--out", default="artifacts/model.onnx")
    ap.add_argument("--k", type=int, default=10, help="items recommended per user (fixed in the model)")
    args = ap.parse_args()
    if args.k < 1:
        fail("--k must be at least 1")

    prepared = os.path.join(args.data, "interactions.npz")
    full = os.path.join(args.embeddings, "full.npz")
    for path, maker in ((prepared, "interactions.py"), (full, "embeddings.py")):
        if not os.path.isfile(path):
            fail(f"{path} not found", f"it is what `{maker}` writes: `ferry run` runs it first")
    d = np.load(prepared)
    e = np.load(full)
    user_index, item_index = Index(d["user_ids"]), Index(d["item_ids"])
    users, items = d["users"], d["items"]
    n_users, n_items, k = len(user_index), len(item_index), args.k
    if k > n_items:
        fail(f"--k {k} is more than the {n_items} items in the data")
    user_f, item_f = e["user_f"], e["item_f"]
    if user_f.shape[0] != n_users or item_f.shape[0] != n_items:
        fail(f"{full} does not match {prepared}", "run `embeddings.py` again on this data")
    # The served model hides everything the user already has.
    popularity = np.bincount(items, minlength=n_items).astype(np.float32)
    seen = csr(users, items, n_users)
    print(f"exporting embeddings of {n_users} users and {n_items} items "
          f"({user_f.shape[1]} factors, learnt on all {len(users)} interactions)")

    out_dir = os.path.dirname(args.out) or "."
    os.makedirs(out_dir, exist_ok=True)
    model = build_onnx(user_index, item_index, user_f, item_f, popularity, seen, k)
    with open(args.out, "wb") as f:
        f.write(model.SerializeToString())
    ref_all, ref_rows, ref_scores = reference(user_f, item_f, popularity, seen, k)
    score_diff, swapped = verify(args.out, user_index, item_index, ref_all, ref_rows, ref_scores)

    # A handful of users (and an unknown id) with numpy's answer, to check a served model by.
    sample = [int(u) for u in user_index.ids[:5]]
    unknown_id = int(user_index.ids.max()) + 1
    ref = {"k": k, "users": []}
    for user in sample + [unknown_id]:
        row = n_users if user == unknown_id else int(user_index.rows(user))
        ref["users"].append({
            "user_id": user,
            "known": user != unknown_id,
            "items": [int(i) for i in item_index.ids[ref_rows[row]]],
            "scores": [round(float(s), 6) for s in ref_scores[row]],
        })
    with open(os.path.join(out_dir, "reference.json"), "w") as f:
        json.dump(ref, f, indent=2)
        f.write("\n")

    hyper_path = os.path.join(args.embeddings, "hyperparameters.json")
    hyper = json.load(open(hyper_path)) if os.path.isfile(hyper_path) else {}
    metrics = {
        "k": k,
        "n_users": n_users,
        "n_items": n_items,
        "n_interactions": int(len(users)),
        "hyperparameters": hyper,
        "onnx_max_score_diff": score_diff,
        "input": {"name": "user_id", "dtype": "int64", "shape": [None]},
        "outputs": {"items": f"int64 [N, {k}], item ids, best first",
                    "scores": f"float32 [N, {k}], the items' scores, descending"},
    }
    metrics_path = os.path.join(out_dir, "metrics.json")
    with open(metrics_path, "w") as f:
        json.dump(metrics, f, indent=2)
        f.write("\n")
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes), {metrics_path} and "
          f"{os.path.join(out_dir, 'reference.json')}")


if __name__ == "__main__":
    main()
