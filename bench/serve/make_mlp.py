"""Writes the compute-bound model of bench/serve-cores.sh and its request body:
mlp.onnx takes `x` FP32 [N, 8] through two hidden layers of 1,024 units (ReLU) to `score`
FP32 [N, 1] (sigmoid); infer-mlp-64.json asks for 64 rows. Fixed seed, so every run measures the
same model.

    python make_mlp.py OUT_DIR
"""

import json
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def main():
    out = sys.argv[1]
    rng = np.random.default_rng(7)
    sizes = [8, 1024, 1024, 1]
    inits, nodes = [], []
    x = "x"
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        w = (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32)
        bias = (rng.standard_normal(b) * 0.01).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(bias, f"b{i}")]
        nodes.append(helper.make_node("Gemm", [x, f"w{i}", f"b{i}"], [f"h{i}"]))
        act = "Relu" if i < len(sizes) - 2 else "Sigmoid"
        y = f"a{i}" if act == "Relu" else "score"
        nodes.append(helper.make_node(act, [f"h{i}"], [y]))
        x = y
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, os.path.join(out, "mlp.onnx"))
    rows = rng.standard_normal((64, 8)).astype(np.float32)
    body = {"inputs": [{"name": "x", "shape": [64, 8], "datatype": "FP32",
                        "data": [round(float(v), 6) for v in rows.ravel()]}]}
    with open(os.path.join(out, "infer-mlp-64.json"), "w") as f:
        json.dump(body, f)


if __name__ == "__main__":
    main()
