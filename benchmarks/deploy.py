#!/usr/bin/env python3
"""Deployment benchmark: onnxruntime latency, model size and accuracy through ORT's real kernels.

    python benchmarks/deploy.py --models mobilevit_xxs mobilevitv2_050 efficientformerv2_s0 tf_efficientnet_lite0

For each model, side by side: FP32 ONNX (torch.onnx.export, same opset as ours); onnxruntime
``quantize_static`` on that FP32 ONNX with the same 32 calibration images (its defaults: QDQ, QInt8
activations and weights; its all-integer setting: QUInt8 activations; and, to show what our export
passes are worth on their own, its QUInt8 setting on our shape-specialised float graph,
``ort-quint8-spec``); and ours at W8A8, --target ort, weight codes for this CPU's kernels: MinMax and
Q-HyViT in partial mode (conv/linear/matmul quantized) and in integer mode (``-int``: also adds,
products, sigmoids, softmax and concats, so onnxruntime runs them as QLinear ops).
Latency: 1 and 2 threads, batch 1 and 8, all contenders of a model measured in interleaved rounds in
a torch-free subprocess (ort_latency.py); ratios are medians of per-round ratios to ORT QUInt8.
Accuracy: top-1 through onnxruntime (default session options) and agreement with the float model.
Cells are cached under benchmarks/cache/deploy/ (ONNX files under cache/deploy-onnx/, so latency can
be re-measured); JSON goes to benchmarks/results/deploy.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import subprocess
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (CACHE, CIFAR_MODELS, IMAGENET_CONTROL, RESULTS, cached, export_fp32, load, metrics,  # noqa: E402
                    ort_quantize, quantize, run_model, splits, store, write_json)


def export_fp32_specialised(model, x, path):
    """The float model through our capture and export passes (shape specialisation, GroupNorm
    lowering), no quantization."""
    from qhyvit_fx.capture import capture
    from qhyvit_fx.export import export_onnx
    from qhyvit_fx.passes.cleanup import remove_noops
    export_onnx(remove_noops(capture(model, (x[:1],))), path, example_input=x[:1])


LATENCY_CONFIGS = (("t1_b1", 1, 1), ("t2_b1", 2, 1), ("t1_b8", 1, 8), ("t2_b8", 2, 8))


def latencies(paths, runs, rounds):
    """{config: {"ms": [...], "ratio": [...]}} for the files in ``paths``, ratios to ``paths[0]``; measured
    side by side in a subprocess without torch (see ort_latency.py)."""
    out = {}
    for cfg, t, b in LATENCY_CONFIGS:
        cmd = [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "ort_latency.py"),
               "--threads", str(t), "--batch", str(b), "--runs", str(runs if b == 1 else max(10, runs // 4)),
               "--rounds", str(rounds)] + list(paths)
        out[cfg] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    return out


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
    if kind == "ort-quint8-spec":
        spec = os.path.join(d, "fp32-spec.onnx")
        export_fp32_specialised(lm.model, calib, spec)
        path = os.path.join(d, f"{kind}.onnx")
        ort_quantize(spec, path, calib, QuantType.QUInt8)
        return path, {}
    import qhyvit_fx as q
    from qhyvit_fx.export import export_onnx
    from qhyvit_fx.target import weight_range_bits
    method = kind.split("-")[0]
    mode = "integer" if kind.endswith("-int") else "partial"
    cfg = q.QConfig(w_bits=8, a_bits=8, method=method, target="ort", mode=mode,
                    weight_range_bits=weight_range_bits("auto", 8))
    t = time.time()
    _, qm = quantize(lm.model, calib, cfg)
    path = os.path.join(d, f"{kind}.onnx")
    export_onnx(qm, path)
    return path, {"calib_seconds": round(time.time() - t, 1), "weight_range_bits": cfg.weight_range_bits,
                  "mode": mode, "torch": None, "_qm": qm}


KINDS = ["fp32", "ort-default", "ort-quint8", "ort-quint8-spec", "minmax-w8a8", "qhyvit-w8a8", "minmax-w8a8-int",
         "qhyvit-w8a8-int"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(CIFAR_MODELS) + [IMAGENET_CONTROL])
    ap.add_argument("--kinds", nargs="+", default=KINDS, help="contenders (ort-quint8 is the latency reference)")
    ap.add_argument("--runs", type=int, default=50, help="timed runs per round at batch 1 (a quarter at batch 8)")
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds per latency configuration")
    ap.add_argument("--eval-images", type=int, default=None)
    ap.add_argument("--json", default=os.path.join(RESULTS, "deploy.json"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    from qhyvit_fx.check import check_onnx
    from qhyvit_fx.export import ort_callable
    kinds = ["ort-quint8"] + [k for k in args.kinds if k != "ort-quint8"]
    out = json.load(open(args.json)) if os.path.exists(args.json) else {}
    for name in args.models:
        lm, pre = load(name)
        calib, batches = splits(name, pre, eval_limit=args.eval_images)
        labels = torch.cat([y for _, y in batches])
        fp = None
        res = out.setdefault(name, {})
        d = os.path.join(CACHE, "deploy-onnx", name)       # ONNX files kept, so latency can be re-measured
        os.makedirs(d, exist_ok=True)
        paths = {}
        for kind in kinds:
            key = {"model": name, "kind": kind, "images": len(labels), "export": 4}
            hit = cached("deploy", key)
            path = os.path.join(d, f"{kind}.onnx")
            if hit is None or not os.path.exists(path):
                if fp is None:
                    fp = run_model(lm.model, batches)
                path, info = build(kind, name, lm, calib, d)
                qm = info.pop("_qm", None)
                ologits = run_model(ort_callable(path), batches)
                hit = {"key": key, **info, "size_bytes": os.path.getsize(path), "ort": metrics(ologits, fp, labels)}
                if qm is not None:
                    tl = run_model(qm, batches)
                    hit["torch"] = metrics(tl, fp, labels)
                    hit["ort_vs_torch"] = metrics(ologits, tl, labels)
                rep = check_onnx(path)
                hit["check"] = {"integer_ops": rep.integer_count, "ops": len(rep.ops),
                                "integer_mac_share": round(rep.mac_share, 2), "by_op": rep.by_op(),
                                "optimized_ops": rep.optimized_ops}
                store("deploy", key, hit)
            paths[kind] = path
            res[kind] = hit
        lat = latencies([paths[k] for k in kinds], args.runs, args.rounds)
        for i, kind in enumerate(kinds):
            h = res[kind]
            h["latency_ms"] = {c: round(v["ms"][i], 3) for c, v in lat.items()}
            h["latency_x_ort_quint8"] = {c: round(v["ratio"][i], 3) for c, v in lat.items()}
            o = h["ort"]
            print(f"{name:22s} {kind:16s} int {h['check']['integer_ops']:3d}/{h['check']['ops']:<3d} "
                  f"size {h['size_bytes'] / 1e6:6.2f} MB  top-1 {o['top1']:.2f} agree {o['agreement']:.2f}  "
                  + " ".join(f"{c} {h['latency_ms'][c]:.2f}ms x{h['latency_x_ort_quint8'][c]:.2f}"
                             for c in h["latency_ms"]), flush=True)
        out[name] = {k: res[k] for k in ["fp32"] + [k for k in kinds if k != "fp32"] if k in res}
        write_json(args.json, out)


if __name__ == "__main__":
    main()
