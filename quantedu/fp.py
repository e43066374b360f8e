"""Small floating-point formats from their bit layouts: FP8 (E4M3FN, E5M2), FP4 (E2M1), E8M0 and UE4M3 codecs,
and FP8 weight scaling (per tensor, per channel, per 2-D block).

A code is the format's bit pattern in a ``uint8`` (FP4 codes use the low 4 bits). ``encode`` rounds a float32
to the nearest code, ties to the even code (IEEE / OCP round-to-nearest-even); ``decode`` is a table lookup of
the value of every code, computed from the layout (:class:`FloatLayout`, shared with notebook 01's format table).

What happens outside the range is part of each format. ``tests/test_fp.py`` checks all 256 codes and adversarial
round trips against ``torch``'s casts (``x.to(torch.float8_e4m3fn / float8_e5m2)``, c10's
``fp8e4m3fn_from_fp32_value`` / ``fp8e5m2_from_fp32_value``):

* E4M3FN (max 448): ``|x| >= max + half a step`` with ``saturate=False`` is NaN (``0x7F``/``0xFF``, OCP's
  non-saturating mode); NaN stays NaN, sign kept; torch 2.13's cast *saturates* (+-inf -> +-448).
* E5M2 (max 57344): overflow is +-inf (IEEE); NaN stays NaN; torch's cast does not saturate either (-> +-inf).
* E2M1 (max 6): no inf, no NaN: always clamps to +-6; a NaN or inf input is refused (ValueError). torch has no
  E2M1 dtype.

``saturate=True`` clamps to +-max first (NaN stays NaN), which is what quantizers do (llm-compressor clamps to
``finfo.max`` before casting). torch's E4M3FN cast saturates on its own since c10 gained "finite overflow or
inf -> saturate to max finite value" (torch 2.13 here), its E5M2 cast does not: :data:`TORCH_SATURATES` records
that, and :func:`torch_cast_codes` reproduces the casts.

E8M0 (the MX block scale) is a bare biased exponent: ``2**(e - 127)``, ``e = 0..254``, ``0xFF`` is NaN; no sign,
no zero. UE4M3 is E4M3FN's positive half, the NVFP4 block scale in llama.cpp's GGUF files; ggml rounds it its own
way (:func:`ue4m3_encode` ``rounding="ggml"``, bit-exact with ``ggml_fp32_to_ue4m3``).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from .checks import require_finite
from .number_formats import FLOAT_LAYOUTS, FloatLayout

E4M3, E5M2, E2M1 = (FLOAT_LAYOUTS[n][0] for n in ("fp8_e4m3", "fp8_e5m2", "fp4_e2m1"))  # notebook 01's layouts
FP8 = {"e4m3": E4M3, "e5m2": E5M2}
TORCH_SATURATES = {"e4m3": True, "e5m2": False}  # measured: torch 2.13's x.to(float8_*) on CPU
ROUNDINGS = ("nearest_even", "up")


def _np32(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().to(torch.float32).numpy()
    return np.asarray(x, dtype=np.float32)


def _like(out: np.ndarray, x):
    """Return ``out`` as a torch tensor when the input was one (codes stay uint8)."""
    return torch.from_numpy(np.ascontiguousarray(out)) if isinstance(x, torch.Tensor) else out


def code_values(layout: FloatLayout) -> np.ndarray:
    """The value of every code ``0 .. 2**bits - 1`` of ``layout`` (float64; NaN / inf where the layout has them)."""
    c = np.arange(2**layout.bits)
    m_bits, top = layout.man_bits, 2**layout.exp_bits - 1
    sign = np.where(c >> (layout.bits - 1), -1.0, 1.0)
    e = (c >> m_bits) & top
    m = c & (2**m_bits - 1)
    mag = np.where(e == 0, m * 2.0 ** (1 - layout.bias - m_bits), (2**m_bits + m) * 2.0 ** (e - layout.bias - m_bits))
    if layout.special == "ieee":
        mag = np.where(e == top, np.where(m == 0, np.inf, np.nan), mag)
    elif layout.special == "fn":
        mag = np.where((e == top) & (m == 2**m_bits - 1), np.nan, mag)
    return sign * mag


def _positive_values(layout: FloatLayout) -> np.ndarray:
    """Finite non-negative values in code order: code ``k`` is ``values[k]`` (sign-magnitude is monotonic)."""
    v = code_values(layout)[: 2 ** (layout.bits - 1)]
    return v[np.isfinite(v)]


def encode(x, layout: FloatLayout, saturate: bool = False, rounding: str = "nearest_even"):
    """Codes (``uint8``) of ``x`` in ``layout``; numpy in -> numpy out, torch in -> torch out.

    ``rounding``: ``"nearest_even"`` (IEEE, OCP, torch's casts) or ``"up"`` (the smallest magnitude >= ``|x|``,
    used for scales that must not clip). Out of range and NaN follow the table in the module docstring.
    """
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
    xf = _np32(x)
    if layout.special == "none":
        require_finite(xf, f"E{layout.exp_bits}M{layout.man_bits} input (the format has no NaN or inf)")
    vals = _positive_values(layout)
    with np.errstate(invalid="ignore"):  # signalling NaNs among arbitrary bit patterns
        a = np.abs(xf.astype(np.float64))  # exact: comparisons below are against exact midpoints
    if rounding == "up":
        k = np.searchsorted(vals, a, side="left")
    else:
        mids = (vals[:-1] + vals[1:]) / 2
        k = np.searchsorted(mids, a, side="left")  # code k when mids[k-1] < a <= mids[k]
        tie = (k < len(mids)) & (a == mids[np.minimum(k, len(mids) - 1)]) & (k % 2 == 1)
        k = k + tie  # a tie goes to the even code (its last mantissa bit is 0)
    n_pos = 2 ** (layout.bits - 1)
    top = vals[-1]
    step = top - vals[-2]
    with np.errstate(invalid="ignore"):
        over = (a >= top + step / 2) if rounding == "nearest_even" else (a > top)
    if layout.special == "none" or saturate:
        k = np.where(over, len(vals) - 1, k)
    elif layout.special == "ieee":
        k = np.where(over, len(vals), k)  # the code after the largest finite one is inf
    else:  # "fn": no inf, overflow is NaN
        k = np.where(over, n_pos - 1, k)
    k = np.where(np.isnan(a), n_pos - 1, k)  # the all-ones pattern is NaN in both FP8 formats
    codes = (np.minimum(k, n_pos - 1) | (np.signbit(xf).astype(np.int64) << (layout.bits - 1))).astype(np.uint8)
    return _like(codes, x)


def torch_cast_codes(x, fmt: str = "e4m3"):
    """The codes ``torch``'s ``x.to(torch.float8_<fmt>)`` gives, computed here (see :data:`TORCH_SATURATES`)."""
    return encode(x, _fp8(fmt), saturate=TORCH_SATURATES[fmt])


def decode(codes, layout: FloatLayout):
    """Float32 values of ``codes`` (any integer array); numpy in -> numpy out, torch in -> torch out."""
    c = codes.cpu().numpy() if isinstance(codes, torch.Tensor) else np.asarray(codes)
    if not np.issubdtype(c.dtype, np.integer):
        raise TypeError(f"decode needs integer codes (uint8 bit patterns), got {c.dtype}; did you mean encode?")
    if c.size and (c.min() < 0 or c.max() >= 2**layout.bits):
        raise ValueError(f"codes of a {layout.bits}-bit format lie in 0..{2**layout.bits - 1}; "
                         f"got {c.min()}..{c.max()}")
    out = code_values(layout).astype(np.float32)[c.astype(np.int64)]
    return _like(out, codes)


# --- E8M0: the MX block scale, a power of two ------------------------------------------------------------


def e8m0_decode(e):
    """``2**(e - 127)`` as float32 (0 -> 2**-127, a float32 subnormal); ``0xFF`` -> NaN."""
    c = (e.cpu().numpy() if isinstance(e, torch.Tensor) else np.asarray(e)).astype(np.int64)
    with np.errstate(over="ignore"):  # code 255 (NaN) would be 2**128
        out = np.where(c == 255, np.float32(np.nan), np.ldexp(np.float32(1), c - 127)).astype(np.float32)
    return _like(out, e)


def e8m0_encode(v, rounding: str = "floor"):
    """The E8M0 code of a positive scale ``v``: ``floor`` (largest power of two <= v), ``ceil`` or ``nearest``
    (in log2; halves up). Exponents are clamped to the codes 0..254; NaN, inf and ``v <= 0`` give ``0xFF``."""
    vf = _np32(v).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        mant, exp = np.frexp(vf)  # exact: v = mant * 2**exp, mant in [0.5, 1)
        floor = exp - 1
        if rounding == "floor":
            p = floor
        elif rounding == "ceil":
            p = floor + (mant != 0.5)
        elif rounding == "nearest":
            p = floor + (2 * mant >= math.sqrt(2))
        else:
            raise ValueError(f"rounding must be 'floor', 'ceil' or 'nearest', got {rounding!r}")
        bad = ~np.isfinite(vf) | (vf <= 0)
    codes = np.where(bad, 255, np.clip(p + 127, 0, 254)).astype(np.uint8)
    return _like(codes, v)


# --- UE4M3: NVFP4's block scale --------------------------------------------------------------------------


def ue4m3_encode(x, rounding: str = "nearest_even"):
    """Codes ``0..0x7E`` of positive scales as unsigned E4M3 (E4M3FN's positive half, saturating at 448).

    ``"nearest_even"`` (torch / OCP / NVIDIA's recipe), ``"up"`` (the smallest scale >= x: no element of the
    block clips), or ``"ggml"``: ``ggml_fp32_to_ue4m3`` bit for bit (:func:`quantedu.gguf.fp4.fp32_to_ue4m3`:
    halves round up, whatever rounds to 256 or more becomes 448, subnormals stop at code 7). ``x <= 0`` or NaN gives 0.
    """
    xf = _np32(x)
    if rounding == "ggml":
        from .gguf.fp4 import fp32_to_ue4m3
        return _like(fp32_to_ue4m3(xf), x)
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {ROUNDINGS + ('ggml',)}, got {rounding!r}")
    pos = np.where(xf > 0, xf, np.float32(0))  # NaN and negatives -> 0
    return _like(encode(pos, E4M3, saturate=True, rounding=rounding), x)


def ue4m3_decode(codes, ggml: bool = False):
    """Float32 values of UE4M3 codes ``0..0x7F``; ``0x7F`` is NaN (E4M3FN), or 0 with ``ggml=True``
    (``ggml_ue4m3_to_fp32``, which also halves the value for its doubled E2M1 table: not done here)."""
    c = codes.cpu().numpy() if isinstance(codes, torch.Tensor) else np.asarray(codes)
    if c.size and (c.min() < 0 or c.max() > 0x7F):
        raise ValueError(f"UE4M3 codes lie in 0..127 (no sign bit); got {c.min()}..{c.max()}")
    out = decode(c.astype(np.uint8), E4M3)
    return _like(np.where(c == 0x7F, np.float32(0), out) if ggml else out, codes)


# --- FP8 weight scaling ----------------------------------------------------------------------------------


def _fp8(fmt: str) -> FloatLayout:
    if fmt not in FP8:
        raise ValueError(f"fmt must be one of {list(FP8)}, got {fmt!r}")
    return FP8[fmt]


def _divisors_near(n: int, want: int, k: int = 3) -> list[int]:
    divs = [d for d in range(1, n + 1) if n % d == 0]
    return sorted(sorted(divs, key=lambda d: (abs(d - want), -d))[:k])


def check_block(shape, block) -> tuple[int, int]:
    """``block = (rows, cols)`` must divide the 2-D ``shape``; otherwise a ValueError naming both and suggesting
    block sizes that do (no padding: a padded block would be scaled by values that are not in the weight)."""
    br, bc = (int(b) for b in block)
    rows, cols = (int(s) for s in shape)
    bad = [(n, b, what) for n, b, what in ((rows, br, "rows"), (cols, bc, "columns")) if b < 1 or n % b]
    if bad:
        why = "; ".join(f"{n} {what} are not a multiple of {b} (divisors near {b}: "
                        f"{', '.join(map(str, _divisors_near(n, max(b, 1))))})" for n, b, what in bad)
        raise ValueError(f"block {tuple(block)} does not divide the weight shape {tuple(shape)}: {why}. "
                         f"Pick a block whose sides divide the shape, or use per-channel scaling.")
    return br, bc


def _grouped_amax(w: torch.Tensor, granularity) -> torch.Tensor:
    if granularity == "tensor":
        return w.abs().amax().reshape(1, 1)
    if granularity == "channel":
        return w.abs().amax(dim=1, keepdim=True)
    br, bc = check_block(w.shape, granularity)
    r, c = w.shape
    return w.reshape(r // br, br, c // bc, bc).abs().amax(dim=(1, 3))


def _expand(scale: torch.Tensor, shape) -> torch.Tensor:
    r, c = shape
    return scale.repeat_interleave(r // scale.shape[0], 0).repeat_interleave(c // scale.shape[1], 1)


class FP8Weight(NamedTuple):
    """An FP8-quantized weight: ``codes`` uint8 ``(rows, cols)``, float32 ``scale`` (one per group), ``fmt``."""

    codes: torch.Tensor
    scale: torch.Tensor
    fmt: str = "e4m3"

    def dequantize(self) -> torch.Tensor:
        return fp8_dequantize(self.codes, self.scale, self.fmt)


def fp8_quantize(w: torch.Tensor, fmt: str = "e4m3", granularity="channel") -> FP8Weight:
    """FP8 weight quantization: :class:`FP8Weight` ``(codes uint8 (rows, cols), scale float32, fmt)``.

    ``granularity``: ``"tensor"`` (scale ``(1, 1)``), ``"channel"`` (one per output row, ``(rows, 1)``: what
    llm-compressor's FP8_DYNAMIC scheme does for weights) or a block ``(block_rows, block_cols)`` (DeepSeek-V3 uses
    ``(128, 128)``; scale ``(rows / block_rows, cols / block_cols)``). ``scale = amax / max`` so the largest weight
    lands on the format's largest value; ``x / scale`` is encoded with saturation. A group of zeros gets scale 1.
    """
    if w.ndim != 2:
        raise ValueError(f"fp8_quantize takes a 2-D weight (out_features, in_features), got shape {tuple(w.shape)}")
    lay = _fp8(fmt)
    require_finite(w, "fp8_quantize input")
    w = w.detach().float()
    amax = _grouped_amax(w, granularity)
    scale = torch.where(amax > 0, amax / lay.max, torch.ones_like(amax))
    return FP8Weight(encode(w / _expand(scale, w.shape), lay, saturate=True), scale, fmt)


def fp8_dequantize(codes: torch.Tensor, scale: torch.Tensor, fmt: str = "e4m3") -> torch.Tensor:
    """Inverse of :func:`fp8_quantize`: ``decode(codes) * scale`` (the scale broadcast over its group)."""
    return decode(codes, _fp8(fmt)) * _expand(scale, codes.shape)


def fp8_fake_quantize(w: torch.Tensor, fmt: str = "e4m3", granularity="channel") -> torch.Tensor:
    """``w`` rounded onto the scaled FP8 grid, in ``w``'s dtype: what the model computes with."""
    return fp8_quantize(w, fmt, granularity).dequantize().to(w.dtype)
