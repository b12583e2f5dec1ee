"""Pass: a quantized tensor is quantized for every reader (integer mode).

After conversion a tensor can have a fake-quantizer in front of some readers (the conv it feeds) and
none in front of others (the Concat of a MobileViT block's shortcut, a pooling, a float op).  In
ONNX the producer then feeds both a QuantizeLinear and a float op, and onnxruntime keeps the
producer in float: its QDQ fusions need the producer's only reader to be one QuantizeLinear.
onnxruntime's own quantizer quantizes each tensor once and lets every reader dequantize it.  This
pass does the same: every other reader of a tensor that has a fake-quantizer reads the quantizer's
output, so the tensor exists once, in integers (Concat, pooling and the like then fuse too).  The
values those readers see change by the quantization error, which is what the integer deployment
computes anyway.  GraphModule in, GraphModule out.
"""
from __future__ import annotations

import torch.fx as fx

from ..modules import FakeQuantize
from ..patterns.kinds import metadata_read


def _fake_quant(gm: fx.GraphModule, n: fx.Node) -> bool:
    return n.op == "call_module" and len(n.args) == 1 and not n.kwargs \
        and isinstance(gm.get_submodule(n.target), FakeQuantize)


def quantize_every_use(gm: fx.GraphModule) -> fx.GraphModule:
    g = gm.graph
    rerouted = 0
    # graph order, taken once: a quantizer moved below its input is only ever compared with the
    # other readers of that same input
    order = {n: i for i, n in enumerate(g.nodes)}
    for node in list(g.nodes):
        if _fake_quant(gm, node):
            continue
        fqs = [u for u in node.users if _fake_quant(gm, u)]
        if not fqs:
            continue
        others = [u for u in node.users if u not in fqs and u.op != "output" and metadata_read(u) is None]
        if not others:
            continue
        fq = min(fqs, key=order.get)
        node.append(fq)                     # right after its input: before every reader it gains
        for u in others:
            u.replace_input_with(node, fq)
            rerouted += 1
    g.lint()
    gm.recompile()
    gm.meta["qhyvit_quantized_every_use"] = rerouted
    return gm
