#!/usr/bin/env python3
"""Regenerate the paper's tables on our trained hybrids and the ImageNet control, in one command.

    python benchmarks/paper_tables.py                      # every table, 1000 test images per model
    python benchmarks/paper_tables.py --tables 1 --models mobilevit_xxs --eval-images 0   # full split

Numbered as in the arXiv version of the paper (the issue's numbering; the conference text in
shared/reference numbers the full-quantization table 2 and the ablation 3):
* Table 1: partial quantization (conv/linear/matmul), W8A8 and W6A6, every method x every model.
* Table 3: full quantization (also norm, softmax, activation and residual-add inputs), W8A8.
* Table 5: the ablation of the hybrid reconstruction (scale / + granularity / + scheme / + bridge
  objective / + K-fold validation), mobilevit_xxs (``--ablation-models``).

Every cell is cached (benchmarks/cache/accuracy/, shared with accuracy.py), so an interrupted run
resumes; tqdm shows progress over the cells.  Writes benchmarks/results/paper_tables.json and
benchmarks/paper_tables/table{1,3,5}.{md,csv} plus bars.png (Tables 1 and 3: agreement with FP).
Calibration: 32 train images (seed 0); evaluation: a seeded test subset (--eval-images; 0 = the whole
split; the ImageNet control always uses its 468 held-out images).
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (CIFAR_MODELS, HERE, IMAGENET_CONTROL, RESULTS, cell, load, lookup, metrics, run_model,  # noqa: E402
                    splits, write_json)

METHODS = ("minmax", "easyquant", "ptq4vit", "repq-vit", "fq-vit", "qhyvit")
ABLATION = (("MinMax", "minmax"), ("scale", "abl-scale"), ("+ granularity", "abl-gran"), ("+ scheme", "abl-scheme"),
            ("+ bridge objective (paper)", "abl-bridge"), ("+ K-fold validation (ours)", "abl-cv"))
OUT = os.path.join(HERE, "paper_tables")


def plan(args):
    """[(table, model, variant, bits)] in run order: the CIFAR hybrids first, the control last."""
    cells = []
    models = [m for m in args.models if m != IMAGENET_CONTROL] + [m for m in args.models if m == IMAGENET_CONTROL]
    for m in models:
        if "1" in args.tables:
            bits = args.control_bits if m == IMAGENET_CONTROL else ("w8a8", "w6a6")
            cells += [("1", m, v, b) for b in bits for v in args.methods]
        if "3" in args.tables and m != IMAGENET_CONTROL:      # no norm / softmax / attention in lite0
            cells += [("3", m, f"{v}-full", "w8a8") for v in args.methods]
        if "5" in args.tables and m in args.ablation_models:
            cells += [("5", m, v, b) for b in args.ablation_bits for _, v in ABLATION]
    return cells


def _row(r, fp):
    t = r["torch"]
    return {"top1": t["top1"], "drop": fp - t["top1"], "agree": t["agreement"], "kl": t["kl"],
            "calib_s": r["calib_seconds"]}


def tables(res: dict, args) -> dict:
    """Markdown and CSV text of each table from the result cells."""
    out = {}
    def fmt(c):
        return "-" if c is None else f"{c['top1']:.2f} / {c['agree']:.1f}"
    if "1" in args.tables:
        hdr = ["model", "FP32"] + [f"{m} {b.upper()}" for m in args.methods for b in ("w8a8", "w6a6")]
        rows = []
        for model, cells in res.items():
            rows.append([model, f"{cells['float']['top1']:.2f}"] +
                        [fmt(cells.get(m, {}).get(b)) for m in args.methods for b in ("w8a8", "w6a6")])
        out["table1"] = (hdr, rows)
    if "3" in args.tables:
        hdr = ["model", "FP32"] + [f"{m} W8A8 full" for m in args.methods]
        rows = [[model, f"{cells['float']['top1']:.2f}"] + [fmt(cells.get(f"{m}-full", {}).get("w8a8"))
                                                           for m in args.methods]
                for model, cells in res.items() if model != IMAGENET_CONTROL]
        out["table3"] = (hdr, rows)
    if "5" in args.tables:
        hdr = ["model", "configuration"] + [b.upper() for b in args.ablation_bits]
        rows = [[model, label] + [fmt(res.get(model, {}).get(v, {}).get(b)) for b in args.ablation_bits]
                for model in args.ablation_models if model in res for label, v in ABLATION]
        out["table5"] = (hdr, rows)
    return out


def _md(hdr, rows) -> str:
    lines = ["| " + " | ".join(hdr) + " |", "|" + "---|" * len(hdr)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _csv(hdr, rows) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(hdr)
    w.writerows(rows)
    return buf.getvalue()


def bars(res: dict, args, path: str) -> None:
    """Agreement with FP per method and model: Table 1 (W8A8, W6A6) and Table 3 (full W8A8)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from qhyvit_fx.decisions import atomic_write_bytes
    groups = [("W8A8 partial", "", "w8a8"), ("W6A6 partial", "", "w6a6"), ("W8A8 full", "-full", "w8a8")]
    models = list(res)
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 4), sharey=True)
    width = 0.8 / len(args.methods)
    for ax, (title, suffix, b) in zip(axes, groups):
        for j, m in enumerate(args.methods):
            ys = [res[mo].get(m + suffix, {}).get(b, {}).get("agree", float("nan")) for mo in models]  # nan: no bar
            ax.bar([i + j * width for i in range(len(models))], ys, width, label=m)
        ax.set_title(title)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(models))])
        ax.set_xticklabels(models, rotation=20, ha="right", fontsize=8)
        ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("top-1 agreement with FP32 (%)")
    axes[-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tables", nargs="+", default=["1", "3", "5"], choices=["1", "3", "5"])
    ap.add_argument("--models", nargs="+", default=list(CIFAR_MODELS) + ["mobileformer_26m", IMAGENET_CONTROL])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--ablation-models", nargs="+", default=["mobilevit_xxs"])
    ap.add_argument("--ablation-bits", nargs="+", default=["w8a8", "w6a6"])
    ap.add_argument("--control-bits", nargs="+", default=["w8a8", "w6a6"], choices=["w8a8", "w6a6"],
                    help="Table 1 bit widths for the ImageNet control (224 px: its searches are the slowest cells)")
    ap.add_argument("--eval-images", type=int, default=1000, help="seeded test subset per model (0: all)")
    ap.add_argument("--cached-only", action="store_true",
                    help="build the tables from cached cells only; missing cells show '-'")
    ap.add_argument("--out", default=OUT, help="folder for the .md/.csv tables and bars.png")
    args = ap.parse_args()
    from tqdm import tqdm
    torch.set_num_threads(2)
    todo = plan(args)
    res, loaded = {}, {}
    bar = tqdm(todo, desc="paper tables", unit="cell")
    for table, model, variant, bits in bar:
        if model not in loaded:
            lm, pre = load(model)
            calib, batches = splits(model, pre, eval_limit=args.eval_images or None)
            labels = torch.cat([y for _, y in batches])
            fp = run_model(lm.model, batches)
            loaded = {model: (lm, calib, batches, fp, labels)}      # one model in memory at a time
            res.setdefault(model, {})["float"] = metrics(fp, fp, labels)
        lm, calib, batches, fp, labels = loaded[model]
        bar.set_postfix_str(f"{model} {variant} {bits}")
        if args.cached_only:
            r = lookup(model, variant, bits, len(labels))
            if r is None:
                continue
        else:
            r = cell(model, variant, bits, lm, calib, batches, fp, labels, ort=False)
        res[model].setdefault(variant, {})[bits] = _row(r, res[model]["float"]["top1"])
        write_json(os.path.join(RESULTS, "paper_tables.json"), res)
    os.makedirs(args.out, exist_ok=True)
    from qhyvit_fx.decisions import atomic_write_text
    for name, (hdr, rows) in tables(res, args).items():
        atomic_write_text(os.path.join(args.out, f"{name}.md"), _md(hdr, rows))
        atomic_write_text(os.path.join(args.out, f"{name}.csv"), _csv(hdr, rows))
        print(f"\n{name} (cells: top-1 / agreement with FP32, %)\n" + _md(hdr, rows))
    if "1" in args.tables or "3" in args.tables:
        bars(res, args, os.path.join(args.out, "bars.png"))


if __name__ == "__main__":
    main()
