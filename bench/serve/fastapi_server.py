"""Baseline (b) of bench/serve.sh: the churn model served the way users write a server by hand —
FastAPI + pydantic + onnxruntime + numpy, run with `uvicorn app:app --workers 2`. It answers
the same Open Inference Protocol v2 request ferry gets, with the same v2 answer.

    FERRY_BENCH_MODEL=model.onnx uvicorn fastapi_server:app --workers 2 --port 8000
"""

import os

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

MODEL_NAME = os.environ.get("FERRY_BENCH_MODEL_NAME", "churn")
# One ONNX Runtime thread per worker: two workers on two cores. Left at its default (a thread
# per core in each worker, spinning), this baseline measured about 20% slower here; the
# benchmark compares with the better of the two.
options = ort.SessionOptions()
options.intra_op_num_threads = 1
options.inter_op_num_threads = 1
session = ort.InferenceSession(os.environ["FERRY_BENCH_MODEL"], options,
                               providers=["CPUExecutionProvider"])
output_names = [o.name for o in session.get_outputs()]

app = FastAPI()


class InferInput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[float]


class InferRequest(BaseModel):
    inputs: list[InferInput]


@app.get("/v2/health/ready")
def ready():
    return {"ready": True}


@app.post("/v2/models/{model_name}/infer")
def infer(model_name: str, request: InferRequest):
    if model_name != MODEL_NAME:
        raise HTTPException(status_code=404, detail=f"unknown model {model_name}")
    feeds = {i.name: np.asarray(i.data, dtype=np.float32).reshape(i.shape)
             for i in request.inputs}
    results = session.run(output_names, feeds)
    return {
        "model_name": MODEL_NAME,
        "model_version": "1",
        "outputs": [
            {"name": name, "datatype": "INT64" if r.dtype == np.int64 else "FP32",
             "shape": list(r.shape), "data": r.ravel().tolist()}
            for name, r in zip(output_names, results)
        ],
    }
