"""onnxruntime's CPU integer kernels (QLinearConv, QGemm, MatMulIntegerToFloat, QLinearMatMul).

They read one scale per activation tensor (the scheme is ``a_scheme``: asymmetric uint8 on x86),
weights without zero point, and fuse a conv or a 2-D gemm only when its output goes through a
QuantizeLinear.  A per-axis QuantizeLinear read by a per-tensor DequantizeLinear still fuses, which
is how migrated per-channel inputs ship.  Weight-code limits of AVX2 kernels: ``qhyvit_fx.target``.

Integer mode leaves softmax in float: onnxruntime 1.32's QLinearSoftmax took 36 % of mobilevit_xxs's
kernel time at 256 px, and with the softmax in float the model runs at 0.93x FP32 instead of 1.34x
(1 thread, batch 1; ``benchmarks/native.py``, RESULTS.md "Deployment toolchains").
"""
from .base import Backend, register_backend

ORT = register_backend(Backend(
    "ort", "onnxruntime integer kernels: per-tensor activations, symmetric weights, Q/DQ on fused outputs",
    per_channel_activations=False, asymmetric_weights=False, searchable_act_scheme=False,
    fused_outputs=True, migrated_inputs=True, integer_kernels=True, one_quantizer_per_tensor=True,
    integer_mode_float_ops=("softmax",), cpu_weight_codes=True, norm_folded_inputs=True))
