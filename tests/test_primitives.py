"""Quantization primitives: qparams per granularity, error bounds, GPTQ int32 packing."""
import math

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
    pack_int32,
    quantization_error,
    quantize,
    unpack_int32,
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


# --- packing -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("dim", [0, 1])
def test_pack_unpack_round_trip(bits, dim):
    n = 32 * 3  # a multiple of 32 / gcd(32, bits) for every width
    shape = (n, 5) if dim == 0 else (5, n)
    codes = torch.randint(0, 2**bits, shape, generator=torch.Generator().manual_seed(bits))
    packed = pack_int32(codes, bits, dim=dim)
    assert packed.dtype == torch.int32
    assert packed.shape[dim] == n * bits // 32
    assert torch.equal(unpack_int32(packed, bits, dim=dim).long(), codes)


@settings(max_examples=30, deadline=None)
@given(bits=st.sampled_from([2, 3, 4, 8]), words=st.integers(1, 6), cols=st.integers(1, 4), seed=st.integers(0, 999))
def test_pack_unpack_property(bits, words, cols, seed):
    n = words * 32 // math.gcd(32, bits)
    codes = torch.randint(0, 2**bits, (n, cols), generator=torch.Generator().manual_seed(seed))
    assert torch.equal(unpack_int32(pack_int32(codes, bits), bits).long(), codes)


def _signed(word: int) -> int:
    return word - 2**32 if word >= 2**31 else word


def test_gptq_4bit_word_by_hand():
    # GPTQ packs value j of a word at shift 4 * j: codes 1..8 read as the hex digits 0x87654321.
    codes = torch.tensor([[1], [2], [3], [4], [5], [6], [7], [8]])
    assert pack_int32(codes, 4).item() == _signed(0x87654321)
    assert pack_int32(torch.tensor([[3]] * 16), 2).item() == _signed(0xFFFFFFFF)
    assert pack_int32(torch.tensor([[0x12], [0x34], [0xAB], [0xCD]]), 8).item() == _signed(0xCDAB3412)


def test_gptq_3bit_words_by_hand():
    # IST-DASLab quant.py packs 32 3-bit values into 3 words; values 10 and 21 straddle words.
    v = [(7 * j + 3) % 8 for j in range(32)]
    w0 = sum(v[j] << (3 * j) for j in range(10)) | ((v[10] & 0b11) << 30)
    w1 = (v[10] >> 2) | sum(v[j] << (3 * (j - 11) + 1) for j in range(11, 21)) | ((v[21] & 1) << 31)
    w2 = (v[21] >> 1) | sum(v[j] << (3 * (j - 22) + 2) for j in range(22, 32))
    packed = pack_int32(torch.tensor(v).unsqueeze(1), 3)
    assert packed[:, 0].tolist() == [_signed(w0), _signed(w1), _signed(w2)]


def test_packing_refuses_bad_input():
    with pytest.raises(ValueError, match="whole int32 words"):
        pack_int32(torch.zeros(7, 2, dtype=torch.long), 4)
    with pytest.raises(ValueError, match="codes must lie"):
        pack_int32(torch.full((8, 1), 16), 4)
    with pytest.raises(ValueError, match="2, 3, 4 or 8"):
        pack_int32(torch.zeros(32, 1, dtype=torch.long), 5)
