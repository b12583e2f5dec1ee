"""Bridge tails: the rest of a bridge block, from a member layer's output to the bridge output, as a
small GraphModule that runs on sampled rows (valid when every op in between is pointwise: 1x1
convs, activations, adds), so a member's candidates are scored at the bridge output."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Set, Tuple

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from ..patterns.kinds import Kind, classify, shape as node_shape
from .interpreters import is_identity_node
from .rows import RowPlan
from ..state import quant_state

_POINTWISE_FUNCS = {torch.add, torch.mul, torch.sub, F.relu, F.gelu, F.silu, F.hardswish, F.sigmoid, torch.sigmoid,
                    F.batch_norm}


def _pointwise(gm: fx.GraphModule, n: fx.Node) -> bool:
    k = classify(gm, n)
    if n.op == "get_attr" or is_identity_node(gm, n):
        return True
    if n.op == "call_module":
        m = gm.get_submodule(n.target)
        if isinstance(m, nn.Conv2d):
            return m.kernel_size == (1, 1) and m.stride == (1, 1) and m.padding in ((0, 0), 0) and m.dilation == (1, 1)
        return isinstance(m, (nn.BatchNorm2d,)) or k == Kind.ACT
    return k in (Kind.ACT, Kind.BATCHNORM, Kind.ELEMENTWISE) and not (
        n.op == "call_function" and getattr(n.target, "__name__", "") in ("cat", "stack"))


@dataclass
class Tail:
    gm: fx.GraphModule
    side: List[str]                 # fx node names fed as extra inputs (rows)
    out_node: str


def build_tail(gm: fx.GraphModule, layer: fx.Node, out: fx.Node, block_nodes: List[str]) -> Tuple[Optional[Tail], str]:
    """Sub-graph computing ``out`` from ``layer``'s output; (None, reason) if not pointwise."""
    members = set(block_nodes)
    # nodes downstream of the layer inside the block, up to the output
    down: Set[str] = set()
    stack = [layer]
    while stack:
        n = stack.pop()
        for u in n.users:
            # observers were inserted after the bridge was tagged: they belong to the block
            if (u.name in members or is_identity_node(gm, u)) and u.name not in down:
                down.add(u.name)
                if u is not out:
                    stack.append(u)
    if out.name not in down:
        return None, "bridge output not reachable"
    order = [n for n in gm.graph.nodes if n.name in down]
    for n in order:
        if not _pointwise(gm, n):
            return None, f"non-pointwise op '{n.name}' in the bridge tail"
    g = fx.Graph()
    env: Dict[str, fx.Node] = {}
    x = g.placeholder("layer_out")
    env[layer.name] = x
    side: List[str] = []

    def arg_map(a: fx.Node):
        if a.name in env:
            return env[a.name]
        if a.op == "get_attr":
            env[a.name] = g.get_attr(a.target)
            return env[a.name]
        side.append(a.name)
        env[a.name] = g.placeholder(f"side_{len(side)}")
        return env[a.name]

    for n in order:
        if is_identity_node(gm, n):
            env[n.name] = fx.node.map_arg(n.args[0], arg_map)
            continue
        env[n.name] = g.node_copy(n, arg_map)
    g.output(env[out.name])
    # placeholders must come first
    phs = [n for n in g.nodes if n.op == "placeholder"]
    first = next(iter(g.nodes))
    for p in phs:
        first.prepend(p) if p is not first else None
    tail_gm = fx.GraphModule(gm, g)
    return Tail(tail_gm, side, out.name), ""


def _rows_to_nchw(r: torch.Tensor) -> torch.Tensor:
    return r.t().reshape(1, r.shape[1], 1, r.shape[0])


def _nchw_to_rows(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[1], -1).t()


def tail_callable(tail: Tail, side_rows: List[torch.Tensor]):
    """The rest of a bridge block as ``fn(rows [n, r, C], idx) -> [n, r, C']`` for ``n`` candidate
    outputs on ``r`` sampled rows: the first ``r`` rows when ``idx`` is None, else rows ``idx``.
    Side inputs (e.g. a residual branch) are taken at the same rows."""
    def run(rows: torch.Tensor, idx: Optional[torch.Tensor] = None) -> torch.Tensor:
        n, r, c = rows.shape
        sides = [(s[:r] if idx is None else s[idx]).repeat(n, 1) for s in side_rows]
        with torch.no_grad():
            out = tail.gm(_rows_to_nchw(rows.reshape(n * r, c)), *(_rows_to_nchw(s) for s in sides))
        return _nchw_to_rows(out).reshape(n, r, -1)
    return run


def bridge_tails(prepared: fx.GraphModule, records) -> Tuple[Dict[str, Tuple[Optional[Tail], str, str]],
                                                             Dict[str, RowPlan]]:
    """Every bridge member's tail (tail or None, why not, bridge output); a member with a tail takes
    the output's row plan.  Also returns the row plans of the tails' side inputs."""
    by = {n.name: n for n in prepared.graph.nodes}
    tails: Dict[str, Tuple[Optional[Tail], str, str]] = {}
    extra: Dict[str, RowPlan] = {}
    for t in quant_state(prepared).bridges:
        out_rec = records.get(t.output)
        if out_rec is None:
            continue
        for l in t.layers:
            if l == t.output or l not in records:
                continue
            rec = records[l]
            if rec.ann.kind != Kind.CONV or out_rec.ann.kind != Kind.CONV or \
                    node_shape(by[l])[2:] != node_shape(by[t.output])[2:]:
                tails[l] = (None, "bridge layer and output differ in layout", t.output)
                continue
            tail, why = build_tail(prepared, by[l], by[t.output], t.nodes)
            tails[l] = (tail, why, t.output)
            if tail is not None:
                rec.plan = out_rec.plan
                for s in tail.side:
                    extra[s] = out_rec.plan
    return tails, extra
