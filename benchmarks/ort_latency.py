#!/usr/bin/env python3
"""onnxruntime (or OpenVINO) latency of several model files, measured side by side (no torch in this process).

    python benchmarks/ort_latency.py --threads 1 --batch 8 a.onnx b.onnx openvino:c.onnx openvino:d.xml ...

A path prefixed ``openvino:`` is compiled by OpenVINO for the CPU with its default inference precision
(what a deployment gets: bf16 for the float parts on CPUs with AVX512-BF16 / AMX) and
``INFERENCE_NUM_THREADS`` threads; the others run in onnxruntime's default session.

Prints JSON: for each file the median latency in ms, and its ratio to the first file.  The files
are measured in interleaved rounds (a, b, c, a, b, c, ...): each round gives every file a median of
``--runs`` timed runs, and the reported ratio is the median over rounds of the per-round ratio to
the first file, so slow phases of a shared machine hit every contender alike.  deploy.py runs this
in a subprocess: a process that has run torch keeps torch's OpenMP threads spinning, which slows
onnxruntime's own threads by a varying amount.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np


def session(path: str, threads: int):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


class OpenVINOSession:
    """The slice of onnxruntime's InferenceSession API that ``measure`` uses, over an OpenVINO model."""

    def __init__(self, path: str, threads: int, batch: int):
        import openvino as ov
        core = ov.Core()
        model = core.read_model(path)
        shape = model.input(0).get_partial_shape()
        shape[0] = batch
        model.reshape({model.input(0).any_name: shape})
        self.compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                          "PERFORMANCE_HINT": "LATENCY"})
        self.request = self.compiled.create_infer_request()
        self.shape = [int(d) for d in model.input(0).get_shape()]

    def run(self, _, feed):
        self.request.infer({0: next(iter(feed.values()))})


def _open(path: str, threads: int, batch: int):
    if path.startswith("openvino:"):
        return OpenVINOSession(path[len("openvino:"):], threads, batch)
    return session(path, threads)


def measure(paths, threads: int, batch: int, runs: int, rounds: int, warmup: int = 5, seed: int = 0) -> dict:
    sessions = [_open(p, threads, batch) for p in paths]
    first = sessions[0]
    dims = first.shape[1:] if isinstance(first, OpenVINOSession) else first.get_inputs()[0].shape[1:]
    shape = [batch] + [int(d) for d in dims]
    x = np.random.default_rng(seed).random(shape, dtype=np.float32)
    feeds = [{"x" if isinstance(s, OpenVINOSession) else s.get_inputs()[0].name: x} for s in sessions]
    per_round = []
    for _ in range(rounds):
        row = []
        for s, feed in zip(sessions, feeds):
            for _ in range(warmup):
                s.run(None, feed)
            ts = []
            for _ in range(runs):
                t = time.perf_counter()
                s.run(None, feed)
                ts.append(time.perf_counter() - t)
            row.append(float(np.median(ts)) * 1000)
        per_round.append(row)
    a = np.array(per_round)
    return {"ms": [float(v) for v in np.median(a, axis=0)],
            "ratio": [float(v) for v in np.median(a / a[:, :1], axis=0)],
            "rounds": rounds, "runs": runs}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=7)
    a = ap.parse_args()
    print(json.dumps(measure(a.paths, a.threads, a.batch, a.runs, a.rounds)))


if __name__ == "__main__":
    main()
