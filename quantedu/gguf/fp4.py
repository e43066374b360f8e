"""MXFP4 and NVFP4: GGML's two FP4 block types (4-bit E2M1 values sharing a block scale), from scratch in numpy.

Both store E2M1 codes (1 sign, 2 exponent, 1 mantissa bit: 0, 0.5, 1, 1.5, 2, 3, 4, 6) two per byte, and differ in
the scale (ggml/src/ggml-common.h ``block_mxfp4`` / ``block_nvfp4``, ggml-quants.c ``quantize_row_*_ref``):

* **MXFP4** (OCP microscaling, gpt-oss's experts): 32 values + one E8M0 byte ``e``, a power of two. ggml takes
  ``e = floor(log2f(amax)) - 2 + 127`` ("floor": the block's largest value lands in [4, 8) on the E2M1 scale, so
  values above 6 clip to 6). 17 bytes per 32 weights: 4.25 bits/weight.
* **NVFP4**: 64 values in 4 sub-blocks of 16, each with a UE4M3 scale ``amax / 6`` (an unsigned FP8 E4M3 number,
  rounded ggml's way: :func:`fp32_to_ue4m3`). 36 bytes per 64 weights: 4.5
  bits/weight. NVIDIA's NVFP4 multiplies a per-tensor fp32 scale on top; GGUF stores it, when at all, as a
  separate ``<tensor>.scale`` tensor that llama.cpp multiplies after the matmul (:mod:`quantedu.gguf.fp4_files`).

Each value is then mapped to the nearest of the 16 values ``kvalues[i] * d`` by ``best_index_mxfp4``: the error
``fabsf(kvalues[i]*d - x)`` is a float32 subtraction and the *first* index with the smallest error wins, so an
exact midpoint goes to the smaller magnitude (1.75 -> 1.5, 3.5 -> 3), not to the even code as OCP's
round-to-nearest-even (and llm-compressor) do. ggml's table ``kvalues_mxfp4`` holds the E2M1 values doubled
(0, 1, 2, 3, 4, 6, 8, 12) and its scale decoders halve the scale to compensate; we compute the same products.

Quirks reproduced because bytes must equal ggml's: an E8M0 exponent below 0 wraps around the ``uint8_t`` cast
(a block whose largest value is below 2**-125 gets ``e`` = 255 ... 232, whose huge scale rounds every value to 0),
and ggml's E8M0 decoder reads 0xFF as 2**127, not NaN. ggml ignores an importance matrix for both types.
"""
from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as T

from .base import BlockQuant
from .layouts import BlockLayout, Field, packed
from .numerics import F32

QK_MXFP4, QK_NVFP4, QK_NVFP4_SUB = 32, 64, 16
KVALUES = np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], dtype=np.int8)  # 2 * E2M1(code)
_KV = KVALUES.astype(F32)

LAYOUTS = {
    T.MXFP4: BlockLayout(T.MXFP4, QK_MXFP4, (Field("e", "u1", 1, "E8M0 exponent: scale 2**(e-127)"),
                                             packed("qs", QK_MXFP4, 4, "E2M1 codes, x[j] | x[j+16] << 4"))),
    T.NVFP4: BlockLayout(T.NVFP4, QK_NVFP4, (Field("d", "u1", QK_NVFP4 // QK_NVFP4_SUB, "UE4M3 scale per 16"),
                                             packed("qs", QK_NVFP4, 4, "E2M1 codes, per 16: x[j] | x[j+8] << 4"))),
}


def best_index(x: np.ndarray, d: np.ndarray) -> np.ndarray:
    """``best_index_mxfp4(x, d)`` for ``x`` ``(n, k)`` and one ``d`` per row: E2M1 codes ``(n, k)`` (uint8)."""
    with np.errstate(over="ignore", invalid="ignore"):
        err = np.abs(_KV[None, None, :] * d[:, None, None] - x[:, :, None])  # float32, like fabsf(kv*e - x)
    return np.argmin(err, axis=-1).astype(np.uint8)  # argmin keeps the first of equal errors, as `<` does


def _pack(codes: np.ndarray, half: int) -> np.ndarray:
    """``(n, 2*half)`` codes -> ``(n, half)`` bytes: element ``j`` in the low nibble, ``j + half`` in the high."""
    return codes[:, :half] | (codes[:, half:] << 4)


def _unpack(qs: np.ndarray) -> np.ndarray:
    return np.concatenate([qs & 0xF, qs >> 4], axis=1)


def e8m0_half(e: np.ndarray) -> np.ndarray:
    """``ggml_e8m0_to_fp32_half``: ``2**(e - 128)`` for every byte, 0xFF included (ggml has no NaN here)."""
    return np.ldexp(F32(1), e.astype(np.int64) - 128).astype(F32)


def fp32_to_ue4m3(x: np.ndarray) -> np.ndarray:
    """``ggml_fp32_to_ue4m3`` (ggml-impl.h) bit for bit: codes 0..0x7E of positive scales.

    Unlike torch / OCP round-to-nearest-even it rounds mantissa halves *up* (adds the first dropped bit), returns
    0x7E (448) for everything that rounds to 256 or more (x >= 248: E4M3's exponent 15, 256..448, is treated as
    overflow), and caps subnormals at code 7 (``[7.5, 8) * 2**-9`` gives ``7 * 2**-9``, not 2**-6). ``x <= 0`` or
    NaN gives 0.
    """
    v = np.asarray(x, dtype=F32)
    v = np.minimum(np.where(v > 0, v, F32(0)), F32(448))  # if (!(x > 0)) return 0; if (x > 448) x = 448
    bits = v.view(np.uint32).astype(np.int64)
    exp = ((bits >> 23) & 0xFF) - 127 + 7
    man = ((bits >> 20) & 7) + ((bits >> 19) & 1)
    sub = np.minimum((v * F32(512) + F32(0.5)).astype(np.int64), 7)  # (int)(x * 512.0f + 0.5f), at most 7
    exp_n = np.where(man > 7, exp + 1, exp)  # the mantissa carried into the exponent
    normal = np.where(exp_n >= 15, 0x7E, (exp_n << 3) | np.where(man > 7, 0, man))
    out = np.where(v <= 0, 0, np.where(exp <= 0, sub, np.where(exp >= 15, 0x7E, normal)))
    return out.astype(np.uint8)


def ue4m3_to_fp32(d: np.ndarray) -> np.ndarray:
    """The UE4M3 value of every code (``ggml_ue4m3_to_fp32`` without its halving); 0x7F reads as 0, not NaN."""
    d = np.asarray(d).astype(np.int64)
    exp, man = (d >> 3) & 0xF, (d & 7).astype(F32)
    raw = np.where(exp == 0, np.ldexp(man, -9), np.ldexp(F32(1) + man / F32(8), exp - 7)).astype(F32)
    return np.where((d == 0) | (d == 0x7F), F32(0), raw).astype(F32)


def mxfp4_exponent(amax: np.ndarray) -> np.ndarray:
    """``(uint8_t)(floorf(log2f(amax)) - 2 + 127)``, 0 for an all-zero block.

    ``log2f`` is correctly rounded on these inputs, so a float64 log2 rounded to float32 reproduces it: just below a
    power of two ``2**k`` the float32 result *is* ``k`` (the true log2 is closer to k than to the float below),
    so ``e`` is one more than the exact floor. The C cast of a negative float to ``uint8_t`` wraps (x86-64)."""
    pos = amax > 0
    lg = np.log2(np.where(pos, amax, F32(1)).astype(np.float64)).astype(F32)
    return np.where(pos, np.floor(lg).astype(np.int64) - 2 + 127, 0) & 0xFF


class MXFP4(BlockQuant):
    """32 E2M1 values + one E8M0 power-of-two scale (``quantize_row_mxfp4_ref``)."""

    qtype = T.MXFP4  # its layout: LAYOUTS above, registered in quantedu.gguf.LAYOUTS

    @classmethod
    def quantize_blocks(cls, xb, qw=None, row_sigma2=None):
        xb = np.asarray(xb, dtype=F32)
        e = mxfp4_exponent(np.abs(xb).max(axis=1))
        codes = best_index(xb, e8m0_half(e))
        return cls.layout().join(e=e.astype(np.uint8), qs=_pack(codes, QK_MXFP4 // 2))

    @classmethod
    def dequantize_blocks(cls, blocks):
        f = cls.layout().split(blocks)
        return _KV[_unpack(f["qs"])] * e8m0_half(f["e"])


class NVFP4(BlockQuant):
    """4 x (16 E2M1 values + one UE4M3 scale) (``quantize_row_nvfp4_ref``)."""

    qtype = T.NVFP4

    @staticmethod
    def half_scale(d: np.ndarray) -> np.ndarray:
        """``ggml_ue4m3_to_fp32``: the UE4M3 value halved (0x7F reads as 0), for the doubled table."""
        return ue4m3_to_fp32(d) * F32(0.5)

    @classmethod
    def quantize_blocks(cls, xb, qw=None, row_sigma2=None):
        xs = np.asarray(xb, dtype=F32).reshape(-1, QK_NVFP4_SUB)  # sub-blocks, in memory order
        ue = fp32_to_ue4m3(np.abs(xs).max(axis=1) / F32(6))
        codes = best_index(xs, cls.half_scale(ue))
        n = len(xs) // 4
        return cls.layout().join(d=ue.reshape(n, 4), qs=_pack(codes, QK_NVFP4_SUB // 2).reshape(n, -1))

    @classmethod
    def dequantize_blocks(cls, blocks):
        f = cls.layout().split(blocks)
        n = len(blocks)
        codes = _unpack(f["qs"].reshape(-1, QK_NVFP4_SUB // 2))
        return (_KV[codes] * cls.half_scale(f["d"].reshape(-1, 1))).reshape(n, QK_NVFP4)


FP4 = {c.qtype: c for c in (MXFP4, NVFP4)}
