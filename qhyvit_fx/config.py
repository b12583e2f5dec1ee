"""Quantization configuration."""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields
from typing import Dict, Optional, Tuple

from .quantizer import QSpec

GRANULARITIES = ("tensor", "channel")
SCHEMES = ("symmetric", "asymmetric")
LAYER_POLICIES = ("quantize", "float", "8bit")
MODES = ("partial", "full", "integer")
TARGETS = ("fakequant", "ort")
CALIB_AUGMENTS = ("none", "flip")


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
    """

    w_bits: int = 8
    a_bits: int = 8
    method: str = "minmax"
    mode: str = "partial"
    quantize_ops: Tuple[str, ...] = ("conv", "linear", "matmul")
    w_granularity: str = "channel"
    w_scheme: str = "symmetric"
    a_granularity: str = "tensor"
    a_scheme: str = "asymmetric"
    first_layer: str = "quantize"
    last_layer: str = "quantize"
    target: str = "fakequant"          # 'ort': what onnxruntime runs in integer kernels -- per-tensor activations
                                       # (scheme a_scheme, not searched), symmetric weights, Q/DQ on op outputs
    quantize_outputs: bool = False     # Q/DQ also after each quantized op (always on with target='ort')
    output_bits: int = 8               # bits of a layer's output quantizer where a float op reads the output
                                       # (it exists only so that onnxruntime fuses QLinearConv / QGemm, whose
                                       # u8 output costs the same at any code width); where the output is the
                                       # next layer's input (after a ReLU, or tied to its reader) a_bits apply
    weight_range_bits: Optional[int] = None  # clamp weight codes to this many bits (7 for AVX2 u8s8 kernels)
    calib_images: int = 32
    calib_batch: int = 8
    seed: int = 0
    # Q-HyViT search
    rounds: int = 3
    round_tol: float = 1e-2            # a round improving the objective less than this ends the search
    n_candidates: int = 100
    alpha: float = 0.01
    beta: float = 1.2
    act_channel_beta: float = 3.0      # per-channel activation candidates go on, in steps of 0.1, up to this
                                       # multiple of the calibration ranges (beta alone: the paper's grid).
                                       # Per-channel ranges of 32 images underestimate what new images
                                       # produce, most where a layer has few positions per image
    search_outputs: bool = False       # search the scale of output quantizers (target ort) with the layer objective;
                                       # off: their MinMax ranges (on held-out training images at W8A8 the searched
                                       # ones raised KL by about 50 % on both MobileViTs)
    act_channel_migrate: bool = True   # target ort, partial/full mode: per-channel input ranges stay a search
                                       # choice on linears and unpadded ungrouped convs, deployed as per-channel
                                       # codes read with one scale, the channel ratios moved into the weights
    search_scale: bool = True
    search_granularity: bool = True
    search_scheme: bool = True
    bridge_objective: bool = True
    grad_source: str = "kl"            # kl: (dKL/dO)^2 at the MinMax-quantized graph (paper); fisher: diagonal
                                       # Fisher of the float predictions, sum_y p_y (d log p_y / dO)^2
    fisher_classes: int = 10           # most likely classes summed for the Fisher
    grad_damping: float = 0.01         # g^2 + grad_damping * mean(g^2) per layer (as GPTQ damps its Hessian):
                                       # outputs with zero gradient on the calibration images would make every
                                       # clipping candidate free, and the search picked the smallest scale
    act_cv: bool = True                # score activation candidates by K-fold validation over images
    cv_folds: int = 4
    calib_augment: str = "none"        # none: the paper's setting; flip: the search also sees every calibration
                                       # image mirrored left-right (twice the activation samples, a pair stays in
                                       # one fold). Off by default: +50 % calibration time, mixed on held-out data
    bias_correction: bool = False      # remove each conv/linear's mean quantization shift (decisions: bias_delta)
    max_positions: int = 4096          # sampled output positions per layer for the fast search
    topk_verify: int = 4               # candidates scored on all sampled positions (successive halving)
    coarse_rows: int = 256             # positions the first halving stage scores every candidate on
    exhaustive: bool = False           # reference search: every candidate on every position
    device: str = "cpu"
    progress: bool = False             # tqdm bars during calibration / search
    layer_overrides: Dict[str, Dict] = field(default_factory=dict)

    def __post_init__(self):
        self.validate()

    def validate(self) -> "QConfig":
        for name in ("w_bits", "a_bits"):
            b = getattr(self, name)
            if not isinstance(b, int) or not 2 <= b <= 8:
                raise ConfigError(f"{name}={b!r} is outside 2-8; choose an integer bit width from 2 to 8")
        for name, allowed in (("w_granularity", GRANULARITIES), ("a_granularity", GRANULARITIES),
                              ("w_scheme", SCHEMES), ("a_scheme", SCHEMES), ("first_layer", LAYER_POLICIES),
                              ("last_layer", LAYER_POLICIES), ("mode", MODES), ("target", TARGETS)):
            v = getattr(self, name)
            if v not in allowed:
                raise ConfigError(f"{name}={v!r} is not one of {', '.join(allowed)}")
        bad = [o for o in self.quantize_ops if o not in ("conv", "linear", "matmul")]
        if bad:
            raise ConfigError(f"quantize_ops {bad} unknown; use a subset of conv, linear, matmul")
        if self.calib_images < 1:
            raise ConfigError("calib_images must be at least 1")
        if not isinstance(self.output_bits, int) or not 2 <= self.output_bits <= 8:
            raise ConfigError(f"output_bits={self.output_bits!r} is outside 2-8; choose an integer from 2 to 8")
        if self.weight_range_bits is not None and not 2 <= self.weight_range_bits <= 8:
            raise ConfigError("weight_range_bits must be between 2 and 8")
        check_device(self.device)
        if not self.grad_damping >= 0:
            raise ConfigError(f"grad_damping={self.grad_damping!r} must be >= 0 (0 turns damping off)")
        if self.calib_augment not in CALIB_AUGMENTS:
            raise ConfigError(f"calib_augment={self.calib_augment!r} is not one of {', '.join(CALIB_AUGMENTS)}")
        if self.grad_source not in ("kl", "fisher"):
            raise ConfigError(f"grad_source={self.grad_source!r} is not one of kl, fisher")
        if self.rounds < 1 or self.n_candidates < 1:
            raise ConfigError("rounds and n_candidates must be at least 1")
        if not 0 < self.alpha < self.beta:
            raise ConfigError("need 0 < alpha < beta for the scale candidates")
        if self.act_channel_beta < self.beta:
            raise ConfigError(f"act_channel_beta={self.act_channel_beta} is below beta={self.beta}; "
                              "set it to beta or more (beta: the paper's grid)")
        return self

    # ---- default specs ---------------------------------------------------------------------
    def weight_spec(self, bits: Optional[int] = None) -> QSpec:
        b = bits or self.w_bits
        if self.weight_range_bits is not None:
            b = min(b, self.weight_range_bits)
        return QSpec(bits=b, symmetric=self.w_scheme == "symmetric",
                     per_channel=self.w_granularity == "channel", axis=0)

    def act_spec(self, bits: Optional[int] = None, axis: int = 1) -> QSpec:
        return QSpec(bits=bits or self.a_bits, symmetric=self.a_scheme == "symmetric",
                     per_channel=self.a_granularity == "channel", axis=axis)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["quantize_ops"] = list(self.quantize_ops)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "QConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown config keys {unknown}")
        d = dict(d)
        if "quantize_ops" in d:
            d["quantize_ops"] = tuple(d["quantize_ops"])
        return cls(**d)
