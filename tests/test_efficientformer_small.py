import pytest
import torch

from qhyvit_fx import capture
from qhyvit_fx.models import create_model
from qhyvit_fx.patterns.bridges import find_bridges


def test_efficientformer_l1_64_is_timm_l1_with_a_2x2_bias_table():
    small = create_model("efficientformer_l1_64", num_classes=10).model
    full = create_model("efficientformer_l1", num_classes=10).model
    a, b = small.state_dict(), full.state_dict()
    assert a.keys() == b.keys()
    differ = sorted(k for k in a if a[k].shape != b[k].shape)
    assert differ == ["stages.3.blocks.4.token_mixer.attention_bias_idxs",
                      "stages.3.blocks.4.token_mixer.attention_biases"]
    assert tuple(a[differ[1]].shape) == (8, 4) and tuple(a[differ[0]].shape) == (4, 4)
    assert small.pretrained_cfg["input_size"] == (3, 64, 64)
    x = torch.randn(2, 3, 64, 64)
    gm = capture(small, x[:1])
    with torch.no_grad():
        assert (gm(x) - small(x)).abs().max().item() <= 1e-5
    assert len(find_bridges(gm)) == 1          # the single conv -> attention bridge of Q-HyViT Table 4


def test_efficientformer_l1_64_rejects_pretrained_and_odd_sizes():
    with pytest.raises(Exception, match="no pretrained weights"):
        create_model("efficientformer_l1_64", pretrained=True)
    with pytest.raises(Exception, match="multiple of 32"):
        create_model("efficientformer_l1_64", img_size=70)
