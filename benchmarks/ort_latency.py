#!/usr/bin/env python3
"""onnxruntime latency of several ONNX files, measured side by side (no torch in this process).

    python benchmarks/ort_latency.py --threads 1 --batch 8 a.onnx b.onnx ...

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


def measure(paths, threads: int, batch: int, runs: int, rounds: int, warmup: int = 5, seed: int = 0) -> dict:
    sessions = [session(p, threads) for p in paths]
    shape = [batch] + [int(d) for d in sessions[0].get_inputs()[0].shape[1:]]
    x = np.random.default_rng(seed).random(shape, dtype=np.float32)
    feeds = [{s.get_inputs()[0].name: x} for s in sessions]
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
