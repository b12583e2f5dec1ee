"""What ``qhyvit inspect`` reports: quantizable ops by kind, bridge blocks, layers."""
from __future__ import annotations

from typing import Dict, Optional

import torch.fx as fx

from .patterns.bridges import find_bridges
from .patterns.kinds import LAYER_KINDS, Kind, build_kind_graph, classify, layer_name, quantizable_nodes

REPORTED_KINDS = ("conv", "linear", "matmul", "norm", "batchnorm", "softmax", "activation")


def _norm_type(gm: fx.GraphModule, n: fx.Node) -> str:
    if n.op == "call_module":
        return type(gm.get_submodule(n.target)).__name__
    return getattr(n.target, "__name__", str(n.target))


def graph_summary(gm: fx.GraphModule, model_name: str = "", img_size: Optional[int] = None,
                  decisions=None) -> Dict:
    """JSON-able summary of a captured graph (bridges found on its kind graph)."""
    kg = build_kind_graph(gm)
    tags = find_bridges(gm, kind_graph=kg)
    counts: Dict[str, int] = {k: 0 for k in REPORTED_KINDS}
    norm_types: Dict[str, int] = {}
    for n in gm.graph.nodes:
        k = classify(gm, n).value
        if k in counts:
            counts[k] += 1
        if k == Kind.NORM.value:
            t = _norm_type(gm, n)
            norm_types[t] = norm_types.get(t, 0) + 1
    bridge_of = {l: t.id for t in tags for l in t.layers}
    layers = []
    for n in quantizable_nodes(gm):
        k = classify(gm, n).value
        entry = {"name": layer_name(gm, n), "node": n.name, "kind": k,
                 "quantized_inputs": 2 if k == "matmul" else 1, "weight": k != "matmul",
                 "bridge": bridge_of.get(n.name)}
        if n.op == "call_module":
            w = getattr(gm.get_submodule(n.target), "weight", None)
            if w is not None:
                entry["weight_shape"] = list(w.shape)
        if decisions is not None and entry["name"] in decisions.layers:
            entry["decision"] = decisions.layers[entry["name"]].to_dict()
        layers.append(entry)
    q = {k: counts[k] for k in LAYER_KINDS}
    return {
        "model": model_name,
        "img_size": img_size,
        "quantizable": q,
        "quantizable_total": sum(q.values()),
        "quantized_tensors": {"weights": q["conv"] + q["linear"],
                              "activations": q["conv"] + q["linear"] + 2 * q["matmul"]},
        "ops": counts,
        "norm_types": norm_types,
        "bridges": [dict(t.to_dict(), output_module=kg.nodes[t.output].get("module", t.output)) for t in tags],
        "layers": layers,
    }


def format_summary(s: Dict) -> str:
    lines = [f"model {s['model']}  (input {s['img_size']} px)", "", "quantizable ops"]
    lines.append(f"  {'kind':<10} {'count':>5}")
    for k, v in s["quantizable"].items():
        lines.append(f"  {k:<10} {v:>5}")
    lines.append(f"  {'total':<10} {s['quantizable_total']:>5}   "
                 f"({s['quantized_tensors']['weights']} weight tensors, "
                 f"{s['quantized_tensors']['activations']} activation inputs)")
    other = ", ".join(f"{k} {v}" for k, v in s["ops"].items() if k not in s["quantizable"])
    lines.append(f"  float ops: {other}")
    if s["norm_types"]:
        lines.append("  norms: " + ", ".join(f"{k} {v}" for k, v in s["norm_types"].items()))
    lines.append("")
    lines.append(f"bridge blocks: {len(s['bridges'])}")
    for b in s["bridges"]:
        lines.append(f"  [{b['id']}] {b['direction']:<14} {' -> '.join(b['modules'])}")
        lines.append(f"      pattern {b['pattern']}; output {b['output_module']}; reshape chain "
                     f"{len(b['reshape'])} op(s)")
    return "\n".join(lines)
