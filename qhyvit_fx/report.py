"""report.md written next to the ONNX by ``qhyvit quantize``."""
from __future__ import annotations

import os
import shlex
from typing import Dict, List, Optional

import torch
import torch.fx as fx

from .decisions import atomic_write_text
from .state import quant_state


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
    """How often each layer kind picked per-channel / asymmetric (weights and inputs).  An input whose
    per-channel ranges were folded into the norm that feeds it (``reparam``) counts as per-channel."""
    out: Dict[str, Dict[str, int]] = {}
    for d in dec.layers.values():
        c = out.setdefault(d.kind, {"layers": 0, "w_channel": 0, "w_asym": 0, "a_tensors": 0, "a_channel": 0,
                                     "a_asym": 0})
        c["layers"] += 1
        if d.weight is not None:
            c["w_channel"] += int(d.weight.spec.per_channel)
            c["w_asym"] += int(not d.weight.spec.symmetric)
        for i, q in d.inputs.items():
            if q is not None:
                c["a_tensors"] += 1
                c["a_channel"] += int(q.spec.per_channel or (i == 0 and d.reparam is not None))
                c["a_asym"] += int(not q.spec.symmetric)
    return out


class _InputSampler(fx.Interpreter):
    """Float pass that keeps the inputs of the given layer nodes."""

    def __init__(self, gm: fx.GraphModule, nodes: Dict[str, int]):
        super().__init__(gm)
        self.nodes = nodes
        self.kept: Dict[str, List[torch.Tensor]] = {}

    def call_module(self, target, args, kwargs):
        from .calibration import IDENTITY_MODULES
        if isinstance(self.module.get_submodule(target), IDENTITY_MODULES):
            return args[0]
        return super().call_module(target, args, kwargs)

    def run_node(self, n):
        out = super().run_node(n)
        if n.name in self.nodes:
            a = n.args[self.nodes[n.name]]
            self.kept.setdefault(n.name, []).append(self.env[a].detach() if isinstance(a, fx.Node) else a)
        return out


def bridge_samples(prepared: fx.GraphModule, dec, images: torch.Tensor, max_values: int = 200_000) -> List[dict]:
    """Real and quantized input values of every bridge layer (for the histograms)."""
    from .passes.annotate import ANNOTATION
    from .quantizer import fake_quant
    nodes = {n.name: 0 for n in prepared.graph.nodes
             if ANNOTATION in n.meta and n.meta[ANNOTATION].bridge is not None}
    if not nodes or images is None:
        return []
    sampler = _InputSampler(prepared, nodes)
    with torch.no_grad():
        for i in range(0, images.shape[0], 8):
            sampler.run(images[i:i + 8])
    out = []
    g = torch.Generator().manual_seed(0)
    for n in prepared.graph.nodes:
        if n.name not in sampler.kept:
            continue
        ann = n.meta[ANNOTATION]
        qp = dec.layers[ann.layer].inputs.get(0)
        if qp is None:
            continue
        x = torch.cat(sampler.kept[n.name])
        axis = qp.spec.axis if qp.spec.per_channel else None
        q = fake_quant(x, qp.scale, qp.zero_point, qp.spec.qmin, qp.spec.qmax, axis)
        idx = torch.randperm(x.numel(), generator=g)[:max_values]
        ch = x.movedim(1, 0).reshape(x.shape[1], -1) if x.dim() == 4 else None
        out.append({"layer": ann.layer, "real": x.reshape(-1)[idx], "quant": q.reshape(-1)[idx],
                    "spec": f"{qp.spec.bits}-bit {qp.spec.granularity} {qp.spec.scheme}",
                    "zp_overflow": qp.zp_overflow,
                    "ch_lo": ch.min(1).values if ch is not None else None,
                    "ch_hi": ch.max(1).values if ch is not None else None})
    return out


def write_quantize_report(folder: str, job, config, prepared: fx.GraphModule, converted: fx.GraphModule,
                          metrics: Optional[Dict], seconds: float, argv: List[str],
                          images: Optional[torch.Tensor] = None, check=None) -> str:
    from .plots import draw_bridges, plot_bridge_histograms, plot_choice_counts, plot_choices, plot_errors
    dec = quant_state(converted).decisions
    lines = [f"# qhyvit quantize report: {job.name}", "",
             f"Command: `{' '.join(shlex.quote(a) for a in ['qhyvit'] + list(argv[1:]))}`", "",
             f"- weights: `{os.path.basename(job.weights) if job.weights else 'pretrained'}`",
             f"- method: {config.method}, W{config.w_bits}A{config.a_bits}"
             + (f" (weight codes limited to {config.weight_code_bits} bits for the target integer kernels)"
                if config.weight_code_bits else ""),
             f"- calibration: {dec.meta.get('calib_images')} images from `{job.calib}`, seed {config.seed}, "
             f"{seconds:.1f} s",
             f"- quantized layers: {len(dec.layers)}; bridge blocks: {len(quant_state(prepared).bridges)}",
             ""]
    if metrics:
        ref = next(iter(metrics.values()))["top1"]
        lines += ["## Accuracy", "", "Rows marked (onnxruntime) are the exported ONNX run by onnxruntime; the "
                  "(torch) row is the fake-quant GraphModule of the same quantizers.", "",
                  "| model | top-1 | drop | agreement with float | KL | logits SQNR (dB) | integer conv/gemm/matmul |",
                  "|---|---|---|---|---|---|---|"]
        for m in metrics.values():
            cov = f"{m['integer_ops']}/{m['compute_ops']}" if "integer_ops" in m else "-"
            lines.append(f"| {m['name']} | {m['top1']:.2f} | {ref - m['top1']:+.2f} | {m['agreement']:.2f} | "
                         f"{m['kl']:.5f} | {m['sqnr_db']:.2f} | {cov} |")
        lines.append("")
    if check is not None:
        rt = config.backend.check_runtime
        flag = "" if rt == "onnxruntime" else f" --runtime {rt}"
        lines += [f"## Integer kernels ({rt})", "",
                  f"{check.integer_count}/{len(check.ops)} conv/gemm/matmul ops run in integer kernels "
                  f"({check.mac_share:.1f} % of MACs); see `qhyvit check model.onnx{flag}`.", ""]
        islands = [o for o in check.ops if not o.integer]
        if islands:
            lines += ["| float op | reason |", "|---|---|"] + [f"| {o.name} | {o.reason} |" for o in islands] + [""]
    counts = choice_counts(dec)
    lines += ["## Choices by layer kind", "", "| kind | layers | W per-channel | W asymmetric | A tensors | "
              "A per-channel | A asymmetric |", "|---|---|---|---|---|---|---|"]
    for k, c in counts.items():
        lines.append(f"| {k} | {c['layers']} | {c['w_channel']} | {c['w_asym']} | {c['a_tensors']} | "
                     f"{c['a_channel']} | {c['a_asym']} |")
    plot_choice_counts(counts, os.path.join(folder, "choice_counts.png"))
    plot_choices(dec, os.path.join(folder, "choices.png"), title=f"{job.name} W{config.w_bits}A{config.a_bits} "
                 f"{config.method}: chosen granularity / scheme per layer (bridge layers shaded)")
    lines += ["", "![choice counts](choice_counts.png)", "", "![choices per layer](choices.png)", ""]
    if any("before" in d.error for d in dec.layers.values()):
        plot_errors(dec, os.path.join(folder, "errors.png"))
        lines += ["## Quantization error before and after the search", "", "![errors](errors.png)", ""]
    lines += ["## Bridge blocks", "", "![bridges](bridges.png)", ""]
    draw_bridges(prepared, os.path.join(folder, "bridges.png"), title=f"{job.name}: bridge blocks and decisions",
                 decisions=dec)
    samples = bridge_samples(prepared, dec, images)
    if samples:
        plot_bridge_histograms(samples, os.path.join(folder, "bridge_histograms.png"),
                               title=f"{job.name}: real (orange) vs quantized (blue) inputs of the bridge layers")
        lines += ["Inputs of the bridge layers, real vs quantized (log counts), and their per-channel ranges "
                  "(paper Figs. 3-8); a title in red marks zero-point overflow.", "",
                  "![bridge histograms](bridge_histograms.png)", "",
                  "| bridge layer | input quantizer | zero-point overflow |", "|---|---|---|"]
        lines += [f"| {s['layer']} | {s['spec']} | {s['zp_overflow']} |" for s in samples] + [""]
    lines += ["## Per-layer decisions", ""] + decisions_table(dec) + [""]
    path = os.path.join(folder, "report.md")
    atomic_write_text(path, "\n".join(lines))
    return path
