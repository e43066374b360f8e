"""Quantization primitives: qparams per granularity, error bounds."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from quantedu.primitives import (
    QuantConfig,
    choose_qparams,
    dequantize,
    fake_quantize,
    group_index,
    mse_clip_search,
    quantization_error,
    quantize,
)


def _by_hand_asym(x: torch.Tensor, bits: int):
    """Scale and zero point of one group, written out from the definition."""
    lo, hi = min(x.min().item(), 0.0), max(x.max().item(), 0.0)
    scale = (hi - lo) / (2**bits - 1)
    return scale, round(-lo / scale)


def test_qparams_shapes_for_every_granularity():
    w = torch.randn(6, 200)
    assert choose_qparams(w, QuantConfig(4, granularity="tensor"))[0].shape == (1, 1)
    assert choose_qparams(w, QuantConfig(4, granularity="channel"))[0].shape == (6, 1)
    assert choose_qparams(w, QuantConfig(4, 64))[0].shape == (6, 4)  # 64+64+64+8: ragged last group
    assert choose_qparams(w, QuantConfig(4, 200))[0].shape == (6, 1)
    assert QuantConfig(4, 128).n_groups(576) == 5


@pytest.mark.parametrize("granularity", ["tensor", "channel", "group"])
def test_qparams_equal_hand_computation(granularity):
    torch.manual_seed(0)
    w = torch.randn(3, 200) + 0.3
    cfg = QuantConfig(3, 64, granularity=granularity)
    scale, zero = choose_qparams(w, cfg)
    if granularity == "tensor":
        groups = {(0, 0): w}
    elif granularity == "channel":
        groups = {(r, 0): w[r] for r in range(3)}
    else:  # the ragged last group holds columns 192..199
        groups = {(r, g): w[r, g * 64 : (g + 1) * 64] for r in range(3) for g in range(4)}
    if granularity == "group":
        assert groups[(0, 3)].numel() == 8
    for (r, g), x in groups.items():
        s, z = _by_hand_asym(x, 3)
        assert scale[r, g].item() == pytest.approx(s, rel=1e-6)
        assert zero[r, g].item() == z


def test_symmetric_qparams_and_grid():
    w = torch.tensor([[-1.9, 0.5, 1.0, 2.0]])
    scale, zero = choose_qparams(w, QuantConfig(4, symmetric=True, granularity="channel"))
    assert zero.item() == 8
    assert scale.item() == pytest.approx(2.0 / 7.5)
    q = quantize(w, scale, zero, QuantConfig(4, symmetric=True, granularity="channel"))
    # round(w / s) + 8 with w / s = -7.125, 1.875, 3.75, 7.5; the top code is 15 (7.5 -> 8 is clamped)
    assert q.tolist() == [[1, 10, 12, 15]]


def test_zero_is_exact_and_all_zero_group_is_safe():
    w = torch.zeros(2, 64)
    w[0, :32] = torch.linspace(0.1, 1.0, 32)
    for sym in (False, True):
        out = fake_quantize(w, QuantConfig(4, 32, symmetric=sym))
        assert torch.isfinite(out).all()
        assert (out[w == 0] == 0).all()


weights = st.builds(
    lambda rows, cols, seed, spread: torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))
    * spread,
    st.integers(1, 6), st.integers(1, 90), st.integers(0, 2**31), st.floats(1e-3, 1e3),
)


@settings(max_examples=60, deadline=None)
@given(w=weights, bits=st.integers(2, 8), group=st.integers(1, 100), sym=st.booleans(),
       gran=st.sampled_from(["tensor", "channel", "group"]))
def test_round_to_nearest_error_is_at_most_half_a_step(w, bits, group, sym, gran):
    cfg = QuantConfig(bits, group, symmetric=sym, granularity=gran)
    scale, zero = choose_qparams(w, cfg)
    q = quantize(w, scale, zero, cfg)
    assert q.min() >= 0 and q.max() <= cfg.maxq
    err = (dequantize(q, scale, zero, cfg) - w).abs()
    step = scale[:, group_index(w.shape[1], cfg)].expand_as(w)
    # Both grids cover [min, max] of each group to within half a step (symmetric: the top code is
    # absmax - s/2), so rounding is never off by more than half a step (plus float rounding).
    assert (err <= step * (0.5 + 1e-4) + 1e-6 * w.abs()).all()


@settings(max_examples=40, deadline=None)
@given(w=weights, bits=st.integers(2, 8), group=st.integers(1, 100), sym=st.booleans(),
       gran=st.sampled_from(["tensor", "channel", "group"]))
def test_fast_grouped_path_equals_gather_path(w, bits, group, sym, gran):
    # fake_quantize broadcasts over a padded (rows, groups, group_size) view; passing g_idx takes the
    # quantize/dequantize path that gathers parameters per column. Both must give the same numbers.
    cfg = QuantConfig(bits, group, symmetric=sym, granularity=gran)
    g_idx = group_index(w.shape[1], cfg)
    assert torch.equal(fake_quantize(w, cfg), fake_quantize(w, cfg, g_idx=g_idx))
    scale, zero = choose_qparams(w, cfg)
    err = (dequantize(quantize(w, scale, zero, cfg), scale, zero, cfg) - w) ** 2
    by_group = torch.zeros_like(scale).index_add_(1, g_idx, err) if gran == "group" else None
    if by_group is not None:
        assert torch.allclose(quantization_error(w, cfg), by_group, rtol=1e-5, atol=1e-12)


def test_mse_clip_search_never_worse_than_min_max():
    torch.manual_seed(1)
    w = torch.randn(8, 256)
    w[0, 3] = 12.0  # an outlier: clipping it should pay off in that group
    cfg = QuantConfig(3, 64)
    ratio = mse_clip_search(w, cfg)
    assert ratio.shape == (8, 4) and (ratio <= 1).all() and (ratio >= 0.2 - 1e-6).all()
    assert (quantization_error(w, cfg, ratio) <= quantization_error(w, cfg, 1.0) + 1e-6).all()
    # The outlier's group gains from clipping.
    assert ratio[0, 0] < 1.0
    assert quantization_error(w, cfg, ratio)[0, 0] < quantization_error(w, cfg)[0, 0]


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="bits"):
        QuantConfig(bits=9)
    with pytest.raises(ValueError, match="granularity"):
        QuantConfig(granularity="row")
    with pytest.raises(ValueError, match="2-D"):
        choose_qparams(torch.randn(4), QuantConfig())
