#!/usr/bin/env python3
"""Where does a method's loss come from?  One-group substitutions of Q-HyViT decisions into MinMax.

    python benchmarks/diagnose.py --model mobileformer_26m --bits w8a8 --eval-images 300

Calibrates once with Q-HyViT and once with MinMax (32 training images), then converts the prepared
graph with mixed decisions: all of one method; Q-HyViT only for one layer kind; Q-HyViT weights
only / input quantizers only; and Q-HyViT weights for a single linear layer at a time (the worst
ones listed, with their sampled rows and search objective before / after).  Prints top-1 agreement with the float model on a seeded test subset and writes
benchmarks/results/diagnose-<model>-<bits>.json.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import RESULTS, load, splits, write_json  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mobileformer_26m")
    ap.add_argument("--bits", default="w8a8")
    ap.add_argument("--eval-images", type=int, default=300)
    ap.add_argument("--worst", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(2)
    import qhyvit_fx as q
    from qhyvit_fx.config import parse_bits
    from qhyvit_fx.decisions import Decisions
    from qhyvit_fx.methods.minmax import MinMax
    lm, pre = load(args.model)
    calib, batches = splits(args.model, pre, eval_limit=args.eval_images)
    xs = torch.cat([x for x, _ in batches])
    with torch.no_grad():
        fp = lm.model(xs).argmax(1)
    w, a = parse_bits(args.bits)
    cfg = q.QConfig(w_bits=w, a_bits=a, method="qhyvit", target="fakequant")
    pm = q.prepare(lm.model, calib[:1], cfg)
    q.calibrate(pm, calib)
    dq, dm = q.quant_state(pm).decisions, MinMax(cfg).decide(pm, None)

    def agreement(layers) -> float:
        qm = q.convert(pm, Decisions(layers, dict(dq.meta)))
        with torch.no_grad():
            return round(100.0 * float((qm(xs).argmax(1) == fp).float().mean()), 2)

    def mixed(take_weight, take_inputs):
        out = {}
        for k in dq.layers:
            d = copy.copy(dm.layers[k])
            if take_weight(k):
                d.weight = dq.layers[k].weight
            if take_inputs(k):
                d.inputs = dq.layers[k].inputs
            out[k] = d
        return out

    kind = {k: d.kind for k, d in dq.layers.items()}
    res = {"model": args.model, "bits": args.bits, "images": len(fp),
           "all qhyvit": agreement(dict(dq.layers)), "all minmax": agreement(dict(dm.layers))}
    for kd in ("conv", "linear", "matmul"):
        res[f"qhyvit {kd} only"] = agreement({k: (dq.layers[k] if kind[k] == kd else dm.layers[k]) for k in dq.layers})
    res["qhyvit weights only"] = agreement(mixed(lambda k: True, lambda k: False))
    res["qhyvit inputs only"] = agreement(mixed(lambda k: False, lambda k: True))
    single = sorted((agreement(mixed(lambda k, l=l: k == l, lambda k: False)), l)
                    for l in dq.layers if kind[l] == "linear")
    res["worst single linear weights"] = [
        {"layer": l, "agreement": v, "rows": dq.layers[l].info.get("rows"),
         "search objective before / after": [dq.layers[l].error.get("before"), dq.layers[l].error.get("after")]}
        for v, l in single[:args.worst]]
    for k, v in res.items():
        print(f"{k:28s} {v}")
    write_json(os.path.join(RESULTS, f"diagnose-{args.model}-{args.bits}.json"), res)


if __name__ == "__main__":
    main()
