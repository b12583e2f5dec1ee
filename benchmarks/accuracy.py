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
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import CIFAR_MODELS, RESULTS, cached, load, splits, store, write_json  # noqa: E402

# named configurations (QConfig overrides); 'ort' variants target onnxruntime's integer kernels on
# this CPU (per-tensor activations, 7-bit weight codes on AVX2) and are also run through onnxruntime
VARIANTS = {
    "minmax": dict(method="minmax"),
    "easyquant": dict(method="easyquant"),
    "qhyvit": dict(method="qhyvit"),
    "qhyvit-b12": dict(method="qhyvit", act_channel_beta=1.2),
    "qhyvit-flip": dict(method="qhyvit", calib_augment="flip", act_channel_beta=1.2),
    "qhyvit-paper": dict(method="qhyvit", act_cv=False, calib_augment="none", act_channel_beta=1.2),
    "qhyvit-fisher": dict(method="qhyvit", grad_source="fisher", calib_augment="none", act_channel_beta=1.2),
    "qhyvit-bc": dict(method="qhyvit", bias_correction=True, calib_augment="none", act_channel_beta=1.2),
    "qhyvit-nodamp": dict(method="qhyvit", grad_damping=0.0, calib_augment="none", act_channel_beta=1.2),
    # Table 5 ablation: scale only, + granularity, + scheme, + bridge objective, + K-fold validation,
    # + per-channel activation ranges widened past beta (the default); + flipped calibration images
    "abl-scale": dict(method="qhyvit", search_granularity=False, search_scheme=False, bridge_objective=False,
                      act_cv=False, calib_augment="none", act_channel_beta=1.2),
    "abl-gran": dict(method="qhyvit", search_scheme=False, bridge_objective=False, act_cv=False,
                     calib_augment="none", act_channel_beta=1.2),
    "abl-scheme": dict(method="qhyvit", bridge_objective=False, act_cv=False, calib_augment="none", act_channel_beta=1.2),
    "abl-bridge": dict(method="qhyvit", act_cv=False, calib_augment="none", act_channel_beta=1.2),
    "abl-cv": dict(method="qhyvit", calib_augment="none", act_channel_beta=1.2),
    "abl-wide": dict(method="qhyvit"),
    "abl-flip": dict(method="qhyvit", calib_augment="flip", act_channel_beta=1.2),
    # the other baselines (issue 7), partial mode, and everything in full mode (paper Table 2)
    "ptq4vit": dict(method="ptq4vit"),
    "repq-vit": dict(method="repq-vit"),
    "fq-vit": dict(method="fq-vit"),
    "minmax-full": dict(method="minmax", mode="full"),
    "easyquant-full": dict(method="easyquant", mode="full"),
    "ptq4vit-full": dict(method="ptq4vit", mode="full"),
    "repq-vit-full": dict(method="repq-vit", mode="full"),
    "fq-vit-full": dict(method="fq-vit", mode="full"),
    "qhyvit-full": dict(method="qhyvit", mode="full"),
    "minmax-ort": dict(method="minmax", target="ort", kernel="auto"),
    "qhyvit-ort": dict(method="qhyvit", target="ort", kernel="auto"),
    # what each deployable piece gives (shipped ablation): no migrated per-channel inputs; and
    # also output quantizers at the activation width (before output_bits)
    "qhyvit-ort-nomig": dict(method="qhyvit", target="ort", kernel="auto", act_channel_migrate=False),
    "qhyvit-ort-nomig-out6": dict(method="qhyvit", target="ort", kernel="auto", act_channel_migrate=False,
                                  output_bits=6),
    "qhyvit-ort-searchout": dict(method="qhyvit", target="ort", kernel="auto", search_outputs=True),
}


def metrics(logits: torch.Tensor, ref: torch.Tensor, labels: torch.Tensor) -> dict:
    """qhyvit_fx.evaluate.Metrics on whole-split logits, in the cached cells' format."""
    from qhyvit_fx.evaluate import Metrics
    m = Metrics("").update(logits, ref, labels)
    return {"top1": m.top1, "agreement": m.agreement, "kl": m.kl,
            "sqnr_db": m.sqnr_db if m.noise > 0 else None, "max_abs_diff": m.max_abs, "images": m.n}


def run_model(fn, batches) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([fn(x).float() for x, _ in batches])


def config_for(variant: str, bits: str):
    import qhyvit_fx as q
    from qhyvit_fx.config import parse_bits
    from qhyvit_fx.target import weight_range_bits
    w, a = parse_bits(bits)
    kw = dict(VARIANTS[variant])
    kernel = kw.pop("kernel", None)
    if kernel:
        kw["weight_range_bits"] = weight_range_bits(kernel, w)
    return q.QConfig.flat(w_bits=w, a_bits=a, **kw)


def lookup(name, variant, bits, images: int):
    """The cached cell, or None; a cell whose config differs from today's (a changed default)
    does not count."""
    hit = cached("accuracy", {"model": name, "variant": variant, "bits": bits, "images": images})
    if hit is None:
        return None
    old, new = dict(hit.get("config") or {}), config_for(variant, bits).flat_dict()
    old.update(old.pop("method_params", None) or {})  # cells recorded before methods owned their parameters
    if new["method"] == "qhyvit":                     # are flat, and hold every method's parameters
        old.setdefault("calib_augment", "none")      # cells from before the option ran without augmentation
        old.setdefault("act_channel_beta", 1.2)      # ... and with the paper's grid for per-channel ranges
    old = {k: v for k, v in old.items() if k in new}
    # cells from before output_bits / act_channel_migrate existed, where neither changes anything
    if not (old.get("target") == "ort" or old.get("quantize_outputs")) or old.get("a_bits") == 8:
        old.setdefault("output_bits", new["output_bits"])
    if new["method"] == "qhyvit" and (old.get("target") != "ort" or old.get("mode") == "integer"):
        old.setdefault("act_channel_migrate", new["act_channel_migrate"])
    if new["method"] == "qhyvit" and not (old.get("target") == "ort" or old.get("quantize_outputs")):
        old.setdefault("search_outputs", new["search_outputs"])
    return hit if old == new else None


def cell(name, variant, bits, lm, calib, batches, fp, labels, ort: bool):
    key = {"model": name, "variant": variant, "bits": bits, "images": len(labels)}
    cfg = config_for(variant, bits)
    hit = lookup(name, variant, bits, len(labels))
    wants_ort = ort or "-ort" in variant
    if hit is not None and ("ort" in hit or not wants_ort):
        return hit
    import qhyvit_fx as q
    from qhyvit_fx.export import export_onnx, ort_callable
    t0 = time.time()
    pm = q.prepare(lm.model, calib[:1], cfg)
    q.calibrate(pm, calib)
    qm = q.convert(pm)
    secs = time.time() - t0
    res = {"key": key, "config": cfg.to_dict(), "calib_seconds": round(secs, 2),
           "torch": metrics(run_model(qm, batches), fp, labels)}
    dec = qm.meta["qhyvit_decisions"]
    res["choices"] = _choices(dec)
    if wants_ort:
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "m.onnx")
            export_onnx(qm, path)
            qlogits = run_model(qm, batches)
            ologits = run_model(ort_callable(path), batches)
            res["ort"] = metrics(ologits, fp, labels)
            res["ort_vs_torch"] = metrics(ologits, qlogits, labels)
            res["onnx_bytes"] = os.path.getsize(path)
    store("accuracy", key, res)
    return res


def _choices(dec) -> dict:
    from qhyvit_fx.report import choice_counts
    return choice_counts(dec)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(CIFAR_MODELS))
    ap.add_argument("--bits", nargs="+", default=["w8a8", "w6a6", "w4a8", "w4a4"])
    ap.add_argument("--variants", nargs="+", default=["minmax", "qhyvit"], choices=sorted(VARIANTS))
    ap.add_argument("--ort", action="store_true", help="also run every cell through onnxruntime")
    ap.add_argument("--eval-images", type=int, default=None, help="seeded subset of the evaluation split")
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
                r = cell(name, v, bits, lm, calib, batches, fp, labels, args.ort)
                out[name].setdefault(v, {})[bits] = r
                t = r["torch"]
                line = (f"  {v:14s} {bits}: top-1 {t['top1']:.2f} agree {t['agreement']:.2f} kl {t['kl']:.5f}"
                        f"  ({r['calib_seconds']:.0f} s)")
                if "ort" in r:
                    line += (f" | ORT top-1 {r['ort']['top1']:.2f} agree {r['ort']['agreement']:.2f}"
                             f" vs torch {r['ort_vs_torch']['agreement']:.2f} max|d| {r['ort_vs_torch']['max_abs_diff']:.4f}")
                print(line, flush=True)
        write_json(args.json, out)


if __name__ == "__main__":
    main()
