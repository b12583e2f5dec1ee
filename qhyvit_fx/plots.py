"""Pictures: the graph around each bridge block, decision overlays, histograms."""
from __future__ import annotations

import os
from typing import Dict, List, Optional

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
    import io
    buf = io.BytesIO()
    fig.savefig(buf, format=ext[1:], dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path
