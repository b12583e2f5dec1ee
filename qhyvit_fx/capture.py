"""Graph capture: a torch.fx tracer that carries concrete values.

Plain ``torch.fx.symbolic_trace`` cannot follow Python control flow that
depends on tensor shapes (MobileViT's ``if new_h != H or new_w != W``).  The
tracer here runs the real computation on the example inputs alongside the
symbolic trace: every proxy knows the value it stands for.  When Python asks
a proxy for a concrete answer (``bool``, ``len``, ``int``, iteration), the
tracer answers from that value and records the decision as a *guard*.  Only
shape-derived answers are allowed; branching on tensor *data* raises
:class:`CaptureError`, because the captured graph would silently be wrong for
other inputs.

Shape arithmetic itself stays symbolic (``B * C * num_patch_h`` is a chain of
graph nodes), so one capture serves every batch size, while spatial shapes
that drive branches are fixed to those of the example input (recorded in
``gm.meta["capture"]``).

Side effects on the model made during tracing (caches that store tensors,
such as EfficientFormer's attention-bias cache) are rolled back afterwards,
so the same module can be captured any number of times.
"""
from __future__ import annotations

import builtins
import contextlib
import copy
import inspect
import math
import operator
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch.fx.node import map_aggregate
from torch.fx.passes.shape_prop import _extract_tensor_metadata

__all__ = ["capture", "CaptureError", "CaptureInfo"]


class CaptureError(RuntimeError):
    """A model could not be captured; the message names the module and why."""


@dataclass
class CaptureInfo:
    """What a capture specialised on; stored in ``gm.meta["capture"]``."""

    input_shapes: List[Tuple[int, ...]]
    guards: List[Tuple[str, str, Any]] = field(default_factory=list)  # (module path, what, value)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "input_shapes": [list(s) for s in self.input_shapes],
            "guards": [{"module": m, "what": w, "value": repr(v)} for m, w, v in self.guards],
        }


def _is_tensor_like(v: Any) -> bool:
    return isinstance(v, torch.Tensor) and not isinstance(v, torch.Size)


class _ConcreteValue:
    """What a proxy of the concrete tracer adds to fx's: it knows the value it stands for
    (``_value``), attribute chains keep knowing theirs (``x.device.type``), and Python's
    requests for concrete answers are answered from the value."""

    def __getattr__(self, k):
        if k.startswith("__") and k.endswith("__"):
            raise AttributeError(k)
        return _ConcreteAttribute(self, k)

    # Python asks these for concrete answers: give them from the value, and
    # record each as a guard so the specialisation is visible.
    def _concrete(self, what: str):
        v = self._value
        if _is_tensor_like(v):
            raise CaptureError(
                f"data-dependent Python control flow ({what} of a tensor) in module "
                f"'{self.tracer.current_module or '<root>'}' at node '{self.node.name}': "
                "the branch would depend on tensor values, which a graph cannot capture. "
                "Rewrite that branch with torch.where or mark the module as a leaf.")
        return v

    def __bool__(self):
        v = self._concrete("bool")
        self.tracer.guard("bool", bool(v))
        return bool(v)

    def __index__(self):
        v = self._concrete("index")
        self.tracer.guard("index", operator.index(v))
        return operator.index(v)

    def __int__(self):
        v = self._concrete("int")
        self.tracer.guard("int", int(v))
        return int(v)

    def __float__(self):
        v = self._concrete("float")
        self.tracer.guard("float", float(v))
        return float(v)

    def __len__(self):
        v = self._value
        n = len(v)
        self.tracer.guard("len", n)
        return n

    def __iter__(self):
        v = self._value
        n = v.shape[0] if _is_tensor_like(v) else len(v)
        if _is_tensor_like(v):
            self.tracer.guard("iter", n)
        return iter([self[i] for i in range(n)])

    def __contains__(self, key):
        return key in self._value

    def keys(self):
        return self._value.keys()


class _ConcreteAttribute(_ConcreteValue, fx.proxy.Attribute):
    """Lazy ``proxy.attr`` that also knows its concrete value."""

    @property
    def _value(self):
        return getattr(self.root._value, self.attr)

    def __call__(self, *args, **kwargs):
        return self.tracer.create_proxy("call_method", self.attr, (self.root,) + args, kwargs)


def _assign_index(t: torch.Tensor, index, value) -> torch.Tensor:
    """Out-of-place ``t[index] = value`` (the graph form of an in-place item assignment)."""
    t = t.clone()
    t[index] = value
    return t


class _ConcreteProxy(_ConcreteValue, fx.Proxy):
    """An fx.Proxy whose concrete value lives in ``tracer.values[node]``."""

    @property
    def _value(self):
        return self.tracer.values[self.node]

    def __setitem__(self, index, value):
        # ``x[i] = v`` (ConViT's and MViT's position tables): the graph gets an out-of-place copy and
        # this proxy, the Python object the model keeps using, now stands for it.  Views taken of
        # ``x`` before the assignment keep the old values; the capture's exactness check shows it.
        new = self.tracer.create_proxy("call_function", _assign_index, (self, index, value), {})
        self.node = new.node

    def __ceil__(self):
        return self.tracer.create_proxy("call_function", math.ceil, (self,), {})

    def __floor__(self):
        return self.tracer.create_proxy("call_function", math.floor, (self,), {})

    def __trunc__(self):
        return self.tracer.create_proxy("call_function", math.trunc, (self,), {})

    def __round__(self, ndigits=None):
        args = (self,) if ndigits is None else (self, ndigits)
        return self.tracer.create_proxy("call_function", builtins.round, args, {})


def _explicit_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                   enable_gqa=False):
    """scaled_dot_product_attention as matmul -> softmax -> matmul (eval semantics)."""
    scale_v = scale if scale is not None else 1.0 / math.sqrt(query.shape[-1])
    attn = (query * scale_v) @ key.transpose(-2, -1)
    if is_causal:
        L, S = query.shape[-2], key.shape[-2]
        mask = torch.ones(L, S, dtype=torch.bool, device=query.device).tril()
        attn = attn.masked_fill(~mask, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            attn = attn.masked_fill(~attn_mask, float("-inf"))
        else:
            attn = attn + attn_mask
    attn = attn.softmax(dim=-1)
    return attn @ value


class _AutocastWhileTracing(contextlib.nullcontext):
    """``torch.autocast`` during capture.  A graph has no autocast regions and the capture runs in
    float32, so the region is traced as written; timm uses it to *disable* autocast around
    attention (EfficientViT's LiteMLA), where its device argument would be a proxy."""

    def __init__(self, *args, **kwargs):
        super().__init__()

    def __call__(self, fn):      # the decorator form
        return fn


@contextlib.contextmanager
def _autocast_as_float():
    saved = torch.autocast, torch.amp.autocast
    torch.autocast = torch.amp.autocast = _AutocastWhileTracing
    try:
        yield
    finally:
        torch.autocast, torch.amp.autocast = saved


@contextlib.contextmanager
def _explicit_attention(model: torch.nn.Module):
    """Make attention explicit while tracing: timm's ``fused_attn`` flags off, and
    any remaining ``F.scaled_dot_product_attention`` call decomposed."""
    flipped = []
    for m in model.modules():
        if getattr(m, "fused_attn", False) is True:
            m.fused_attn = False
            flipped.append(m)
    orig = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = _explicit_sdpa
    try:
        yield
    finally:
        F.scaled_dot_product_attention = orig
        for m in flipped:
            m.fused_attn = True


def _tensor_meta(value):
    """TensorMetadata for a tensor, or a tuple/list of them (None elsewhere)."""
    if _is_tensor_like(value):
        return _extract_tensor_metadata(value)
    if isinstance(value, (tuple, list)) and value and all(_is_tensor_like(v) for v in value):
        return type(value)(_extract_tensor_metadata(v) for v in value)
    return None


def _contains_proxy(v) -> bool:
    found = []
    map_aggregate(v, lambda a: found.append(a) if isinstance(a, fx.Proxy) else None)
    return bool(found)


@contextlib.contextmanager
def _rollback_side_effects(model: torch.nn.Module):
    """Undo what tracing writes into plain module attributes (caches).

    Containers (dict/list/set) held by modules are snapshotted and restored in
    place; attributes that hold proxies after tracing get their old value back, or are removed
    when tracing created them.
    """
    snap = []
    for m in model.modules():
        d = m.__dict__
        before = dict(d)
        saved = {k: copy.copy(v) for k, v in d.items()
                 if isinstance(v, (dict, list, set)) and (not k.startswith("_") or k == "_buffers")}
        snap.append((m, before, saved))
    try:
        yield
    finally:
        for m, before, saved in snap:
            d = m.__dict__
            for k in list(d):
                if _contains_proxy(d[k]):
                    # a cache written during tracing (ConViT's ``self.rel_indices = ...``): the old value
                    # comes back, a new attribute goes
                    if k in before:
                        d[k] = before[k]
                    else:
                        del d[k]
            for k, v in saved.items():
                cur = d.get(k)
                if cur is not None and type(cur) is type(v):
                    cur.clear()
                    if isinstance(cur, dict):
                        cur.update(v)
                    elif isinstance(cur, list):
                        cur.extend(v)
                    else:
                        cur.update(v)
                else:
                    d[k] = v


class ConcreteTracer(fx.Tracer):
    """fx.Tracer that executes each recorded op on concrete example values."""

    def __init__(self, example_inputs: Sequence[Any]):
        super().__init__()
        # buffers read in forward are graph values, as parameters are: a cached buffer used with
        # traced sizes (ConViT's ``self.rel_indices.expand(B, -1, -1, -1)``) must be a proxy
        self.proxy_buffer_attributes = True
        self.example_inputs = list(example_inputs)
        self.values: Dict[fx.Node, Any] = {}
        self._qstack: List[str] = []
        self.guards: List[Tuple[str, str, Any]] = []
        self._placeholder_i = 0
        self._concrete_depth = 0

    @property
    def current_module(self) -> str:
        return self._qstack[-1] if self._qstack else ""

    def guard(self, what: str, value: Any) -> None:
        self.guards.append((self.current_module, what, value))

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _ConcreteProxy(node, self)

    def getattr(self, attr, attr_val, parameter_proxy_cache):
        if self._concrete_depth:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def _concrete_args(self, a):
        return map_aggregate(a, lambda x: x._value if isinstance(x, (_ConcreteProxy, _ConcreteAttribute)) else x)

    def create_proxy(self, kind, target, args, kwargs, name=None, type_expr=None, proxy_factory_fn=None):
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        if kind == "placeholder":
            if self._placeholder_i < len(self.example_inputs):
                value = self.example_inputs[self._placeholder_i]
            elif args:      # an optional argument specialised to its default (see _optional_args)
                value = args[0]
            else:
                raise CaptureError(
                    f"the model's forward takes more inputs than the {len(self.example_inputs)} example input(s) given")
            self._placeholder_i += 1
        elif kind == "output":
            value = None
        else:
            cargs = self._concrete_args(args)
            ckwargs = self._concrete_args(kwargs)
            self._concrete_depth += 1
            try:
                if kind == "get_attr":
                    value = operator.attrgetter(target)(self.root)
                elif kind == "call_function":
                    value = target(*cargs, **ckwargs)
                elif kind == "call_method":
                    value = getattr(cargs[0], target)(*cargs[1:], **ckwargs)
                elif kind == "call_module":
                    value = self.root.get_submodule(target)(*cargs, **ckwargs)
                else:  # pragma: no cover - fx has no other kinds
                    raise CaptureError(f"unknown node kind {kind}")
            except CaptureError:
                raise
            except Exception as e:
                raise CaptureError(
                    f"running '{_describe(kind, target)}' on the example input failed in module "
                    f"'{self.current_module or '<root>'}': {type(e).__name__}: {e}") from e
            finally:
                self._concrete_depth -= 1
        self.values[proxy.node] = value
        meta = _tensor_meta(value)
        if meta is not None:
            # the same record ShapeProp writes, so later passes can rely on it
            proxy.node.meta["tensor_meta"] = meta
        return proxy

    # While a concrete value is computed, the patched nn.Module.__call__ and
    # __getattr__ must behave as in eager mode.
    def call_module(self, m, forward, args, kwargs):
        if self._concrete_depth:
            return forward(*args, **kwargs)
        name = self.path_of_module(m)
        self._qstack.append(name)
        try:
            return super().call_module(m, forward, args, kwargs)
        finally:
            self._qstack.pop()


def _optional_args(model: torch.nn.Module, given: int) -> Optional[Dict[str, Any]]:
    """The forward's parameters after the example inputs that have defaults (a ViT's
    ``attn_mask=None, is_causal=False``), specialised to those defaults."""
    try:
        sig = inspect.signature(model.forward)
    except (TypeError, ValueError):
        return None
    positional = [p for p in sig.parameters.values()
                  if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    extra = {p.name: p.default for p in positional[given:] if p.default is not inspect.Parameter.empty}
    return extra or None


def _drop_optional_placeholders(graph: fx.Graph, given: int) -> None:
    """Remove the placeholders of specialised optional arguments: their uses (fx's guards that the
    value is still the default) go, so the graph takes exactly the example inputs."""
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    for ph in placeholders[given:]:
        for user in list(ph.users):
            _erase_guard_chain(graph, user)
        if not ph.users:
            graph.erase_node(ph)


def _erase_guard_chain(graph: fx.Graph, node: fx.Node) -> None:
    """Erase ``node`` and what only feeds fx's specialisation asserts (``_assert_is_none``,
    ``torch._assert(x == default)``)."""
    users = list(node.users)
    for u in users:
        _erase_guard_chain(graph, u)
    if not node.users and node.op == "call_function":
        graph.erase_node(node)


def _describe(kind, target) -> str:
    if kind == "call_function":
        return getattr(target, "__name__", str(target))
    return str(target)


def capture(model: torch.nn.Module, example_inputs: Any) -> fx.GraphModule:
    """Trace ``model`` into a ``torch.fx.GraphModule`` with exact outputs.

    ``example_inputs`` is a tensor or a tuple of tensors.  The model is put in
    eval mode (post-training quantization is an inference-time transform).
    The returned GraphModule shares parameters with ``model``; deep-copy the
    model first if it must stay untouched by later passes.
    """
    if not isinstance(model, torch.nn.Module):
        raise CaptureError(f"capture() needs a torch.nn.Module, got {type(model).__name__}")
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    example_inputs = tuple(example_inputs)
    model.eval()
    tracer = ConcreteTracer(example_inputs)
    name = type(model).__name__
    try:
        with torch.no_grad(), _explicit_attention(model), _autocast_as_float(), \
                _rollback_side_effects(model):
            graph = tracer.trace(model, concrete_args=_optional_args(model, len(example_inputs)))
            _drop_optional_placeholders(graph, len(example_inputs))
    except CaptureError:
        raise
    except Exception as e:
        where = tracer.current_module or "<root>"
        mod = model.get_submodule(tracer.current_module) if tracer.current_module else model
        raise CaptureError(
            f"cannot capture {name}: module '{where}' ({type(mod).__name__}) failed to trace: "
            f"{type(e).__name__}: {e}") from e
    finally:
        tracer.values.clear()
    gm = fx.GraphModule(tracer.root, graph, name)
    gm.meta["capture"] = CaptureInfo(
        input_shapes=[tuple(x.shape) for x in example_inputs if isinstance(x, torch.Tensor)],
        guards=tracer.guards)
    gm.graph.lint()
    return gm
