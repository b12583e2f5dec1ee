"""OpenVINO's CPU plugin: its low-precision transformations turn Q/DQ pairs into int8 kernels.

Read from the compiled runtime model (``qhyvit check --runtime openvino``): convolutions and fully
connected layers run in u8 or i8 from per-tensor activation Q/DQ (asymmetric u8 is fine, the zero
point is compensated) and per-channel symmetric weights, with no Q/DQ needed on their outputs; a
MatMul of two activations runs in int8 only when its second operand is i8, and then
MatMul -> Softmax -> MatMul fuses into one int8 attention ``Subgraph``. Per-channel input codes read
with one scale (migrated inputs) are not used. Accuracy is measured through OpenVINO itself
(f32 inference precision).
"""
from .base import Backend, register_backend

OPENVINO = register_backend(Backend(
    "openvino", "OpenVINO CPU int8: per-tensor activations (uint8 asymmetric, int8 on the second operand of "
    "attention matmuls), per-channel symmetric weights, Q/DQ on conv/gemm/matmul inputs",
    per_channel_activations=False, asymmetric_weights=False, searchable_act_scheme=False,
    fused_outputs=False, migrated_inputs=False, integer_kernels=False, one_quantizer_per_tensor=False,
    check_runtime="openvino", eval_runtime="openvino", signed_matmul_operand=True, cpu_weight_codes=True, norm_folded_inputs=True))
