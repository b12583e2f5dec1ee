#!/usr/bin/env python3
"""decisions.json of every method x mode x target x bit width, for refactors that must not change results.

    python benchmarks/decisions_snapshot.py /tmp/before            # on the old commit
    python benchmarks/decisions_snapshot.py /tmp/after             # on the new one
    diff -r /tmp/before /tmp/after                                 # nothing: behaviour preserved

Models: the tiny test hybrid (16 random images) and mobilevit_xxs with the shared CIFAR-10 checkpoint (../shared/weights)
(32 CIFAR-10 training images).  Each file is the decisions' JSON with the run's timings and the config
record dropped (both are expected to differ between commits); everything else must match byte for byte.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import warnings

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ("minmax", "qhyvit", "easyquant", "ptq4vit", "repq-vit", "fq-vit")
MODES = ("partial", "full", "integer")
VOLATILE_META = ("config", "search", "seconds_collect", "seconds_total")


def _jobs(model: str):
    if model == "tiny":
        return itertools.product(METHODS, MODES, ("ort", "fakequant"), (8, 6))
    # a real checkpoint: every method and mode as shipped (ort), plus the fake-quant study setting
    return itertools.chain(itertools.product(METHODS, MODES, ("ort",), (8, 6)),
                           itertools.product(METHODS, ("partial",), ("fakequant",), (8,)))


def _inputs(model: str):
    if model == "tiny":
        sys.path.insert(0, os.path.join(ROOT, "tests"))
        from tinymodels import tiny_hybrid
        return tiny_hybrid(), torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    import torchvision.transforms as T
    from torchvision.datasets import ImageFolder

    from qhyvit_fx.models import create_model
    lm = create_model(model, weights=os.path.join(ROOT, "..", "shared", "weights", f"{model}-cifar10.pth"))
    meta = lm.meta
    tf = T.Compose([T.Resize(meta["img_size"]), T.ToTensor(), T.Normalize(meta["mean"], meta["std"])])
    ds = ImageFolder(os.path.join(ROOT, "..", "shared", "data", "cifar10", "train"), tf)
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[:32]
    return lm.model, torch.stack([ds[int(i)][0] for i in idx])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--models", default="tiny,mobilevit_xxs")
    ap.add_argument("--methods", default=",".join(METHODS))
    a = ap.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(2)
    import qhyvit_fx
    os.makedirs(a.out, exist_ok=True)
    for model_name in a.models.split(","):
        model, x = _inputs(model_name)
        for method, mode, target, bits in _jobs(model_name):
            if method not in a.methods.split(","):
                continue
            tag = f"{model_name}-{method}-{mode}-{target}-w{bits}a{bits}"
            try:
                cfg = qhyvit_fx.QConfig(method=method, mode=mode, target=target, w_bits=bits, a_bits=bits)
                qm = qhyvit_fx.prepare(model, x[:1], cfg)
                qhyvit_fx.calibrate(qm, x)
                d = qhyvit_fx.quant_state(qm).decisions.to_dict()
            except Exception as e:      # a combination a method does not support is part of the snapshot too
                d = {"error": f"{type(e).__name__}: {e}"}
            for k in VOLATILE_META:
                d.get("meta", {}).pop(k, None)
            with open(os.path.join(a.out, tag + ".json"), "w") as f:
                json.dump(d, f, indent=1, sort_keys=True)
            print(tag, "error" if "error" in d else "ok", flush=True)


if __name__ == "__main__":
    main()
