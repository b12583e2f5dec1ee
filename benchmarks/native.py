#!/usr/bin/env python3
"""Latency at the resolution the models are used at, per runtime (issue 20).

    python benchmarks/native.py                      # the five models below, about 15 min on 2 cores
    python benchmarks/native.py --models mobilevit_xxs:256 --rounds 3

Random weights (latency only; accuracy is measured on trained checkpoints elsewhere), W8A8 MinMax
for ours (Q-HyViT changes the numbers in the quantizers, not the graph, so it runs at the same speed).
Per model, two groups measured in interleaved rounds (``ort_latency.py``), ratios to the group's FP32:
* onnxruntime: FP32; ours ``--target ort`` in partial mode and in integer mode; onnxruntime's
  ``quantize_static`` with QUInt8 and with QInt8 activations (per-channel weights, QDQ);
* OpenVINO (CPU plugin, default inference precision: bf16 for float parts on this CPU): FP32; ours
  ``--target openvino``; NNCF's OpenVINO-backend ``nncf.quantize`` of the FP32 model (default preset).
Batch 1 and 8, 1 and 2 threads. Writes ``results/native.json`` and prints Markdown tables.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import RESULTS, config_for, export_fp32, ort_quantize, quantize, write_json  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = ("mobilevit_xxs:256", "mobilevitv2_050:256", "efficientformerv2_s0:224", "mobileformer_26m:224",
          "tf_efficientnet_lite0:224")
CONFIGS = (("t1_b1", 1, 1), ("t2_b1", 2, 1), ("t1_b8", 1, 8), ("t2_b8", 2, 8))
ORT_KINDS = ("fp32", "ours-partial", "ours-integer", "ort-qs-quint8", "ort-qs-qint8")
OV_KINDS = ("ov-fp32", "ours-openvino", "nncf-openvino")


def build(name: str, size: int, d: str, calib_images: int = 8) -> dict:
    """Every contender's file for one model, in folder ``d``: {kind: path as ort_latency.py takes it}."""
    import openvino as ov
    from onnxruntime.quantization import QuantType

    import qhyvit_fx as q
    from qhyvit_fx.models import create_model
    torch.manual_seed(0)
    model = create_model(name).model.eval()
    calib = torch.randn(calib_images, 3, size, size, generator=torch.Generator().manual_seed(1))
    paths = {"fp32": os.path.join(d, "fp32.onnx")}
    export_fp32(model, calib, paths["fp32"])
    for kind, variant, mode in (("ours-partial", "minmax-ort", "partial"), ("ours-integer", "minmax-ort", "integer"),
                                ("ours-openvino", "minmax", None)):
        cfg = config_for(variant, "w8a8")
        cfg = q.QConfig.flat(**{**cfg.flat_dict(), "mode": mode}) if mode else \
            q.QConfig.flat(**{**cfg.flat_dict(), "target": "openvino"})
        _, qm = quantize(model, calib, cfg)
        paths[kind] = os.path.join(d, f"{kind}.onnx")
        q.export_onnx(qm, paths[kind])
    for kind, act in (("ort-qs-quint8", QuantType.QUInt8), ("ort-qs-qint8", QuantType.QInt8)):
        paths[kind] = os.path.join(d, f"{kind}.onnx")
        ort_quantize(paths["fp32"], paths[kind], calib, act, per_channel=True)
    import nncf
    data = nncf.Dataset([calib[i:i + 1].numpy() for i in range(len(calib))])
    core = ov.Core()
    for kw in ({}, {"model_type": nncf.ModelType.TRANSFORMER}):
        try:    # NNCF 3.4's default preset fails on EfficientFormerV2's attention-bias Gather; TRANSFORMER works
            nq = nncf.quantize(core.read_model(paths["fp32"]), data, subset_size=len(calib), **kw)
        except Exception as e:    # noqa: BLE001 -- NNCF's own errors; the row says which preset was measured
            paths.setdefault("nncf-failed", []).append(f"{kw or 'default'}: {type(e).__name__}: {e}"[:300])
            continue
        paths["nncf-preset"] = "transformer" if kw else "default"
        break
    else:
        raise RuntimeError(f"nncf.quantize failed with both presets: {paths['nncf-failed']}")
    paths["nncf-openvino"] = os.path.join(d, "nncf-openvino.xml")
    ov.save_model(nq, paths["nncf-openvino"])
    paths["ov-fp32"] = paths["fp32"]
    for k in OV_KINDS:
        paths[k] = "openvino:" + paths[k]
    return paths


def measure(files, runs: int, rounds: int) -> dict:
    out = {}
    for cfg, t, b in CONFIGS:
        cmd = [sys.executable, os.path.join(HERE, "ort_latency.py"), "--threads", str(t), "--batch", str(b),
               "--runs", str(runs if b == 1 else max(4, runs // 4)), "--rounds", str(rounds)] + list(files)
        out[cfg] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    return out


def table(results: dict) -> str:
    lines = []
    for group, kinds in (("onnxruntime", ORT_KINDS), ("openvino", OV_KINDS)):
        lines += [f"\n{group}: ms (ratio to FP32 of the same round)\n",
                  "| model @ px | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
        for key, r in results.items():
            if group not in r:
                continue
            for cfg, _, _ in CONFIGS:
                m = r[group][cfg]
                cells = [f"{ms:.2f} ({ratio:.2f})" for ms, ratio in zip(m["ms"], m["ratio"])]
                preset = " (NNCF transformer preset)" if group == "openvino" and \
                    r.get("nncf_preset") == "transformer" else ""
                lines.append(f"| {key} {cfg}{preset} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), help="name:px")
    ap.add_argument("--runs", type=int, default=20, help="timed runs per round at batch 1 (a quarter at batch 8)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", default=os.path.join(RESULTS, "native.json"))
    ap.add_argument("--resume", action="store_true", help="keep the models already in --json, measure the rest")
    ap.add_argument("--runtimes", nargs="+", default=["onnxruntime", "openvino"], choices=["onnxruntime", "openvino"],
                    help="measure these groups again (with --resume: in the models already there too)")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(2)
    from qhyvit_fx.target import cpu_flags
    flags = " ".join(f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "avx512_bf16")
                     if f in cpu_flags())
    payload = {"command": " ".join(["python", "benchmarks/native.py"] + (argv or sys.argv[1:])),
               "cpu_flags": flags, "results": {}}
    if args.resume and os.path.exists(args.json):
        with open(args.json) as f:
            payload["results"] = json.load(f)["results"]
    for spec in args.models:
        name, px = spec.split(":")
        key = f"{name} @ {px}"
        if key in payload["results"] and len(args.runtimes) == 2:
            continue
        with tempfile.TemporaryDirectory() as d:
            paths = build(name, int(px), d)
            res = dict(payload["results"].get(key, {}), nncf_preset=paths["nncf-preset"])
            for group, kinds in (("onnxruntime", ORT_KINDS), ("openvino", OV_KINDS)):
                if group in args.runtimes:
                    res[group] = measure([paths[k] for k in kinds], args.runs, args.rounds)
        payload["results"][key] = res
        write_json(args.json, payload)
        print(table({key: res}), flush=True)
    print(table(payload["results"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
