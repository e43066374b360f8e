"""IQ4_NL and IQ4_XS: 4-bit codes that index a fixed *non-linear* grid of 16 int8 values.

The grid ``KVALUES`` (ggml-common.h ``kvalues_iq4nl``) is denser near zero, where most weights of a
trained network live. Both types follow ``quantize_row_iq4_nl_impl`` in ggml/src/ggml-quants.c:

1. per block of 32, start from ``d = max/127`` and try 15 scales ``id = (k - 127)/max``; for each,
   map ``x*id`` to the nearest grid value (``best_index_int8``) and keep the weighted least-squares
   optimum ``d = sum w q x / sum w q^2``. Weights are ``x^2`` or ``qw*sqrt(sigma2 + x^2)`` with an imatrix.
2. IQ4_NL stores that ``d`` in float16 (one scale per 32 weights, 4.5 bits/weight). IQ4_XS groups 8
   blocks into a super-block of 256 and stores 6-bit block scales against one float16 ``d``
   (4.25 bits/weight), then re-maps every weight with its rounded block scale.
"""
from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as T

from .base import BlockQuant, element_major, sub_blocks, super_blocks
from .numerics import F32, GROUP_MAX_EPS, first_absmax, fp16_bits, fp16_from_bits, nearest_int, seqsum

KVALUES = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], dtype=np.int8)
_KV = KVALUES.astype(F32)
NTRY = 7


# number of grid values <= k for integer k in [-128, 128]: the grid is integer, so for a finite v
# "kvalues <= v" equals "kvalues <= floor(v)"; this table replaces a binary search per element.
_COUNT_LE = np.clip(np.searchsorted(KVALUES.astype(np.int64), np.arange(-128, 129), side="right"), 1, 15)


def best_index(v: np.ndarray) -> np.ndarray:
    """``best_index_int8(16, kvalues, v)``: index of the nearest grid value; a tie (in float32
    arithmetic ``v - val[i-1] < val[i] - v``) goes to the upper value."""
    with np.errstate(invalid="ignore"):
        k = np.clip(np.floor(v), -128, 128)
        k = np.nan_to_num(k, nan=128).astype(np.int64) + 128
    mu = _COUNT_LE[k]
    lower = (v - _KV[mu - 1]) < (_KV[mu] - v)
    idx = mu - lower
    idx = np.where(v <= _KV[0], 0, idx)
    return np.where(v >= _KV[15], 15, idx)


def block_scales(xs: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Step 1 for element-major blocks ``(32, G)``: the least-squares scale of every block
    (0 for an all-zero block)."""
    amax, mx = first_absmax(xs)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        d = -mx / F32(KVALUES[0])  # ntry > 0: d = -max/values[0]
        idn = F32(1) / d
        q = _KV[best_index(idn * xs)]
        sumqx = seqsum(w * q * xs)
        sumq2 = seqsum(w * q * q)
        d = np.where(sumq2 > 0, sumqx / sumq2, F32(0)).astype(F32)
        best = d * sumqx
        for itry in range(-NTRY, NTRY + 1):
            idn = F32(itry + int(KVALUES[0])) / mx
            q = _KV[best_index(idn * xs)]
            sumqx = seqsum(w * q * xs)
            sumq2 = seqsum(w * q * q)
            better = (sumq2 > 0) & (sumqx * sumqx > best * sumq2)
            d = np.where(better, sumqx / sumq2, d).astype(F32)
            best = np.where(better, d * sumqx, best).astype(F32)
    return np.where(amax < GROUP_MAX_EPS, F32(0), d).astype(F32)


def _weights(X, qw, size):
    """``x^2`` without an imatrix, else ``qw*sqrtf(sigma2 + x^2)`` with ``sigma2 = 2*mean(x^2)``
    over the super-block of ``size`` weights."""
    if qw is None:
        return X * X
    sigma2 = seqsum(X * X) * (F32(2) / F32(size))
    return element_major(qw) * np.sqrt(sigma2[None, :] + X * X)


def _pack(L: np.ndarray) -> np.ndarray:
    """Block-major ``(n, 32k)`` indices -> bytes ``q[16i + j] = L[32i + j] | L[32i + 16 + j] << 4``."""
    L4 = L.reshape(L.shape[0], -1, 2, 16)
    return (L4[:, :, 0] | (L4[:, :, 1] << 4)).reshape(L.shape[0], -1)


def _unpack(qs: np.ndarray) -> np.ndarray:
    q = qs.astype(np.int64).reshape(qs.shape[0], -1, 1, 16)
    return ((q >> np.array([0, 4]).reshape(1, 1, 2, 1)) & 0xF).reshape(qs.shape[0], -1)


class IQ4_NL(BlockQuant):
    """One float16 scale per 32 weights, 4-bit indices into ``KVALUES``."""

    qtype = T.IQ4_NL

    @classmethod
    def quantize_blocks(cls, xb, qw=None, row_sigma2=None):
        X = element_major(xb)
        d = block_scales(X, _weights(X, qw, 32))
        with np.errstate(divide="ignore"):
            idn = np.where(d != 0, F32(1) / d, F32(0)).astype(F32)
        L = best_index(idn[None, :] * X).T
        return cls.layout().join(d=fp16_bits(d).view("<f2"), qs=_pack(L))

    @classmethod
    def dequantize_blocks(cls, blocks):
        f = cls.layout().split(blocks)
        return fp16_from_bits(f["d"].view(np.uint16)) * _KV[_unpack(f["qs"])]


class IQ4_XS(BlockQuant):
    """Super-blocks of 256: float16 ``d``, 8 six-bit block scales ``ls``; ``x = d*(ls-32)*kvalue``."""

    qtype = T.IQ4_XS

    @classmethod
    def quantize_blocks(cls, xb, qw=None, row_sigma2=None):
        X = element_major(xb)
        nb = X.shape[1]
        scales = block_scales(sub_blocks(X, 32), sub_blocks(_weights(X, qw, 256), 32)).reshape(8, nb)
        _, max_scale = first_absmax(scales)
        d = -max_scale / F32(32)
        with np.errstate(divide="ignore", invalid="ignore"):
            idn = np.where(d != 0, F32(1) / d, F32(0)).astype(F32)
            l = np.clip(nearest_int(idn * scales), -32, 31)
            dl = d * l.astype(F32)
            idl = np.where(dl != 0, F32(1) / dl, F32(0)).astype(F32)
        L = super_blocks(best_index(idl.reshape(1, -1) * sub_blocks(X, 32)), nb).T
        l = (l + 32).T  # (NB, 8)
        scales_l = (l[:, 0::2] & 0xF) | ((l[:, 1::2] & 0xF) << 4)
        scales_h = sum((l[:, ib] >> 4) << (2 * ib) for ib in range(8))
        return cls.layout().join(d=fp16_bits(d).view("<f2"), scales_h=scales_h[:, None], scales_l=scales_l,
                                 qs=_pack(L))

    @classmethod
    def dequantize_blocks(cls, blocks):
        f = cls.layout().split(blocks)
        d = fp16_from_bits(f["d"].view(np.uint16))
        sl = f["scales_l"].astype(np.int64)
        sh = f["scales_h"].astype(np.int64)
        low = np.stack([sl & 0xF, sl >> 4], axis=2).reshape(-1, 8)
        high = (sh >> (2 * np.arange(8))[None, :]) & 3
        dl = np.repeat(d * ((low | (high << 4)) - 32).astype(F32), 32, axis=1)
        return dl * _KV[_unpack(f["qs"])]


IQUANTS = {c.qtype: c for c in (IQ4_NL, IQ4_XS)}
