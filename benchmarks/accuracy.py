#!/usr/bin/env python3
"""Accuracy of float vs quantized models: torch fake-quant and onnxruntime's real kernels.

    python benchmarks/accuracy.py --models mobilevit_xxs mobilevitv2_050 efficientformerv2_s0 \\
        --bits w8a8 w6a6 w4a8 w4a4 --variants minmax qhyvit qhyvit-paper

Every (model, variant, bits) cell is cached under benchmarks/cache/accuracy/ (delete it to recompute),
so an interrupted run resumes.  Prints Markdown tables and writes benchmarks/results/accuracy.json.
Calibration: 32 training images (seed 0); evaluation: the CIFAR-10 test split (5000 images), or the
468 ImageNet-sample images not used for calibration (tf_efficientnet_lite0).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import CIFAR_MODELS, RESULTS, VARIANTS, cell, load, metrics, run_model, splits, write_json  # noqa: E402

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(CIFAR_MODELS))
    ap.add_argument("--bits", nargs="+", default=["w8a8", "w6a6", "w4a8", "w4a4"])
    ap.add_argument("--variants", nargs="+", default=["minmax", "qhyvit"], choices=sorted(VARIANTS))
    ap.add_argument("--ort", action="store_true", help="also run every cell through onnxruntime")
    ap.add_argument("--eval-images", type=int, default=None, help="seeded subset of the evaluation split")
    ap.add_argument("--fresh", action="store_true",
                    help="measure every cell again (cached cells of older code are overwritten)")
    ap.add_argument("--json", default=None,
                    help="default: benchmarks/results/accuracy.json (accuracy-<N>.json with --eval-images N)")
    args = ap.parse_args()
    if args.json is None:  # a subset run must not overwrite the full-split float row
        suffix = f"-{args.eval_images}" if args.eval_images else ""
        args.json = os.path.join(RESULTS, f"accuracy{suffix}.json")
    torch.set_num_threads(2)
    out = {}
    if os.path.exists(args.json):
        with open(args.json) as f:
            out = json.load(f)
    for name in args.models:
        lm, pre = load(name)
        calib, batches = splits(name, pre, eval_limit=args.eval_images)
        labels = torch.cat([y for _, y in batches])
        fp = run_model(lm.model, batches)
        out.setdefault(name, {})["float"] = metrics(fp, fp, labels)
        print(f"{name}: float top-1 {out[name]['float']['top1']:.2f} on {len(labels)} images", flush=True)
        for bits in args.bits:
            for v in args.variants:
                r = cell(name, v, bits, lm, calib, batches, fp, labels, args.ort, fresh=args.fresh)
                out[name].setdefault(v, {})[bits] = r
                t = r["torch"]
                line = (f"  {v:14s} {bits}: top-1 {t['top1']:.2f} agree {t['agreement']:.2f} kl {t['kl']:.5f}"
                        f"  ({r['calib_seconds']:.0f} s)")
                if "ort" in r:
                    rt = {"openvino": "OpenVINO"}.get(r.get("runtime"), "ORT")
                    line += (f" | {rt} top-1 {r['ort']['top1']:.2f} agree {r['ort']['agreement']:.2f}"
                             f" vs torch {r['ort_vs_torch']['agreement']:.2f} max|d| {r['ort_vs_torch']['max_abs_diff']:.4f}")
                if "coverage" in r:
                    c = r["coverage"]
                    line += (f" | {c['runtime']} int8 {c['integer_ops']}/{c['compute_ops']}"
                             f" ({c['integer_mac_share']:.1f} % MACs)")
                print(line, flush=True)
        write_json(args.json, out)


if __name__ == "__main__":
    main()
