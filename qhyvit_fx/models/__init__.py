"""Model creation and weight loading.

``create_model`` turns off timm's fused attention before building (so the
captured graph has explicit matmul -> softmax -> matmul), accepts timm names
and the models this package registers with timm, and loads weights from a
plain state_dict file, from a checkpoint in the project's
``{"state_dict", "meta"}`` format, or from timm's pretrained hub.
"""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import torch

__all__ = ["ModelError", "LoadedModel", "create_model", "load_checkpoint", "suggest_names", "HYBRID_MODELS",
           "default_img_size"]

HYBRID_MODELS = (
    "mobilevit_xxs", "mobilevit_xs", "mobilevit_s",
    "mobilevitv2_050", "mobilevitv2_075", "mobilevitv2_100", "mobilevitv2_125", "mobilevitv2_150",
    "mobilevitv2_175", "mobilevitv2_200",
    "efficientformer_l1", "efficientformer_l3", "efficientformer_l7",
    "efficientformerv2_s0", "efficientformerv2_s1", "efficientformerv2_s2", "efficientformerv2_l",
)
MOBILEFORMER_MODELS = tuple(f"mobileformer_{s}" for s in ("26m", "52m", "96m", "151m", "214m", "294m", "508m"))


class ModelError(ValueError):
    """A model name, checkpoint or weight file is unusable; the message says how to fix it."""


@dataclass
class LoadedModel:
    model: torch.nn.Module
    name: str
    meta: Dict[str, Any] = field(default_factory=dict)   # checkpoint meta (img_size, mean, std, classes, ...)
    source: str = "random"                                # random | weights:<path> | pretrained


def _timm():
    import timm
    timm.layers.set_fused_attn(False)
    from . import mobileformer  # noqa: F401  (registers mobileformer_* with timm)
    from . import efficientformer_small  # noqa: F401  (registers efficientformer_l1_64 ... with timm)
    return timm


def default_img_size(model: torch.nn.Module) -> int:
    """The model's own input size (from its timm pretrained config; 224 when it has none)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return int(cfg.get("input_size", (3, 224, 224))[-1])


def suggest_names(name: str, n: int = 5):
    timm = _timm()
    names = timm.list_models()
    close = difflib.get_close_matches(name, names, n=n, cutoff=0.6)
    if not close:
        close = [m for m in names if name.split("_")[0] in m][:n]
    return close


def _check_name(name: str) -> None:
    timm = _timm()
    if not timm.is_model(name):
        close = suggest_names(name)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ModelError(f"unknown model '{name}'.{hint} (`timm.list_models('*vit*')` lists names)")


def load_checkpoint(path: str) -> Dict[str, Any]:
    """Read a weight file safely (``weights_only=True``) into {'state_dict', 'meta'}."""
    if not os.path.exists(path):
        raise ModelError(f"weights file '{path}' does not exist; pass an existing file to --weights")
    if os.path.isdir(path):
        raise ModelError(f"weights path '{path}' is a folder; pass a .pth file to --weights")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, truncated zip, not a torch file
        raise ModelError(f"'{path}' is not a readable PyTorch checkpoint ({type(e).__name__}: {e}); "
                         "pass a state_dict saved with torch.save") from e
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        return {"state_dict": obj["state_dict"], "meta": dict(obj.get("meta") or {})}
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        return {"state_dict": obj["model"], "meta": {}}
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return {"state_dict": obj, "meta": {}}
    raise ModelError(f"'{path}' holds no state_dict (expected a dict of tensors, or "
                     "{'state_dict': ..., 'meta': ...}); save one with torch.save(model.state_dict(), path)")


def _num_classes_from(sd: Dict[str, torch.Tensor], model) -> Optional[int]:
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if head is None or not hasattr(head, "weight"):
        return None
    for k, v in sd.items():
        if k.endswith(".weight") and v.dim() == 2 and tuple(v.shape[1:]) == tuple(head.weight.shape[1:]) \
                and ("head" in k or "classifier" in k or k.startswith("fc.")):
            return int(v.shape[0])
    return None


def create_model(name: str, weights: Optional[str] = None, pretrained: bool = False,
                 num_classes: Optional[int] = None, **kwargs) -> LoadedModel:
    """Build ``name`` (timm or registered here) and load its weights."""
    timm = _timm()
    ckpt = load_checkpoint(weights) if weights else None
    meta = ckpt["meta"] if ckpt else {}
    if meta.get("model") and meta["model"] != name:
        raise ModelError(f"weights '{weights}' are for model '{meta['model']}', not '{name}'; "
                         f"run with model '{meta['model']}'")
    _check_name(name)
    kw = dict(meta.get("model_kwargs") or {})
    kw.update(kwargs)
    if num_classes is None and meta.get("num_classes"):
        num_classes = int(meta["num_classes"])
    if pretrained:
        try:
            model = timm.create_model(name, pretrained=True, **kw)
        except Exception as e:
            raise ModelError(f"could not download pretrained weights for '{name}' ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''}); this machine may be offline: "
                             "pass a local weight file with --weights instead") from e
        if num_classes is not None:
            model.reset_classifier(num_classes)
        return LoadedModel(model.eval(), name, meta, "pretrained")
    if ckpt is not None and num_classes is None:
        probe = timm.create_model(name, **kw)
        num_classes = _num_classes_from(ckpt["state_dict"], probe)
    model = timm.create_model(name, **({"num_classes": num_classes} if num_classes else {}), **kw)
    if ckpt is None:
        return LoadedModel(model.eval(), name, meta, "random")
    sd = ckpt["state_dict"]
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        raise ModelError(f"weights '{weights}' do not fit '{name}': {len(missing)} missing keys "
                         f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}); "
                         "check the model name matches the checkpoint")
    bad = [(k, tuple(sd[k].shape), tuple(v.shape)) for k, v in own.items() if tuple(sd[k].shape) != tuple(v.shape)]
    if bad:
        k, a, b = bad[0]
        raise ModelError(f"weights '{weights}' do not fit '{name}': {len(bad)} tensors differ in shape "
                         f"(e.g. {k}: file {a} vs model {b}); check the model name and --num-classes")
    nonfinite = [k for k, v in sd.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if nonfinite:
        raise ModelError(f"weights '{weights}' contain NaN or inf in {len(nonfinite)} tensors "
                         f"(e.g. {nonfinite[0]}); the checkpoint is corrupt, re-export it")
    model.load_state_dict(sd, strict=True)
    return LoadedModel(model.eval(), name, meta, f"weights:{weights}")
