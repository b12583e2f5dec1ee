import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qhyvit_fx.quantizer import (QParams, QSpec, candidate_fractions, channel_minmax, fake_quant, params_from_range,
                                 params_from_stats, qrange)

bits = st.integers(2, 8)
floats = st.floats(-1e3, 1e3, allow_nan=False, width=32)
arrays = st.lists(floats, min_size=1, max_size=64)


def _fq(x, qp, axis=None):
    return fake_quant(x, qp.scale, qp.zero_point, qp.spec.qmin, qp.spec.qmax, axis)


@settings(max_examples=200, deadline=None)
@given(arrays, bits, st.booleans())
def test_within_half_a_step_of_clamped_value(vals, b, sym):
    x = torch.tensor(vals)
    spec = QSpec(bits=b, symmetric=sym)
    qp = params_from_range(x.min(), x.max(), spec)
    y = _fq(x, qp)
    s, z = float(qp.scale), int(qp.zero_point)
    lo, hi = (spec.qmin - z) * s, (spec.qmax - z) * s
    err = (y - x.clamp(lo, hi)).abs()
    assert float(err.max()) <= s / 2 * (1 + 1e-5) + 1e-6


@settings(max_examples=200, deadline=None)
@given(arrays, bits)
def test_zero_is_exact_when_asymmetric(vals, b):
    x = torch.tensor(vals + [0.0])
    qp = params_from_range(x.min(), x.max(), QSpec(bits=b, symmetric=False))
    assert qp.zp_overflow == 0
    assert float(_fq(torch.zeros(1), qp)[0]) == 0.0


@settings(max_examples=100, deadline=None)
@given(arrays, bits, st.booleans())
def test_per_channel_equals_per_tensor_on_one_channel(vals, b, sym):
    x = torch.tensor(vals).reshape(1, -1)
    t = params_from_range(x.min(), x.max(), QSpec(bits=b, symmetric=sym))
    lo, hi = channel_minmax(x, 0)
    c = params_from_range(lo, hi, QSpec(bits=b, symmetric=sym, per_channel=True, axis=0))
    assert torch.equal(_fq(x, t), _fq(x, c, axis=0))


@settings(max_examples=100, deadline=None)
@given(arrays, bits, st.booleans())
def test_monotonic(vals, b, sym):
    x = torch.tensor(sorted(vals))
    qp = params_from_range(x.min(), x.max(), QSpec(bits=b, symmetric=sym))
    y = _fq(x, qp)
    assert bool((y[1:] >= y[:-1]).all())


@settings(max_examples=100, deadline=None)
@given(arrays, bits, st.booleans(), st.floats(0.05, 1.5))
def test_matches_torch_kernels_exactly(vals, b, sym, frac):
    x = torch.tensor(vals)
    spec = QSpec(bits=b, symmetric=sym)
    qp = params_from_range(x.min(), x.max(), spec, fraction=frac)
    ref = torch.fake_quantize_per_tensor_affine(x, float(qp.scale), int(qp.zero_point), spec.qmin, spec.qmax)
    assert torch.equal(_fq(x, qp), ref)


def test_matches_torch_per_channel_kernel_any_axis():
    x = torch.randn(3, 5, 7) * 4
    for axis in (0, 1, 2):
        spec = QSpec(bits=6, symmetric=False, per_channel=True, axis=axis)
        lo, hi = channel_minmax(x, axis)
        qp = params_from_range(lo, hi, spec, fraction=0.8)
        ref = torch.fake_quantize_per_channel_affine(x, qp.scale, qp.zero_point, axis, spec.qmin, spec.qmax)
        assert torch.equal(_fq(x, qp, axis), ref)


@pytest.mark.parametrize("b", range(2, 9))
def test_ranges_for_every_bit_width(b):
    assert qrange(b, True) == (-(2 ** (b - 1)), 2 ** (b - 1) - 1)
    assert qrange(b, False) == (0, 2 ** b - 1)
    assert qrange(b, True, narrow=True)[0] == -(2 ** (b - 1)) + 1
    x = torch.linspace(-3, 5, 1000)
    qp = params_from_range(x.min(), x.max(), QSpec(bits=b, symmetric=False))
    assert len(torch.unique(_fq(x, qp))) == 2 ** b


@pytest.mark.parametrize("b", [1, 9, 0, 16])
def test_bits_outside_2_to_8_rejected(b):
    with pytest.raises(ValueError, match="between 2 and 8"):
        QSpec(bits=b)


def test_zero_point_overflow_is_clamped_and_reported():
    # an all-positive channel quantized asymmetrically from its raw range (the paper's Fig. 4 case)
    lo, hi = torch.tensor([0.5, -1.0]), torch.tensor([2.0, 1.0])
    spec = QSpec(bits=8, symmetric=False, per_channel=True, axis=0)
    qp = params_from_stats(lo, hi, spec, zero_point_from_range=True)
    assert qp.zp_overflow == 1
    assert int(qp.zero_point.min()) >= spec.qmin and int(qp.zero_point.max()) <= spec.qmax
    # the default widens the range to include zero: no overflow
    assert params_from_range(lo, hi, spec).zp_overflow == 0


def test_constant_and_zero_range_inputs_give_finite_scales():
    for v in (0.0, 3.0, -2.0):
        x = torch.full((10,), v)
        for sym in (True, False):
            qp = params_from_range(x.min(), x.max(), QSpec(bits=8, symmetric=sym))
            assert torch.isfinite(qp.scale) and float(qp.scale) > 0
            assert torch.isfinite(_fq(x, qp)).all()
            assert float((_fq(x, qp) - x).abs().max()) <= abs(v) / 127 + 1e-6


def test_qparams_json_round_trip():
    qp = params_from_range(torch.tensor([-1.0, -2.0]), torch.tensor([3.0, 1.0]),
                           QSpec(bits=6, symmetric=False, per_channel=True, axis=1))
    back = QParams.from_dict(qp.to_dict())
    assert back.spec == qp.spec and torch.equal(back.scale, qp.scale) and torch.equal(back.zero_point, qp.zero_point)


def test_candidate_grid_is_the_released_one():
    f = candidate_fractions(100, 0.01, 1.2)
    assert len(f) == 101 and math.isclose(float(f[0]), 0.01, rel_tol=1e-6) and math.isclose(float(f[-1]), 1.2, rel_tol=1e-6)
    assert math.isclose(float(f[1] - f[0]), 1.19 / 100, rel_tol=1e-4)


def test_candidate_batch_dimension():
    x = torch.randn(4, 6)
    spec = QSpec(bits=4, symmetric=True, per_channel=True, axis=1)
    lo, hi = channel_minmax(x, 1)
    f = candidate_fractions(10)
    qp = params_from_range(lo, hi, spec, fraction=f[:, None])
    y = fake_quant(x, qp.scale, qp.zero_point, spec.qmin, spec.qmax, axis=1)
    assert y.shape == (11, 4, 6)
    one = params_from_range(lo, hi, spec, fraction=f[3])
    assert torch.equal(y[3], fake_quant(x, one.scale, one.zero_point, spec.qmin, spec.qmax, axis=1))
