"""Modules the passes insert: observers, fake-quantizers, quantized layers.

Fake-quantizers export to ONNX as ``QuantizeLinear -> [Clip] -> DequantizeLinear``
(Clip only when the code range is narrower than the int8/uint8 container,
e.g. 6- or 4-bit activations); quantized weights are stored as int8 and
export as an int8 initializer feeding ``DequantizeLinear``.  Both are
autograd Functions with a straight-through gradient, so the calibration
search can back-propagate through a quantized graph.
"""
from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .quantizer import QParams, channel_minmax, fake_quant, quant_dequant

__all__ = ["ActObserver", "FakeQuantize", "MigratedQuantize", "NonUniformQuantize", "make_quantizer", "QuantConv2d", "QuantLinear",
           "InputRecorder"]


def _onnx_const(g, values, dtype):
    return g.op("Constant", value_t=torch.tensor(values, dtype=dtype))


def _container(signed: bool):
    return (torch.int8, -128, 127) if signed else (torch.uint8, 0, 255)


class _QDQ(torch.autograd.Function):
    """fake_quant with a straight-through gradient and an ONNX QDQ symbolic."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin, qmax, axis, signed, scale_list, zp_list):
        y = fake_quant(x, scale, zero_point, qmin, qmax, axis)
        lo = (qmin - zero_point.float()) * scale
        hi = (qmax - zero_point.float()) * scale
        if axis is not None:
            shape = [1] * x.dim()
            shape[axis] = -1
            lo, hi = lo.reshape(shape), hi.reshape(shape)
        ctx.save_for_backward((x >= lo) & (x <= hi))
        return y

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return grad * mask, None, None, None, None, None, None, None, None

    @staticmethod
    def symbolic(g, x, scale, zero_point, qmin, qmax, axis, signed, scale_list, zp_list):
        dtype, cmin, cmax = _container(signed)
        per_channel = axis is not None
        s = _onnx_const(g, scale_list if per_channel else scale_list[0], torch.float32)
        z = _onnx_const(g, zp_list if per_channel else zp_list[0], dtype)
        kw = {"axis_i": axis} if per_channel else {}
        q = g.op("QuantizeLinear", x, s, z, **kw)
        if qmin > cmin or qmax < cmax:
            q = g.op("Clip", q, _onnx_const(g, qmin, dtype), _onnx_const(g, qmax, dtype))
        return g.op("DequantizeLinear", q, s, z, **kw)


class _DQWeight(torch.autograd.Function):
    """int8 weight codes -> float, exported as DequantizeLinear on an int8 initializer."""

    @staticmethod
    def forward(ctx, w_int, scale, zero_point, axis, scale_list, zp_list):
        s, z = scale, zero_point.float()
        if axis is not None:
            shape = [1] * w_int.dim()
            shape[axis] = -1
            s, z = s.reshape(shape), z.reshape(shape)
        return (w_int.float() - z) * s

    @staticmethod
    def backward(ctx, grad):
        return None, None, None, None, None, None

    @staticmethod
    def symbolic(g, w_int, scale, zero_point, axis, scale_list, zp_list):
        per_channel = axis is not None
        s = _onnx_const(g, scale_list if per_channel else scale_list[0], torch.float32)
        z = _onnx_const(g, zp_list if per_channel else zp_list[0], torch.int8)
        kw = {"axis_i": axis} if per_channel else {}
        return g.op("DequantizeLinear", w_int, s, z, **kw)


class ActObserver(nn.Module):
    """Identity that records running min/max, per tensor and per channel.

    ``axis`` is the channel axis used for per-channel statistics (None: no
    per-channel statistics, e.g. matmul operands)."""

    def __init__(self, axis: Optional[int] = None):
        super().__init__()
        self.axis = axis
        self.register_buffer("min_val", torch.tensor(float("inf")))
        self.register_buffer("max_val", torch.tensor(float("-inf")))
        self.register_buffer("ch_min", torch.empty(0))
        self.register_buffer("ch_max", torch.empty(0))
        self.register_buffer("nonfinite", torch.tensor(0, dtype=torch.int64))
        self.enabled = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        xd = x.detach()
        finite = torch.isfinite(xd)
        if not bool(finite.all()):
            self.nonfinite += int((~finite).sum())
            xd = torch.where(finite, xd, torch.zeros((), dtype=xd.dtype))
        self.min_val = torch.minimum(self.min_val, xd.min())
        self.max_val = torch.maximum(self.max_val, xd.max())
        if self.axis is not None:
            lo, hi = channel_minmax(xd, self.axis)
            if self.ch_min.numel() == 0:
                self.ch_min, self.ch_max = lo.clone(), hi.clone()
            else:
                self.ch_min = torch.minimum(self.ch_min, lo)
                self.ch_max = torch.maximum(self.ch_max, hi)
        return x

    @property
    def observed(self) -> bool:
        return bool(torch.isfinite(self.min_val))

    def extra_repr(self) -> str:
        return f"axis={self.axis}, min={self.min_val.item():.4g}, max={self.max_val.item():.4g}"


class _UniformParams:
    """Scale / zero-point buffers of a converted uniform quantizer, and the plain lists its ONNX
    symbolic writes as constants."""

    def _init_params(self, qparams: QParams) -> None:
        self.spec = qparams.spec
        self.register_buffer("scale", qparams.scale.clone())
        self.register_buffer("zero_point", qparams.zero_point.clone())
        self._scale_list = [float(v) for v in self.scale.reshape(-1)]
        self._zp_list = [int(v) for v in self.zero_point.reshape(-1)]
        self.zp_overflow = qparams.zp_overflow

    @property
    def qparams(self) -> QParams:
        return QParams(self.spec, self.scale, self.zero_point, self.zp_overflow)


class FakeQuantize(_UniformParams, nn.Module):
    """Quantize-dequantize with fixed params (a converted quantizer)."""

    def __init__(self, qparams: QParams, axis: Optional[int] = None):
        super().__init__()
        spec = qparams.spec
        self.bits, self.qmin, self.qmax = spec.bits, spec.qmin, spec.qmax
        self.signed = spec.signed
        self.axis = axis if spec.per_channel else None
        self._init_params(qparams)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        axis = None if self.axis is None else self.axis % x.dim()
        return _QDQ.apply(x, self.scale, self.zero_point, self.qmin, self.qmax, axis, self.signed,
                          self._scale_list, self._zp_list)

    def extra_repr(self) -> str:
        g = "per-channel(axis=%d)" % self.axis if self.axis is not None else "per-tensor"
        return f"bits={self.bits}, {self.spec.scheme}, {g}, q=[{self.qmin},{self.qmax}]"


class _MigratedQDQ(torch.autograd.Function):
    """Per-channel codes read back with one scale: q = clamp(round(x / s_c) + z_c), y = (q - z_r) * s_r."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin, qmax, axis, dq_scale, dq_zero_point, scale_list, zp_list):
        shape = [1] * x.dim()
        shape[axis] = -1
        s, z = scale.reshape(shape), zero_point.reshape(shape).float()
        q = torch.clamp(torch.round(x * (1.0 / s)) + z, qmin, qmax)
        ctx.save_for_backward((x >= (qmin - z) * s) & (x <= (qmax - z) * s))
        if dq_zero_point[0]:        # (no "- 0" in the trace: the TorchScript peephole pass trips on it)
            q = q - dq_zero_point[0]
        return q * dq_scale[0]

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return (grad * mask,) + (None,) * 9

    @staticmethod
    def symbolic(g, x, scale, zero_point, qmin, qmax, axis, dq_scale, dq_zero_point, scale_list, zp_list):
        dtype, cmin, cmax = _container(False)
        q = g.op("QuantizeLinear", x, _onnx_const(g, scale_list, torch.float32), _onnx_const(g, zp_list, dtype),
                 axis_i=axis)
        if qmin > cmin or qmax < cmax:
            q = g.op("Clip", q, _onnx_const(g, qmin, dtype), _onnx_const(g, qmax, dtype))
        return g.op("DequantizeLinear", q, _onnx_const(g, float(dq_scale[0]), torch.float32),
                    _onnx_const(g, int(dq_zero_point[0]), dtype))


class MigratedQuantize(_UniformParams, nn.Module):
    """A per-channel input quantizer that integer kernels can run: the codes are made per channel
    (one QuantizeLinear with per-axis scales s_c and zero points z_c) and read back with one
    per-tensor scale s_r = s_c / m_c (DequantizeLinear, which QLinearConv / QGemm fuse).  The layer
    reading it holds the weight W * m (columns) and a bias corrected for z_c - z_r, so it computes
    what per-channel quantization of its input would (see passes/convert.py)."""

    def __init__(self, qparams: QParams, axis: int, dq_scale: float, dq_zero_point: int = 0):
        super().__init__()
        spec = qparams.spec
        if not spec.per_channel or spec.signed:
            raise ValueError("a migrated input quantizer is per-channel with unsigned codes")
        self.axis, self.qmin, self.qmax = axis, spec.qmin, spec.qmax
        self._init_params(qparams)
        self.dq_scale, self.dq_zero_point = float(dq_scale), int(dq_zero_point)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _MigratedQDQ.apply(x, self.scale, self.zero_point, self.qmin, self.qmax, self.axis % x.dim(),
                                  [self.dq_scale], [self.dq_zero_point], self._scale_list, self._zp_list)

    def extra_repr(self) -> str:
        return (f"bits={self.spec.bits}, per-channel codes (axis={self.axis}) "
                f"read with scale={self.dq_scale:.4g}, zero point={self.dq_zero_point}")


class NonUniformQuantize(nn.Module):
    """A converted twin-uniform or logarithmic quantizer (the PTQ4ViT / FQ-ViT / RepQ-ViT
    baselines).  Standard ONNX has no such quantize op, so it exports as the float ops that
    compute it (Log/Round/Clip/Pow/Where): exact in onnxruntime, but never an integer kernel."""

    def __init__(self, qparams: QParams):
        super().__init__()
        if qparams.spec.uniform:
            raise ValueError("uniform quantizers are FakeQuantize modules")
        self.spec = qparams.spec
        self.bits = qparams.spec.bits
        self.register_buffer("scale", qparams.scale.clone())
        self.register_buffer("zero_point", qparams.zero_point.clone())
        self.register_buffer("scale2", qparams.scale2.clone() if qparams.scale2 is not None else torch.ones(()))
        self.zp_overflow = qparams.zp_overflow

    @property
    def qparams(self) -> QParams:
        return QParams(self.spec, self.scale, self.zero_point, self.zp_overflow,
                       self.scale2 if self.spec.quantizer.startswith("twin") else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return quant_dequant(x, self.qparams)

    def extra_repr(self) -> str:
        return f"{self.spec.quantizer}, bits={self.bits}, scale={float(self.scale):.4g}"


def make_quantizer(qparams: QParams, axis: Optional[int] = None) -> nn.Module:
    """The converted activation quantizer for ``qparams``."""
    return FakeQuantize(qparams, axis=axis) if qparams.spec.uniform else NonUniformQuantize(qparams)


def quantize_weight(w: torch.Tensor, qp: QParams) -> torch.Tensor:
    """Integer weight codes (int8 container) for ``qp`` (channels on axis 0)."""
    s, z = qp.scale, qp.zero_point.float()
    if qp.spec.per_channel:
        shape = [-1] + [1] * (w.dim() - 1)
        s, z = s.reshape(shape), z.reshape(shape)
    q = torch.clamp(torch.round(w.detach().float() * (1.0 / s)) + z, qp.spec.qmin, qp.spec.qmax)
    return q.to(torch.int8)


class _QuantWeightMixin:
    def _init_weight(self, weight: torch.Tensor, qp: QParams):
        if not qp.spec.uniform:
            raise ValueError(f"weights take uniform quantizers, not {qp.spec.quantizer}")
        if not qp.spec.signed:
            raise ValueError("weights are stored as int8: use signed codes (QSpec(signed=True))")
        self.w_spec = qp.spec
        self.register_buffer("weight_int", quantize_weight(weight, qp))
        self.register_buffer("w_scale", qp.scale.clone())
        self.register_buffer("w_zero_point", qp.zero_point.clone())
        self._w_axis = 0 if qp.spec.per_channel else None
        self._w_scale_list = [float(v) for v in qp.scale.reshape(-1)]
        self._w_zp_list = [int(v) for v in qp.zero_point.reshape(-1)]
        self.w_zp_overflow = qp.zp_overflow

    def set_codes(self, codes: torch.Tensor, layer: str = "") -> None:
        """Store integer codes chosen by a rounding search ([C, Kg] or the weight's shape)."""
        from .decisions import DecisionsError
        if codes.numel() != self.weight_int.numel():
            raise DecisionsError(f"layer '{layer}': weight_codes has {codes.numel()} values for a weight of "
                                 f"{self.weight_int.numel()}")
        if int(codes.min()) < self.w_spec.qmin or int(codes.max()) > self.w_spec.qmax:
            raise DecisionsError(f"layer '{layer}': weight_codes lie outside [{self.w_spec.qmin}, {self.w_spec.qmax}]")
        self.weight_int = codes.to(torch.int8).reshape(self.weight_int.shape).clone()

    def dequantized_weight(self) -> torch.Tensor:
        return _DQWeight.apply(self.weight_int, self.w_scale, self.w_zero_point, self._w_axis,
                               self._w_scale_list, self._w_zp_list)

    @property
    def weight(self) -> torch.Tensor:
        """The float weight the layer computes with (its codes dequantized), so that code reading
        ``layer.weight`` -- the model's own forward, e.g. for its device or dtype -- keeps working."""
        return self.dequantized_weight()

    @property
    def w_qparams(self) -> QParams:
        return QParams(self.w_spec, self.w_scale, self.w_zero_point, self.w_zp_overflow)


class QuantConv2d(_QuantWeightMixin, nn.Module):
    """Conv2d whose weight is stored quantized (int8 codes + scale/zero point)."""

    qhyvit_float_type = nn.Conv2d

    def __init__(self, conv: nn.Conv2d, w_qparams: QParams):
        super().__init__()
        self._init_weight(conv.weight, w_qparams)
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone(), requires_grad=False)
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        self.kernel_size, self.in_channels, self.out_channels = conv.kernel_size, conv.in_channels, conv.out_channels
        self.padding_mode = conv.padding_mode
        if conv.padding_mode != "zeros":
            raise ValueError(f"padding_mode={conv.padding_mode} is not supported for quantized convs")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.dequantized_weight(), self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"groups={self.groups}, w={self.w_spec.bits}b {self.w_spec.scheme} {self.w_spec.granularity}")


class QuantLinear(_QuantWeightMixin, nn.Module):
    """Linear whose weight is stored quantized."""

    qhyvit_float_type = nn.Linear

    def __init__(self, linear: nn.Linear, w_qparams: QParams):
        super().__init__()
        self._init_weight(linear.weight, w_qparams)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantized_weight(), self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"w={self.w_spec.bits}b {self.w_spec.scheme} {self.w_spec.granularity}")


class InputRecorder(nn.Module):
    """Identity on the graph input that keeps the first ``limit`` calibration
    images (the Q-HyViT search re-runs the graph on them)."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit
        self.batches: List[torch.Tensor] = []

    @property
    def count(self) -> int:
        return sum(b.shape[0] for b in self.batches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.count < self.limit:
            self.batches.append(x.detach()[: self.limit - self.count].clone())
        return x

    def images(self) -> Optional[torch.Tensor]:
        return torch.cat(self.batches) if self.batches else None
