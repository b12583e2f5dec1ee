#!/usr/bin/env python3
"""Do onnxruntime's integer kernels compute what torch fake-quant computes, on the same file?

    python benchmarks/kernel_gap.py --model mobilevit_xxs --variant qhyvit-ort-int --bits w6a6

Quantizes with one benchmark variant (32 training images), exports, and runs the file three ways on a
seeded test subset: torch fake-quant of the converted graph, onnxruntime with its optimisations off
(every Q/DQ evaluated in float: the same arithmetic as torch) and onnxruntime's default session (the
integer kernels).  Prints each against FP32 and against each other, then the first quantizers whose
integer codes differ between the float-Q/DQ and integer-kernel runs, with the share of codes that
differ.  Writes benchmarks/results/kernel-gap-<model>-<variant>-<bits>.json.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import RESULTS, config_for, load, metrics, quantize, run_model, splits, write_json  # noqa: E402


def quantizer_codes(path: str, x: np.ndarray, optimize: bool) -> dict:
    """Integer codes of every QuantizeLinear (and the Clip that narrows it), by node name, for the images ``x``."""
    import onnx
    import onnxruntime as ort
    m = onnx.load(path)
    outs = {o.name for o in m.graph.output}
    for n in m.graph.node:
        if n.op_type in ("QuantizeLinear", "Clip") and n.output[0] not in outs:
            m.graph.output.append(onnx.helper.make_empty_tensor_value_info(n.output[0]))
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    values = sess.run(None, {sess.get_inputs()[0].name: x})
    producer = {n.output[0]: n.name or n.output[0] for n in m.graph.node if n.op_type in ("QuantizeLinear", "Clip")}
    got = dict(zip(names, values))
    return {node: got[t] for t, node in producer.items() if t in got and got[t].dtype in (np.uint8, np.int8)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mobilevit_xxs")
    ap.add_argument("--variant", default="qhyvit-ort-int")
    ap.add_argument("--bits", default="w6a6")
    ap.add_argument("--eval-images", type=int, default=1000)
    ap.add_argument("--code-images", type=int, default=64, help="images for the per-quantizer code comparison")
    ap.add_argument("--show", type=int, default=12)
    a = ap.parse_args()
    torch.set_num_threads(2)
    from qhyvit_fx.export import export_onnx, ort_callable
    lm, pre = load(a.model)
    calib, batches = splits(a.model, pre, eval_limit=a.eval_images)
    labels = torch.cat([y for _, y in batches])
    fp = run_model(lm.model, batches)
    _, qm = quantize(lm.model, calib, config_for(a.variant, a.bits))
    out = {"model": a.model, "variant": a.variant, "bits": a.bits, "images": len(labels)}
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.onnx")
        export_onnx(qm, path)
        runs = {"torch": run_model(qm, batches),
                "ort_float_qdq": run_model(ort_callable(path, optimize=False), batches),
                "ort_integer": run_model(ort_callable(path, optimize=True), batches)}
        x = batches[0][0][:a.code_images].numpy()
        ref, kern = quantizer_codes(path, x, optimize=False), quantizer_codes(path, x, optimize=True)
    out["vs_fp32"] = {k: metrics(v, fp, labels) for k, v in runs.items()}
    out["agreement"] = {f"{p} vs {q}": metrics(runs[p], runs[q], labels)["agreement"]
                        for p, q in (("ort_float_qdq", "torch"), ("ort_integer", "torch"),
                                     ("ort_integer", "ort_float_qdq"))}
    diverged = []
    for t, codes in ref.items():
        if t in kern:
            diff = np.abs(codes.astype(np.int32) - kern[t].astype(np.int32))
            diverged.append({"node": t, "differ": round(float((diff > 0).mean()), 4), "max": int(diff.max())})
    out["quantizers"] = diverged
    for k, v in out["vs_fp32"].items():
        print(f"{k:14s} vs FP32: top-1 {v['top1']:.2f}  agreement {v['agreement']:.2f}  KL {v['kl']:.5f}")
    for k, v in out["agreement"].items():
        print(f"top-1 agreement {k}: {v:.2f}")
    print(f"codes that differ, float Q/DQ vs integer kernels ({len(x)} images), first {a.show} that differ:")
    for row in [r for r in diverged if r["differ"] > 0][:a.show]:
        print(f"  {row['differ'] * 100:6.2f} %  max {row['max']:3d}  {row['node']}")
    if diverged:
        print(f"  last quantizer: {diverged[-1]['differ'] * 100:.2f} % of codes differ")
    write_json(os.path.join(RESULTS, f"kernel-gap-{a.model}-{a.variant}-{a.bits}.json"), out)


if __name__ == "__main__":
    main()
