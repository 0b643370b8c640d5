"""onnxruntime itself, in-process, as the ceiling for bench/serve-cores.sh: one session with
every core for its intra-op threads, running the body's batch over and over for DURATION
seconds (after a warm-up). Prints `RESULT rps=… rows=…` (runs per second, rows per run) and the
first row's outputs as `OUTPUT …` so the bench can check the server answers the same.

    python ort_inprocess.py MODEL BODY.json DURATION THREADS
"""

import json
import sys
import time

import numpy as np
import onnxruntime as ort


def main():
    model, body, duration, threads = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
    request = json.load(open(body))
    feeds = {
        i["name"]: np.asarray(i["data"], dtype=np.float32).reshape(i["shape"])
        for i in request["inputs"]
    }
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    rows = next(iter(feeds.values())).shape[0]
    end = time.perf_counter() + 1.0
    while time.perf_counter() < end:
        out = session.run(None, feeds)
    runs, start = 0, time.perf_counter()
    end = start + duration
    while time.perf_counter() < end:
        session.run(None, feeds)
        runs += 1
    took = time.perf_counter() - start
    print(f"RESULT rps={runs / took:.1f} rows={rows}")
    print("OUTPUT " + json.dumps([float(v) for v in out[0].ravel()[:8]]))


if __name__ == "__main__":
    main()
