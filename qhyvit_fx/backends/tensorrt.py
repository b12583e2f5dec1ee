"""TensorRT's explicit quantization (INT8 Q/DQ in the ONNX, fused by the engine builder).

It takes symmetric int8 only (zero point 0): per-tensor activation scales and per-output-channel
weight scales. Q/DQ go on the inputs of conv / gemm / matmul; TensorRT fuses the output side itself,
so no output quantizers are inserted, and per-channel input codes read with one scale (migrated
inputs) are not something it fuses. The rules are checked on the exported file by
``qhyvit_fx.check_tensorrt`` (``qhyvit check --runtime tensorrt``). Without a GPU the ONNX is
evaluated by onnxruntime with its Q/DQ in float, which computes what TensorRT's int8 kernels do up to
their accumulation order and output rounding.
"""
from .base import Backend, register_backend

TENSORRT = register_backend(Backend(
    "tensorrt", "TensorRT explicit quantization: symmetric int8 (zero point 0), per-tensor activations, "
    "per-channel weights, Q/DQ on conv/gemm/matmul inputs",
    per_channel_activations=False, asymmetric_weights=False, searchable_act_scheme=False,
    fused_outputs=False, migrated_inputs=False, integer_kernels=False, one_quantizer_per_tensor=True,
    act_schemes=("symmetric",), check_runtime="tensorrt", norm_folded_inputs=True,
    narrow_activations=False))
