#!/usr/bin/env python3
"""Development split: compare configurations on CIFAR-10 *training* images held out from calibration.

    python benchmarks/holdout.py --model mobilevitv2_050 --images 5000 \\
        --configs '[{"method": "qhyvit", "w_bits": 8, "a_bits": 8, "calib_augment": "none"},
                    {"method": "qhyvit", "w_bits": 8, "a_bits": 8, "calib_augment": "flip"}]'

Design choices are made here, never on the test split (the results tables use the test split, and
the held-out images the project is checked on are unseen).  Calibration: the same 32 training
images as benchmarks/accuracy.py (seed 0).  Evaluation: a seeded sample (seed 123) of the other
training images.  Each config is a JSON object of QConfig fields; one line per config with top-1,
agreement with the float model and mean KL(float || quantized).  Nothing is cached or written.

Two bounds on what calibration data can buy (both still training images only):
``--calib-images N`` calibrates on N training images (seed 0) instead of 32, and ``--calib-on-eval``
calibrates on the evaluation images themselves, so the ranges and the objective have seen every
image they are scored on.  If a goal is missed even then, more or better calibration data cannot
reach it with the same quantizer format.
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
from common import holdout, logits, quantize  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mobilevit_xxs")
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--configs", required=True, help="JSON list of QConfig.flat keyword dicts (core fields and method parameters)")
    ap.add_argument("--calib-images", type=int, default=32, help="training images to calibrate on (default 32)")
    ap.add_argument("--runtime", choices=("torch", "ort", "both"), default="torch",
                    help="score the fake-quant GraphModule (torch), the exported ONNX through onnxruntime's "
                         "kernels (ort: what ships), or both")
    ap.add_argument("--calib-on-eval", action="store_true",
                    help="calibrate on the evaluation images themselves (an upper bound, not a result)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    import qhyvit_fx as q
    from qhyvit_fx.evaluate import Metrics
    from qhyvit_fx.export import ort_callable
    lm, calib, xs, ys = holdout(args.model, args.images, args.calib_images)
    if args.calib_on_eval:
        calib = xs
    fp = logits(lm.model, xs)
    print(f"{args.model}: float top-1 {100 * float((fp.argmax(1) == ys).float().mean()):.2f} "
          f"on {len(ys)} held-out training images; calibration on "
          f"{'those same images' if args.calib_on_eval else f'{len(calib)} other training images'}", flush=True)
    for c in json.loads(args.configs):
        t0 = time.time()
        cfg = q.QConfig.flat(**{"target": "fakequant", **c})     # no target: the fake-quant study, as recorded
        _, qm = quantize(lm.model, calib, cfg)
        scores = []
        if args.runtime in ("torch", "both"):
            scores.append(("torch", Metrics("").update(logits(qm, xs), fp, ys)))
        if args.runtime in ("ort", "both"):
            with tempfile.TemporaryDirectory() as d:
                path = os.path.join(d, "model.onnx")
                q.export_onnx(qm, path)
                try:
                    scores.append(("ort", Metrics("").update(logits(ort_callable(path), xs), fp, ys)))
                except Exception as e:    # per-channel activations (target fakequant) fail in ORT's kernels
                    scores.append(("ort", f"fails ({str(e).splitlines()[0][:120]})"))
        text = "; ".join(f"{rt} {m}" if isinstance(m, str) else
                         f"{rt} top-1 {m.top1:.2f} agree {m.agreement:.2f} KL {m.kl:.5f}" for rt, m in scores)
        print(f"{json.dumps(c)}: {text} ({time.time() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
