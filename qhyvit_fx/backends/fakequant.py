"""The fake-quant study target: every choice torch can simulate (per-channel activations, asymmetric
weights, searched schemes).  onnxruntime runs its ONNX as float ops on dequantized values."""
from .base import Backend, register_backend

FAKEQUANT = register_backend(Backend(
    "fakequant", "torch fake-quant study: per-channel activations allowed, no integer kernels"))
