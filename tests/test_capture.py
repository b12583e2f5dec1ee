import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from qhyvit_fx import capture
from qhyvit_fx.capture import CaptureError
from qhyvit_fx.models import HYBRID_MODELS, create_model
from qhyvit_fx.patterns.kinds import Kind, classify

FAST = {"mobilevit_xxs", "mobilevitv2_050", "efficientformer_l1", "efficientformerv2_s0"}
PARAMS = [pytest.param(m, marks=() if m in FAST else pytest.mark.slow) for m in HYBRID_MODELS]


def _size(name):
    return 256 if name.startswith("mobilevit") else 224


@pytest.mark.parametrize("name", PARAMS)
def test_capture_equals_eager_at_batch_1_and_4(name):
    model = create_model(name).model
    s = _size(name)
    gm = capture(model, torch.randn(1, 3, s, s))
    for b in (1, 4):
        x = torch.randn(b, 3, s, s, generator=torch.Generator().manual_seed(b))
        with torch.no_grad():
            assert (gm(x) - model(x)).abs().max().item() <= 1e-5
    # attention is explicit: matmul -> softmax -> matmul, no fused SDPA node
    targets = {n.target for n in gm.graph.nodes}
    assert F.scaled_dot_product_attention not in targets
    kinds = [classify(gm, n) for n in gm.graph.nodes]
    assert Kind.SOFTMAX in kinds


def test_mobilevit_branch_is_resolved_and_recorded():
    model = create_model("mobilevit_xxs").model
    gm = capture(model, torch.randn(1, 3, 256, 256))
    info = gm.meta["capture"]
    # two shape checks per MobileViT block (new_h != H, new_w != W), three blocks, all False at 256 px
    bools = [g for g in info.guards if g[1] == "bool"]
    assert len(bools) == 6 and all(v is False for _, _, v in bools)
    assert all(m.startswith("stages.") for m, _, _ in bools)
    assert info.input_shapes == [(1, 3, 256, 256)]


def test_interpolating_branch_taken_at_other_size():
    # 288 px: the last stage is 9x9, not a multiple of the 2x2 patch -> the interpolate branch is captured
    model = create_model("mobilevit_xxs").model
    x = torch.randn(2, 3, 288, 288)
    gm = capture(model, x[:1])
    assert any(g[2] is True for g in gm.meta["capture"].guards if g[1] == "bool")
    with torch.no_grad():
        assert (gm(x) - model(x)).abs().max().item() <= 1e-5


def test_efficientformer_can_be_captured_twice_and_still_runs_eagerly():
    model = create_model("efficientformer_l1").model
    x = torch.randn(1, 3, 224, 224)
    a = capture(model, x)
    b = capture(model, x)
    with torch.no_grad():
        ref = model(x)
        assert (a(x) - ref).abs().max().item() <= 1e-5
        assert (b(x) - ref).abs().max().item() <= 1e-5
    # no proxy left behind in the attention-bias caches
    for m in model.modules():
        cache = getattr(m, "attention_bias_cache", None)
        if cache:
            assert all(isinstance(v, torch.Tensor) for v in cache.values())


def test_leaf_modules_stay_call_module():
    model = create_model("mobilevit_xxs").model
    gm = capture(model, torch.randn(1, 3, 256, 256))
    mods = {type(gm.get_submodule(n.target)) for n in gm.graph.nodes if n.op == "call_module"}
    assert nn.Conv2d in mods and nn.Linear in mods and nn.LayerNorm in mods and nn.SiLU in mods
    names = {n.target for n in gm.graph.nodes if n.op == "call_module"}
    assert "stages.2.1.conv_1x1" in names and "stages.2.1.conv_kxk.conv" in names


class _DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = _Inner()

    def forward(self, x):
        return self.inner(x)


class _Inner(nn.Module):
    def forward(self, x):
        if x.sum() > 0:          # depends on values, not shapes
            return x * 2
        return x


def test_data_dependent_control_flow_names_the_module():
    with pytest.raises(CaptureError) as e:
        capture(_DataDependent(), torch.randn(1, 3))
    msg = str(e.value)
    assert "inner" in msg and "data-dependent" in msg


class _Sdpa(nn.Module):
    def forward(self, q):
        return F.scaled_dot_product_attention(q, q, q)


def test_fused_attention_is_decomposed():
    q = torch.randn(2, 4, 8, 16)
    gm = capture(_Sdpa(), q)
    assert F.scaled_dot_product_attention not in {n.target for n in gm.graph.nodes}
    assert (gm(q) - F.scaled_dot_product_attention(q, q, q)).abs().max() < 1e-5


def test_capture_rejects_non_modules():
    with pytest.raises(CaptureError, match="nn.Module"):
        capture(lambda x: x, torch.randn(1))
