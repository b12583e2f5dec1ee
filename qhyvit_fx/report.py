"""report.md written next to the ONNX by ``qhyvit quantize``."""
from __future__ import annotations

import os
import shlex
from typing import Dict, List, Optional

import torch.fx as fx

from .decisions import atomic_write_text


def _spec(qp) -> str:
    if qp is None:
        return "float"
    s = qp.spec
    return f"{s.bits}b {s.granularity[:2]}/{s.scheme[:4]}"


def decisions_table(dec) -> List[str]:
    rows = ["| layer | kind | bridge | weight | input(s) | error before | error after |",
            "|---|---|---|---|---|---|---|"]
    for d in dec.layers.values():
        ins = ", ".join(_spec(q) for _, q in sorted(d.inputs.items()))
        eb = f"{d.error['before']:.3g}" if "before" in d.error else ""
        ea = f"{d.error['after']:.3g}" if "after" in d.error else ""
        rows.append(f"| {d.layer} | {d.kind} | {'' if d.bridge is None else d.bridge} | {_spec(d.weight)} | "
                    f"{ins} | {eb} | {ea} |")
    return rows


def choice_counts(dec) -> Dict[str, Dict[str, int]]:
    """How often each layer kind picked per-channel / asymmetric (weights and inputs)."""
    out: Dict[str, Dict[str, int]] = {}
    for d in dec.layers.values():
        c = out.setdefault(d.kind, {"layers": 0, "w_channel": 0, "w_asym": 0, "a_tensors": 0, "a_channel": 0,
                                     "a_asym": 0})
        c["layers"] += 1
        if d.weight is not None:
            c["w_channel"] += int(d.weight.spec.per_channel)
            c["w_asym"] += int(not d.weight.spec.symmetric)
        for q in d.inputs.values():
            if q is not None:
                c["a_tensors"] += 1
                c["a_channel"] += int(q.spec.per_channel)
                c["a_asym"] += int(not q.spec.symmetric)
    return out


def write_quantize_report(folder: str, job, config, prepared: fx.GraphModule, converted: fx.GraphModule,
                          metrics: Optional[Dict], seconds: float, argv: List[str]) -> str:
    from .plots import draw_bridges
    dec = converted.meta["qhyvit_decisions"]
    lines = [f"# qhyvit quantize report: {job.name}", "",
             f"Command: `{' '.join(shlex.quote(a) for a in ['qhyvit'] + list(argv[1:]))}`", "",
             f"- weights: `{os.path.basename(job.weights) if job.weights else 'pretrained'}`",
             f"- method: {config.method}, W{config.w_bits}A{config.a_bits}"
             + (f" (weight codes limited to {config.weight_range_bits} bits for the target integer kernels)"
                if config.weight_range_bits else ""),
             f"- calibration: {dec.meta.get('calib_images')} images from `{job.calib}`, seed {config.seed}, "
             f"{seconds:.1f} s",
             f"- quantized layers: {len(dec.layers)}; bridge blocks: {len(prepared.meta.get('qhyvit_bridges', []))}",
             ""]
    if metrics:
        lines += ["## Accuracy", "", "| model | top-1 | agreement with float | KL | logits SQNR (dB) |",
                  "|---|---|---|---|---|"]
        for m in metrics.values():
            lines.append(f"| {m['name']} | {m['top1']:.2f} | {m['agreement']:.2f} | {m['kl']:.5f} | "
                         f"{m['sqnr_db']:.2f} |")
        lines.append("")
    counts = choice_counts(dec)
    lines += ["## Choices by layer kind", "", "| kind | layers | W per-channel | W asymmetric | A tensors | "
              "A per-channel | A asymmetric |", "|---|---|---|---|---|---|---|"]
    for k, c in counts.items():
        lines.append(f"| {k} | {c['layers']} | {c['w_channel']} | {c['w_asym']} | {c['a_tensors']} | "
                     f"{c['a_channel']} | {c['a_asym']} |")
    lines += ["", "## Bridge blocks", "", "![bridges](bridges.png)", ""]
    draw_bridges(prepared, os.path.join(folder, "bridges.png"), title=f"{job.name}: bridge blocks and decisions",
                 decisions=dec)
    lines += ["## Per-layer decisions", ""] + decisions_table(dec) + [""]
    path = os.path.join(folder, "report.md")
    atomic_write_text(path, "\n".join(lines))
    return path
