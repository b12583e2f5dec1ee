"""Deployment targets (``QConfig.target``) and quantization modes (``QConfig.mode``) as objects."""
from .base import BACKENDS, MODES, Backend, Mode, get_backend, get_mode, register_backend, register_mode  # noqa: F401
from . import fakequant, openvino, ort, tensorrt  # noqa: F401,E402  (register)
