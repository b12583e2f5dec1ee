"""Pass: annotate quantizable nodes with quantization specs from a config.

Writes ``node.meta["qhyvit_quant"]`` (a :class:`QuantAnnotation`) on every
conv / linear / matmul node that the config quantizes (partial mode, paper
Table 1) and, in full mode, also on normalisations, softmax, activations and
residual adds, whose inputs are quantized (paper Table 2).  Later passes only
execute these annotations.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
import torch.fx as fx
import torch.nn as nn

from ..config import QConfig
from ..patterns.kinds import (LAYER_KINDS, Kind, activation_nodes, classify, is_tensor_node, layer_name, metadata_read,
                              node_module, norm_owner, rank)
from ..quantizer import QSpec
from ..state import bridge_role, quant_state

ANNOTATION = "qhyvit_quant"
FULL_KINDS = ("norm", "softmax", "activation", "add", "mul")  # full/integer mode: inputs quantized, MinMax ranges


@dataclass
class QuantAnnotation:
    layer: str                                  # stable name: module path, or node name for matmuls
    kind: str                                   # conv | linear | matmul
    weight: Optional[QSpec]                     # None: weight stays float (or no weight)
    inputs: Dict[int, QSpec]                    # positional arg index -> default spec
    input_axes: Dict[int, Optional[int]]        # channel axis allowed for per-channel (None: per-tensor only)
    output: Optional[QSpec] = None              # output quantizer (deployment graphs)
    output_axis: Optional[int] = None
    output_after: Optional[str] = None          # node the output quantizer follows (a ReLU / ReLU6), else the layer
    bridge: Optional[int] = None                # bridge block id, if a member
    bridge_role: Optional[str] = None
    observers: Dict[str, str] = field(default_factory=dict)   # 'in0' / 'out' -> submodule name
    groups: Dict[str, str] = field(default_factory=dict)      # 'in0' / 'out' -> quantizer group (group_quantizers)
    # input index -> (producer, fx node name): the op that made the input, seen through layout ops
    # ("softmax", "gelu", "silu", "layernorm", "groupnorm", ...; "via layout" appended when reshapes
    # sit in between).  The baselines pick their special quantizers from it.
    producers: Dict[int, tuple] = field(default_factory=dict)
    # input 0 may be quantized per channel although the kernel reads one scale: per-channel codes,
    # the channel ratios moved into the weight.  "channel": scales and zero points per channel (a
    # linear or an unpadded ungrouped conv; the bias absorbs the zero points); "scale": scales per
    # channel, one zero point (a padded or grouped conv, whose padding reads that zero point); None
    input_migrate: Optional[str] = None
    # where input 0 cannot migrate but is the only use of an affine norm's output: the module holding
    # that norm's affine, into which per-channel input ranges fold (RepQ-ViT's reparameterisation)
    fold_norm: Optional[str] = None
    # the upper bound of the ReLU6 the output quantizer follows: onnxruntime drops the Clip (and fuses
    # the conv) only while the quantizer's range stays inside it, so no searched range may pass it
    output_max: Optional[float] = None

    @property
    def a_bits(self) -> int:
        return next(iter(self.inputs.values())).bits if self.inputs else 0


def _clipping_activation(gm: fx.GraphModule, node: fx.Node) -> Optional[str]:
    """The ReLU / ReLU6 that is the only user of ``node``, if any.  The output quantizer then goes
    after it (as onnxruntime's own quantizer places it): onnxruntime drops a Relu / Clip in front
    of a QuantizeLinear whose range it implies and fuses conv + Q into QLinearConv, while the
    quantizer only has to cover [0, max] instead of the wide pre-activation range (depthwise convs
    of MobileNet-style stages lose several points otherwise)."""
    import torch
    import torch.nn.functional as F
    users = list(node.users)
    if len(users) != 1:
        return None
    u = users[0]
    if u.op == "call_module":
        m = gm.get_submodule(u.target)
        ok = isinstance(m, (nn.ReLU, nn.ReLU6)) or (isinstance(m, nn.Hardtanh) and m.min_val == 0.0)
    elif u.op == "call_function":
        ok = u.target in (F.relu, F.relu6, torch.relu)
    elif u.op == "call_method":
        ok = u.target == "relu"
    else:
        ok = False
    return u.name if ok else None


def _clip_max(gm: fx.GraphModule, node: fx.Node) -> Optional[float]:
    """The upper bound of the clipping activation that alone reads ``node``
    (:func:`_clipping_activation`): 6 for ReLU6, None for a ReLU."""
    import torch.nn.functional as F
    u = next(iter(node.users))
    if u.op == "call_module":
        mod = gm.get_submodule(u.target)
        return float(mod.max_val) if isinstance(mod, nn.Hardtanh) else None     # ReLU6 is a Hardtanh
    return 6.0 if u.op == "call_function" and u.target is F.relu6 else None


def migratable(mod) -> bool:
    """Whether per-channel input scales *and zero points* can move into the weight and bias exactly:
    every output reads each input channel through its own weight column and no input position is
    padding (padding codes would carry the per-tensor zero point, not the channel's).  Integer mode
    is excluded: other readers of the tensor read the same quantized codes there."""
    if isinstance(mod, nn.Linear):
        return True
    return isinstance(mod, nn.Conv2d) and mod.groups == 1 and mod.padding in ((0, 0), "valid")


def migration_kind(mod) -> Optional[str]:
    """How per-channel input codes of ``mod`` can be read with one scale (QuantAnnotation.input_migrate):
    "channel" where :func:`migratable`, "scale" for the other convs (padded or grouped: per-channel
    scales with one zero point, so a padded position reads 0 in every channel; a depthwise conv's
    per-channel weight takes the ratios at no cost), else None."""
    if migratable(mod):
        return "channel"
    return "scale" if isinstance(mod, nn.Conv2d) else None


def _foldable_norm(gm: fx.GraphModule, node: fx.Node) -> Optional[str]:
    """The module holding the affine of the LayerNorm / GroupNorm whose output is ``node``'s input and
    is read by nothing else, when per-channel input scales can fold into that affine: ``node`` is a
    linear or an unpadded ungrouped 1x1 conv (each output reads each channel through one weight
    column).  None otherwise."""
    arg, mod = node.args[0], node_module(gm, node)
    if not isinstance(arg, fx.Node) or _producer(gm, arg)[0] not in ("layernorm", "groupnorm"):
        return None
    if not (isinstance(mod, nn.Linear) or (isinstance(mod, nn.Conv2d) and mod.groups == 1
                                           and tuple(mod.kernel_size) == (1, 1) and mod.padding in ((0, 0), "valid"))):
        return None
    if [u for u in arg.users if metadata_read(u) is None] != [node]:
        return None
    owner = norm_owner(arg)
    norm = gm.get_submodule(owner) if owner is not None else None
    if getattr(norm, "weight", None) is None or norm.weight.numel() != mod.weight.shape[1]:
        return None
    return owner


def _quantized_by_producer(gm: fx.GraphModule, arg) -> bool:
    """Whether ``arg`` (seen through layout ops) is already the output of an earlier layer's output
    quantizer: that per-tensor quantizer is the reader's input quantizer too (tied after the
    search), so the reader cannot take per-channel codes of its own."""
    n = arg
    while isinstance(n, fx.Node) and classify(gm, n) == Kind.RESHAPE and n.args and isinstance(n.args[0], fx.Node):
        n = n.args[0]
    if not isinstance(n, fx.Node):
        return False
    ann = n.meta.get(ANNOTATION)
    if ann is not None and ann.output is not None and ann.output_after is None:
        return True
    for p in n.all_input_nodes:                   # a ReLU the producer's output quantizer follows
        pa = p.meta.get(ANNOTATION)
        if pa is not None and pa.output is not None and pa.output_after == n.name:
            return True
    return False


def quantized_layers(gm: fx.GraphModule) -> List[fx.Node]:
    """Every annotated node (layers and, in full mode, the other quantized ops), in graph order."""
    return [n for n in gm.graph.nodes if ANNOTATION in n.meta]


def searched_layers(gm: fx.GraphModule) -> List[fx.Node]:
    """The annotated conv / linear / matmul nodes: what reconstruction searches optimise."""
    return [n for n in quantized_layers(gm) if n.meta[ANNOTATION].kind in LAYER_KINDS]


def _producer(gm: fx.GraphModule, arg) -> tuple:
    """(what produced ``arg``, its node name), looking through single-input layout ops."""
    if not isinstance(arg, fx.Node):
        return ("constant", None)
    n, via = arg, False
    while classify(gm, n) == Kind.RESHAPE and n.args and isinstance(n.args[0], fx.Node):
        n, via = n.args[0], True
    k = classify(gm, n)
    if k in (Kind.ACT, Kind.NORM):
        m = node_module(gm, n)
        if isinstance(m, nn.LayerNorm):          # subclasses too (timm's LayerNorm, GroupNorm1, ...)
            name = "layernorm"
        elif isinstance(m, nn.GroupNorm):
            name = "groupnorm"
        elif m is not None:
            name = type(m).__name__.lower()
        else:
            name = getattr(n.target, "__name__", str(n.target)).lower()
        name = {"layer_norm": "layernorm", "group_norm": "groupnorm"}.get(name, name)
    else:
        name = k.value
    return (name + (" via layout" if via else ""), n.name)


_FULL_ACTS = ("gelu", "silu", "hardswish", "hardsigmoid", "sigmoid", "tanh", "mish", "elu", "leakyrelu",
              "leaky_relu")


def _full_mode_inputs(gm: fx.GraphModule, node: fx.Node, live: set, integer: bool = False):
    """(kind, input indices, per-channel axes) of a node full mode quantizes, else None.
    ReLU/ReLU6 inputs are not quantized: the quantizer after the op that feeds them already
    implies the clip (and onnxruntime folds it).  ``integer`` mode adds products of two
    activations (SiLU's x * sigmoid(x) once decomposed, gating, linear attention), which
    onnxruntime then runs as QLinearMul."""
    k = classify(gm, node)
    tensor_arg = lambda i: len(node.args) > i and isinstance(node.args[i], fx.Node) and node.args[i] in live
    if k == Kind.NORM and tensor_arg(0):
        m = node_module(gm, node)
        r = rank(node.args[0])
        ax = 1 if isinstance(m, nn.GroupNorm) or (m is None and "group" in str(node.target)) else \
            (None if r is None else r - 1)
        return "norm", [0], {0: ax}
    if k == Kind.BATCHNORM and tensor_arg(0):
        return "norm", [0], {0: 1}
    if k == Kind.SOFTMAX and tensor_arg(0):
        return "softmax", [0], {0: None}
    if k == Kind.ACT and tensor_arg(0) and _producer(gm, node)[0] in _FULL_ACTS:
        return "activation", [0], {0: None}
    if node.op == "call_function" and node.target in (operator.add, torch.add) and tensor_arg(0) and tensor_arg(1):
        return "add", [0, 1], {0: None, 1: None}
    if integer and node.op == "call_function" and node.target in (operator.mul, torch.mul) and tensor_arg(0) \
            and tensor_arg(1) and is_tensor_node(node.args[0]) and is_tensor_node(node.args[1]):
        return "mul", [0, 1], {0: None, 1: None}
    return None


def annotate(gm: fx.GraphModule, config: QConfig) -> fx.GraphModule:
    """Tag every node the config quantizes with a :class:`QuantAnnotation` (specs from the config,
    axes and output quantizers from its backend, elementwise ops from its mode)."""
    candidates = _weighted_candidates(gm, set(config.quantize_ops))
    used = set()
    for i, (node, k) in enumerate(candidates):
        policy = _layer_policy(config, i, len(candidates))
        if policy == "float":
            continue
        node.meta[ANNOTATION] = _weighted_annotation(gm, node, k, config, policy)
        used.add(node.meta[ANNOTATION].layer)
    if config.mode_rules.quantize_elementwise:
        _annotate_elementwise(gm, config, used)
    if config.mode_rules.integer_tensors:
        _integer_outputs(gm, config)
    quant_state(gm).config = config
    return gm


def _weighted_candidates(gm: fx.GraphModule, ops: set) -> List:
    """(node, kind) of every conv / linear / matmul of the kinds in ``ops``, in graph order (old
    annotations dropped)."""
    candidates = []
    for node in gm.graph.nodes:
        node.meta.pop(ANNOTATION, None)
        k = classify(gm, node)
        if k == Kind.CONV and "conv" in ops and isinstance(node_module(gm, node), nn.Conv2d):
            candidates.append((node, k))
        elif k == Kind.LINEAR and "linear" in ops and isinstance(node_module(gm, node), nn.Linear):
            candidates.append((node, k))
        elif k == Kind.MATMUL and "matmul" in ops and len(node.args) >= 2:
            candidates.append((node, k))
    return candidates


def _layer_policy(config: QConfig, i: int, n: int) -> str:
    policy = "quantize"
    if i == 0:
        policy = config.first_layer
    if i == n - 1:
        policy = config.last_layer if policy == "quantize" else policy
    return policy


def _weighted_annotation(gm: fx.GraphModule, node: fx.Node, k: Kind, config: QConfig,
                         policy: str) -> QuantAnnotation:
    backend = config.backend
    w_bits = 8 if policy == "8bit" else config.w_bits
    a_bits = 8 if policy == "8bit" else config.a_bits
    name = layer_name(gm, node)
    override = config.layer_overrides.get(name, {})
    w_bits = int(override.get("w_bits", w_bits))
    a_bits = int(override.get("a_bits", a_bits))
    migrate, fold, mig_axis = None, None, 0
    if k == Kind.MATMUL:
        idxs = [0, 1]
        axes = {0: None, 1: None}
        wspec = None
    else:
        idxs = [0]
        r = rank(node.args[0])
        axes = {0: None if r is None else backend.input_axis(1 if k == Kind.CONV else r - 1)}
        wspec = backend.weight_spec(config.weight_spec(w_bits))
        # whether the kernels could run a migrated per-channel input; the method decides to use it
        migrate = migration_kind(node_module(gm, node)) if backend.can_migrate(config.mode_rules) \
            and not _quantized_by_producer(gm, node.args[0]) else None
        if not migrate and backend.norm_folded_inputs:
            fold = _foldable_norm(gm, node)       # or fold them into the norm that feeds it
        if migrate or fold:
            mig_axis = 1 if k == Kind.CONV else (r or 2) - 1
    inputs = {}
    for j in idxs:
        ax = axes[j]
        spec = config.act_spec(a_bits, axis=ax if ax is not None else mig_axis)
        if ax is None and spec.per_channel:
            spec = spec.with_(per_channel=False, axis=0)
        inputs[j] = backend.matmul_input_spec(j, spec) if k == Kind.MATMUL else spec
    out_spec, after = _output_quantizer(gm, node, k, config, a_bits)
    b = bridge_role(node)
    out_max = _clip_max(gm, node) if after is not None else None
    return QuantAnnotation(
        layer=name, kind=k.value, weight=wspec, inputs=inputs, input_axes=axes, output=out_spec,
        output_axis=None, output_after=after, bridge=b.id if b else None,
        bridge_role=b.role if b else None,
        producers={j: _producer(gm, node.args[j]) for j in idxs},
        input_migrate=migrate, fold_norm=fold, output_max=out_max)


def _output_quantizer(gm: fx.GraphModule, node: fx.Node, k: Kind, config: QConfig, a_bits: int):
    """(spec, node it sits after) of a weighted layer's output quantizer; (None, None) for none.

    onnxruntime's QLinearConv and QGemm need Q/DQ on the op output too (``backend.fused_outputs``);
    its matmul kernels (MatMulIntegerToFloat, QLinearMatMul) run in integers without one, so token
    linears and attention matmuls get no extra output quantizer ... except a bias-free token linear
    read by a ReLU (MetaFormer's StarReLU MLPs): onnxruntime 1.32 leaves that MatMul in float; with
    Q/DQ on its output it runs as QLinearMatMul."""
    r = rank(node)
    bare_relu = (k == Kind.LINEAR and r != 2 and getattr(node_module(gm, node), "bias", 0) is None
                 and _clipping_activation(gm, node) is not None)
    needs_out = k == Kind.CONV or (k == Kind.LINEAR and r == 2) or bare_relu
    if not (config.quantize_outputs or (config.backend.fused_outputs and needs_out)):
        return None, None
    after = None if bare_relu else _clipping_activation(gm, node)
    if after is not None and a_bits < 8 and _clip_max(gm, node) is not None:
        # onnxruntime drops a Clip in front of a QuantizeLinear only when the Q's whole uint8 range lies
        # inside the clip; below 8 bits 255 codes reach past ReLU6's 6, the Clip stays and the conv is
        # not fused.  Quantize the raw output instead (fused), the Clip then reads it in float.
        after = None
    # after a ReLU the output quantizer is also the next layer's input quantizer: a_bits;
    # on the raw output a float op reads it, and the kernel's u8 output costs the same at 8 bits
    out_bits = a_bits if after is not None else max(a_bits, config.output_bits)
    return config.act_spec(out_bits).with_(per_channel=False, axis=0), after


def _annotate_elementwise(gm: fx.GraphModule, config: QConfig, used: set) -> None:
    """Full and integer mode: input quantizers of norms, softmax, activations and adds."""
    live = activation_nodes(gm)
    for node in gm.graph.nodes:
        if ANNOTATION in node.meta:
            continue
        integer = config.mode_rules.integer_tensors
        found = _full_mode_inputs(gm, node, live, integer=integer)
        if found is None or (integer and found[0] in config.backend.integer_mode_float_ops):
            continue
        kind, idxs, axes = found
        name = layer_name(gm, node)
        name = node.name if name in used else name      # a module called twice: one entry per call
        used.add(name)
        inputs = {j: config.act_spec(config.a_bits).with_(per_channel=False, axis=0) for j in idxs}
        b = bridge_role(node)
        node.meta[ANNOTATION] = QuantAnnotation(
            layer=name, kind=kind, weight=None, inputs=inputs, input_axes=axes,
            bridge=b.id if b else None, bridge_role=b.role if b else None,
            producers={j: _producer(gm, node.args[j]) for j in idxs})


def _float_reader(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether some reader of ``node``'s value (looking through layout ops) reads it unquantized."""
    for u in node.users:
        if metadata_read(u) is not None:
            continue
        if classify(gm, u) == Kind.RESHAPE and u.args and u.args[0] is node:
            if _float_reader(gm, u):
                return True
            continue
        ann = u.meta.get(ANNOTATION)
        if ann is None or not any(u.args[j] is node for j in ann.inputs if j < len(u.args)):
            return True
    return False


def _integer_outputs(gm: fx.GraphModule, config: QConfig) -> None:
    """Integer mode: an op full mode quantizes also gets an output quantizer when one of its readers
    (a Concat, a pooling, the graph output) would read it in float.  onnxruntime fuses an op into its
    integer kernel only when the op's output goes through a QuantizeLinear; the Concat behind it
    then reads dequantized values and fuses too (QLinearConcat)."""
    for node in gm.graph.nodes:
        ann = node.meta.get(ANNOTATION)
        if ann is None or ann.kind not in FULL_KINDS or ann.kind == Kind.NORM or ann.output is not None:
            continue
        if _float_reader(gm, node):
            ann.output = config.act_spec(config.a_bits).with_(per_channel=False, axis=0)
