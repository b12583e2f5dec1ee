"""Survey of timm's model families: does every stage of the pipeline work on a model nobody
wrote a pattern for?

``discover_families`` walks ``timm.list_modules()`` (one module = one family), takes each family's
smallest model (parameters counted on the meta device, nothing allocated) and keeps the families
whose captured graph holds attention (a matmul of two activations, or a softmax).  No family is
named in the code.  ``survey_model`` runs one model through capture, prepare (MinMax W8A8,
``--target ort``), calibration on random images, convert, QDQ export and ``qhyvit check``, and
returns a :class:`SurveyRecord` with the numbers of RESULTS.md's family table.  Random weights:
structure, exactness and integer-kernel coverage only, never accuracy.
"""
from __future__ import annotations

import math
import os
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .models import default_img_size
from .state import quant_state

__all__ = ["SurveyRecord", "discover_families", "survey_model", "family_models"]


@dataclass
class SurveyRecord:
    family: str
    model: str
    img: int
    params_m: float = 0.0
    attention: bool = False           # the captured graph holds attention
    spatial_convs: int = 0            # convs with a kernel > 1 that do not read the image
    capture_max_diff: Optional[float] = None
    bridges: int = 0
    bridges_by_direction: Dict[str, int] = field(default_factory=dict)
    bridge_rules: Dict[str, int] = field(default_factory=dict)
    integer_ops: int = 0
    compute_ops: int = 0
    integer_mac_share: float = 0.0
    float_islands: List[str] = field(default_factory=list)
    sqnr_db: Optional[float] = None   # MinMax W8A8 fake-quant vs FP32, random inputs
    seconds: float = 0.0
    error: str = ""                   # "<stage>: <message>" when a stage failed
    methods: Dict[str, str] = field(default_factory=dict)   # other methods: "ok" or "<stage>: <message>"

    @property
    def ok(self) -> bool:
        return (not self.error and self.capture_max_diff is not None and self.capture_max_diff <= 1e-4
                and self.compute_ops > 0 and self.integer_ops == self.compute_ops
                and all(v == "ok" for v in self.methods.values()))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ok"] = self.ok
        return d


def _meta_model(name: str):
    import timm
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        timm.layers.set_fused_attn(False)
        return timm.create_model(name).eval()


def _count_params(name: str) -> Optional[int]:
    try:
        return sum(p.numel() for p in _meta_model(name).parameters())
    except Exception:
        return None


def family_models(family: str) -> List[Tuple[int, str]]:
    """The family's models that can be built, as (parameters, name), fewest parameters first."""
    import timm
    sized = [(_count_params(n), n) for n in timm.list_models(module=family)]
    return sorted((c, n) for c, n in sized if c is not None)


def _graph_facts(gm) -> dict:
    from .patterns.kinds import Kind, build_kind_graph
    g = build_kind_graph(gm)
    kinds = [a["kind"] for _, a in g.nodes(data=True)]
    attention = Kind.SOFTMAX.value in kinds or Kind.MATMUL.value in kinds
    spatial = 0
    for v, a in g.nodes(data=True):
        if a["kind"] == Kind.CONV.value and any(k > 1 for k in a.get("kernel", (1,))) \
                and not any(g.nodes[p]["kind"] == Kind.INPUT.value for p in g.predecessors(v)):
            spatial += 1
    return {"attention": attention, "spatial_convs": spatial}


def _holds_attention(name: str) -> Optional[bool]:
    """Whether the captured graph of ``name`` holds attention; the capture runs on the meta device
    (shapes only, nothing computed).  None when it cannot be captured there."""
    from .capture import capture
    try:
        model = _meta_model(name)
        img = default_img_size(model)
        return _graph_facts(capture(model, torch.zeros(1, 3, img, img, device="meta")))["attention"]
    except Exception:
        return None


def discover_families(max_params_m: float = 40.0, tries: int = 8) -> List[Dict[str, str]]:
    """timm families that hold attention, with their smallest such model: [{"family", "model"}].

    For each ``timm.list_modules()`` family, the models are tried fewest parameters first (at most
    ``tries`` of them, up to ``max_params_m`` million parameters: 2 cores); the first whose
    captured graph holds attention represents the family.  A model that cannot even be captured on
    the meta device represents its family too: the survey then reports why."""
    import timm
    out = []
    for family in timm.list_modules():
        for params, name in family_models(family)[:tries]:
            if params > max_params_m * 1e6:
                break
            held = _holds_attention(name)
            if held is None or held:
                out.append({"family": family, "model": name})
                break
    return out


def _float_exports(model: torch.nn.Module, size: int) -> bool:
    """Whether torch's ONNX exporter (the one export_onnx uses) can write the FP32 model at all."""
    import io
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (torch.zeros(1, 3, size, size),), io.BytesIO(), dynamo=False, opset_version=20)
        return True
    except Exception:
        return False


def _other_method(model, x: torch.Tensor, method: str, calib_images: int, workdir: Optional[str]) -> str:
    """prepare -> calibrate -> convert -> export with ``method`` (``--target ort``); "ok" or the failure."""
    import qhyvit_fx
    stage = "prepare"
    try:
        # a structural check, not an accuracy one: one search round over a coarse grid
        from .methods import SearchParams, get_method
        fast = dict(rounds=1, n_candidates=20, max_positions=256, coarse_rows=64)
        searched = issubclass(get_method(method).params_class, SearchParams)
        cfg = qhyvit_fx.QConfig(method=method, target="ort", calib_images=calib_images,
                                method_params=fast if searched else None)
        qm = qhyvit_fx.prepare(model, x[:1], cfg)
        stage = "calibrate"
        qhyvit_fx.calibrate(qm, torch.randn(calib_images, *x.shape[1:]))
        stage = "convert"
        cm = qhyvit_fx.convert(qm)
        with torch.no_grad():
            out = cm(x)
        if not bool(torch.isfinite(out).all()):
            return "convert: the quantized model's outputs are not finite"
        stage = "export"
        with tempfile.TemporaryDirectory(dir=workdir) as tmp:
            qhyvit_fx.export_onnx(cm, os.path.join(tmp, "m.onnx"))
    except Exception as e:
        return f"{stage}: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
    return "ok"


def survey_model(name: str, family: str = "", img: Optional[int] = None, calib_images: int = 4,
                 seed: int = 0, workdir: Optional[str] = None, methods: Sequence[str] = ()) -> SurveyRecord:
    """Run ``name`` (random weights) through every stage with MinMax W8A8 ``--target ort``, then
    each of ``methods`` through prepare, calibrate, convert and export; failures are recorded, not
    raised."""
    import qhyvit_fx
    from .capture import capture
    from .check import check_onnx
    from .models import create_model
    from .passes.cleanup import remove_noops
    from .passes.unshare_modules import unshare_modules

    t0 = time.time()
    torch.manual_seed(seed)
    model = create_model(name).model.eval()
    size = img or default_img_size(model)
    rec = SurveyRecord(family=family or name.split("_")[0], model=name, img=size,
                       params_m=round(sum(p.numel() for p in model.parameters()) / 1e6, 2))
    stage = "capture"
    try:
        x = torch.randn(2, 3, size, size)
        gm = capture(model, x[:1])
        with torch.no_grad():
            rec.capture_max_diff = float((gm(x) - model(x)).abs().max())
        facts = _graph_facts(remove_noops(unshare_modules(gm)))
        rec.attention, rec.spatial_convs = facts["attention"], facts["spatial_convs"]
        stage = "prepare"
        qm = qhyvit_fx.prepare(model, x[:1], qhyvit_fx.QConfig(method="minmax", target="ort"))
        tags = quant_state(qm).bridges
        rec.bridges = len(tags)
        for t in tags:
            rec.bridges_by_direction[t.direction] = rec.bridges_by_direction.get(t.direction, 0) + 1
            rec.bridge_rules[t.pattern] = rec.bridge_rules.get(t.pattern, 0) + 1
        stage = "calibrate"
        qhyvit_fx.calibrate(qm, torch.randn(calib_images, 3, size, size))
        stage = "convert"
        cm = qhyvit_fx.convert(qm)
        with torch.no_grad():
            ref, out = model(x), cm(x)
        err = float((ref - out).pow(2).sum())
        rec.sqnr_db = round(10 * math.log10(float(ref.pow(2).sum()) / err), 2) if err > 0 else float("inf")
        stage = "export"
        with tempfile.TemporaryDirectory(dir=workdir) as tmp:
            path = os.path.join(tmp, f"{name}.onnx")
            qhyvit_fx.export_onnx(cm, path)
            stage = "check"
            rep = check_onnx(path)
        rec.integer_ops, rec.compute_ops = rep.integer_count, len(rep.ops)
        rec.integer_mac_share = round(rep.mac_share, 2)
        rec.float_islands = [f"{o.name} ({o.op}): {o.reason}" for o in rep.ops if not o.integer]
    except Exception as e:
        rec.error = f"{stage}: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        if stage == "export" and not _float_exports(model, size):
            rec.error = "export: torch.onnx cannot export the FP32 model either -- " + rec.error[len("export: "):]
    if not rec.error:
        for m in methods:
            if m != "minmax":
                rec.methods[m] = _other_method(model, x, m, calib_images, workdir)
    rec.seconds = round(time.time() - t0, 1)
    return rec
