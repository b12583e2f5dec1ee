#!/usr/bin/env python3
"""The activation statistics the paper blames (challenges C1 and C2), per checkpoint.

    python benchmarks/act_stats.py --checkpoints \\
        mobilevit_xxs=../shared/weights/mobilevit_xxs-cifar10.pth \\
        efficientformer_l1_64=benchmarks/weights/efficientformer_l1_64-cifar10.pth --json benchmarks/results/act_stats.json

For every input of a conv / linear / matmul, on 32 calibration images (train split, seed 0):
* dynamic range hi - lo (C1: highly dynamic ranges), its median and maximum over layers;
* max|x| / 99.9th percentile of |x| (outliers that MinMax clipping pays for);
* zero-point overflow (C2): channels of a bridge-block conv / linear input whose per-channel asymmetric
  int8 zero point, taken from the raw channel range as the paper does, falls outside [-128, 127]
  (the channel's values are all of one sign).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import RESULTS, SHARED, write_json  # noqa: E402


def _abs_quantile(x: torch.Tensor, q: float, cap: int = 4_000_000) -> float:
    a = x.detach().abs().flatten().float()
    if a.numel() > cap:       # torch.quantile's input limit: a seeded uniform sample
        a = a[torch.randperm(a.numel(), generator=torch.Generator().manual_seed(0))[:cap]]
    return float(torch.quantile(a, q))


def stats_for(name: str, path: str, images: int = 32) -> dict:
    import qhyvit_fx as q
    from qhyvit_fx.data import Preprocess, open_folder, stack_images
    from qhyvit_fx.passes.annotate import ANNOTATION, quantized_layers
    from qhyvit_fx.models import create_model
    from qhyvit_fx.quantizer import QSpec, params_from_stats
    lm = create_model(name, weights=path)
    pre = Preprocess.from_meta(lm.meta)
    calib = stack_images(open_folder(os.path.join(SHARED, "data", "cifar10", "train"), pre, limit=images, seed=0))
    pm = q.prepare(lm.model, calib[:1], q.QConfig(method="minmax", a_granularity="channel", target="fakequant"))
    p999 = {}
    hooks = []
    for n in quantized_layers(pm):
        ann = n.meta[ANNOTATION]
        for slot, obs in ann.observers.items():
            if slot == "out":
                continue
            def hook(mod, args, key=(ann.layer, slot)):
                p999[key] = _abs_quantile(args[0], 0.999)
            hooks.append(pm.get_submodule(obs).register_forward_pre_hook(hook))
    with torch.no_grad():
        pm(calib)
    for h in hooks:
        h.remove()
    rows = []
    signed_asym = QSpec(bits=8, symmetric=False, per_channel=True, signed=True)
    for n in quantized_layers(pm):
        ann = n.meta[ANNOTATION]
        for slot, obs_name in ann.observers.items():
            if slot == "out":
                continue
            obs = pm.get_submodule(obs_name)
            lo, hi = float(obs.min_val), float(obs.max_val)
            amax = max(abs(lo), abs(hi))
            row = {"layer": ann.layer, "slot": slot, "kind": ann.kind, "bridge": ann.bridge is not None,
                   "range": hi - lo, "max_over_p999": amax / max(p999[(ann.layer, slot)], 1e-12)}
            if ann.bridge is not None and obs.ch_min.numel():
                over = params_from_stats(obs.ch_min, obs.ch_max, signed_asym, zero_point_from_range=True).zp_overflow
                row["zp_overflow"], row["channels"] = int(over), int(obs.ch_min.numel())
            rows.append(row)
    br = [r for r in rows if "zp_overflow" in r]
    return {
        "model": name, "checkpoint": path, "test_top1": lm.meta.get("test_top1"), "epochs": lm.meta.get("epochs_done"),
        "inputs": len(rows),
        "range_median": statistics.median(r["range"] for r in rows), "range_max": max(r["range"] for r in rows),
        "ratio_median": statistics.median(r["max_over_p999"] for r in rows),
        "ratio_max": max(r["max_over_p999"] for r in rows),
        "bridge_inputs": len(br), "bridge_zp_overflow": sum(r["zp_overflow"] for r in br),
        "bridge_channels": sum(r["channels"] for r in br), "layers": rows,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoints", nargs="+", required=True, help="MODEL=PATH (a model may appear twice)")
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--json", default=os.path.join(RESULTS, "act_stats.json"))
    a = ap.parse_args()
    torch.set_num_threads(2)
    out = []
    print("| model | checkpoint | epochs | test top-1 | inputs | range median / max | max/p99.9 median / max "
          "| bridge zero-point overflow |")
    print("|---|---|---|---|---|---|---|---|")
    for spec in a.checkpoints:
        name, _, path = spec.partition("=")
        if not path or not os.path.isfile(path):
            raise SystemExit(f"act_stats: '{spec}' is not MODEL=PATH of an existing checkpoint")
        s = stats_for(name, path, a.images)
        out.append(s)
        print(f"| {name} | {os.path.basename(path)} | {s['epochs']} | {s['test_top1']} | {s['inputs']} | "
              f"{s['range_median']:.1f} / {s['range_max']:.1f} | {s['ratio_median']:.2f} / {s['ratio_max']:.1f} | "
              f"{s['bridge_zp_overflow']} of {s['bridge_channels']} channels in {s['bridge_inputs']} inputs |",
              flush=True)
    write_json(a.json, out)


if __name__ == "__main__":
    main()
