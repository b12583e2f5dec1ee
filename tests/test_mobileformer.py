import math

import pytest
import timm
import torch

import qhyvit_fx  # noqa: F401  (registers mobileformer_* with timm)
from qhyvit_fx import capture
from qhyvit_fx.models import MOBILEFORMER_MODELS, create_model
from qhyvit_fx.models.mobileformer import PAPER_FLOPS_M, PAPER_PARAMS_M
from qhyvit_fx.patterns.bridges import GLOBAL_TO_LOCAL, LOCAL_TO_GLOBAL, find_bridges
from qhyvit_fx.patterns.kinds import Kind, classify

SMALL = ("mobileformer_26m", "mobileformer_52m", "mobileformer_96m")


def _macs(gm):
    total = 0
    for n in gm.graph.nodes:
        k = classify(gm, n)
        out = n.meta.get("tensor_meta")
        if k == Kind.CONV:
            c = gm.get_submodule(n.target)
            total += math.prod(out.shape) * c.in_channels // c.groups * c.kernel_size[0] * c.kernel_size[1]
        elif k == Kind.LINEAR:
            total += math.prod(out.shape) * gm.get_submodule(n.target).in_features
        elif k == Kind.MATMUL:
            total += math.prod(out.shape) * n.args[0].meta["tensor_meta"].shape[-1]
    return total


@pytest.mark.parametrize("name", [pytest.param(m, marks=() if m == "mobileformer_26m" else pytest.mark.slow)
                                  for m in MOBILEFORMER_MODELS])
def test_builds_with_paper_size_captures_exactly_and_has_bridges(name):
    size = name.split("_")[1]
    model = timm.create_model(name).eval()
    params = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(params / PAPER_PARAMS_M[size] - 1) < 0.05          # paper: 3.2 ... 14.0 M
    gm = capture(model, torch.zeros(1, 3, 224, 224))
    # multiply-adds of convs, linears and matmuls: within 12 % of the paper's FLOPs (which also count
    # the dynamic-ReLU products and other elementwise work not included here)
    assert abs(_macs(gm) / 1e6 / PAPER_FLOPS_M[size] - 1) < 0.12
    for b in (1, 4):
        x = torch.randn(b, 3, 224, 224, generator=torch.Generator().manual_seed(b))
        with torch.no_grad():
            assert (gm(x) - model(x)).abs().max().item() <= 1e-5
    tags = find_bridges(gm)
    blocks = sum(1 for n, _ in model.features.named_children() if hasattr(model.features[int(n)], "local_global"))
    # Table 4: a Mobile->Former bridge in every block with a Former, and a Former->Mobile bridge into
    # every next block: 15 for the smallest (9-block) models, 21 for the 12-block ones
    assert len(tags) == 2 * blocks - 1 == (15 if name in SMALL else 21)
    assert sum(t.direction == LOCAL_TO_GLOBAL for t in tags) == blocks


def test_mobileformer_26m_bridges_are_table4_operators():
    gm = capture(timm.create_model("mobileformer_26m").eval(), torch.zeros(1, 3, 64, 64))
    tags = find_bridges(gm)
    l2g = sorted((t.modules[0], t.modules[-1]) for t in tags if t.direction == LOCAL_TO_GLOBAL)
    g2l = sorted((t.modules[0], t.modules[-1]) for t in tags if t.direction == GLOBAL_TO_LOCAL)
    assert l2g == [(f"features.{i}.local_global.proj", f"features.{i}.global_block.ffn.0") for i in range(1, 9)]
    assert g2l == [(f"features.{i}.global_local.proj", f"features.{i + 1}.conv1.0") for i in range(1, 8)]


def test_registered_with_timm_and_loadable_through_create_model(tmp_path):
    assert timm.is_model("mobileformer_508m")
    lm = create_model("mobileformer_26m", num_classes=10)
    torch.save(lm.model.state_dict(), tmp_path / "mf.pth")
    again = create_model("mobileformer_26m", weights=str(tmp_path / "mf.pth"))
    assert again.model.get_classifier().out_features == 10
    with pytest.raises(Exception, match="pass --weights"):
        create_model("mobileformer_26m", pretrained=True)
