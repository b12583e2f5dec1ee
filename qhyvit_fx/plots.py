"""Pictures: the graph around each bridge block, decision overlays, histograms."""
from __future__ import annotations

import os
from typing import Dict, List

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import networkx as nx  # noqa: E402
import torch.fx as fx  # noqa: E402

from .decisions import atomic_write_bytes  # noqa: E402
from .patterns.bridges import find_bridges  # noqa: E402
from .patterns.kinds import build_kind_graph  # noqa: E402

KIND_COLORS = {
    "conv": "#8fbce6", "linear": "#f5c26b", "matmul": "#f08a7e", "norm": "#b8e0b0", "softmax": "#d7b5ea",
    "reshape": "#e6e6e6", "elementwise": "#ffffff", "pool": "#cfd8dc", "input": "#ffffff", "other": "#eeeeee",
    "activation": "#ffffff", "batchnorm": "#ffffff",
}


def _short(name: str, parts: int = 3) -> str:
    bits = name.split(".")
    return ".".join(bits[-parts:]) if len(bits) > parts else name


def _label(g: nx.DiGraph, v: str, decisions=None) -> str:
    a = g.nodes[v]
    mod = a.get("module")
    text = _short(mod) if mod else v
    lab = f"{a['kind']}\n{text}"
    if a["kind"] == "conv" and "kernel" in a:
        lab += f"\n{a['kernel'][0]}x{a['kernel'][1]}" + (f" g{a['groups']}" if a.get("groups", 1) > 1 else "")
    if decisions is not None:
        d = decisions.layers.get(mod or v)
        if d is not None:
            parts = []
            if d.weight is not None:
                parts.append(f"W{d.weight.spec.bits} {d.weight.spec.granularity[:2]}/{d.weight.spec.scheme[:3]}")
            for i, qp in sorted(d.inputs.items()):
                if qp is not None:
                    parts.append(f"A{qp.spec.bits} {qp.spec.granularity[:2]}/{qp.spec.scheme[:3]}")
            lab += "\n" + "\n".join(parts)
    return lab


def _neighbourhood(g: nx.DiGraph, nodes: List[str], entries: List[str], output: str, hops: int) -> List[str]:
    """The block, ``hops`` producers upstream of its entries and ``hops``
    consumers downstream of its output."""
    keep = set(nodes)
    for start, step in ((entries, g.predecessors), ([output], g.successors)):
        frontier = set(start)
        for _ in range(hops):
            nxt = {w for v in frontier for w in step(v)} - keep
            keep |= nxt
            frontier = nxt
    return [v for v in g.nodes if v in keep]


def _layout(sub: nx.DiGraph) -> Dict[str, tuple]:
    """Left-to-right layers by topological generation; lanes within a layer."""
    pos = {}
    for x, gen in enumerate(nx.topological_generations(sub)):
        gen = sorted(gen)
        for i, v in enumerate(gen):
            pos[v] = (x * 1.6, -(i - (len(gen) - 1) / 2) * 1.4)
    return pos


def draw_bridges(gm: fx.GraphModule, path: str, title: str = "", hops: int = 3, decisions=None) -> str:
    """Draw the kind graph around every bridge block (bridge layers outlined
    in red, the bridge output with a double outline); PNG or SVG by extension."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".png", ".svg"):
        raise ValueError(f"drawing format '{ext}' is not supported; use a .png or .svg file name")
    g = build_kind_graph(gm)
    tags = find_bridges(gm, kind_graph=g)
    n = max(1, len(tags))
    fig, axes = plt.subplots(n, 1, figsize=(16, 3.6 * n), squeeze=False)
    for ax, t in zip(axes[:, 0], tags or [None]):
        ax.axis("off")
        if t is None:
            ax.text(0.5, 0.5, "no bridge blocks found", ha="center", va="center")
            continue
        core = [v for v in t.nodes if g.has_node(v)]
        sub = g.subgraph(_neighbourhood(g, core, t.entry, t.output, hops)).copy()
        pos = _layout(sub)
        members = set(t.layers)
        colors = [KIND_COLORS.get(sub.nodes[v]["kind"], "#eeeeee") for v in sub.nodes]
        edgec = ["#d62728" if v in members else ("#ff9896" if v in t.nodes or v in t.reshape else "#555555")
                 for v in sub.nodes]
        widths = [3.2 if v in members else 0.8 for v in sub.nodes]
        nx.draw_networkx_edges(sub, pos, ax=ax, arrows=True, arrowsize=10, edge_color="#777777",
                               node_size=2600, width=1.0)
        nx.draw_networkx_nodes(sub, pos, ax=ax, node_shape="s", node_size=2600, node_color=colors,
                               edgecolors=edgec, linewidths=widths)
        if t.output in sub.nodes:
            nx.draw_networkx_nodes(sub, pos, nodelist=[t.output], ax=ax, node_shape="s", node_size=3400,
                                   node_color="none", edgecolors="#d62728", linewidths=1.5)
        nx.draw_networkx_labels(sub, pos, labels={v: _label(sub, v, decisions) for v in sub.nodes}, ax=ax,
                                font_size=6.5)
        ax.set_title(f"bridge {t.id}  [{t.direction}]  {' -> '.join(t.modules)}  (pattern {t.pattern})",
                     fontsize=9, loc="left")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return _save(fig, path, dpi=110)


def _save(fig, path: str, dpi: int = 100) -> str:
    """Render ``fig`` in the format of ``path``'s extension and write it atomically."""
    import io
    buf = io.BytesIO()
    fig.savefig(buf, format=os.path.splitext(path)[1][1:] or "png", dpi=dpi)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _tick(layer: str) -> str:
    """Compact tick label for a layer name."""
    return layer.replace("stages.", "s").replace("transformer.", "t")


def plot_choices(dec, path: str, title: str = "") -> str:
    """Per layer: weight and input granularity / scheme (and bits), bridge layers marked."""
    layers = list(dec.layers.values())
    fig, ax = plt.subplots(figsize=(max(10, 0.16 * len(layers)), 3.2))
    code = {("tensor", "symmetric"): 0, ("tensor", "asymmetric"): 1, ("channel", "symmetric"): 2,
            ("channel", "asymmetric"): 3}
    labels = ["tensor / sym", "tensor / asym", "channel / sym", "channel / asym"]
    for i, d in enumerate(layers):
        if d.weight is not None:
            s = d.weight.spec
            ax.scatter(i, code[(s.granularity, s.scheme)] - 0.12, marker="s", color="#1f77b4", s=22)
        for qp in d.inputs.values():
            if qp is not None:
                ax.scatter(i, code[(qp.spec.granularity, qp.spec.scheme)] + 0.12, marker="o", color="#ff7f0e", s=22)
        if d.bridge is not None:
            ax.axvspan(i - 0.5, i + 0.5, color="#d62728", alpha=0.12, lw=0)
    ax.set_yticks(range(4))
    ax.set_yticklabels(labels)
    ax.set_xticks(range(len(layers)))
    ax.set_xticklabels([_tick(d.layer) for d in layers], rotation=90,
                       fontsize=5)
    ax.set_xlim(-1, len(layers))
    ax.scatter([], [], marker="s", color="#1f77b4", label="weight")
    ax.scatter([], [], marker="o", color="#ff7f0e", label="input activation")
    ax.axvspan(0, 0, color="#d62728", alpha=0.12, label="bridge layer")
    ax.legend(loc="upper right", fontsize=7, ncol=3)
    ax.set_title(title or "chosen granularity and scheme per layer", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def plot_errors(dec, path: str, title: str = "") -> str:
    """Search objective before (MinMax) and after, per layer (log scale)."""
    layers = [d for d in dec.layers.values() if "before" in d.error]
    fig, ax = plt.subplots(figsize=(max(10, 0.16 * len(layers)), 3.2))
    x = range(len(layers))
    ax.bar([i - 0.2 for i in x], [max(d.error["before"], 1e-30) for d in layers], width=0.4, label="MinMax (before)",
           color="#bbbbbb")
    ax.bar([i + 0.2 for i in x], [max(d.error["after"], 1e-30) for d in layers], width=0.4, label="after the search",
           color="#2ca02c")
    ax.set_yscale("log")
    ax.set_xticks(list(x))
    ax.set_xticklabels([_tick(d.layer) for d in layers], rotation=90,
                       fontsize=5)
    ax.legend(fontsize=7)
    ax.set_ylabel("E[g^2 dO^2]")
    ax.set_title(title or "Hessian-guided output error per layer", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def plot_choice_counts(counts: Dict[str, Dict[str, int]], path: str, title: str = "") -> str:
    """Share of per-channel / asymmetric picks by layer kind (weights and inputs)."""
    kinds = list(counts)
    fig, ax = plt.subplots(figsize=(7, 3))
    width = 0.2
    series = [("W per-channel", "w_channel", "layers"), ("W asymmetric", "w_asym", "layers"),
              ("A per-channel", "a_channel", "a_tensors"), ("A asymmetric", "a_asym", "a_tensors")]
    for j, (label, key, den) in enumerate(series):
        vals = [100.0 * counts[k][key] / counts[k][den] if counts[k][den] and
                (key.startswith("a") or k != "matmul") else 0 for k in kinds]
        ax.bar([i + (j - 1.5) * width for i in range(len(kinds))], vals, width=width, label=label)
    ax.set_xticks(range(len(kinds)))
    ax.set_xticklabels([f"{k} ({counts[k]['layers']})" for k in kinds])
    ax.set_ylabel("% of quantizers")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(title or "how often each layer kind picks per-channel / asymmetric", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def plot_bridge_histograms(samples: List[dict], path: str, title: str = "") -> str:
    """Real vs quantized values of every bridge layer's input (paper Figs. 3-8).

    ``samples``: dicts with layer, real (1-D tensor), quant (1-D tensor), spec, zp_overflow,
    ch_lo / ch_hi (per-channel ranges, optional)."""
    n = max(1, len(samples))
    fig, axes = plt.subplots(n, 2, figsize=(12, 2.6 * n), squeeze=False)
    for (ax, ax2), s in zip(axes, samples):
        real, quant = s["real"].float(), s["quant"].float()
        lo, hi = float(real.min()), float(real.max())
        bins = 120
        ax.hist(real.numpy(), bins=bins, range=(lo, hi), color="#ff7f0e", alpha=0.6, label="real")
        ax.hist(quant.numpy(), bins=bins, range=(lo, hi), color="#1f77b4", alpha=0.6, label="quantized")
        ax.set_yscale("log")
        over = f", zero-point overflow in {s['zp_overflow']} channel(s)" if s.get("zp_overflow") else ""
        ax.set_title(f"{s['layer']} input: {s['spec']}{over}", fontsize=8, color="#d62728" if over else "black")
        ax.legend(fontsize=7)
        if s.get("ch_lo") is not None:
            c = range(len(s["ch_lo"]))
            ax2.vlines(list(c), s["ch_lo"].numpy(), s["ch_hi"].numpy(), color="#555555", lw=1)
            ax2.axhline(0, color="#d62728", lw=0.6)
            ax2.set_title("per-channel ranges (min..max)", fontsize=8)
            ax2.set_xlabel("channel", fontsize=7)
        else:
            ax2.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
