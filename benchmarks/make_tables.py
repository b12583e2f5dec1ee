#!/usr/bin/env python3
"""Markdown tables from benchmarks/results/*.json (the tables in benchmarks/RESULTS.md).

    python benchmarks/make_tables.py > /tmp/tables.md
"""
from __future__ import annotations

import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
RES = os.path.join(HERE, "results")


def _load(name):
    p = os.path.join(RES, name)
    return json.load(open(p)) if os.path.exists(p) else {}


def _f(x, nd=2):
    return "-" if x is None else f"{x:.{nd}f}"


def accuracy_tables(acc, variants=("minmax", "easyquant", "qhyvit-paper", "qhyvit", "qhyvit-b12", "qhyvit-flip"), bits=("w8a8", "w6a6", "w4a8", "w4a4")):
    out = []
    for model, rows in acc.items():
        fp = rows.get("float", {}).get("top1")
        out.append(f"**{model}** (float top-1 {_f(fp)} on {rows.get('float', {}).get('images')} images)\n")
        out.append("| bits | " + " | ".join(f"{v} top-1 / drop / agree / KL" for v in variants if v in rows) + " |")
        out.append("|---|" + "---|" * sum(v in rows for v in variants))
        for b in bits:
            cells = []
            for v in variants:
                if v not in rows:
                    continue
                r = rows[v].get(b)
                if r is None:
                    cells.append("-")
                    continue
                t = r["torch"]
                cells.append(f"{t['top1']:.2f} / {fp - t['top1']:+.2f} / {t['agreement']:.2f} / {t['kl']:.4f}")
            out.append(f"| {b.upper()} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def ort_table(acc, variants=("minmax-ort", "qhyvit-ort"), bits=("w8a8", "w6a6", "w4a8")):
    out = ["| model | variant | bits | torch top-1 | ORT top-1 | drop vs float (ORT) | ORT agree w/ float | "
           "ORT agree w/ torch | max abs logit diff | ONNX MB |", "|---|---|---|---|---|---|---|---|---|---|"]
    for model, rows in acc.items():
        fp = rows.get("float", {}).get("top1")
        for v in variants:
            for b in bits:
                r = rows.get(v, {}).get(b)
                if r is None or "ort" not in r:
                    continue
                out.append(f"| {model} | {v} | {b.upper()} | {r['torch']['top1']:.2f} | {r['ort']['top1']:.2f} | "
                           f"{fp - r['ort']['top1']:+.2f} | {r['ort']['agreement']:.2f} | "
                           f"{r['ort_vs_torch']['agreement']:.2f} | {r['ort_vs_torch']['max_abs_diff']:.4f} | "
                           f"{r['onnx_bytes'] / 1e6:.2f} |")
    return "\n".join(out)


def ablation_table(acc, model="mobilevit_xxs", bits=("w6a6", "w4a8")):
    names = [("abl-scale", "scale only"), ("abl-gran", "+ granularity"), ("abl-scheme", "+ scheme"),
             ("abl-bridge", "+ bridge objective (= paper method)"), ("abl-cv", "+ K-fold validation (ours)"),
             ("abl-wide", "+ widened per-channel ranges (ours, default)"),
             ("abl-flip", "+ mirrored calibration images (option)"),
             ("qhyvit-fisher", "K-fold row with Fisher weights"), ("qhyvit-bc", "K-fold row + bias correction")]
    rows = acc.get(model, {})
    fp = rows.get("float", {}).get("top1")
    out = ["| configuration | " + " | ".join(f"{b.upper()} top-1 / agree / KL" for b in bits) + " |",
           "|---|" + "---|" * len(bits)]
    base = rows.get("minmax", {})
    out.append("| MinMax | " + " | ".join(
        f"{base[b]['torch']['top1']:.2f} / {base[b]['torch']['agreement']:.2f} / {base[b]['torch']['kl']:.4f}"
        if b in base else "-" for b in bits) + " |")
    for key, label in names:
        r = rows.get(key) or {}
        if key == "abl-bridge" and not r:
            r = rows.get("qhyvit-paper", {})
        if key == "abl-cv" and not r:
            r = rows.get("qhyvit-b12", {})
        if key == "abl-wide" and not r:
            r = rows.get("qhyvit", {})
        if key == "abl-flip" and not r:
            r = rows.get("qhyvit-flip", {})
        out.append(f"| {label} | " + " | ".join(
            f"{r[b]['torch']['top1']:.2f} / {r[b]['torch']['agreement']:.2f} / {r[b]['torch']['kl']:.4f}"
            if b in r else "-" for b in bits) + " |")
    return f"float top-1 {_f(fp)}\n\n" + "\n".join(out)


def choices_table(acc, variant="qhyvit", bits="w6a6"):
    out = ["| model | kind | layers | W per-channel | W asymmetric | A per-channel | A asymmetric |",
           "|---|---|---|---|---|---|---|"]
    for model, rows in acc.items():
        r = rows.get(variant, {}).get(bits)
        if not r:
            continue
        for k, c in r["choices"].items():
            out.append(f"| {model} | {k} | {c['layers']} | {c['w_channel']} | {c['w_asym']} | "
                       f"{c['a_channel']}/{c['a_tensors']} | {c['a_asym']}/{c['a_tensors']} |")
    return "\n".join(out)


def deploy_table(dep):
    cfgs = ("t1_b1", "t2_b1", "t1_b8", "t2_b8")
    out = ["| model | contender | int ops | int MACs % | size MB (x FP32) | ORT top-1 (vs FP32) | agree w/ FP32 | "
           "latency ms 1thr/2thr b1, 1thr/2thr b8 | latency x ORT QUInt8 (same four) |",
           "|---|---|---|---|---|---|---|---|---|"]
    for model, rows in dep.items():
        fp = rows.get("fp32")
        ref = rows.get("ort-quint8")
        for kind, r in rows.items():
            lat = r["latency_ms"]
            size = r["size_bytes"] / 1e6
            ratio = f"{size / (fp['size_bytes'] / 1e6):.2f}" if fp else "-"
            d = f" ({r['ort']['top1'] - fp['ort']['top1']:+.2f})" if fp else ""
            ms = " / ".join(f"{lat[c]:.2f}" for c in cfgs)
            if "latency_x_ort_quint8" in r:      # medians of per-round ratios (deploy.py, side by side)
                lr = " / ".join(f"{r['latency_x_ort_quint8'][c]:.2f}" for c in cfgs)
            else:
                lr = " / ".join(f"{lat[c] / ref['latency_ms'][c]:.2f}" for c in cfgs) if ref else "-"
            out.append(f"| {model} | {kind} | {r['check']['integer_ops']}/{r['check']['ops']} | "
                       f"{r['check']['integer_mac_share']:.1f} | {size:.2f} ({ratio}) | {r['ort']['top1']:.2f}{d} | "
                       f"{r['ort']['agreement']:.2f} | {ms} | {lr} |")
    return "\n".join(out)


def speed_table(sp):
    out = ["| model | input px | bits | layers | calibration (s) | of which collection (s) | peak RSS (GB) |",
           "|---|---|---|---|---|---|---|"]
    for r in sp.values():
        out.append(f"| {r['model']} | {r['img']} | {r['bits'].upper()} | {r['layers']} | {r['seconds']} | "
                   f"{r['seconds_collect']} | {r['peak_rss_gb']} |")
    return "\n".join(out)


def main():
    acc, dep, sp = _load("accuracy.json"), _load("deploy.json"), _load("speed.json")
    acc_sub = _load("accuracy-1000.json")     # the onnxruntime runs: 1000-image seeded test subset
    print("## Accuracy (torch fake-quant)\n")
    print(accuracy_tables(acc))
    print("\n## Through onnxruntime's integer kernels\n")
    print(ort_table(acc_sub))
    print("\n## Ablation\n")
    print(ablation_table(acc))
    print("\n## Choices\n")
    print(choices_table(acc))
    if dep:
        print("\n## Deployment\n")
        print(deploy_table(dep))
    if sp:
        print("\n## Calibration cost\n")
        print(speed_table(sp))


if __name__ == "__main__":
    main()
