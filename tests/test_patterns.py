import pytest
import torch

from qhyvit_fx import capture
from qhyvit_fx.models import HYBRID_MODELS, create_model
from qhyvit_fx.passes.cleanup import remove_noops
from qhyvit_fx.patterns.bridges import LOCAL_TO_GLOBAL, find_bridges, tag_bridges
from qhyvit_fx.patterns.kinds import build_kind_graph, count_kinds, quantizable_nodes

FAST = {"mobilevit_xxs", "mobilevitv2_050", "efficientformer_l1", "efficientformerv2_s0"}
# Q-HyViT Table 4
EXPECTED = {"mobilevit": 3, "mobilevitv2": 3, "efficientformer": 1, "efficientformerv2": 2}


def _family(name):
    return name.rsplit("_", 1)[0]


@pytest.mark.parametrize("name", [pytest.param(m, marks=() if m in FAST else pytest.mark.slow)
                                  for m in HYBRID_MODELS])
def test_bridge_count_matches_table4(name):
    s = 256 if name.startswith("mobilevit") else 224
    gm = capture(create_model(name).model, torch.zeros(1, 3, s, s))
    tags = find_bridges(gm)
    assert len(tags) == EXPECTED[_family(name)]
    for t in tags:
        assert t.output in t.layers and set(t.entry) <= set(t.layers)
        assert t.nodes.index(t.layers[0]) < t.nodes.index(t.output)


def test_mobilevit_xxs_bridges_are_table4_operators():
    gm = capture(create_model("mobilevit_xxs").model, torch.zeros(1, 3, 256, 256))
    tags = find_bridges(gm)
    assert [t.modules for t in tags] == [[f"stages.{i}.1.conv_kxk.conv", f"stages.{i}.1.conv_1x1"] for i in (2, 3, 4)]
    for t in tags:
        assert t.direction == LOCAL_TO_GLOBAL
        assert t.pattern == "conv_unfold_transformer"
        # the unfold reshape chain (reshape, transpose, reshape, transpose, reshape)
        kinds = [n.target if n.op == "call_method" else getattr(n.target, "__name__", "") for n in gm.graph.nodes
                 if n.name in t.reshape]
        assert kinds == ["reshape", "transpose", "reshape", "transpose", "reshape"]


def test_efficientformer_bridges_are_table4_operators():
    gm = capture(create_model("efficientformerv2_s0").model, torch.zeros(1, 3, 224, 224))
    tags = find_bridges(gm)
    assert tags[0].modules == ["stages.2.downsample.conv.conv", "stages.2.blocks.0.mlp.fc1.conv"]
    assert tags[1].modules[0] == "stages.3.downsample.conv.conv"
    assert tags[1].modules[1:] == ["stages.3.downsample.attn.proj.conv", "stages.3.blocks.0.mlp.fc1.conv"]
    gm = capture(create_model("efficientformer_l1").model, torch.zeros(1, 3, 224, 224))
    assert find_bridges(gm)[0].modules == ["stages.3.downsample.conv", "stages.3.blocks.0.mlp.fc1"]


def test_quantizable_op_counts_mobilevit_xxs():
    gm = remove_noops(capture(create_model("mobilevit_xxs").model, torch.zeros(1, 3, 256, 256)))
    c = count_kinds(gm)
    assert (c["conv"], c["linear"], c["matmul"], c["softmax"], c["norm"]) == (35, 37, 18, 9, 21)
    assert len(quantizable_nodes(gm)) == 90


def test_quantizable_op_counts_efficientformerv2_s0():
    gm = remove_noops(capture(create_model("efficientformerv2_s0").model, torch.zeros(1, 3, 224, 224)))
    c = count_kinds(gm)
    assert (c["conv"], c["linear"], c["matmul"], c["softmax"]) == (83, 2, 10, 5)


def test_tag_bridges_writes_node_meta():
    gm = tag_bridges(capture(create_model("mobilevit_xxs").model, torch.zeros(1, 3, 256, 256)))
    tagged = {n.target: n.meta["qhyvit_bridge"] for n in gm.graph.nodes if "qhyvit_bridge" in n.meta}
    assert set(tagged) == {f"stages.{i}.1.{m}" for i in (2, 3, 4) for m in ("conv_kxk.conv", "conv_1x1")}
    assert tagged["stages.3.1.conv_1x1"].role == "output" and tagged["stages.3.1.conv_1x1"].id == 1
    assert tagged["stages.3.1.conv_kxk.conv"].role == "entry"


def test_kind_graph_contracts_reshape_chains():
    gm = capture(create_model("mobilevit_xxs").model, torch.zeros(1, 3, 256, 256))
    g = build_kind_graph(gm)
    # no reshape node feeds another reshape node directly
    for u, v in g.edges:
        assert not (g.nodes[u]["kind"] == "reshape" and g.nodes[v]["kind"] == "reshape" and g.out_degree(u) == 1)
