"""QConfig: core fields, method-owned parameters, exact round trip through decisions records."""
import dataclasses
import json

import pytest

import qhyvit_fx as q
from qhyvit_fx.backends import BACKENDS, MODES, get_backend
from qhyvit_fx.config import ConfigError
from qhyvit_fx.methods import METHODS, SearchParams
from qhyvit_fx.methods.qhyvit import QHyViTParams

CORE = {"w_bits", "a_bits", "method", "mode", "target", "kernel", "quantize_ops", "w_granularity", "w_scheme",
        "a_granularity", "a_scheme", "first_layer", "last_layer", "layer_overrides", "quantize_outputs",
        "output_bits", "weight_range_bits", "calib_images", "seed", "device", "progress", "method_params"}


def test_qconfig_holds_only_the_core():
    assert {f.name for f in dataclasses.fields(q.QConfig)} == CORE


@pytest.mark.parametrize("method", sorted(METHODS))
def test_round_trip_is_exact_for_every_method(method):
    cls = METHODS[method].params_class
    changed = {}
    for f in dataclasses.fields(cls):       # every parameter away from its default
        v = getattr(cls(), f.name)
        if isinstance(v, bool):
            changed[f.name] = not v
        elif f.name == "calib_augment":
            changed[f.name] = "flip"
        elif f.name == "grad_source":
            changed[f.name] = "fisher"
        elif f.name in ("beta", "act_channel_beta"):
            changed[f.name] = v + 1.0
        elif isinstance(v, (int, float)):
            changed[f.name] = v + 1
    c = q.QConfig(method=method, mode="full", target="ort", w_bits=6, a_bits=6, quantize_ops=["conv", "linear"],
                  first_layer="8bit", layer_overrides={"head": {"w_bits": 8}}, weight_range_bits=7, seed=3,
                  method_params=changed)
    for k, v in changed.items():
        assert getattr(c.method_params, k) == v
    d = json.loads(json.dumps(c.to_dict()))        # as decisions.json stores it
    assert q.QConfig.from_dict(d) == c
    assert q.QConfig.flat(**c.flat_dict()) == c


def test_baselines_do_not_carry_qhyvit_switches():
    """A Q-HyViT option is a QHyViTParams field: no other method's params has it, and the shared
    search sees it off for them."""
    own = {f.name for f in dataclasses.fields(QHyViTParams)} - {f.name for f in dataclasses.fields(SearchParams)}
    assert {"act_cv", "bridge_objective", "act_channel_migrate", "calib_augment"} <= own
    for name, m in METHODS.items():
        if name == "qhyvit":
            continue
        fields = {f.name for f in dataclasses.fields(m.params_class)}
        assert not fields & own, name
        p = m.params_class()
        if isinstance(p, SearchParams):
            assert not (p.act_cv or p.bridge_objective or p.act_channel_migrate or p.bias_correction)
            assert p.act_channel_beta == p.beta and p.calib_augment == "none"


def test_foreign_and_unknown_parameters_are_errors():
    with pytest.raises(ConfigError, match="method 'easyquant' has no parameters \\['act_cv'\\]"):
        q.QConfig(method="easyquant", method_params={"act_cv": False})
    with pytest.raises(ConfigError, match="no parameters"):
        q.QConfig.flat(method="minmax", rounds=2)
    with pytest.raises(ConfigError, match="method_params is a QHyViTParams"):
        q.QConfig(method="ptq4vit", method_params=QHyViTParams())
    with pytest.raises(ConfigError, match="grad_source='x' is not one of kl, fisher"):
        q.QConfig.flat(method="qhyvit", grad_source="x")


def test_legacy_flat_record_reads_back():
    """decisions.json written before methods owned their parameters stored one flat dict."""
    old = dict(q.QConfig.flat(method="easyquant", rounds=2).to_dict())
    old.pop("method_params")
    old.update(rounds=2, alpha=0.01, act_cv=True, bridge_objective=True, calib_batch=8)   # qhyvit keys too
    c = q.QConfig.from_dict(old)
    assert c.method_params.rounds == 2 and c == q.QConfig.flat(method="easyquant", rounds=2)


def test_backends_and_modes_are_the_configs_choices():
    assert set(BACKENDS) == {"fakequant", "ort", "tensorrt", "openvino"} and set(MODES) == {"partial", "full", "integer"}
    ort = get_backend("ort")
    assert not ort.per_channel_activations and not ort.asymmetric_weights and ort.fused_outputs
    assert ort.can_migrate(MODES["partial"]) and not ort.can_migrate(MODES["integer"])
    assert not get_backend("fakequant").can_migrate(MODES["partial"])
    assert q.QConfig(target="ort").backend is ort
    trt = get_backend("tensorrt")
    assert trt.act_schemes == ("symmetric",) and not trt.fused_outputs and not trt.can_migrate(MODES["partial"])
    with pytest.raises(ConfigError, match="target='openvinoo' is not one of fakequant, openvino, ort, tensorrt"):
        q.QConfig(target="openvinoo")


def test_api_and_cli_share_their_defaults():
    from qhyvit_fx import cli
    from qhyvit_fx.target import detect_kernel
    args = cli.build_parser().parse_args(["quantize"])
    api, from_cli = q.QConfig(), cli._config(args, 8, 8)
    assert (api.target, api.kernel) == (args.target, detect_kernel()) == (from_cli.target, from_cli.kernel)
    assert {k: v for k, v in from_cli.to_dict().items() if k != "progress"} == \
        {k: v for k, v in api.to_dict().items() if k != "progress"}


def test_kernel_limits_weight_codes_only_where_cpu_kernels_read_them():
    assert q.QConfig(kernel="avx2").weight_code_bits == 7                  # ort: u8s8 pairs saturate in int16
    assert q.QConfig(kernel="avx2", target="openvino").weight_code_bits == 7
    assert q.QConfig(kernel="avx2", w_bits=6).weight_code_bits is None
    assert q.QConfig(kernel="avx2", target="tensorrt").weight_code_bits is None
    assert q.QConfig(kernel="avx2", target="fakequant").weight_code_bits is None
    assert q.QConfig(kernel="vnni").weight_code_bits is None
    assert q.QConfig(kernel="vnni", weight_range_bits=5).weight_spec().bits == 5
    assert q.QConfig(kernel="avx2").weight_spec().bits == 7
    c = q.QConfig(kernel="avx2")
    assert q.QConfig.from_dict(c.to_dict()) == c and c.to_dict()["kernel"] == "avx2"
    with pytest.raises(ConfigError, match="kernel='sse' is not one of"):
        q.QConfig(kernel="sse")
