"""Bridge-block matchers (Q-HyViT, Sec. "Bridge Blocks" and Table 4).

A bridge block is where a hybrid network hands its representation between
the convolutional (local) part and the transformer (global) part.  Each
pattern below is a small networkx graph over node *kinds* (see
:mod:`qhyvit_fx.patterns.kinds`) with attribute predicates, matched with
``DiGraphMatcher.subgraph_monomorphisms_iter`` on the contracted kind graph,
plus an optional structural filter.  Patterns are registered by name, like
timm's model registry, so new families add patterns without touching the
matcher.

Matched blocks are written to ``node.meta["qhyvit_bridge"]`` (a ``state.BridgeRole``) of their member
layers and collected in ``quant_state(gm).bridges``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import networkx as nx
import torch.fx as fx
from networkx.algorithms.isomorphism import DiGraphMatcher

from .kinds import QUANTIZABLE, Kind, build_kind_graph
from ..state import BRIDGE, BridgeRole, quant_state

LOCAL_TO_GLOBAL = "local->global"
GLOBAL_TO_LOCAL = "global->local"


@dataclass
class BridgeTag:
    """One bridge block found in a graph (all names are fx node names)."""

    id: int
    pattern: str
    direction: str
    layers: List[str]          # quantizable member layers, in graph order
    entry: List[str]           # layers where the block starts
    output: str                # layer whose output is the bridge output O^bb
    reshape: List[str] = field(default_factory=list)  # layout-change chain inside / after the block
    nodes: List[str] = field(default_factory=list)    # every fx node of the block, in graph order
    modules: List[str] = field(default_factory=list)  # module names of ``layers``

    def to_dict(self) -> Dict:
        return asdict(self)


@dataclass
class BridgePattern:
    name: str
    template: nx.DiGraph                     # nodes carry 'pred': Callable[[dict], bool]
    roles: Dict[str, str]                    # template node -> entry|member|output|reshape|context
    direction: Callable[[nx.DiGraph, Dict[str, str]], str]
    accept: Optional[Callable[[nx.DiGraph, Dict[str, str]], bool]] = None
    description: str = ""
    # finds the output layer when it is not a template node: (graph, mapping) -> graph node or None
    locate_output: Optional[Callable[[nx.DiGraph, Dict[str, str]], Optional[str]]] = None


PATTERNS: Dict[str, BridgePattern] = {}


def register_pattern(p: BridgePattern) -> BridgePattern:
    if p.name in PATTERNS:
        raise ValueError(f"bridge pattern '{p.name}' is already registered")
    PATTERNS[p.name] = p
    return p


# ---- predicates over kind-graph node attributes --------------------------------------------

def _is(kind: Kind, **conds) -> Callable[[dict], bool]:
    def pred(a: dict) -> bool:
        if a.get("kind") != kind.value:
            return False
        for k, test in conds.items():
            if not test(a.get(k)):
                return False
        return True
    return pred


def _k1(k) -> bool:
    return k is not None and all(v == 1 for v in k)


def _kgt1(k) -> bool:
    return k is not None and any(v > 1 for v in k)


def _s1(s) -> bool:
    return s is not None and all(v == 1 for v in s)


def _s2(s) -> bool:
    return s is not None and any(v > 1 for v in s)


def _dense(g) -> bool:
    return g == 1


def _template(nodes: Dict[str, Callable], edges: Sequence[tuple]) -> nx.DiGraph:
    t = nx.DiGraph()
    for n, pred in nodes.items():
        t.add_node(n, pred=pred)
    t.add_edges_from(edges)
    return t


def _reaches_attention_before_downsample(g: nx.DiGraph, start: str) -> bool:
    """Whether attention (a matmul of two activations; a softmax alone may be a conv network's
    branch weighting, as SKNet's selective kernels) is reachable from ``start`` without passing
    another dense strided conv (i.e. the stage that starts here has global blocks)."""
    dense_strided = lambda a: a["kind"] == Kind.CONV.value and _s2(a.get("stride")) and a.get("groups") == 1
    return any(_is_attention(g.nodes[w]) for w in _walk(g, start, True, dense_strided, hops=len(g)))


def _has_attention_upstream(g: nx.DiGraph, node: str, hops: int = 6) -> bool:
    frontier, seen = {node}, {node}
    for _ in range(hops):
        nxt = set()
        for v in frontier:
            for u in g.predecessors(v):
                if u in seen:
                    continue
                seen.add(u)
                if g.nodes[u]["kind"] in (Kind.SOFTMAX.value, Kind.MATMUL.value):
                    return True
                nxt.add(u)
        frontier = nxt
    return False


# ---- MobileViT v1/v2: conv_kxk -> conv_1x1 -> unfold (reshape) -> norm -----------------------

register_pattern(BridgePattern(
    name="conv_unfold_transformer",
    description="conv kxk -> conv 1x1 -> reshape (unfold to patches/tokens) -> norm of a transformer",
    template=_template(
        {"kxk": _is(Kind.CONV, kernel=_kgt1, stride=_s1),
         "pw": _is(Kind.CONV, kernel=_k1, stride=_s1),
         "unfold": _is(Kind.RESHAPE),
         "norm": _is(Kind.NORM)},
        [("kxk", "pw"), ("pw", "unfold"), ("unfold", "norm")]),
    roles={"kxk": "entry", "pw": "output", "unfold": "reshape", "norm": "context"},
    direction=lambda g, m: LOCAL_TO_GLOBAL,
))


# ---- EfficientFormer v1/v2: dense strided downsample into a stage with global blocks -------

def _downsample_accept(g: nx.DiGraph, m: Dict[str, str]) -> bool:
    ds = m["down"]
    # the downsample follows a residual block (not a stem fed by the image) ...
    preds = list(g.predecessors(ds))
    if not preds or any(g.nodes[p]["kind"] == Kind.INPUT.value for p in preds):
        return False
    # ... and the stage it opens contains global (attention) blocks
    return _reaches_attention_before_downsample(g, m["fc1"])


def _downsample_direction(g: nx.DiGraph, m: Dict[str, str]) -> str:
    src = m.get("merge", m["down"])
    return GLOBAL_TO_LOCAL if _has_attention_upstream(g, src, hops=8) and any(
        _has_attention_upstream(g, p, hops=6) for p in g.predecessors(src) if p != m["down"]) else LOCAL_TO_GLOBAL


register_pattern(BridgePattern(
    name="downsample_into_global_stage",
    description="dense strided conv (stage downsample) -> conv 1x1 of the first meta block, "
                "in a stage that contains attention blocks",
    template=_template(
        {"down": _is(Kind.CONV, kernel=_kgt1, stride=_s2, groups=_dense),
         "fc1": _is(Kind.CONV, kernel=_k1, stride=_s1)},
        [("down", "fc1")]),
    roles={"down": "entry", "fc1": "output"},
    direction=_downsample_direction,
    accept=_downsample_accept,
))

register_pattern(BridgePattern(
    name="downsample_merge_into_global_stage",
    description="dense strided conv (+ parallel attention downsample) -> add -> conv 1x1 of the first "
                "meta block, in a stage that contains attention blocks",
    template=_template(
        {"down": _is(Kind.CONV, kernel=_kgt1, stride=_s2, groups=_dense),
         "merge": _is(Kind.ELEMENTWISE),
         "fc1": _is(Kind.CONV, kernel=_k1, stride=_s1)},
        [("down", "merge"), ("merge", "fc1")]),
    roles={"down": "entry", "merge": "context", "fc1": "output"},
    direction=_downsample_direction,
    accept=_downsample_accept,
))


register_pattern(BridgePattern(
    name="downsample_flatten_into_global_stage",
    description="dense strided conv (stage downsample) -> flatten to tokens -> norm -> linear of the first "
                "3D meta block (EfficientFormer stages that are global from their first block)",
    template=_template(
        {"down": _is(Kind.CONV, kernel=_kgt1, stride=_s2, groups=_dense),
         "flat": _is(Kind.RESHAPE),
         "norm": _is(Kind.NORM),
         "fc": _is(Kind.LINEAR)},
        [("down", "flat"), ("flat", "norm"), ("norm", "fc")]),
    roles={"down": "entry", "flat": "reshape", "norm": "context", "fc": "output"},
    direction=lambda g, m: LOCAL_TO_GLOBAL,
    accept=lambda g, m: _downsample_accept(g, {"down": m["down"], "fc1": m["fc"]}),
))


# ---- Mobile-Former: the two-way bridge of every block -------------------------------------

def _mobile_former_direction(direction):
    return lambda g, m: direction


register_pattern(BridgePattern(
    name="mobile_to_former",
    description="Mobile -> Former: tokens attend to the feature map (keys = the 4-D features reshaped), "
                "projection into the tokens, then the Former's FFN",
    template=_template(
        {"kfeat": lambda a: a["kind"] == Kind.RESHAPE.value and a.get("in_rank") == 4,
         "mm1": _is(Kind.MATMUL), "sm": _is(Kind.SOFTMAX), "mm2": _is(Kind.MATMUL), "r": _is(Kind.RESHAPE),
         "el": _is(Kind.ELEMENTWISE), "proj": _is(Kind.LINEAR), "add": _is(Kind.ELEMENTWISE), "ln": _is(Kind.NORM),
         "add2": _is(Kind.ELEMENTWISE), "ln2": _is(Kind.NORM), "ffn": _is(Kind.LINEAR)},
        [("kfeat", "mm1"), ("mm1", "sm"), ("sm", "mm2"), ("mm2", "r"), ("r", "el"), ("el", "proj"), ("proj", "add"),
         ("add", "ln"), ("ln", "add2"), ("add2", "ln2"), ("ln2", "ffn")]),
    roles={"kfeat": "reshape", "proj": "entry", "ffn": "output", "mm1": "context", "sm": "context",
           "mm2": "context", "r": "context", "el": "context", "add": "context", "ln": "context", "add2": "context",
           "ln2": "context"},
    direction=_mobile_former_direction(LOCAL_TO_GLOBAL),
))


def _next_conv(g: nx.DiGraph, start: str, depth: int = 4) -> Optional[str]:
    """The first conv reached from ``start`` through adds and layout ops only."""
    frontier = [start]
    for _ in range(depth):
        nxt = []
        for v in frontier:
            for w in g.successors(v):
                a = g.nodes[w]
                if a["kind"] == Kind.CONV.value:
                    return w
                if a["kind"] in (Kind.ELEMENTWISE.value, Kind.RESHAPE.value):
                    nxt.append(w)
        frontier = nxt
    return None


def _reaches_softmax(g: nx.DiGraph, start: str) -> bool:
    return any(g.nodes[v]["kind"] == Kind.SOFTMAX.value for v in nx.descendants(g, start))


def _former_to_mobile_output(g: nx.DiGraph, m: Dict[str, str]) -> Optional[str]:
    conv = _next_conv(g, m["add"])
    # the next block's first conv (its block has a bridge again), not the classifier's
    return conv if conv is not None and _reaches_softmax(g, conv) else None


register_pattern(BridgePattern(
    name="former_to_mobile",
    description="Former -> Mobile: pixels attend to the tokens, the result is added to the feature map and "
                "feeds the next block's first conv",
    template=_template(
        {"proj": _is(Kind.LINEAR), "r1": _is(Kind.RESHAPE), "mm": _is(Kind.MATMUL), "r2": _is(Kind.RESHAPE),
         "add": lambda a: a["kind"] == Kind.ELEMENTWISE.value and a.get("rank") == 4},
        [("proj", "r1"), ("r1", "mm"), ("mm", "r2"), ("r2", "add")]),
    roles={"proj": "entry", "r1": "context", "mm": "context", "r2": "reshape", "add": "context"},
    direction=_mobile_former_direction(GLOBAL_TO_LOCAL),
    locate_output=_former_to_mobile_output,
    accept=lambda g, m: _former_to_mobile_output(g, m) is not None,
))


# ---- any hybrid: where a 4-D feature map becomes tokens for attention, and back -------------
#
# The family patterns above reproduce the paper's Table 4.  Other models (timm has many hybrids the
# paper does not cover) are matched by two generic rules, used only when no family pattern fires.
# Both read layouts off the captured shapes, not names:
#   * local -> global: convs produce an N,C,H,W map, a layout chain merges H and W into one token
#     axis, and the tokens reach an attention product (a matmul of two activations) before any
#     spatial conv.  The convs must belong to a conv region: no attention upstream of them before
#     the previous strided conv or tokens -> map change, and not the patch embedding that reads
#     the image (a pure ViT has no local part, hence no bridge).
#   * global -> local: attention's tokens are laid back out as an N,C,H,W map (H, W split out again,
#     or channels-last permuted to channels-first) and read by convs that reach no attention before
#     the next strided conv or map -> tokens change.
# So every hand-over counts: a model whose every block visits convs and attention (FastViT's
# attention stage, CoaT's conv position encodings) has a bridge each way per block.

@dataclass
class GenericRule:
    name: str
    direction: str
    description: str
    # kind graph -> [{"entry": [layers], "output": [candidate layers], "reshape": [layout chain]}]
    find: Callable[[nx.DiGraph], List[Dict[str, List[str]]]]


GENERIC_RULES: Dict[str, GenericRule] = {}

_LAYERS = tuple(k.value for k in QUANTIZABLE)


def _spatial_to_tokens(a: dict) -> bool:
    """A layout chain whose N,C,H,W input comes out with H and W merged into one axis."""
    i, o = a.get("in_shape"), a.get("shape")
    if a["kind"] != Kind.RESHAPE.value or i is None or o is None or len(i) != 4 or i[2] * i[3] <= 1:
        return False
    return i[2] * i[3] in o and not (i[2] in o and i[3] in o and len(o) == 4)


def _tokens_to_spatial(a: dict) -> bool:
    """A layout chain that lays tokens back out as an N,C,H,W map: one merged spatial axis split
    into H and W, or channels-last N,H,W,C permuted to channels-first."""
    i, o = a.get("in_shape"), a.get("shape")
    if a["kind"] != Kind.RESHAPE.value or i is None or o is None or len(o) != 4 or o[2] * o[3] <= 1:
        return False
    if len(i) == 4 and tuple(i) == (o[0], o[2], o[3], o[1]) and o[1] != o[3]:
        return True
    return o[2] * o[3] in i and not (o[2] in i and o[3] in i)


def _is_attention(a: dict) -> bool:
    # a product of two activations: token attention (softmax or linear).  A softmax alone is not
    # enough: selective-kernel and split attention (SKNet, ResNeSt) weigh conv branches with one
    return a["kind"] == Kind.MATMUL.value


def _spatial_conv(a: dict) -> bool:
    return a["kind"] == Kind.CONV.value and _kgt1(a.get("kernel"))


def _strided_conv(a: dict) -> bool:
    return a["kind"] == Kind.CONV.value and _s2(a.get("stride"))


def _walk(g: nx.DiGraph, start: str, forward: bool, stop: Callable[[dict], bool], hops: int = 12,
          with_depth: bool = False):
    """Nodes reached from ``start`` (not included) within ``hops``, nearest first; a node for which
    ``stop`` holds is yielded but not walked through."""
    seen, frontier = {start}, [start]
    for depth in range(1, hops + 1):
        nxt = []
        for v in frontier:
            for w in (g.successors(v) if forward else g.predecessors(v)):
                if w in seen:
                    continue
                seen.add(w)
                yield (w, depth) if with_depth else w
                if not stop(g.nodes[w]):
                    nxt.append(w)
        frontier = nxt


def _attention_ahead(g: nx.DiGraph, v: str, hops: int) -> bool:
    """Attention is reached from ``v`` before a spatial conv."""
    return any(_is_attention(g.nodes[w]) for w in _walk(g, v, True, _spatial_conv, hops))


def _attention_behind(g: nx.DiGraph, v: str) -> bool:
    """Attention lies upstream of ``v`` inside its region: before the previous strided conv or
    tokens -> map layout change (then v belongs to that attention's global region)."""
    stop = lambda a: _strided_conv(a) or _tokens_to_spatial(a)
    return any(_is_attention(g.nodes[w]) for w in _walk(g, v, False, stop, hops=40))


def _attention_in_region_ahead(g: nx.DiGraph, v: str) -> bool:
    """Attention lies downstream of ``v`` inside its region: before the next strided conv or
    map -> tokens layout change."""
    stop = lambda a: _strided_conv(a) or _spatial_to_tokens(a)
    return any(_is_attention(g.nodes[w]) for w in _walk(g, v, True, stop, hops=40))


def _nearest(g: nx.DiGraph, v: str, forward: bool, want: Callable[[dict], bool]) -> List[str]:
    """The layers satisfying ``want`` closest to ``v`` (fewest hops through non-layer nodes; a
    residual stream reaches further layers too, but those belong to earlier blocks)."""
    stop = lambda a: a["kind"] in _LAYERS or a["kind"] == Kind.INPUT.value
    hits = [(w, d) for w, d in _walk(g, v, forward, stop, hops=8, with_depth=True) if want(g.nodes[w])]
    closest = min((d for _, d in hits), default=None)
    return [w for w, d in hits if d == closest]


def _reads_image(g: nx.DiGraph, v: str) -> bool:
    """The layer reads the graph input through no other layer (a patch embedding; resizing the
    image first, as CrossViT's second branch does, changes nothing)."""
    stop = lambda a: a["kind"] in _LAYERS
    return any(g.nodes[w]["kind"] == Kind.INPUT.value for w in _walk(g, v, False, stop, hops=8))


def _find_feature_map_to_tokens(g: nx.DiGraph) -> List[Dict[str, List[str]]]:
    found = []
    for r, a in g.nodes(data=True):
        if not _spatial_to_tokens(a) or not _attention_ahead(g, r, hops=8):
            continue
        convs = _nearest(g, r, False, lambda b: b["kind"] == Kind.CONV.value)
        convs = [c for c in convs if not _reads_image(g, c)]
        if not convs or any(_attention_behind(g, c) for c in convs):
            continue
        readers = [w for w in _nearest(g, r, True, lambda b: b["kind"] in _LAYERS) if _attention_ahead(g, w, 6)
                   or _is_attention(g.nodes[w])]
        if readers:
            found.append({"entry": convs, "output": readers, "reshape": [r]})
    return found


def _find_tokens_to_feature_map(g: nx.DiGraph) -> List[Dict[str, List[str]]]:
    found = []
    for r, a in g.nodes(data=True):
        if not _tokens_to_spatial(a):
            continue
        convs = _nearest(g, r, True, lambda b: b["kind"] == Kind.CONV.value)
        if not convs or any(_attention_in_region_ahead(g, c) for c in convs):
            continue
        tokens = _nearest(g, r, False, lambda b: b["kind"] in _LAYERS)
        if tokens and any(_attention_behind(g, t) or _is_attention(g.nodes[t]) for t in tokens):
            found.append({"entry": tokens, "output": convs, "reshape": [r]})
    return found


def register_generic_rule(rule: GenericRule) -> GenericRule:
    if rule.name in GENERIC_RULES:
        raise ValueError(f"generic bridge rule '{rule.name}' is already registered")
    GENERIC_RULES[rule.name] = rule
    return rule


register_generic_rule(GenericRule(
    name="feature_map_to_tokens", direction=LOCAL_TO_GLOBAL, find=_find_feature_map_to_tokens,
    description="convs opening a conv region -> layout chain merging H, W into tokens -> the first layer "
                "on the way to attention"))
register_generic_rule(GenericRule(
    name="tokens_to_feature_map", direction=GLOBAL_TO_LOCAL, find=_find_tokens_to_feature_map,
    description="the last token layer of an attention region -> layout chain back to N,C,H,W -> the conv "
                "of a region without attention"))


# ---- matching ------------------------------------------------------------------------------

def _node_match(g_attrs: dict, t_attrs: dict) -> bool:
    return t_attrs["pred"](g_attrs)


def _block_nodes(gm: fx.GraphModule, entries: List[str], output: str) -> List[str]:
    """fx nodes on some path from an entry layer to the output layer."""
    by_name = {n.name: n for n in gm.graph.nodes}
    fwd = set()
    stack = [by_name[e] for e in entries]
    while stack:
        n = stack.pop()
        if n.name in fwd:
            continue
        fwd.add(n.name)
        if n.name != output:
            stack.extend(n.users)
    back = set()
    stack = [by_name[output]]
    while stack:
        n = stack.pop()
        if n.name in back:
            continue
        back.add(n.name)
        if n.name not in entries:
            stack.extend(n.all_input_nodes)
    keep = fwd & back
    return [n.name for n in gm.graph.nodes if n.name in keep]


def find_bridges(gm: fx.GraphModule, patterns: Optional[Sequence[str]] = None,
                 kind_graph: Optional[nx.DiGraph] = None) -> List[BridgeTag]:
    """Match every registered bridge pattern; return tags in graph order.

    The generic rules (:data:`GENERIC_RULES`) run where no family pattern matched (and no
    ``patterns`` were named).  A layer belongs to at most one bridge: overlapping matches keep the
    first (in graph order of their output layer).
    """
    g = kind_graph if kind_graph is not None else build_kind_graph(gm)
    order = {n.name: i for i, n in enumerate(gm.graph.nodes)}
    candidates = []          # (pattern name, direction, entries, output, reshape kind-graph nodes)
    for pname in (patterns or list(PATTERNS)):
        p = PATTERNS[pname]
        matcher = DiGraphMatcher(g, p.template, node_match=_node_match)
        for mapping in matcher.subgraph_monomorphisms_iter():
            m = {t: v for v, t in mapping.items()}  # template node -> graph node
            if p.accept is not None and not p.accept(g, m):
                continue
            output = p.locate_output(g, m) if p.locate_output is not None else m[_role(p, "output")[0]]
            entries = [m[t] for t in _role(p, "entry")]
            if p.name.startswith("downsample_merge"):
                # every layer merged into the add is an entry of the block (EfficientFormerV2's
                # conv downsample and attention downsample both feed the first meta block)
                merge = m["merge"]
                entries = sorted({u for u in g.predecessors(merge) if g.nodes[u]["kind"] == Kind.CONV.value}
                                 | set(entries), key=order.get)
            candidates.append((p.name, p.direction(g, m), entries, output, [m[t] for t in _role(p, "reshape")]))
    tags = _resolve(gm, g, candidates, order)
    if not tags and patterns is None:
        candidates = []
        for rule in GENERIC_RULES.values():
            for f in rule.find(g):
                entries = sorted(set(f["entry"]), key=order.get)
                output = min(f["output"], key=order.get)
                candidates.append((rule.name, rule.direction, entries, output, f["reshape"]))
        tags = _resolve(gm, g, candidates, order)
    return tags


def _resolve(gm: fx.GraphModule, g: nx.DiGraph, candidates: list, order: Dict[str, int]) -> List[BridgeTag]:
    """Bridge tags from candidate matches, in graph order of their outputs; a layer joins one bridge."""
    tags: List[BridgeTag] = []
    used = set()
    for name, direction, entries, output, reshape_nodes in sorted(candidates, key=lambda c: order[c[3]]):
        if output in used:
            continue
        nodes = _block_nodes(gm, entries, output)
        layer_set = [n for n in nodes if g.has_node(n) and g.nodes[n]["kind"] in _LAYERS]
        if any(l in used for l in layer_set):
            continue
        reshape = []
        for r in reshape_nodes:
            reshape.extend(g.nodes[r]["members"])
        used.update(layer_set)
        tags.append(BridgeTag(
            id=len(tags), pattern=name, direction=direction, layers=layer_set,
            entry=entries, output=output, reshape=reshape, nodes=nodes,
            modules=[g.nodes[l].get("module", l) for l in layer_set]))
    return tags


def _role(p: BridgePattern, role: str) -> List[str]:
    return [t for t, r in p.roles.items() if r == role]


def tag_bridges(gm: fx.GraphModule, patterns: Optional[Sequence[str]] = None) -> fx.GraphModule:
    """Pass: write bridge tags into ``node.meta`` and ``gm.meta`` (graph unchanged)."""
    tags = find_bridges(gm, patterns)
    by_name = {n.name: n for n in gm.graph.nodes}
    for n in gm.graph.nodes:
        n.meta.pop(BRIDGE, None)
    for t in tags:
        for l in t.layers:
            role = "output" if l == t.output else ("entry" if l in t.entry else "member")
            by_name[l].meta[BRIDGE] = BridgeRole(t.id, role, t.direction, t.output)
    quant_state(gm).bridges = tags
    return gm
