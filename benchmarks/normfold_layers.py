#!/usr/bin/env python3
"""Which layers could take per-channel input ranges folded into their norm, and which the Q-HyViT
search folded, per target (RESULTS.md "Per-channel inputs folded into norms").

    python benchmarks/normfold_layers.py [--models mobilevit_xxs mobilevitv2_050]

32 calibration images (the benchmarks' split); W6A6 on OpenVINO and onnxruntime integer mode, W8A8
on TensorRT (it runs 8-bit activations only).  Writes benchmarks/results/normfold-layers.json.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import RESULTS, load, splits, write_json  # noqa: E402

SETTINGS = (("openvino", "partial", 6), ("ort", "integer", 6), ("tensorrt", "partial", 8))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["mobilevit_xxs", "mobilevitv2_050"])
    a = ap.parse_args()
    import qhyvit_fx as q
    out = {}
    for model in a.models:
        lm, pre = load(model)
        calib, _ = splits(model, pre, eval_limit=1)
        for target, mode, bits in SETTINGS:
            cfg = q.QConfig(method="qhyvit", target=target, mode=mode, w_bits=bits, a_bits=bits)
            pm = q.prepare(lm.model, calib[:1], cfg)
            foldable = [n.meta["qhyvit_quant"].layer for n in pm.graph.nodes
                        if "qhyvit_quant" in n.meta and n.meta["qhyvit_quant"].fold_norm]
            q.calibrate(pm, calib)
            folded = [k for k, d in q.quant_state(pm).decisions.layers.items() if d.reparam is not None]
            key = f"{model} {target} {mode} w{bits}a{bits}"
            out[key] = {"foldable": len(foldable), "folded": len(folded), "layers": folded}
            print(f"{key}: {len(folded)} of {len(foldable)} foldable layers folded", flush=True)
    write_json(os.path.join(RESULTS, "normfold-layers.json"), out)


if __name__ == "__main__":
    main()
