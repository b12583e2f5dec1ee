#!/usr/bin/env python3
"""Calibration cost of the Q-HyViT search: wall time and peak RSS, one fresh process per run.

    python benchmarks/speed.py --runs mobilevit_xxs:256 mobilevit_xxs:64 mobilevitv2_050:64 efficientformerv2_s0:64

Each run: trained CIFAR weights, 32 calibration images (train split) resized to the given size,
prepare + calibrate (collection and search) + convert, W8A8 unless --bits; 2 threads.  The machine
must be otherwise idle for the numbers to mean anything.  Writes benchmarks/results/speed.json.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def one(model: str, img: int, bits: str, method: str, target: str = "fakequant") -> dict:
    """Runs inside the child process."""
    import torch
    torch.set_num_threads(2)
    from common import load, splits
    import qhyvit_fx as q
    from qhyvit_fx.config import parse_bits
    lm, pre = load(model)
    pre.img_size = img
    calib, _ = splits(model, pre, eval_limit=1)
    w, a = parse_bits(bits)
    cfg = q.QConfig(w_bits=w, a_bits=a, method=method, target=target)
    t0 = time.time()
    pm = q.prepare(lm.model, calib[:1], cfg)
    q.calibrate(pm, calib)
    q.convert(pm)
    total = time.time() - t0
    meta = q.quant_state(pm).decisions.meta
    return {"model": model, "img": img, "bits": bits, "method": method, "target": target, "seconds": round(total, 1),
            "seconds_collect": meta.get("seconds_collect"), "images": int(calib.shape[0]),
            "layers": len(q.quant_state(pm).decisions.layers),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024, 2)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", nargs="+", default=["mobilevit_xxs:256", "mobilevit_xxs:64", "mobilevitv2_050:64",
                                                  "efficientformerv2_s0:64"])
    ap.add_argument("--bits", default="w8a8")
    ap.add_argument("--method", default="qhyvit")
    ap.add_argument("--target", default="fakequant", choices=("fakequant", "ort"),
                    help="ort: what --target ort (the CLI default) searches")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--json", default=os.path.join(HERE, "results", "speed.json"))
    args = ap.parse_args()
    if args.child:
        m, img = args.child.split(":")
        print(json.dumps(one(m, int(img), args.bits, args.method, args.target)))
        return
    from common import write_json
    out = json.load(open(args.json)) if os.path.exists(args.json) else {}
    for run in args.runs:
        r = subprocess.run([sys.executable, __file__, "--child", run, "--bits", args.bits, "--method", args.method,
                            "--target", args.target],
                           capture_output=True, text=True)
        if r.returncode != 0:
            print(r.stderr[-2000:], file=sys.stderr)
            raise SystemExit(f"run {run} failed")
        res = json.loads(r.stdout.strip().splitlines()[-1])     # peak RSS: the child's own ru_maxrss (KiB)
        out[f"{run}:{args.bits}:{args.method}" + ("" if args.target == "fakequant" else f":{args.target}")] = res
        print(f"{run:26s} {args.bits} {args.method} {args.target}: {res['seconds']:6.1f} s (collect {res['seconds_collect']} s), "
              f"peak RSS {res['peak_rss_gb']:.2f} GB, {res['layers']} layers", flush=True)
        write_json(args.json, out)


if __name__ == "__main__":
    main()
