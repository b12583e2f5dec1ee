"""The typed records qhyvit-fx leaves on a graph, as torch.fx's ``ShapeProp`` leaves ``tensor_meta``.

* ``gm.meta["qhyvit"]``: one :class:`QuantState` per GraphModule, what the stages know about it
  (read and written through :func:`quant_state`);
* ``node.meta["qhyvit_bridge"]``: a :class:`BridgeRole` on every layer of a bridge block;
* ``node.meta["qhyvit_quant"]``: a ``passes.annotate.QuantAnnotation`` on every quantized node;
* ``node.meta["qhyvit_observer"]``: an :class:`ObserverSite` on every observer call of a prepared graph.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

if TYPE_CHECKING:                                   # annotations only: the records hold these types
    import torch
    from torch import fx

    from .config import QConfig
    from .decisions import Decisions
    from .passes.group_quantizers import QuantGroup
    from .patterns.bridges import BridgeTag

STATE = "qhyvit"
BRIDGE = "qhyvit_bridge"
OBSERVER = "qhyvit_observer"


@dataclass
class BridgeRole:
    """A layer's place in a bridge block (``node.meta[BRIDGE]``)."""
    id: int                       # the block's index in ``QuantState.bridges``
    role: str                     # "entry", "member" or "output"
    direction: str                # the pattern's direction, e.g. "conv->attention"
    output: str                   # the block's output layer (node name)


@dataclass
class ObserverSite:
    """Which quantizer an observer call of the prepared graph watches (``node.meta[OBSERVER]``): its group's
    first member."""
    layer: str
    slot: str                     # "in0", "in1", ... or "out"
    group: str


@dataclass
class QuantState:
    """What the stages know about a GraphModule (``gm.meta[STATE]``); each field names its writer."""
    config: Optional["QConfig"] = None                    # passes.annotate
    prepared: bool = False                                # api.prepare
    converted: bool = False                               # passes.convert
    example_shape: Optional[Tuple[int, ...]] = None       # api.prepare
    calib_count: int = 0                                  # api.calibrate: images seen
    calib_images: Optional["torch.Tensor"] = None         # the CLI, for the report's figures
    decisions: Optional["Decisions"] = None               # api.calibrate, passes.convert
    bridges: List["BridgeTag"] = field(default_factory=list)         # patterns.bridges.tag_bridges
    quant_groups: Optional[List["QuantGroup"]] = None     # passes.group_quantizers (None: not grouped yet)
    folded: Dict[str, str] = field(default_factory=dict)  # passes.fold_constants: buffer -> source parameter
    changed: Dict[str, int] = field(default_factory=dict)  # rewriting pass -> how many places it changed


def quant_state(gm: "fx.GraphModule") -> QuantState:
    """The module's :class:`QuantState`, created empty on first use."""
    st = gm.meta.get(STATE)
    if st is None:
        st = gm.meta[STATE] = QuantState()
    return st


def bridge_role(node: "fx.Node") -> Optional[BridgeRole]:
    return node.meta.get(BRIDGE)


def count_change(gm: "fx.GraphModule", pass_name: str, n: int, add: bool = False) -> None:
    """Record how many places the pass ``pass_name`` changed (``add``: on top of an earlier run's)."""
    changed = quant_state(gm).changed
    changed[pass_name] = changed.get(pass_name, 0) + n if add else n


__all__: List[Any] = ["BRIDGE", "OBSERVER", "STATE", "BridgeRole", "ObserverSite", "QuantState", "bridge_role",
                      "count_change", "quant_state"]
