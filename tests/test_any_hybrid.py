"""Any timm hybrid: the constructs other families brought (issue "any timm hybrid"), each reduced to
a small module, plus bridge counts on real timm graphs and a fast survey subset."""
import warnings

import onnx
import pytest
import torch
import torch.nn as nn

import qhyvit_fx as q
from qhyvit_fx.capture import capture
from qhyvit_fx.check import check_onnx
from qhyvit_fx.models import create_model
from qhyvit_fx.passes.cleanup import remove_noops
from qhyvit_fx.passes.unshare_modules import unshare_modules
from qhyvit_fx.patterns.bridges import GLOBAL_TO_LOCAL, LOCAL_TO_GLOBAL, find_bridges
from qhyvit_fx.survey import survey_model
from qhyvit_fx.state import quant_state


def _minmax(model, x, path=None):
    pm = q.prepare(model, x[:1], q.QConfig(method="minmax", target="ort"))
    q.calibrate(pm, x)
    cm = q.convert(pm)
    if path:
        q.export_onnx(cm, path)
    return pm, cm


class DeviceBranch(nn.Module):
    """EfficientViT's LiteMLA: a branch on ``x.device.type`` and an autocast region."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        if y.device.type != "meta":
            with torch.autocast(device_type=y.device.type, enabled=False):
                y = y.float() * 2
        return y.flatten(1)


def test_capture_follows_attribute_chains_and_autocast():
    m = DeviceBranch().eval()
    x = torch.randn(2, 3, 8, 8)
    gm = capture(m, x[:1])
    assert torch.equal(gm(x), m(x))
    guards = gm.meta["capture"].guards
    assert ("", "bool", True) in guards          # the device-type comparison was answered concretely
    assert torch.autocast is torch.amp.autocast_mode.autocast    # restored after tracing


class OptionalArgs(nn.Module):
    """timm's ViT blocks: ``forward(x, attn_mask=None, is_causal=False)``."""

    def forward(self, x, attn_mask=None, is_causal=False):
        if attn_mask is not None or is_causal:
            return x * 2
        return x + 1


def test_capture_specialises_optional_arguments_to_their_defaults():
    x = torch.randn(2, 3)
    gm = capture(OptionalArgs(), x[:1])
    assert [n.op for n in gm.graph.nodes] == ["placeholder", "call_function", "output"]
    assert torch.equal(gm(x), x + 1)


class SharedConv(nn.Module):
    """CoaT's shared conv position encoding: one conv module called twice, BN after one call."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.pos = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.bn(self.pos(x))
        x = x + self.pos(x)
        return self.head(x.mean((2, 3)))


def test_shared_module_gets_one_copy_per_call(tmp_path):
    torch.manual_seed(0)
    m = SharedConv().eval()
    m.bn.running_var.uniform_(0.5, 2.0)
    m.bn.weight.data.uniform_(0.5, 1.5)
    x = torch.randn(8, 3, 8, 8)
    gm = unshare_modules(capture(m, x[:1]))
    targets = [n.target for n in gm.graph.nodes if n.op == "call_module"]
    assert targets == ["stem", "pos", "bn", "pos_call1", "head"]
    assert torch.equal(gm(x), m(x))
    pm, cm = _minmax(m, x, str(tmp_path / "m.onnx"))
    assert sorted(quant_state(pm).decisions.layers) == ["head", "pos", "pos_call1", "stem"]
    with torch.no_grad():
        assert (cm(x) - m(x)).abs().max() < 0.05 * m(x).abs().max()
    rep = check_onnx(str(tmp_path / "m.onnx"))
    assert rep.integer_count == len(rep.ops) == 4


class ReadsWeight(nn.Module):
    """EdgeNeXt's positional encoding builds a mask on its projection's weight device/dtype."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Conv2d(3, 8, 1)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        mask = torch.zeros((x.shape[0], 1, 1, 1)).to(self.proj.weight.dtype).to(self.proj.weight.device)
        return self.head((self.proj(x) + mask).mean((2, 3)))


def test_quantized_layer_keeps_its_weight_attribute(tmp_path):
    torch.manual_seed(0)
    m = ReadsWeight().eval()
    x = torch.randn(8, 3, 8, 8)
    _, cm = _minmax(m, x, str(tmp_path / "m.onnx"))
    qconv = cm.get_submodule("proj")
    assert type(qconv).__name__ == "QuantConv2d"
    assert torch.equal(qconv.weight, qconv.dequantized_weight())
    assert qconv.weight.shape == m.proj.weight.shape
    assert (qconv.weight - m.proj.weight).abs().max() <= float(qconv.w_scale.max()) / 2 + 1e-7
    rep = check_onnx(str(tmp_path / "m.onnx"))
    assert rep.integer_count == len(rep.ops) == 2


class ZeroGammaResiduals(nn.Module):
    """RepViT / EfficientViT-M residual convs whose BatchNorm gamma starts at zero: two equal
    all-zero folded weights, which the ONNX exporter deduplicates through an Identity."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a, self.b = nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 1)
        self.bn_a, self.bn_b = nn.BatchNorm2d(8), nn.BatchNorm2d(8)
        nn.init.zeros_(self.bn_a.weight)
        nn.init.zeros_(self.bn_b.weight)
        nn.init.zeros_(self.bn_a.bias)
        nn.init.zeros_(self.bn_b.bias)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.bn_a(self.a(x))
        x = x + self.bn_b(self.b(x))
        return x


def test_equal_zero_weights_stay_integer(tmp_path):
    torch.manual_seed(0)
    path = str(tmp_path / "m.onnx")
    _minmax(ZeroGammaResiduals().eval(), torch.randn(8, 3, 8, 8), path)
    assert not any(n.op_type == "Identity" for n in onnx.load(path).graph.node)
    rep = check_onnx(path)
    assert rep.integer_count == len(rep.ops) == 3


def _bridges(name, img):
    # the meta device: shapes only, the bridge rules read nothing else
    warnings.filterwarnings("ignore")
    create_model(name)             # fused attention off, as every model of this package
    import timm
    with torch.device("meta"):
        model = timm.create_model(name).eval()
    gm = remove_noops(unshare_modules(capture(model, torch.zeros(1, 3, img, img, device="meta"))))
    return find_bridges(gm)


# (model, px, local->global, global->local); RESULTS.md "Any timm hybrid" says why
GENERIC = [
    ("levit_128s", 224, 1, 0),            # conv stem into attention, tokens to the end
    ("fastvit_sa12", 256, 2, 2),          # two attention blocks in the last stage, each with a conv MLP
    ("edgenext_xx_small", 256, 3, 2),     # one SDTA block closes stages 2-4; the last feeds the head
    ("efficientvit_b0", 224, 4, 4),       # LiteMLA blocks alternate with MBConvs in stages 3-4
    ("coat_lite_mini", 224, 4, 0),        # the conv position encoding opens each stage
]


@pytest.mark.parametrize("name,img,l2g,g2l", GENERIC, ids=[g[0] for g in GENERIC])
def test_generic_bridges(name, img, l2g, g2l):
    tags = _bridges(name, img)
    dirs = [t.direction for t in tags]
    assert (dirs.count(LOCAL_TO_GLOBAL), dirs.count(GLOBAL_TO_LOCAL)) == (l2g, g2l)
    assert {t.pattern for t in tags} <= {"feature_map_to_tokens", "tokens_to_feature_map"}
    for t in tags:
        assert t.output in t.layers and set(t.entry) <= set(t.layers)


def test_family_patterns_take_precedence_and_pure_cnns_have_none():
    assert [t.pattern for t in _bridges("mobilevit_xxs", 256)] == ["conv_unfold_transformer"] * 3
    assert _bridges("repvit_m0_9", 224) == []
    assert _bridges("skresnet18", 224) == []              # a softmax over conv branches is not attention
    assert _bridges("vit_tiny_patch16_224", 224) == []     # no local part: the patch embedding reads the image


FAST_SURVEY = ["efficientvit_b0", "edgenext_xx_small", "coat_lite_tiny", "levit_128s", "efficientvit_m0",
               "repvit_m0_9"]


@pytest.mark.parametrize("name", FAST_SURVEY)
def test_survey_fast_subset(name, tmp_path):
    rec = survey_model(name, workdir=str(tmp_path))      # at the model's own input size
    assert rec.error == ""
    assert rec.capture_max_diff <= 1e-4
    assert rec.integer_ops == rec.compute_ops > 0, rec.float_islands
    assert rec.sqnr_db > 15


@pytest.mark.slow
def test_every_attention_bearing_family_runs_end_to_end(tmp_path):
    """The sweep of RESULTS.md "Any timm hybrid" (MinMax W8A8 --target ort): every family timm holds
    whose graph has attention, discovered, not listed.  The only allowed failures are models that
    torch's ONNX exporter cannot write even in FP32."""
    from qhyvit_fx.survey import discover_families
    families = discover_families()
    assert len(families) >= 40
    bad = []
    for f in families:
        rec = survey_model(f["model"], family=f["family"], workdir=str(tmp_path))
        if not rec.ok and "FP32 model either" not in rec.error:
            bad.append((f["model"], rec.error or rec.float_islands[:2]))
    assert bad == []


def test_every_method_runs_on_a_model_without_family_patterns(tmp_path):
    from qhyvit_fx.methods import METHODS
    rec = survey_model("edgenext_xx_small", img=128, workdir=str(tmp_path), methods=sorted(METHODS))
    assert rec.error == ""
    assert rec.methods == {m: "ok" for m in sorted(METHODS) if m != "minmax"}
