#!/usr/bin/env python3
"""Deployment benchmark: onnxruntime latency, model size and accuracy through ORT's real kernels.

    python benchmarks/deploy.py --models mobilevit_xxs mobilevitv2_050 efficientformerv2_s0 tf_efficientnet_lite0

For each model, side by side: FP32 ONNX; onnxruntime ``quantize_static`` on the same FP32 ONNX with
the same 32 calibration images (its defaults: QDQ, QInt8 activations and weights; and its all-integer
setting: QUInt8 activations); and ours (W8A8 MinMax and Q-HyViT, --target ort, weight codes for this
CPU's kernels).  Latency: median of repeated runs, 1 and 2 threads, batch 1 and 8.  Accuracy: top-1
through onnxruntime (default session options) and agreement with the float model.
Results are cached per cell under benchmarks/cache/deploy/; JSON goes to benchmarks/results/deploy.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import CACHE, CIFAR_MODELS, IMAGENET_CONTROL, RESULTS, cached, load, splits, store, write_json  # noqa: E402
from accuracy import metrics, run_model  # noqa: E402


def export_fp32(model, x, path):
    with torch.no_grad():
        torch.onnx.export(model, (x[:1],), path, dynamo=False, opset_version=17, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})


def ort_quantize(fp32, out, calib, act_type):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"input": calib[i:i + 1].numpy()} for i in range(len(calib))])

        def get_next(self):
            return next(self.it, None)
    quantize_static(fp32, out, Reader(), quant_format=QuantFormat.QDQ, activation_type=act_type,
                    weight_type=QuantType.QInt8)


def latency(path, x, threads, runs):
    from qhyvit_fx.export import ort_session
    sess = ort_session(path, threads)
    feed = {"input": x.numpy()}
    for _ in range(5):
        sess.run(None, feed)
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, feed)
        ts.append(time.perf_counter() - t)
    return float(np.median(ts)) * 1000


def build(kind, name, lm, calib, d):
    """Write the ONNX for one contender into folder d; returns (path, info)."""
    from onnxruntime.quantization import QuantType
    fp32 = os.path.join(d, "fp32.onnx")
    if not os.path.exists(fp32):
        export_fp32(lm.model, calib, fp32)
    if kind == "fp32":
        return fp32, {}
    if kind in ("ort-default", "ort-quint8"):
        path = os.path.join(d, f"{kind}.onnx")
        ort_quantize(fp32, path, calib, QuantType.QInt8 if kind == "ort-default" else QuantType.QUInt8)
        return path, {}
    import qhyvit_fx as q
    from qhyvit_fx.export import export_onnx
    from qhyvit_fx.target import weight_range_bits
    method = kind.split("-")[0]
    cfg = q.QConfig(w_bits=8, a_bits=8, method=method, target="ort", weight_range_bits=weight_range_bits("auto", 8))
    t = time.time()
    pm = q.prepare(lm.model, calib[:1], cfg)
    q.calibrate(pm, calib)
    qm = q.convert(pm)
    path = os.path.join(d, f"{kind}.onnx")
    export_onnx(qm, path)
    return path, {"calib_seconds": round(time.time() - t, 1), "weight_range_bits": cfg.weight_range_bits,
                  "torch": None, "_qm": qm}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(CIFAR_MODELS) + [IMAGENET_CONTROL])
    ap.add_argument("--kinds", nargs="+", default=["fp32", "ort-default", "ort-quint8", "minmax-w8a8", "qhyvit-w8a8"])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--eval-images", type=int, default=None)
    ap.add_argument("--json", default=os.path.join(RESULTS, "deploy.json"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    from qhyvit_fx.check import check_onnx
    out = json.load(open(args.json)) if os.path.exists(args.json) else {}
    for name in args.models:
        lm, pre = load(name)
        calib, batches = splits(name, pre, eval_limit=args.eval_images)
        labels = torch.cat([y for _, y in batches])
        fp = run_model(lm.model, batches)
        res = out.setdefault(name, {})
        with tempfile.TemporaryDirectory() as d:
            for kind in args.kinds:
                key = {"model": name, "kind": kind, "images": len(labels), "runs": args.runs}
                hit = cached("deploy", key)
                if hit is None:
                    path, info = build(kind, name, lm, calib, d)
                    qm = info.pop("_qm", None)
                    from qhyvit_fx.export import ort_callable
                    ologits = run_model(ort_callable(path), batches)
                    hit = {"key": key, **info, "size_bytes": os.path.getsize(path),
                           "ort": metrics(ologits, fp, labels)}
                    if qm is not None:
                        hit["torch"] = metrics(run_model(qm, batches), fp, labels)
                        hit["ort_vs_torch"] = metrics(ologits, run_model(qm, batches), labels)
                    rep = check_onnx(path)
                    hit["check"] = {"integer_ops": rep.integer_count, "ops": len(rep.ops),
                                    "integer_mac_share": round(rep.mac_share, 2), "by_op": rep.by_op()}
                    x1, x8 = calib[:1], calib[:8]
                    hit["latency_ms"] = {f"t{t}_b{b}": latency(path, x, t, args.runs if b == 1 else
                                                                 max(10, args.runs // 4))
                                         for t in (1, 2) for b, x in ((1, x1), (8, x8))}
                    store("deploy", key, hit)
                res[kind] = hit
                o = hit["ort"]
                print(f"{name:22s} {kind:12s} int {hit['check']['integer_ops']:3d}/{hit['check']['ops']:<3d} "
                      f"size {hit['size_bytes'] / 1e6:6.2f} MB  top-1 {o['top1']:.2f} agree {o['agreement']:.2f}  "
                      + " ".join(f"{k} {v:.2f}ms" for k, v in hit["latency_ms"].items()), flush=True)
        write_json(args.json, out)


if __name__ == "__main__":
    main()
