"""Quantization configuration."""
from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from typing import Any, Dict, Optional, Tuple

from .backends import BACKENDS, MODES as _MODES, Backend, Mode, get_backend, get_mode
from .patterns.kinds import LAYER_KINDS
from .quantizer import QSpec
from .target import KERNELS, detect_kernel, weight_range_bits as kernel_weight_bits

GRANULARITIES = ("tensor", "channel")
SCHEMES = ("symmetric", "asymmetric")
LAYER_POLICIES = ("quantize", "float", "8bit")


class ConfigError(ValueError):
    """A configuration value is invalid; the message says which and how to fix it."""


def parse_bits(text: str) -> Tuple[int, int]:
    """'w8a8' -> (8, 8)."""
    m = re.fullmatch(r"\s*[wW](\d+)\s*[aA](\d+)\s*", str(text))
    if not m:
        raise ConfigError(f"bits '{text}' is not of the form wNaM (for example w8a8, w6a6, w4a8)")
    w, a = int(m.group(1)), int(m.group(2))
    for name, b in (("weight", w), ("activation", a)):
        if not 2 <= b <= 8:
            raise ConfigError(f"{name} bits {b} are outside 2-8; use for example w8a8, w6a6 or w4a8")
    return w, a


def check_device(name: str):
    """The torch.device for ``--device``: cpu, or cuda when torch sees a GPU (else a ConfigError).
    The search is exact arithmetic on either device, but CUDA reductions add in another order than
    the CPU's, so two candidates whose objectives differ by float rounding may swap: decisions equal
    the CPU's up to the 2 % objective tie tolerance of tests/test_search.py."""
    import torch
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device '{name}' is not supported; use cpu or cuda")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' was asked for but torch sees no CUDA GPU; use --device cpu")
    return dev


@dataclass
class QConfig:
    """What to quantize and how.

    The default is the paper's *partial* quantization (Table 1): weights and
    input activations of every conv, linear and matmul are quantized;
    LayerNorm/GroupNorm, softmax, GELU and residual adds stay float.  The
    defaults below are the naive MinMax baseline's choices (per-channel
    symmetric weights, per-tensor asymmetric activations); the ``qhyvit``
    method searches granularity, scheme and scale per layer instead.

    ``mode="full"`` (Table 2) also quantizes the inputs of norms, softmax,
    smooth activations and residual adds.  ``mode="integer"`` is full mode
    for deployment: products of two activations and sigmoids are quantized
    too (SiLU is split into x * sigmoid(x)), ops read by a Concat get an
    output quantizer, and every reader of a quantized tensor reads the
    quantized value, so onnxruntime runs adds, products, sigmoids, softmax
    and concats as QLinear ops and tensors stay in integers between layers.

    Fields here are the ones every method reads.  What one method alone reads
    is in ``method_params``, an instance of that method's params class
    (:mod:`qhyvit_fx.methods.params`); ``QConfig(method="qhyvit",
    method_params={"act_cv": False})`` overrides single defaults.
    """

    w_bits: int = 8
    a_bits: int = 8
    method: str = "minmax"
    mode: str = "partial"
    target: str = "ort"                # what the export runs in (qhyvit_fx.backends): 'ort' (onnxruntime's integer
                                       # kernels), 'openvino', 'tensorrt', or 'fakequant' (studies: torch only)
    kernel: str = "auto"               # the CPU integer kernels the export runs on (qhyvit_fx.target.KERNELS);
                                       # 'auto' is resolved to this CPU's when the config is made
    quantize_ops: Tuple[str, ...] = LAYER_KINDS
    w_granularity: str = "channel"
    w_scheme: str = "symmetric"
    a_granularity: str = "tensor"
    a_scheme: Optional[str] = None     # None: the target's default (asymmetric; TensorRT: symmetric)
    first_layer: str = "quantize"
    last_layer: str = "quantize"
    layer_overrides: Dict[str, Dict] = field(default_factory=dict)
    quantize_outputs: bool = False     # Q/DQ also after each quantized op (always on with target='ort')
    output_bits: int = 8               # bits of a layer's output quantizer where a float op reads the output
                                       # (it exists only so that onnxruntime fuses QLinearConv / QGemm, whose
                                       # u8 output costs the same at any code width); where the output is the
                                       # next layer's input (after a ReLU, or tied to its reader) a_bits apply
    weight_range_bits: Optional[int] = None  # clamp weight codes to this many bits; None: what ``kernel`` needs
                                             # (7 for W8 on AVX2 u8s8 kernels, see ``weight_code_bits``)
    calib_images: int = 32
    seed: int = 0
    device: str = "cpu"
    progress: bool = False             # tqdm bars during calibration / search
    # the method's own parameters: its ``params_class`` (``QHyViTParams``, ...), or a dict of
    # overrides of that class's defaults; None: the defaults
    method_params: Any = None

    def __post_init__(self):
        from .methods import get_method          # methods import this module
        self.quantize_ops = tuple(self.quantize_ops)
        if self.kernel == "auto":
            self.kernel = detect_kernel()          # recorded, so a saved config rebuilds the same graph anywhere
        if self.a_scheme is None and self.target in BACKENDS:
            self.a_scheme = BACKENDS[self.target].act_schemes[0]
        cls = get_method(self.method).params_class
        if self.method_params is None:
            self.method_params = cls()
        elif isinstance(self.method_params, dict):
            self.method_params = cls.from_dict(self.method_params, self.method)
        elif type(self.method_params) is not cls:
            raise ConfigError(f"method_params is a {type(self.method_params).__name__}, but method "
                              f"'{self.method}' takes {cls.__name__}")
        self.validate()

    def validate(self) -> "QConfig":
        for name in ("w_bits", "a_bits"):
            b = getattr(self, name)
            if not isinstance(b, int) or not 2 <= b <= 8:
                raise ConfigError(f"{name}={b!r} is outside 2-8; choose an integer bit width from 2 to 8")
        for name, allowed in (("target", tuple(BACKENDS)), ("mode", tuple(_MODES)), ("w_granularity", GRANULARITIES),
                              ("a_granularity", GRANULARITIES), ("w_scheme", SCHEMES), ("a_scheme", SCHEMES),
                              ("first_layer", LAYER_POLICIES), ("last_layer", LAYER_POLICIES)):
            v = getattr(self, name)
            if v not in allowed:
                raise ConfigError(f"{name}={v!r} is not one of {', '.join(allowed)}")
        narrow = [b for b in [self.a_bits] + [int(o["a_bits"]) for o in self.layer_overrides.values() if "a_bits" in o]
                  if b < 8]
        if narrow and not self.backend.narrow_activations:
            raise ConfigError(f"target '{self.target}' runs 8-bit activations only (its explicit quantization takes "
                              f"a QuantizeLinear straight into each DequantizeLinear); a_bits={narrow[0]} exports a "
                              "Clip between them. Use a_bits=8 (e.g. --bits w6a8), or another target")
        if self.a_scheme not in self.backend.act_schemes:
            raise ConfigError(f"target '{self.target}' takes {' or '.join(self.backend.act_schemes)} activations, "
                              f"not a_scheme={self.a_scheme!r}; leave a_scheme (--act-scheme) out for the target's "
                              "default")
        bad = [o for o in self.quantize_ops if o not in LAYER_KINDS]
        if bad:
            raise ConfigError(f"quantize_ops {bad} unknown; use a subset of conv, linear, matmul")
        if self.calib_images < 1:
            raise ConfigError("calib_images must be at least 1")
        if not isinstance(self.output_bits, int) or not 2 <= self.output_bits <= 8:
            raise ConfigError(f"output_bits={self.output_bits!r} is outside 2-8; choose an integer from 2 to 8")
        if self.kernel not in KERNELS:
            raise ConfigError(f"kernel={self.kernel!r} is not one of {', '.join(KERNELS)}")
        if self.weight_range_bits is not None and not 2 <= self.weight_range_bits <= 8:
            raise ConfigError("weight_range_bits must be between 2 and 8")
        check_device(self.device)
        self.method_params.validate()
        return self

    @property
    def backend(self) -> Backend:
        """The target's rules (``qhyvit_fx.backends``): what its kernels run, where Q/DQ go."""
        return get_backend(self.target)

    @property
    def weight_code_bits(self) -> Optional[int]:
        """The width weight codes are limited to (None: ``w_bits``): ``weight_range_bits`` if set, else
        what ``kernel`` needs where the target's CPU kernels read the codes."""
        if self.weight_range_bits is not None:
            return self.weight_range_bits
        return kernel_weight_bits(self.kernel, self.w_bits) if self.backend.cpu_weight_codes else None

    @property
    def mode_rules(self) -> Mode:
        return get_mode(self.mode)

    # ---- default specs ---------------------------------------------------------------------
    def weight_spec(self, bits: Optional[int] = None) -> QSpec:
        b = bits or self.w_bits
        if self.weight_code_bits is not None:
            b = min(b, self.weight_code_bits)
        return QSpec(bits=b, symmetric=self.w_scheme == "symmetric",
                     per_channel=self.w_granularity == "channel", axis=0)

    def act_spec(self, bits: Optional[int] = None, axis: int = 1) -> QSpec:
        return QSpec(bits=bits or self.a_bits, symmetric=self.a_scheme == "symmetric",
                     per_channel=self.a_granularity == "channel", axis=axis)

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["quantize_ops"] = list(self.quantize_ops)
        d["layer_overrides"] = {k: dict(v) for k, v in self.layer_overrides.items()}
        d["method_params"] = self.method_params.to_dict()
        return d

    @classmethod
    def flat(cls, **kw) -> "QConfig":
        """A config from one flat set of keywords: core fields, and the method's parameters
        (``QConfig.flat(method="qhyvit", w_bits=6, act_cv=False)``); a keyword that is neither
        is an error naming the method's parameters."""
        core = {f.name for f in fields(cls)}
        params = {k: kw.pop(k) for k in list(kw) if k not in core}
        if params and kw.get("method_params") is not None:
            raise ConfigError("pass the method's parameters either in method_params or as keywords, not both")
        return cls(**kw, method_params=params or kw.pop("method_params", None))

    def flat_dict(self) -> dict:
        """:meth:`to_dict` with the method's parameters inlined (the inverse of :meth:`flat`)."""
        d = self.to_dict()
        d.update(d.pop("method_params"))
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "QConfig":
        """The inverse of :meth:`to_dict` (``QConfig.from_dict(c.to_dict()) == c``).  Also reads the
        flat records of decisions files written before methods owned their parameters: a key the
        method's params class has moves there, a key of another method's params is dropped."""
        known = {f.name for f in fields(cls)}
        d = dict(d)
        if "method_params" not in d:
            from .methods import get_method, params_fields
            own = {f for f in params_fields(get_method(d.get("method", "minmax")).params_class)}
            d["method_params"] = {k: d.pop(k) for k in list(d) if k in own}
            for k in [k for k in d if k not in known and k in params_fields()]:
                d.pop(k)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown config keys {unknown}")
        if "quantize_ops" in d:
            d["quantize_ops"] = tuple(d["quantize_ops"])
        return cls(**d)
