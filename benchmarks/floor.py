#!/usr/bin/env python3
"""How much agreement can a better scale choice still buy?  A per-layer floor, on held-out images.

    python benchmarks/floor.py --model mobilevit_xxs --bits w8a8 --images 1000 --sweep 4

Calibrates Q-HyViT on the 32 training images of benchmarks/holdout.py and scores on held-out
training images (never the test split):

1. the whole model, weights only (input quantizers removed) and input quantizers only;
2. each layer's input quantizers alone (weights and every other quantizer in float): KL to the
   float predictions and the share of flipped predictions;
3. for the ``--sweep`` layers with the largest KL in step 2 (single-input conv/linear layers), an
   *oracle* sweep scored on the held-out images themselves: per-tensor asymmetric ranges clipped
   to fractions of the calibration range, per-channel asymmetric min-max ranges, and per-channel
   ranges measured on the held-out images, and per-channel calibration ranges widened (x1.2-2, or
   halfway to the tensor range).  The best of these is a lower bound for what any
   scale / granularity / scheme choice could reach for that layer with this format;
4. the input-quantizer KL if every swept layer got its oracle choice (step 1's value minus the
   summed per-layer gains; step 2 shows the per-layer KLs add up).

Prints a table and writes benchmarks/results/floor-<model>-<bits>[-<config>].json.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import RESULTS, holdout, logits, write_json  # noqa: E402

CLIPS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)
CHANNEL_CLIPS = (0.9, 1.0, 1.2, 1.5, 2.0)


def only(dec, keep_weights: bool, keep_inputs, layer_inputs=None):
    """A copy of ``dec`` with weights kept or removed and the input quantizers kept where
    ``keep_inputs(name)``; ``layer_inputs`` replaces one layer's input quantizers."""
    d = copy.deepcopy(dec)
    for name, ld in d.layers.items():
        if not keep_weights:
            ld.weight, ld.bias_delta = None, None
        if not keep_inputs(name):
            ld.inputs, ld.output = {}, None
    if layer_inputs is not None:
        d.layers[layer_inputs[0]].inputs = {0: layer_inputs[1]}
    return d


def asym(spec, lo: torch.Tensor, hi: torch.Tensor, per_channel: bool, axis: int):
    """Asymmetric unsigned quantizer params covering [lo, hi] (widened to contain 0)."""
    from qhyvit_fx.quantizer import params_from_range
    return params_from_range(lo, hi, dataclasses.replace(spec, symmetric=False, signed=False,
                                                         per_channel=per_channel, axis=axis))


def input_ranges(gm, layer: str, xs: torch.Tensor, axis: int):
    """Per-channel min / max of ``layer``'s input over ``xs``."""
    from qhyvit_fx.quantizer import channel_minmax
    st = {}

    def hook(_m, args, _out):
        lo, hi = channel_minmax(args[0].detach(), axis)
        st["lo"] = lo if "lo" not in st else torch.minimum(st["lo"], lo)
        st["hi"] = hi if "hi" not in st else torch.maximum(st["hi"], hi)

    h = gm.get_submodule(layer).register_forward_hook(hook)
    logits(gm, xs)
    h.remove()
    return st["lo"], st["hi"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mobilevit_xxs")
    ap.add_argument("--bits", default="w8a8")
    ap.add_argument("--images", type=int, default=1000, help="held-out training images to score on")
    ap.add_argument("--sweep", type=int, default=4, help="layers to give the oracle sweep")
    ap.add_argument("--config", default="{}", help='JSON object of further QConfig fields or qhyvit parameters, e.g. \'{"act_channel_beta": 1.2}\'')
    args = ap.parse_args()
    torch.set_num_threads(2)
    import torch.nn as nn
    import qhyvit_fx as q
    from qhyvit_fx.config import parse_bits
    from qhyvit_fx.evaluate import Metrics
    from qhyvit_fx.passes.convert import convert_graph
    lm, calib, xs, ys = holdout(args.model, args.images)
    fp = logits(lm.model, xs)
    w, a = parse_bits(args.bits)
    extra = json.loads(args.config)
    pm = q.prepare(lm.model, calib[:1], q.QConfig.flat(w_bits=w, a_bits=a, method="qhyvit", **{"target": "fakequant", **extra}))
    q.calibrate(pm, calib)
    dec = q.quant_state(pm).decisions

    def score(d) -> dict:
        m = Metrics("").update(logits(convert_graph(pm, d), xs), fp, ys)
        return {"top1": round(m.top1, 2), "agreement": round(m.agreement, 2), "kl": m.kl}

    res = {"model": args.model, "bits": args.bits, "images": len(ys), "config": extra,
           "whole model": score(dec), "weights only": score(only(dec, True, lambda n: False)),
           "inputs only": score(only(dec, False, lambda n: True))}
    for k in ("whole model", "weights only", "inputs only"):
        print(f"{k:14s} agree {res[k]['agreement']:.2f}  KL {res[k]['kl']:.6f}", flush=True)

    per = []
    for name, ld in dec.layers.items():
        if not ld.inputs:
            continue
        s = score(only(dec, False, lambda n, l=name: n == l))
        per.append({"layer": name, "kind": ld.kind, "kl": s["kl"], "flips": round(100 - s["agreement"], 2),
                    "inputs": {str(i): f"{'per-channel' if p.spec.per_channel else 'per-tensor'} {p.spec.scheme}"
                               for i, p in ld.inputs.items()}})
    per.sort(key=lambda r: -r["kl"])
    res["per layer"] = per
    res["sum of per-layer KL"] = sum(r["kl"] for r in per)
    print(f"sum of the {len(per)} per-layer input KLs {res['sum of per-layer KL']:.6f} "
          f"(inputs only: {res['inputs only']['kl']:.6f})")
    print("| layer | kind | chosen inputs | KL alone | flips alone (%) |\n|---|---|---|---|---|")
    for r in per[:10]:
        print(f"| {r['layer']} | {r['kind']} | {'; '.join(r['inputs'].values())} | {r['kl']:.6f} | {r['flips']:.2f} |")

    float_dec = only(dec, False, lambda n: False)
    fg = convert_graph(pm, float_dec)
    sweeps, gain = [], 0.0
    for r in [r for r in per if len(r["inputs"]) == 1 and r["kind"] in ("conv", "linear")][:args.sweep]:
        name, chosen = r["layer"], dec.layers[r["layer"]].inputs[0]
        axis = 1 if isinstance(fg.get_submodule(name), nn.Conv2d) else -1
        clo, chi = input_ranges(fg, name, calib, axis)
        elo, ehi = input_ranges(fg, name, xs, axis)
        cands = {f"per-tensor asym, {f:.1f} x calibration range": asym(chosen.spec, clo.min(), chi.max() * f, False, axis)
                 for f in CLIPS}
        cands.update({f"per-channel asym, {f:.1f} x calibration ranges": asym(chosen.spec, clo, chi * f, True, axis)
                      for f in CHANNEL_CLIPS})
        cands["per-channel asym, calibration ranges halfway to the tensor range"] = asym(
            chosen.spec, (clo + clo.min()) / 2, (chi + chi.max()) / 2, True, axis)
        cands["per-channel asym, held-out ranges"] = asym(chosen.spec, elo, ehi, True, axis)
        scores = {k: score(only(dec, False, lambda n, l=name: n == l, (name, qp)))["kl"] for k, qp in cands.items()}
        best = min(scores, key=scores.get)
        gain += max(0.0, r["kl"] - scores[best])
        sweeps.append({"layer": name, "chosen kl": r["kl"], "best": best, "best kl": scores[best], "all": scores})
        print(f"{name}: chosen KL {r['kl']:.6f}, oracle best {scores[best]:.6f} ({best})", flush=True)
    res["oracle sweep"] = sweeps
    res["inputs only KL with the oracle choices"] = res["inputs only"]["kl"] - gain
    print(f"inputs-only KL {res['inputs only']['kl']:.6f} -> at best {res['inputs only KL with the oracle choices']:.6f} "
          f"with the oracle choice on the {len(sweeps)} swept layers")
    tag = "".join(f"-{k}={v}" for k, v in sorted(extra.items()))
    write_json(os.path.join(RESULTS, f"floor-{args.model}-{args.bits}{tag}.json"), res)


if __name__ == "__main__":
    main()
