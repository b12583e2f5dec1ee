"""onnxruntime's CPU integer kernels (QLinearConv, QGemm, MatMulIntegerToFloat, QLinearMatMul).

They read one scale per activation tensor (the scheme is ``a_scheme``: asymmetric uint8 on x86),
weights without zero point, and fuse a conv or a 2-D gemm only when its output goes through a
QuantizeLinear.  A per-axis QuantizeLinear read by a per-tensor DequantizeLinear still fuses, which
is how migrated per-channel inputs ship.  Weight-code limits of AVX2 kernels: ``qhyvit_fx.target``.
"""
from .base import Backend, register_backend

ORT = register_backend(Backend(
    "ort", "onnxruntime integer kernels: per-tensor activations, symmetric weights, Q/DQ on fused outputs",
    per_channel_activations=False, asymmetric_weights=False, searchable_act_scheme=False,
    fused_outputs=True, migrated_inputs=True, integer_kernels=True, one_quantizer_per_tensor=True))
