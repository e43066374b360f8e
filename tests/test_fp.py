"""FP8 / FP4 codecs (quantedu.fp) equal torch's float8 casts bit for bit; FP8 scaling; MXFP4 / NVFP4 quantizers
(quantedu.microscaling) equal ggml's GGUF blocks up to the documented tie rule; the scale-rounding choice measured."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from quantedu import fp, gguf
from quantedu import microscaling as ms
from quantedu.checks import NonFiniteError
from quantedu.number_formats import representable_values

TORCH_FP8 = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}


def _adversarial_floats(fmt: str) -> torch.Tensor:
    """Every FP8 value, every midpoint between neighbours and the floats just beside it, specials, overflow edges,
    float32 subnormals, and 300k random bit patterns / log-uniform magnitudes."""
    vals = torch.arange(256, dtype=torch.uint8).view(TORCH_FP8[fmt]).float()
    vals = vals[~vals.isnan()]
    s = torch.sort(vals.unique()).values.double()
    mids = ((s[1:] + s[:-1]) / 2).float()
    up, down = torch.nextafter(mids, torch.tensor(np.inf)), torch.nextafter(mids, torch.tensor(-np.inf))
    special = torch.tensor([np.inf, -np.inf, np.nan, -np.nan, 0.0, -0.0, 1e-45, -1e-45, 3.4e38, 448, 464, 465,
                            479.9, 480, 57344, 61439, 61440, 65536, 1e-10])
    rng = np.random.default_rng(7)
    bits = torch.from_numpy(rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32).view(np.float32))
    logu = torch.from_numpy((rng.standard_normal(100_000) * 10.0 ** rng.integers(-12, 6, 100_000)).astype(np.float32))
    return torch.cat([vals, -vals, mids, -mids, up, down, special, bits, logu])


# ---------------------------------------------------------------- FP8 codecs against torch
@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
def test_decode_all_256_codes_equals_torch(fmt):
    codes = torch.arange(256, dtype=torch.uint8)
    ref = codes.view(TORCH_FP8[fmt]).float()
    ours = fp.decode(codes, fp.FP8[fmt])
    assert torch.equal(ours.isnan(), ref.isnan())
    ok = ~ref.isnan()
    assert torch.equal(ours[ok], ref[ok]) and torch.equal(ours[ok].signbit(), ref[ok].signbit())


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
def test_encode_equals_torch_cast_on_adversarial_floats(fmt):
    x = _adversarial_floats(fmt)
    ref = x.to(TORCH_FP8[fmt]).view(torch.uint8)
    assert torch.equal(fp.torch_cast_codes(x, fmt), ref)
    fi = torch.finfo(TORCH_FP8[fmt])
    assert torch.equal(fp.encode(x, fp.FP8[fmt], saturate=True), x.clamp(fi.min, fi.max).to(TORCH_FP8[fmt])
                       .view(torch.uint8))
    # a round trip of every FP8 value is the identity
    vals = x[:256]
    assert torch.equal(fp.decode(fp.encode(vals, fp.FP8[fmt]), fp.FP8[fmt]), vals)


def test_saturation_and_nan_rules_are_as_documented():
    x = torch.tensor([448.0, 463.9, 464.0, 500.0, np.inf, -np.inf, np.nan, -1e9])
    # what torch 2.13 does (TORCH_SATURATES): E4M3FN saturates, E5M2 overflows to inf
    assert x.to(torch.float8_e4m3fn).float()[:6].tolist() == [448, 448, 448, 448, 448, -448]
    assert fp.TORCH_SATURATES == {"e4m3": True, "e5m2": False}
    assert torch.tensor([65536.0, -1e9]).to(torch.float8_e5m2).float().tolist() == [np.inf, -np.inf]
    # OCP's non-saturating E4M3FN: half a step above 448 and beyond is NaN (0x7F / 0xFF), below it rounds to 448
    codes = fp.encode(x, fp.E4M3, saturate=False)
    assert codes.tolist() == [0x7E, 0x7E, 0x7F, 0x7F, 0x7F, 0xFF, 0x7F, 0xFF]
    assert fp.encode(torch.tensor([70000.0, -np.inf]), fp.E5M2).tolist() == [0x7C, 0xFC]  # +-inf
    assert fp.encode(torch.tensor([70000.0, -np.inf]), fp.E5M2, saturate=True).tolist() == [0x7B, 0xFB]


# ---------------------------------------------------------------- E2M1, E8M0, UE4M3
def test_e2m1_table_is_notebook_01s_grid():
    vals = fp.decode(np.arange(16), fp.E2M1)
    assert vals[:8].tolist() == [0, 0.5, 1, 1.5, 2, 3, 4, 6] and (vals[8:] == -vals[:8]).all()
    assert sorted(set(np.abs(vals).tolist())) == representable_values("fp4_e2m1").abs().unique().tolist()


def test_e2m1_rounds_to_nearest_even_and_clamps():
    mids = np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 7.0, 1e30], np.float32)
    got = fp.decode(fp.encode(np.concatenate([mids, -mids]), fp.E2M1), fp.E2M1)
    expected = [0, 1, 1, 2, 2, 4, 4, 6, 6]  # ties go to the even code: 0.75 -> 1 (code 2), 1.75 -> 2 (code 4)
    assert got.tolist() == expected + [-v for v in expected]


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_e2m1_refuses_non_finite(bad):
    with pytest.raises(NonFiniteError, match="no NaN or inf"):
        fp.encode(np.array([1.0, bad], np.float32), fp.E2M1)


def test_e8m0():
    e = np.arange(256)
    vals = fp.e8m0_decode(e)
    assert np.isnan(vals[255]) and np.array_equal(vals[:255], np.ldexp(np.float32(1), e[:255] - 127))
    v = np.array([1.0, 1.5, 1.4, 1.42, 2.0**-127, 2.0**-140, 2.0**127, 3e38, 0, -1, np.nan], np.float32)
    assert fp.e8m0_encode(v, "floor").tolist() == [127, 127, 127, 127, 0, 0, 254, 254, 255, 255, 255]
    assert fp.e8m0_encode(v[:4], "ceil").tolist() == [127, 128, 128, 128]
    assert fp.e8m0_encode(v[:4], "nearest").tolist() == [127, 128, 127, 128]  # sqrt(2) = 1.4142 splits them


def test_ue4m3_roundings():
    x = torch.from_numpy(np.random.default_rng(3).random(50_000).astype(np.float32) * 2.0 ** torch.randint(
        -12, 9, (50_000,)).numpy())
    near = fp.ue4m3_encode(x)
    assert torch.equal(near, x.clamp(max=448).to(torch.float8_e4m3fn).view(torch.uint8))  # torch's RNE cast
    up = fp.ue4m3_decode(fp.ue4m3_encode(x, "up"))
    below = fp.ue4m3_decode((fp.ue4m3_encode(x, "up").long() - 1).clamp(min=0))
    inside = x <= 448
    assert (up[inside] >= x[inside]).all() and (below[inside] < x[inside]).all()  # the smallest code >= x
    assert torch.equal(fp.ue4m3_encode(x, "ggml"), torch.from_numpy(gguf.fp4.fp32_to_ue4m3(x.numpy())))
    assert fp.ue4m3_decode(np.array([0x7F]), ggml=True)[0] == 0 and np.isnan(fp.ue4m3_decode(np.array([0x7F]))[0])


# ---------------------------------------------------------------- FP8 weight scaling
@pytest.mark.parametrize("granularity,scale_shape", [("tensor", (1, 1)), ("channel", (64, 1)), ((32, 64), (2, 3))])
@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
def test_fp8_scaling(granularity, scale_shape, fmt):
    w = torch.randn(64, 192) * torch.logspace(-3, 0, 192)
    q = fp.fp8_quantize(w, fmt, granularity)
    assert q.scale.shape == scale_shape and q.codes.dtype == torch.uint8
    full = q.scale.repeat_interleave(64 // scale_shape[0], 0).repeat_interleave(192 // scale_shape[1], 1)
    assert torch.equal(q.codes, (w / full).to(TORCH_FP8[fmt]).view(torch.uint8))  # = torch's cast of w / scale
    err = (q.dequantize() - w).abs()
    lay = fp.FP8[fmt]
    # relative resolution: half a step of the format at each value, or half the smallest subnormal step
    assert (err <= torch.maximum(w.abs() * lay.eps / 2, full * lay.smallest_subnormal / 2) * (1 + 1e-6)).all()
    assert torch.equal(fp.fp8_fake_quantize(w, fmt, granularity), q.dequantize())


def test_fp8_block_must_divide_the_shape():
    with pytest.raises(ValueError, match=r"\(576, 1536\).*576 rows are not a multiple of 128.*96, 144"):
        fp.fp8_quantize(torch.zeros(576, 1536), "e4m3", (128, 128))
    assert fp.fp8_quantize(torch.ones(576, 1536), "e4m3", (64, 128)).scale.shape == (9, 12)


# ---------------------------------------------------------------- MXFP4 / NVFP4 in torch
@pytest.fixture(scope="module")
def course_weight():
    from helpers import offline_gguf

    from quantedu.exercises.inputs import course_weight
    offline_gguf()
    return course_weight("blk.3.ffn_down.weight", 192)


def _ggml_values(w, qtype):
    return torch.from_numpy(gguf.dequantize(gguf.quantize(w.numpy(), qtype), qtype))


@pytest.mark.parametrize("cfg,qtype", [(ms.MXFP4, "MXFP4"),
                                       (ms.FP4Config("nvfp4", scale_rounding="ggml", global_scale=False), "NVFP4")])
def test_fp4_equals_ggml_but_for_exact_ties(course_weight, cfg, qtype):
    """Same scales as ggml; the only differences are E2M1 midpoints, which ggml rounds toward zero and we (OCP,
    llm-compressor) to even. The course model's weights come from a Q4_1 grid, so exact midpoints exist."""
    q = ms.quantize_fp4(course_weight, cfg)
    ours, theirs = q.dequantize(), _ggml_values(course_weight, qtype)
    scaled = course_weight / ms.group_scales(q.scale_codes, q.global_scale, cfg).repeat_interleave(cfg.group_size, 1)
    differ = ours != theirs
    assert differ.any()
    assert torch.isin(scaled[differ].abs(), torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0])).all()
    assert (ours[differ].abs() > theirs[differ].abs()).all()  # ggml took the smaller magnitude
    rnd = torch.randn(64, 256) * 0.02  # no exact ties among random floats
    assert torch.equal(ms.fake_quantize(rnd, cfg), _ggml_values(rnd, qtype))


def test_scale_rounding_effect_on_a_real_weight(course_weight):
    df = ms.scale_rounding_effect({"blk.3.ffn_down": course_weight}).set_index(["format", "scale_rounding",
                                                                                "global_scale"])
    mx = df.loc["MXFP4"]
    assert mx.loc["ceil", "clipped_share"].item() == 0 < mx.loc["round", "clipped_share"].item() \
        < mx.loc["floor", "clipped_share"].item()
    nv = df.loc["NVFP4"]
    assert nv.loc[("up", True), "clipped_share"] == 0 < nv.loc[("nearest_even", True), "clipped_share"]
    # NVFP4's 16-value groups with 3-bit-mantissa scales beat MXFP4's 32-value power-of-two groups
    assert nv["rel_sq_error"].max() < mx["rel_sq_error"].min()
    assert (df["rel_sq_error"] < 0.05).all() and (df["scale_changed_share"] <= 1).all()


def test_nvfp4_global_scale_matches_the_tensor():
    w = torch.randn(32, 64) * 0.01
    q = ms.quantize_fp4(w, ms.NVFP4)
    assert q.global_scale.item() == pytest.approx(448 * 6 / w.abs().max().item(), rel=1e-6)
    s = fp.ue4m3_decode(q.scale_codes)
    assert s.max() == 448  # the group holding the tensor's amax lands on E4M3's largest value
    assert torch.equal(ms.quantize_fp4(torch.zeros(4, 32), ms.NVFP4).dequantize(), torch.zeros(4, 32))


def test_fp4_config_errors():
    with pytest.raises(ValueError, match="scale_rounding must be one of"):
        ms.FP4Config("mxfp4", scale_rounding="nearest_even")
    with pytest.raises(ValueError, match="fmt must be one of"):
        ms.FP4Config("int4")
    with pytest.raises(ValueError, match="groups of 32 must divide the 48 columns"):
        ms.quantize_fp4(torch.zeros(4, 48), ms.MXFP4)
    with pytest.raises(NonFiniteError):
        ms.quantize_fp4(torch.tensor([[float("nan")] * 32]), ms.MXFP4)
    assert (ms.MXFP4.bits_per_weight, ms.NVFP4.bits_per_weight) == (4.25, 4.5)
