import copy

import pytest
import torch
import torch.nn as nn

import qhyvit_fx as q
from qhyvit_fx import capture
from qhyvit_fx.modules import ActObserver, FakeQuantize, QuantConv2d, QuantLinear
from qhyvit_fx.passes.annotate import ANNOTATION
from qhyvit_fx.passes.cleanup import remove_noops
from qhyvit_fx.passes.fold_bn import fold_batchnorm
from qhyvit_fx.state import quant_state


def test_bn_folding_is_exact_and_removes_every_bn(tiny):
    x = torch.randn(4, 3, 32, 32)
    gm = fold_batchnorm(remove_noops(capture(copy.deepcopy(tiny), x[:1])))   # passes edit modules in place
    assert quant_state(gm).changed["fold_batchnorm"] == 6       # stem, dw (2), vit conv_kxk, conv_proj, conv_fusion
    kinds = {type(gm.get_submodule(n.target)) for n in gm.graph.nodes if n.op == "call_module"}
    assert nn.BatchNorm2d not in kinds
    assert not any(n.op == "call_function" and n.target is torch.nn.functional.batch_norm for n in gm.graph.nodes)
    with torch.no_grad():
        assert (gm(x) - tiny(x)).abs().max().item() <= 1e-5


def test_bn_folding_mobilevit_xxs(xxs):
    x = torch.randn(2, 3, 256, 256)
    gm = fold_batchnorm(remove_noops(capture(copy.deepcopy(xxs), x[:1])))
    assert quant_state(gm).changed["fold_batchnorm"] == 32
    with torch.no_grad():
        assert (gm(x) - xxs(x)).abs().max().item() <= 1e-4


def test_cleanup_removes_noops_only(xxs):
    x = torch.randn(1, 3, 256, 256)
    gm = capture(copy.deepcopy(xxs), x)
    before = len(gm.graph.nodes)
    gm = remove_noops(gm)
    mods = [type(gm.get_submodule(n.target)) for n in gm.graph.nodes if n.op == "call_module"]
    assert nn.Identity not in mods and nn.Dropout not in mods
    assert not any(n.target is torch._assert for n in gm.graph.nodes)
    assert len(gm.graph.nodes) < before
    with torch.no_grad():
        assert torch.equal(gm(x), xxs(x))


def test_prepare_annotates_and_observes_every_quantizable_input(xxs):
    pm = q.prepare(xxs, torch.zeros(1, 3, 256, 256), q.QConfig(target="fakequant"))
    anns = [n.meta[ANNOTATION] for n in pm.graph.nodes if ANNOTATION in n.meta]
    assert len(anns) == 90
    assert sum(a.weight is not None for a in anns) == 72
    obs = [n for n in pm.graph.nodes if n.op == "call_module" and isinstance(pm.get_submodule(n.target), ActObserver)]
    assert len(obs) == 108                         # 72 conv/linear inputs + 2 x 18 matmul operands
    # the user's model is untouched (prepare deep-copies before folding BN)
    assert any(isinstance(m, nn.BatchNorm2d) or "BatchNorm" in type(m).__name__ for m in xxs.modules())


def test_first_and_last_layer_policy(tiny, tiny_images):
    pm = q.prepare(tiny, tiny_images[:1], q.QConfig(first_layer="float", last_layer="8bit", w_bits=4, a_bits=4))
    anns = {n.meta[ANNOTATION].layer: n.meta[ANNOTATION] for n in pm.graph.nodes if ANNOTATION in n.meta}
    assert "stem.0" not in anns
    assert anns["head"].weight.bits == 8 and anns["head"].inputs[0].bits == 8
    assert anns["dw.0"].weight.bits == 4


def test_converted_graph_structure(xxs):
    x = torch.randn(2, 3, 256, 256)
    pm = q.prepare(xxs, x[:1], q.QConfig(target="fakequant"))
    q.calibrate(pm, x)
    qm = q.convert(pm)
    mods = [type(m) for m in qm.modules()]
    assert mods.count(QuantConv2d) == 35 and mods.count(QuantLinear) == 37
    fq = [n for n in qm.graph.nodes if n.op == "call_module" and isinstance(qm.get_submodule(n.target), FakeQuantize)]
    assert len(fq) == 108
    assert not any(isinstance(m, ActObserver) for m in qm.modules())
    # every conv/linear input and both operands of every matmul come out of a fake-quantizer
    for n in qm.graph.nodes:
        ann = n.meta.get(ANNOTATION)
        if ann is None:
            continue
        for i in ann.inputs:
            src = n.args[i]
            assert src.op == "call_module" and isinstance(qm.get_submodule(src.target), FakeQuantize)
    # weights are stored as int8 codes inside their range
    for m in qm.modules():
        if isinstance(m, (QuantConv2d, QuantLinear)):
            assert m.weight_int.dtype == torch.int8
            assert int(m.weight_int.min()) >= m.w_spec.qmin and int(m.weight_int.max()) <= m.w_spec.qmax
    with torch.no_grad():
        d = (qm(x) - xxs(x)).abs().max().item()
    assert 0 < d < 5


def test_weight_range_bits_limits_codes(tiny, tiny_images):
    pm = q.prepare(tiny, tiny_images[:1], q.QConfig(weight_range_bits=7))
    q.calibrate(pm, tiny_images)
    qm = q.convert(pm)
    for m in qm.modules():
        if isinstance(m, (QuantConv2d, QuantLinear)):
            assert m.w_spec.bits == 7 and int(m.weight_int.abs().max()) <= 64


def test_functional_same_padding_convs_become_quantizable_modules():
    """timm's Conv2dSame (TF 'same' padding, used by tf_* models) calls conv2d itself: the pass
    turns it into an nn.Conv2d module so it is quantized like any other conv, bit-exactly."""
    import timm
    from qhyvit_fx.passes.annotate import quantized_layers
    from qhyvit_fx.passes.functional_conv import functional_convs_to_modules
    torch.manual_seed(0)
    m = torch.nn.Sequential(timm.layers.Conv2dSame(3, 8, 3, stride=2), torch.nn.ReLU(),
                            timm.layers.Conv2dSame(8, 4, 3, stride=2, groups=4, bias=False)).eval()
    x = torch.randn(2, 3, 15, 15)
    gm = q.capture(m, (x[:1],))
    gm = functional_convs_to_modules(gm)
    mods = [n.target for n in gm.graph.nodes if n.op == "call_module"
            and type(gm.get_submodule(n.target)) is torch.nn.Conv2d]
    assert mods == ["0", "2"]
    assert not [n for n in gm.graph.nodes if n.op == "call_function" and "conv2d" in str(n.target)]
    with torch.no_grad():
        assert torch.equal(gm(x), m(x))
    pm = q.prepare(m, (x[:1],), q.QConfig())
    assert [n.meta["qhyvit_quant"].layer for n in quantized_layers(pm)] == ["0", "2"]
    assert not [n for n in pm.graph.nodes if n.op == "get_attr"]       # weight shape reads became constants
    q.calibrate(pm, x)
    qm = q.convert(pm)
    with torch.no_grad():
        assert (qm(x) - m(x)).abs().max() < 0.05 * m(x).abs().max()


class _Fanout(torch.nn.Module):
    """conv a -> relu read by convs b and c, whose outputs are added, then a 1x1 conv d."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.b = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.c = torch.nn.Conv2d(8, 8, 1)
        self.d = torch.nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = torch.relu(self.a(x))
        return self.d(self.b(y) + self.c(y))


@pytest.mark.parametrize("target,want", [
    # onnxruntime: a's quantizer after the relu is b's and c's input quantizer; b's and c's outputs
    # are read by the float add only; d reads the add
    ("ort", [["a:in0"], ["a:out", "b:in0", "c:in0"], ["b:out"], ["c:out"], ["d:in0"], ["d:out"]]),
    # fake-quant: inputs only, each reader its own (per-channel allowed)
    ("fakequant", [["a:in0"], ["b:in0"], ["c:in0"], ["d:in0"]]),
])
def test_group_quantizers_puts_the_points_on_one_tensor_in_one_group(target, want):
    from qhyvit_fx.modules import ActObserver
    from qhyvit_fx.passes.group_quantizers import quant_groups
    m = _Fanout().eval()
    pm = q.prepare(m, torch.randn(1, 3, 8, 8), q.QConfig(method="minmax", target=target))
    groups = quant_groups(pm)
    assert sorted(sorted(f"{l}:{s}" for l, s in g.members) for g in groups) == sorted(want)
    obs = [n for n in pm.graph.nodes if n.op == "call_module" and isinstance(pm.get_submodule(n.target), ActObserver)]
    assert len(obs) == len(groups)                          # one observer per group
    shared = next(g for g in groups if g.shared) if target == "ort" else None
    if shared is not None:
        assert not shared.spec.per_channel and shared.axis is None
        x = torch.randn(4, 3, 8, 8)
        q.calibrate(pm, x)
        dec = quant_state(pm).decisions
        assert dec.layers["b"].inputs[0].same_as(dec.layers["c"].inputs[0])
        assert dec.layers["a"].output.same_as(dec.layers["b"].inputs[0])


def _specialized(model, x):
    from qhyvit_fx.passes.specialize_shapes import specialize_shapes
    gm = capture(model, x[:1])
    return gm, specialize_shapes(copy.deepcopy(gm), x[:1])


def _shape_reads(gm):
    return [n for n in gm.graph.nodes if (n.op == "call_method" and n.target == "size")
            or (n.op == "call_function" and n.target is getattr and n.args[1] == "shape")]


def test_specialize_shapes_folds_reshape_targets_and_keeps_the_batch_free(tiny):
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    gm, sm = _specialized(tiny, x)
    # the MobileViT block's unfold (3) and fold (3) reshapes and the attention's qkv / output reshapes (2)
    assert quant_state(sm).changed["specialize_shapes"] == 8
    # what still reads a shape is timm's attention-mask helper (it returns no mask), no reshape
    assert len(_shape_reads(gm)) > len(_shape_reads(sm))
    assert all("mask" in str(u.target) for r in _shape_reads(sm) for g in r.users for u in g.users)
    reshapes = [n for n in sm.graph.nodes if n.op == "call_method" and n.target in ("reshape", "view")]
    assert len(reshapes) == 8 and all(not any(isinstance(a, torch.fx.Node) for a in n.args[1:]) for n in reshapes)
    assert all([a == -1 for a in n.args[1:]] == [True] + [False] * (len(n.args) - 2) for n in reshapes)
    for b in (1, 2, 5):
        assert torch.equal(sm(x[:b]), gm(x[:b]))


def test_specialize_shapes_leaves_what_it_cannot_prove():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.p = nn.Parameter(torch.randn(1, 6))

        def forward(self, x):
            b = x.shape[0]
            y = x.reshape(b, -1)                                  # -> (-1, 12)
            m = y.mean(1, keepdim=True).expand_as(y)              # batch kept by the input: -> expand(-1, 12)
            p = self.p.expand(b, 6)                               # size-1 dim broadcast to the batch: kept
            sq = y[:, :6].unsqueeze(0).expand(b, b, 6)            # two dims move with the batch: kept
            return (y + m)[:, :6] + p + sq.sum(0)

    x = torch.randn(4, 3, 2, 2)
    gm, sm = _specialized(M(), x)
    assert quant_state(sm).changed["specialize_shapes"] == 2
    kept = [n for n in sm.graph.nodes if n.op == "call_method" and n.target == "expand"
            and any(isinstance(a, torch.fx.Node) for a in n.args[1:])]
    assert len(kept) == 2
    for b in (1, 3, 4):
        assert torch.equal(sm(x[:b]), gm(x[:b]))


def test_lower_group_norm_matches_group_norm():
    import torch.nn.functional as F
    from qhyvit_fx.passes.lower_group_norm import lower_group_norm

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.w, self.b = nn.Parameter(torch.rand(8) + 0.5), nn.Parameter(torch.randn(8))

        def forward(self, x):
            return F.group_norm(x, 1, self.w, self.b, 1e-5) + F.group_norm(x, 2, self.w, self.b, 1e-5)

    x = torch.randn(3, 8, 5, 5) * 3 + 1
    gm = capture(M(), x[:1])
    want = gm(x)
    lm = lower_group_norm(gm)
    assert quant_state(lm).changed["lower_group_norm"] == 1                 # the two-group norm is not touched
    targets = [n.target for n in lm.graph.nodes if n.op == "call_function"]
    assert targets.count(F.group_norm) == 1 and targets.count(F.layer_norm) == 1
    assert torch.allclose(lm(x), want, atol=1e-5)


def test_decompose_silu_splits_every_silu(tiny, tiny_images):
    from qhyvit_fx.passes.decompose_silu import decompose_silu
    gm = capture(tiny, tiny_images[:1])
    n_silu = sum(n.op == "call_module" and isinstance(gm.get_submodule(n.target), nn.SiLU) for n in gm.graph.nodes)
    want = gm(tiny_images)
    dm = decompose_silu(gm)
    assert n_silu == 2 and quant_state(dm).changed["decompose_silu"] == n_silu       # stem and dw block (the ViT block uses ReLU)
    assert not any(isinstance(m, nn.SiLU) for m in dm.modules())
    assert sum(n.target is torch.sigmoid for n in dm.graph.nodes) == n_silu
    assert torch.allclose(dm(tiny_images), want, atol=1e-6)


def test_fold_scales_folds_layer_scale_into_the_layer():
    from qhyvit_fx.passes.fold_scales import fold_scales

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.conv2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 1)
            self.fc, self.fc2 = nn.Linear(4, 5), nn.Linear(5, 5)
            self.gamma = nn.Parameter(torch.rand(4) + 0.1)

        def forward(self, x):
            y = self.conv(x) * self.gamma.view(1, -1, 1, 1)          # folded
            z = self.conv2(y)
            z = z * torch.sigmoid(z)                                  # an activation product: kept
            t = 0.25 * self.fc(z.mean((2, 3)))                        # folded (scalar, either side)
            u = self.fc2(t)
            return u * self.gamma.view(1, -1, 1, 1).mean() + u        # fc2 has two readers: kept

    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 6)
    gm = capture(M().eval(), x[:1])
    want = gm(x)
    fm = fold_scales(gm)
    assert quant_state(fm).changed["fold_scales"] == 2
    muls = [n for n in fm.graph.nodes if n.op == "call_function" and "mul" in str(n.target)]
    assert len(muls) == 2
    assert torch.allclose(fm(x), want, atol=1e-6)
