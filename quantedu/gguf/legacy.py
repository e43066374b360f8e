"""Legacy GGML block formats: one float16 scale (and min) per block of 32 weights.

Follows ggml/src/ggml-quants.c: ``quantize_row_q{4_0,4_1,5_0,5_1,8_0}_ref`` (round-to-nearest from the
block's absmax or min/max) and, when an importance matrix is given, ``quantize_row_q{4_0,4_1,5_0,5_1}_impl``
(weights ``qw * sqrt(sigma2 + x^2)`` with ``sigma2`` the row's mean square, then the same scale searches
as the K-quants: ``make_qx_quants`` for the symmetric types, ``make_qkx3_quants`` for the ones with a min).
Q8_0 has no imatrix path: ggml ignores the importance matrix for it.
"""
from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as T

from .base import BlockQuant, element_major
from .numerics import F32, f32, first_absmax, fp16_bits, fp16_from_bits, roundf
from .search import make_qkx, make_qx_quants


def _weights(X, qw, row_sigma2):
    """``weight[j] = qw[j] * sqrtf(sigma2 + x[j]*x[j])`` (element-major)."""
    return element_major(qw) * np.sqrt(row_sigma2[None, :] + X * X)


def _nibbles(L: np.ndarray) -> np.ndarray:
    """Block-major codes ``(n, 32)`` -> ``qs[j] = L[j] | L[j+16] << 4``."""
    L = L.astype(np.uint8, copy=False)
    return L[:, :16] | (L[:, 16:] << 4)


def _high_bits(L: np.ndarray) -> np.ndarray:
    """5th bit of each of the 32 codes -> uint32 ``qh`` (bit j = code j), as 4 little-endian bytes."""
    return np.packbits(((L >> 4) & 1).astype(np.uint8), axis=1, bitorder="little")


def _d_times(blocks_d, codes):
    return codes.astype(F32) * blocks_d


class Q8_0(BlockQuant):
    """``x = d * q``, ``q`` int8, ``d = absmax/127`` (quantize_row_q8_0_ref)."""

    qtype = T.Q8_0

    @classmethod
    def quantize_blocks(cls, xb, qw=None, row_sigma2=None):
        xb = f32(xb)
        d = np.abs(xb).max(axis=1) / F32(127)
        with np.errstate(divide="ignore"):
            idn = np.where(d != 0, F32(1) / d, F32(0)).astype(F32)
        q = roundf(xb * idn[:, None]).astype(np.int8)
        return cls.layout().join(d=fp16_bits(d).view("<f2"), qs=q)

    @classmethod
    def dequantize_blocks(cls, blocks):
        f = cls.layout().split(blocks)
        return f["qs"].astype(F32) * fp16_from_bits(f["d"].view(np.uint16))


class Q4_0(BlockQuant):
    """``x = d * (q - 8)``, ``d = max/-8`` where ``max`` is the signed value of largest magnitude."""

    qtype = T.Q4_0
    uses_row_sigma2 = True
    nmax = 8

    @classmethod
    def _ref_codes(cls, xb):
        _, mx = first_absmax(xb.T)
        d = mx / F32(-cls.nmax)
        with np.errstate(divide="ignore"):
            idn = np.where(d != 0, F32(1) / d, F32(0)).astype(F32)
        # (int8_t)(x*id + 8.5f), then MIN(2*nmax-1, .); the sum lies in [0, 2*nmax+1)
        v = xb * idn[:, None]
        v += F32(cls.nmax + 0.5)
        return d, np.minimum(2 * cls.nmax - 1, v.astype(np.uint8))

    @classmethod
    def codes(cls, xb, qw, row_sigma2):
        if qw is None:
            return cls._ref_codes(f32(xb))
        X = element_major(xb)
        d, L = make_qx_quants(X, cls.nmax, _weights(X, qw, row_sigma2))
        return d, L.T

    @classmethod
    def quantize_blocks(cls, xb, qw=None, row_sigma2=None):
        d, L = cls.codes(xb, qw, row_sigma2)
        return cls.layout().join(d=fp16_bits(d).view("<f2"), qs=_nibbles(L))

    @classmethod
    def dequantize_blocks(cls, blocks):
        f = cls.layout().split(blocks)
        qs = f["qs"].astype(np.int64)
        q = np.concatenate([qs & 0xF, qs >> 4], axis=1) - 8
        return _d_times(fp16_from_bits(f["d"].view(np.uint16)), q)


class Q5_0(Q4_0):
    """``x = d * (q - 16)`` with 5-bit codes; the 5th bits live in ``qh``."""

    qtype = T.Q5_0
    nmax = 16

    @classmethod
    def quantize_blocks(cls, xb, qw=None, row_sigma2=None):
        d, L = cls.codes(xb, qw, row_sigma2)
        return cls.layout().join(d=fp16_bits(d).view("<f2"), qh=_high_bits(L), qs=_nibbles(L & 0xF))

    @classmethod
    def dequantize_blocks(cls, blocks):
        f = cls.layout().split(blocks)
        qs = f["qs"].astype(np.int64)
        hi = np.unpackbits(f["qh"], axis=1, bitorder="little").astype(np.int64)
        q = (np.concatenate([qs & 0xF, qs >> 4], axis=1) | (hi << 4)) - 16
        return _d_times(fp16_from_bits(f["d"].view(np.uint16)), q)


class Q4_1(BlockQuant):
    """``x = d * q + m`` with ``m = min``, ``d = (max - min)/15`` (quantize_row_q4_1_ref)."""

    qtype = T.Q4_1
    uses_row_sigma2 = True
    nmax = 15

    @classmethod
    def codes(cls, xb, qw, row_sigma2):
        if qw is None:
            xb = f32(xb)
            mn, mx = xb.min(axis=1), xb.max(axis=1)
            d = (mx - mn) / F32(cls.nmax)
            with np.errstate(divide="ignore"):
                idn = np.where(d != 0, F32(1) / d, F32(0)).astype(F32)
            v = xb - mn[:, None]
            v *= idn[:, None]
            v += F32(0.5)
            L = v.astype(np.uint8)  # (x - min)*id + 0.5f lies in [0, nmax + 1)
            if cls.nmax == 15:  # Q4_1 clamps with MIN(15, .); Q5_1 casts to uint8_t directly
                L = np.minimum(15, L)
            return d, mn, L
        X = element_major(xb)
        d, the_min, L = make_qkx(X, _weights(X, qw, row_sigma2), cls.nmax, -0.9, 0.05, 36, False, version=3)
        return d, -the_min, L.T

    @classmethod
    def quantize_blocks(cls, xb, qw=None, row_sigma2=None):
        d, m, L = cls.codes(xb, qw, row_sigma2)
        return cls.layout().join(d=fp16_bits(d).view("<f2"), m=fp16_bits(m).view("<f2"), qs=_nibbles(L))

    @classmethod
    def dequantize_blocks(cls, blocks):
        f = cls.layout().split(blocks)
        qs = f["qs"].astype(np.int64)
        q = np.concatenate([qs & 0xF, qs >> 4], axis=1)
        return _d_times(fp16_from_bits(f["d"].view(np.uint16)), q) + fp16_from_bits(f["m"].view(np.uint16))


class Q5_1(Q4_1):
    """``x = d * q + m`` with 5-bit codes."""

    qtype = T.Q5_1
    nmax = 31

    @classmethod
    def quantize_blocks(cls, xb, qw=None, row_sigma2=None):
        d, m, L = cls.codes(xb, qw, row_sigma2)
        return cls.layout().join(d=fp16_bits(d).view("<f2"), m=fp16_bits(m).view("<f2"),
                                 qh=_high_bits(L), qs=_nibbles(L & 0xF))

    @classmethod
    def dequantize_blocks(cls, blocks):
        f = cls.layout().split(blocks)
        qs = f["qs"].astype(np.int64)
        hi = np.unpackbits(f["qh"], axis=1, bitorder="little").astype(np.int64)
        q = np.concatenate([qs & 0xF, qs >> 4], axis=1) | (hi << 4)
        return _d_times(fp16_from_bits(f["d"].view(np.uint16)), q) + fp16_from_bits(f["m"].view(np.uint16))


LEGACY = {c.qtype: c for c in (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0)}
