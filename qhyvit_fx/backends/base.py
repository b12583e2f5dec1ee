"""What a deployment target's kernels run, as one object per target.

Every rule that depends on the runtime (which activation granularities and schemes exist, whether
weights may carry a zero point, where Q/DQ must sit for the runtime to fuse an op into its integer
kernel, whether per-channel input codes can be folded into the weights) lives on a :class:`Backend`.
The passes and methods ask the backend of ``QConfig.target``; no other module tests a target name.
New targets (OpenVINO, TensorRT) register here with :func:`register_backend`.

A :class:`Mode` says how much of the graph is quantized (``partial``: conv/linear/matmul inputs;
``full``: also norms, softmax, activations and adds; ``integer``: full, with tensors kept in
integers between ops), independently of the target.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Dict, Tuple

BACKENDS: Dict[str, "Backend"] = {}
MODES: Dict[str, "Mode"] = {}


@dataclass(frozen=True)
class Backend:
    name: str
    description: str
    per_channel_activations: bool = True    # an activation quantizer may hold one scale per channel
    asymmetric_weights: bool = True         # weight zero points other than 0
    searchable_act_scheme: bool = True      # the search may pick symmetric or asymmetric per activation
    fused_outputs: bool = False             # Q/DQ after conv and 2-D gemm outputs, which the runtime
                                            # needs to fuse them into its integer kernels
    migrated_inputs: bool = False           # per-channel input codes read with one scale, the channel
                                            # ratios moved into the weights (partial and full mode)
    integer_kernels: bool = False           # the exported graph runs in integer kernels when the
                                            # runtime optimises it (else: Q/DQ evaluated in float)
    one_quantizer_per_tensor: bool = False  # the input quantizers reading one tensor are one quantizer
                                            # (the runtime fuses a producer only into a single Q)
    act_schemes: Tuple[str, ...] = ("asymmetric", "symmetric")   # activation schemes its kernels take;
                                                                # the first is QConfig's default
    narrow_activations: bool = True         # activation codes below 8 bits (QuantizeLinear -> Clip ->
                                            # DequantizeLinear) still run in its int8 kernels
    norm_folded_inputs: bool = False        # a layer fed only by an affine norm may take per-channel input
                                            # ranges folded into the norm's affine (and its weight), leaving
                                            # one per-tensor quantizer in the graph (where it cannot migrate)
    cpu_weight_codes: bool = False          # its CPU integer kernels read the weight codes: on AVX2 without
                                            # VNNI they add u8 x s8 product pairs in int16, so QConfig.kernel
                                            # limits W8 codes to 7 bits (qhyvit_fx.target)
    check_runtime: str = "onnxruntime"      # whose rules ``qhyvit check --runtime`` judges its exports by
    eval_runtime: str = "onnxruntime"       # the runtime ``qhyvit quantize`` / ``eval`` measure its exports in
    signed_matmul_operand: bool = False     # a matmul of two activations reads its second operand in
                                            # symmetric int8 (OpenVINO's CPU int8 MatMul takes i8 there)
    integer_mode_float_ops: Tuple[str, ...] = ()   # elementwise kinds (softmax, norm, ...) that integer mode
                                                    # leaves in float: the runtime's integer kernel for them
                                                    # was measured slower than the float op between Q/DQ

    def weight_spec(self, spec):
        """The weight spec the kernels can run (symmetric int8 where weights take no zero point)."""
        if self.asymmetric_weights or spec.symmetric:
            return spec
        return spec.with_(symmetric=True, signed=True)

    def input_axis(self, channel_axis):
        """Axis of a weighted layer's input quantizer (None: per tensor)."""
        return channel_axis if self.per_channel_activations else None

    def matmul_input_spec(self, slot: int, spec):
        """The spec of input ``slot`` of a matmul of two activations that the kernels take."""
        if slot == 1 and self.signed_matmul_operand:
            return spec.with_(symmetric=True, signed=True)
        return spec

    def can_migrate(self, mode: "Mode") -> bool:
        return self.migrated_inputs and mode.migrated_inputs


@dataclass(frozen=True)
class Mode:
    name: str
    description: str
    quantize_elementwise: bool = False      # norms, softmax, activations and adds get input quantizers
    integer_tensors: bool = False           # tensors stay in integers between ops: SiLU decomposed, an output
                                            # quantizer where a float op would read, one quantizer per tensor,
                                            # every use of a quantized tensor quantized
    migrated_inputs: bool = True            # migrated per-channel inputs possible (integer mode: the
                                            # upstream op's output quantizer is the input quantizer)


def register_backend(backend: Backend) -> Backend:
    BACKENDS[backend.name] = backend
    return backend


def register_mode(mode: Mode) -> Mode:
    MODES[mode.name] = mode
    return mode


def _lookup(table: Dict, name: str, what: str):
    if name not in table:
        close = difflib.get_close_matches(str(name), list(table), n=2)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise KeyError(f"unknown {what} '{name}'{hint}; choose one of {', '.join(table)}")
    return table[name]


def get_backend(name: str) -> Backend:
    return _lookup(BACKENDS, name, "target")


def get_mode(name: str) -> Mode:
    return _lookup(MODES, name, "mode")


register_mode(Mode("partial", "conv/linear/matmul inputs (and the outputs the target's kernels need)"))
register_mode(Mode("full", "also norms, softmax, activations and residual adds", quantize_elementwise=True))
register_mode(Mode("integer", "full, and tensors stay in integers between ops (QLinear* ops)",
                   quantize_elementwise=True, integer_tensors=True, migrated_inputs=False))
