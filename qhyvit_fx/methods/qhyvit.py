"""Q-HyViT: hybrid reconstruction search of scale, granularity and scheme."""
from __future__ import annotations

from dataclasses import dataclass

from ..search.hybrid import hybrid_step
from ..search.rounding import ROUNDINGS
from .base import register_method
from .params import CALIB_AUGMENTS, SearchParams, param
from .search_method import SearchMethod, _to, search_device, search_options  # noqa: F401  (public here too)


@dataclass
class QHyViTParams(SearchParams):
    """Q-HyViT's search (paper Algorithm 1) and the additions measured in benchmarks/RESULTS.md."""

    act_channel_beta: float = param(3.0,
        "per-channel activation candidates go on, in steps of 0.1, up to this multiple of the calibration "
        "ranges (1.2 = beta, the paper's grid): ranges of 32 images underestimate what new images produce")
    search_scale: bool = param(True, "search the scale (off: MinMax scales)")
    search_granularity: bool = param(True, "search per-tensor vs per-channel")
    search_scheme: bool = param(True, "search symmetric vs asymmetric")
    search_outputs: bool = param(False,
        "search output quantizers (target ort) on the layer objective, both ends of the range, scored after "
        "the activation that reads them; off: MinMax ranges (held-out mobilevit_xxs: better at W6A6, worse "
        "at W8A8, benchmarks/RESULTS.md)")
    shared_output_objective: bool = param(True,
        "a quantizer shared by a layer's output and its readers' inputs (passes/group_quantizers) is also "
        "scored at that layer's objective; off: at its readers' objectives only")
    act_channel_migrate: bool = param(True,
        "per-channel input ranges stay a choice where they deploy with one per-tensor quantizer: "
        "migrated (target ort, partial/full mode: linears and unpadded ungrouped convs read per-channel "
        "codes with one scale, the ratios moved into the weights) or folded (a linear or 1x1 conv that "
        "alone reads an affine norm, on ort in integer mode, openvino and tensorrt: the ratios go into "
        "the norm's affine and the weights)")
    act_channel_migrate_scales: bool = param(True,
        "with act_channel_migrate: padded and grouped convs (depthwise, kxk) may also take per-channel input "
        "scales, with one zero point for all channels so that padding reads 0; the ratios move into the "
        "weights (target ort, partial/full mode; held-out images: KL -4 to -23 % at W6A6 on the four CIFAR "
        "models, benchmarks/RESULTS.md)")
    bridge_objective: bool = param(True,
        "bridge-block members are scored at the bridge output (paper); off: at their own output")
    act_cv: bool = param(True, "score activation candidates by K-fold validation over images")
    cv_folds: int = param(4, "folds of the activation validation")
    calib_augment: str = param("none",
        "flip: the search also sees every calibration image mirrored left-right (twice the activation "
        "samples; +50 % calibration time, mixed on held-out data)", choices=CALIB_AUGMENTS)
    weight_rounding: str = param("nearest",
        "gptq: weight codes chosen column by column with the rounding error compensated through the layer "
        "objective's Gram matrix (kept per layer only where it lowers the objective); nearest: round to nearest",
        choices=ROUNDINGS)
    bias_correction: bool = param(False,
        "remove each conv/linear's mean quantization shift (decisions: bias_delta)")


@register_method
class QHyViT(SearchMethod):
    """Paper Algorithm 1.  Gradients come from a MinMax-quantized copy of the
    graph (KL to the float predictions), inputs and outputs from the float
    graph ("parallel" reconstruction: every layer sees float inputs)."""

    name = "qhyvit"
    params_class = QHyViTParams
    step = staticmethod(hybrid_step)
