#!/usr/bin/env python3
"""Peers on the same images as ours: onnxruntime ``quantize_static`` and NNCF (ONNX backend), W8A8.

    python benchmarks/peers.py --models mobilevit_xxs mobilevitv2_050 efficientformerv2_s0 \\
        --ours benchmarks/results/shipped.json

Every contender quantizes the FP32 ONNX of the checkpoint with the same 32 calibration images (train
split, seed 0) that our cells use, and runs through onnxruntime's default session (its integer kernels)
on the same 5000 test images, so each row is paired with ours image for image. Contenders:
* ``ort-qs``: ``quantize_static``, QDQ, QUInt8 activations (int8 activations leave conv/matmul in
  float on x86), per-channel QInt8 weights, MinMax ranges, every op type it quantizes;
* ``ort-qs-convmm``: the same, only Conv / MatMul / Gemm inputs (closest to our partial mode);
* ``nncf``: ``nncf.quantize`` with its default preset; ``nncf-transformer``: ``model_type=TRANSFORMER``
  (mixed preset, SmoothQuant).
Neither peer has 6- or 4-bit activation types, so the comparison is W8A8. Coverage is the share of
conv / gemm / matmul that onnxruntime runs in integer kernels (``qhyvit check``). ``--ours`` adds our
shipped cells (``accuracy.py`` JSON with ``-ort`` variants) as rows of the same table.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (CIFAR_MODELS, RESULTS, cached, config_for, export_fp32, load, metrics,  # noqa: E402
                    ort_quantize, quantize, run_model, splits, store, write_json)

CONTENDERS = ("ort-qs", "ort-qs-convmm", "nncf", "nncf-transformer")


def build(kind: str, fp32: str, out: str, calib: torch.Tensor) -> None:
    if kind.startswith("ort-qs"):
        from onnxruntime.quantization import QuantType
        kw = {"op_types_to_quantize": ["Conv", "MatMul", "Gemm"]} if kind == "ort-qs-convmm" else {}
        ort_quantize(fp32, out, calib, QuantType.QUInt8, per_channel=True, **kw)
        return
    import nncf
    import onnx
    data = nncf.Dataset([{"input": calib[i:i + 1].numpy()} for i in range(len(calib))])
    kw = {"model_type": nncf.ModelType.TRANSFORMER} if kind == "nncf-transformer" else {}
    q = nncf.quantize(onnx.load(fp32), data, subset_size=len(calib), **kw)
    onnx.save(q, out)


def peer_cell(name: str, kind: str, lm, calib, batches, fp, labels, fresh: bool) -> dict:
    key = {"model": name, "peer": kind, "images": len(labels)}
    hit = None if fresh else cached("peers", key)
    if hit is not None:
        return hit
    from qhyvit_fx.check import check_onnx
    from qhyvit_fx.export import ort_callable
    with tempfile.TemporaryDirectory() as d:
        fp32, path = os.path.join(d, "fp32.onnx"), os.path.join(d, "q.onnx")
        export_fp32(lm.model, calib, fp32)
        t0 = time.time()
        build(kind, fp32, path, calib)
        secs = time.time() - t0
        rep = check_onnx(path)
        res = {"key": key, "calib_seconds": round(secs, 2), "ort": metrics(run_model(ort_callable(path), batches),
                                                                          fp, labels),
               "coverage": {"integer": rep.integer_count, "total": len(rep.ops)}}
    store("peers", key, res)
    return res


def our_coverage(name: str, variant: str, lm, calib) -> dict:
    """Integer-kernel coverage of our W8A8 ONNX for ``variant`` (the same deterministic quantization
    as the accuracy cell), cached."""
    key = {"model": name, "variant": variant, "bits": "w8a8"}
    hit = cached("coverage", key)
    if hit is None:
        from qhyvit_fx.check import check_onnx
        from qhyvit_fx.export import export_onnx
        _, qm = quantize(lm.model, calib, config_for(variant, "w8a8"))
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "m.onnx")
            export_onnx(qm, path)
            rep = check_onnx(path)
        hit = {"key": key, "integer": rep.integer_count, "total": len(rep.ops)}
        store("coverage", key, hit)
    return hit


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(CIFAR_MODELS))
    ap.add_argument("--peers", nargs="+", default=list(CONTENDERS), choices=CONTENDERS)
    ap.add_argument("--ours", default=None, help="accuracy.py JSON whose -ort variants join the table")
    ap.add_argument("--our-variants", nargs="+", default=["minmax-ort", "qhyvit-ort"],
                    help="variants of --ours shown (each quantized again, deterministically, for its coverage)")
    ap.add_argument("--fresh", action="store_true", help="measure cached cells again")
    ap.add_argument("--json", default=os.path.join(RESULTS, "peers.json"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    ours = {}
    if args.ours:
        with open(args.ours) as f:
            ours = json.load(f)
    out = {}
    rows = []
    for name in args.models:
        lm, pre = load(name)
        calib, batches = splits(name, pre)
        labels = torch.cat([y for _, y in batches])
        fp = run_model(lm.model, batches)
        out[name] = {"float": metrics(fp, fp, labels)}
        for kind in args.peers:
            r = peer_cell(name, kind, lm, calib, batches, fp, labels, args.fresh)
            out[name][kind] = r
            rows.append((name, kind, r["ort"], r["coverage"]))
            print(f"{name} {kind}: top-1 {r['ort']['top1']:.2f} agree {r['ort']['agreement']:.2f} "
                  f"kl {r['ort']['kl']:.5f} coverage {r['coverage']['integer']}/{r['coverage']['total']}", flush=True)
        for variant in args.our_variants:
            r = (ours.get(name) or {}).get(variant, {}).get("w8a8")
            if r and "ort" in r:
                rows.append((name, f"qhyvit-fx {variant}", r["ort"], our_coverage(name, variant, lm, calib)))
    write_json(args.json, out)
    print("\n| model | contender | top-1 | drop | agreement | KL | integer conv/gemm/matmul |\n|---|---|---|---|---|---|---|")
    for name, kind, m, cov in rows:
        fl = out[name]["float"]["top1"]
        c = f"{cov['integer']}/{cov['total']}"
        print(f"| {name} | {kind} | {m['top1']:.2f} | {fl - m['top1']:+.2f} | {m['agreement']:.2f} | "
              f"{m['kl']:.5f} | {c} |")


if __name__ == "__main__":
    main()
