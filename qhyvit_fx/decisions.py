"""Per-layer quantization decisions and their JSON form.

A decisions file fully determines a converted graph: ``convert(prepared,
decisions=...)`` applies it exactly, so a user can edit scales, zero points,
granularity or scheme of any layer and re-convert.
"""
from __future__ import annotations

import base64
import binascii
import json
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from .quantizer import QParams

FORMAT = "qhyvit-decisions/1"


class DecisionsError(ValueError):
    """A decisions file is malformed or does not fit the model."""


@dataclass
class LayerDecision:
    layer: str
    kind: str
    weight: Optional[QParams] = None
    inputs: Dict[int, Optional[QParams]] = field(default_factory=dict)
    output: Optional[QParams] = None
    bridge: Optional[int] = None
    error: Dict[str, float] = field(default_factory=dict)     # search objective before / after
    info: Dict[str, Any] = field(default_factory=dict)
    bias_delta: Optional[Any] = None                          # tensor [C] added to the layer's bias
    # scale reparameterisation of the norm feeding this layer (RepQ-ViT; Q-HyViT's norm-folded inputs):
    # {"norm": module name, "in_scale": r [K], "in_shift": t [K], "shift": "float" | "quantized"};
    # convert sets the norm's affine to (gamma/r, (beta+t)/r), the layer weight to W*r (input channels)
    # and its bias to b - W t ("float", RepQ-ViT: the same float function) or b - Q(W r) t / r
    # ("quantized": the offset removed exactly as the quantized layer applies it)
    reparam: Optional[Dict[str, Any]] = None
    # migrated per-channel input (integer kernels): m [K] per input channel; the input's per-channel
    # codes (inputs[0], scales s_c) are read with the one scale s_c / m_c, and the weight decision
    # is for W * m (input channels); convert corrects the bias for the zero points
    input_migration: Optional[Any] = None
    # integer weight codes [C, Kg] chosen by a rounding search (search/rounding.py) for ``weight``'s
    # scale and zero point, instead of rounding to nearest; convert stores them as they are
    weight_codes: Optional[Any] = None

    def to_dict(self) -> dict:
        d = {"layer": self.layer, "kind": self.kind, "bridge": self.bridge,
             "weight": self.weight.to_dict() if self.weight is not None else None,
             "inputs": {str(i): (q.to_dict() if q is not None else None) for i, q in sorted(self.inputs.items())},
             "output": self.output.to_dict() if self.output is not None else None}
        if self.bias_delta is not None:
            d["bias_delta"] = [float(v) for v in self.bias_delta.reshape(-1)]
        if self.reparam is not None:
            d["reparam"] = {"norm": self.reparam["norm"],
                            "in_scale": [float(v) for v in self.reparam["in_scale"].reshape(-1)],
                            "in_shift": [float(v) for v in self.reparam["in_shift"].reshape(-1)]}
            if "shift" in self.reparam:
                d["reparam"]["shift"] = self.reparam["shift"]
        if self.input_migration is not None:
            d["input_migration"] = [float(v) for v in self.input_migration.reshape(-1)]
        if self.weight_codes is not None:       # base64 of the int8 bytes: a JSON list would be 4x larger
            c = self.weight_codes.to(torch.int8).contiguous()
            d["weight_codes"] = {"shape": list(c.shape), "int8_base64": base64.b64encode(c.numpy().tobytes()).decode()}
        if self.error:
            d["error"] = {k: float(v) for k, v in self.error.items()}
        if self.info:
            d["info"] = self.info
        return d

    @staticmethod
    def from_dict(d: dict) -> "LayerDecision":
        try:
            name = d["layer"]
            def qp(x, what):
                if x is None:
                    return None
                try:
                    return QParams.from_dict(x)
                except (KeyError, TypeError, ValueError) as e:
                    raise DecisionsError(f"layer '{name}' {what}: {e}") from e
            return LayerDecision(
                layer=name, kind=d.get("kind", ""), bridge=d.get("bridge"),
                weight=qp(d.get("weight"), "weight"),
                inputs={int(k): qp(v, f"input {k}") for k, v in (d.get("inputs") or {}).items()},
                output=qp(d.get("output"), "output"),
                error=dict(d.get("error") or {}), info=dict(d.get("info") or {}),
                bias_delta=_bias(d.get("bias_delta"), name), reparam=_reparam(d.get("reparam"), name),
                input_migration=_migration(d.get("input_migration"), name),
                weight_codes=_codes(d.get("weight_codes"), name))
        except KeyError as e:
            raise DecisionsError(f"a layer entry lacks the key {e}") from e


def _bias(v, name):
    if v is None:
        return None
    import torch
    t = torch.tensor(v, dtype=torch.float32)
    if t.dim() != 1 or not torch.isfinite(t).all():
        raise DecisionsError(f"layer '{name}': bias_delta must be a finite list of numbers")
    return t


def _migration(v, name):
    if v is None:
        return None
    import torch
    m = torch.tensor(v, dtype=torch.float32)
    if m.dim() != 1 or m.numel() == 0 or not (torch.isfinite(m).all() and (m > 0).all()):
        raise DecisionsError(f"layer '{name}': input_migration must be a list of positive numbers, "
                             "one per input channel")
    return m


def _codes(v, name):
    if v is None:
        return None
    try:
        shape = [int(n) for n in v["shape"]]
        raw = base64.b64decode(v["int8_base64"], validate=True)
    except (KeyError, TypeError, ValueError, binascii.Error) as e:
        raise DecisionsError(f"layer '{name}': weight_codes needs \"shape\" and \"int8_base64\" ({e})") from e
    if len(shape) != 2 or shape[0] * shape[1] != len(raw):
        raise DecisionsError(f"layer '{name}': weight_codes holds {len(raw)} bytes for shape {shape}")
    return torch.from_numpy(np.frombuffer(raw, dtype=np.int8).copy()).reshape(shape)


def _reparam(v, name):
    if v is None:
        return None
    import torch
    if not isinstance(v, dict) or not isinstance(v.get("norm"), str):
        raise DecisionsError(f"layer '{name}': reparam needs \"norm\", \"in_scale\" and \"in_shift\"")
    r = torch.tensor(v.get("in_scale", []), dtype=torch.float32)
    t = torch.tensor(v.get("in_shift", []), dtype=torch.float32)
    if r.dim() != 1 or r.shape != t.shape or r.numel() == 0 or not (torch.isfinite(r).all() and
                                                                   torch.isfinite(t).all() and (r > 0).all()):
        raise DecisionsError(f"layer '{name}': reparam in_scale must be positive, in_shift finite, "
                             "both lists of the layer's input-channel count")
    out = {"norm": v["norm"], "in_scale": r, "in_shift": t}
    if "shift" in v:
        if v["shift"] not in ("float", "quantized"):
            raise DecisionsError(f"layer '{name}': reparam shift must be \"float\" (RepQ-ViT: b - W t) or "
                                 f"\"quantized\" (b - Q(W r) t / r), not {v['shift']!r}")
        out["shift"] = v["shift"]
    return out


@dataclass
class Decisions:
    layers: Dict[str, LayerDecision]
    meta: Dict[str, Any] = field(default_factory=dict)
    # quantizer groups of more than one point (passes/group_quantizers): name -> ["layer:slot", ...];
    # each is one quantizer in the deployed graph, so its members hold equal params
    groups: Dict[str, List[str]] = field(default_factory=dict)

    def slot(self, member: str) -> Optional[QParams]:
        """The params of ``"layer:slot"`` (slot ``in0``, ``in1``, ... or ``out``)."""
        layer, slot = member.rsplit(":", 1)
        d = self.layers[layer]
        return d.output if slot == "out" else d.inputs.get(int(slot[2:]))

    def quantizers(self) -> List[Tuple[List[str], QParams]]:
        """Every activation quantizer once: (its members, its params), a group counted once."""
        grouped = {m for ms in self.groups.values() for m in ms}
        out = [(list(ms), self.slot(ms[0])) for ms in self.groups.values()]
        for d in self.layers.values():
            for key, qp in [(f"{d.layer}:in{i}", q) for i, q in sorted(d.inputs.items())] + [(f"{d.layer}:out", d.output)]:
                if qp is not None and key not in grouped:
                    out.append(([key], qp))
        return [(ms, qp) for ms, qp in out if qp is not None]

    def check_groups(self) -> None:
        """Raise DecisionsError unless every group's members exist and hold equal params."""
        for name, members in self.groups.items():
            try:
                qps = [self.slot(m) for m in members]
            except (KeyError, ValueError) as e:
                raise DecisionsError(f"group '{name}' names a member this file lacks: {e}") from e
            a = qps[0]
            for m, b in zip(members[1:], qps[1:]):
                if (a is None) != (b is None) or (a is not None and not a.same_as(b)):
                    raise DecisionsError(f"group '{name}': {m} differs from {members[0]}; the members are one "
                                         "quantizer in the deployed graph, give them the same spec, scale and "
                                         "zero point")

    def to_dict(self) -> dict:
        d = {"format": FORMAT, "meta": self.meta, "layers": [l.to_dict() for l in self.layers.values()]}
        if self.groups:
            d["groups"] = self.groups
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=False)

    def save(self, path: str) -> None:
        atomic_write_text(path, self.to_json())

    @staticmethod
    def from_dict(d: dict) -> "Decisions":
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise DecisionsError(f"not a decisions file (expected \"format\": \"{FORMAT}\")")
        layers = {}
        for ld in d.get("layers", []):
            l = LayerDecision.from_dict(ld)
            layers[l.layer] = l
        groups = d.get("groups") or {}
        if not isinstance(groups, dict) or not all(isinstance(v, list) and v and all(isinstance(m, str) and ":" in m
                                                                                   for m in v)
                                                   for v in groups.values()):
            raise DecisionsError('"groups" must map each group name to a list of "layer:slot" members')
        dec = Decisions(layers, dict(d.get("meta") or {}), {k: list(v) for k, v in groups.items()})
        dec.check_groups()
        return dec

    @staticmethod
    def load(path: str) -> "Decisions":
        try:
            with open(path) as f:
                d = json.load(f)
        except FileNotFoundError as e:
            raise DecisionsError(f"decisions file '{path}' does not exist") from e
        except json.JSONDecodeError as e:
            raise DecisionsError(f"decisions file '{path}' is not valid JSON: {e}") from e
        return Decisions.from_dict(d)


def atomic_write_text(path: str, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write via a temp file in the same folder and os.replace: never a partial file."""
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m
