"""K-quants: super-blocks of 256 weights whose sub-block scales (and mins) are themselves quantized.

Follows ggml/src/ggml-quants.c. Without an importance matrix ggml uses ``quantize_row_qX_K_ref``:
each sub-block gets a scale (and min) from ``make_qkx2_quants`` (Q2_K, Q4_K, Q5_K), ``make_q3_quants``
(Q3_K) or ``make_qx_quants`` (Q6_K); the sub-block scales are then quantized linearly against their
maximum (4, 6 or 8 bits) and the weights are re-quantized with the *rounded* scales. With an importance
matrix ggml uses ``quantize_row_qX_K_impl``: weights ``qw * sqrt(sigma2 + x^2)``, ``make_qkx3_quants``
for the asymmetric types and ``make_qp_quants`` / ``make_qx_quants`` to quantize the sub-block scales
with the summed weights.

Everything is vectorized over super-blocks; arrays are element-major ``(256, NB)`` inside.
"""
from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as T

from .base import BlockQuant, element_major, sub_blocks, super_blocks
from .numerics import (F32, GROUP_MAX_EPS, first_absmax, fp16_bits, fp16_from_bits, fp16_round, i8,
                       nearest_int, seqsum, u8)
from .search import make_q3_quants, make_qkx, make_qp_quants, make_qx_quants

QK_K = 256


def _half(v):
    return fp16_bits(v).view("<f2")


def _imatrix_weights(X, qw, sigma2):
    """``weight = qw * sqrtf(sigma2 + x*x)`` with the super-block's ``sigma2``."""
    return element_major(qw) * np.sqrt(sigma2[None, :] + X * X)


def _requantize(X, size, d, m, lo, hi, old_L):
    """Re-quantize with the stored (rounded) sub-block scales: ``l = nearest_int((x + m)/d)``.

    ``d``, ``m`` are ``(n_sub, NB)``; sub-blocks whose ``d`` is zero keep the codes of the search step
    (the C loop ``continue``s there).
    """
    n_sub, nb = d.shape
    Xs = X.reshape(n_sub, size, nb)
    dd = d[:, None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        v = (Xs + m[:, None, :]) / dd if m is not None else Xs / dd
        L = np.clip(nearest_int(v), lo, hi) - lo
    return np.where(dd != 0, L, old_L.reshape(n_sub, size, nb)).reshape(n_sub * size, nb)


# ---------------------------------------------------------------- 6-bit scale packing (Q4_K, Q5_K)
def pack_scale_min_k4(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """8 six-bit scales and 8 six-bit mins ``(NB, 8)`` -> 12 bytes (inverse of ``get_scale_min_k4``)."""
    ls, lm = u8(ls), u8(lm)
    out = np.empty((ls.shape[0], 12), dtype=np.int64)
    out[:, 0:4] = ls[:, :4] | ((ls[:, 4:] >> 4) << 6)
    out[:, 4:8] = lm[:, :4] | ((lm[:, 4:] >> 4) << 6)
    out[:, 8:12] = (ls[:, 4:] & 0xF) | ((lm[:, 4:] & 0xF) << 4)
    return u8(out)


def get_scale_min_k4(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """12 bytes ``(NB, 12)`` -> (scales, mins) ``(NB, 8)`` as ggml's ``get_scale_min_k4``."""
    q = q.astype(np.int64)
    sc = np.concatenate([q[:, 0:4] & 63, (q[:, 8:12] & 0xF) | ((q[:, 0:4] >> 6) << 4)], axis=1)
    mn = np.concatenate([q[:, 4:8] & 63, (q[:, 8:12] >> 4) | ((q[:, 4:8] >> 6) << 4)], axis=1)
    return sc, mn


# ---------------------------------------------------------------- Q3_K scale packing
def pack_q3_scales(l: np.ndarray) -> np.ndarray:
    """16 six-bit codes ``(NB, 16)`` in [0, 63] -> 12 bytes: low nibbles, then 2-bit high parts."""
    l = u8(l)
    out = np.empty((l.shape[0], 12), dtype=np.int64)
    out[:, :8] = (l[:, :8] & 0xF) | ((l[:, 8:] & 0xF) << 4)
    hi = l >> 4
    out[:, 8:] = hi[:, 0:4] | (hi[:, 4:8] << 2) | (hi[:, 8:12] << 4) | (hi[:, 12:16] << 6)
    return u8(out)


def unpack_q3_scales(q: np.ndarray) -> np.ndarray:
    """12 bytes -> 16 signed scales in [-32, 31]."""
    q = q.astype(np.int64)
    low = np.concatenate([q[:, :8] & 0xF, q[:, :8] >> 4], axis=1)
    hi = np.concatenate([(q[:, 8:] >> s) & 3 for s in (0, 2, 4, 6)], axis=1)
    return (low | (hi << 4)) - 32


def _pack_2bit(L: np.ndarray) -> np.ndarray:
    """Block-major codes ``(NB, 256)`` -> 64 bytes: byte ``32c + l`` holds codes ``128c + 32k + l`` at bits 2k."""
    L4 = L.reshape(-1, 2, 4, 32)
    return (L4[:, :, 0] | (L4[:, :, 1] << 2) | (L4[:, :, 2] << 4) | (L4[:, :, 3] << 6)).reshape(-1, 64)


def _unpack_2bit(qs: np.ndarray) -> np.ndarray:
    q = qs.astype(np.int64).reshape(-1, 2, 1, 32)
    return ((q >> np.array([0, 2, 4, 6]).reshape(1, 1, 4, 1)) & 3).reshape(-1, 256)


def _pack_4bit(L: np.ndarray) -> np.ndarray:
    """``(NB, 256)`` -> 128 bytes: per 64 weights, byte ``l`` = code ``l`` | code ``l+32`` << 4."""
    L4 = L.reshape(-1, 4, 2, 32)
    return ((L4[:, :, 0] & 0xF) | ((L4[:, :, 1] & 0xF) << 4)).reshape(-1, 128)


def _unpack_4bit(qs: np.ndarray) -> np.ndarray:
    q = qs.astype(np.int64).reshape(-1, 4, 1, 32)
    return ((q >> np.array([0, 4]).reshape(1, 1, 2, 1)) & 0xF).reshape(-1, 256)


def _expand(per_sub: np.ndarray, size: int) -> np.ndarray:
    """``(NB, n_sub)`` -> ``(NB, n_sub*size)`` by repeating each sub-block value."""
    return np.repeat(per_sub, size, axis=1)


class Q2_K(BlockQuant):
    """16 sub-blocks of 16: ``x = d*sc*q - dmin*m`` with 2-bit ``q`` and 4-bit ``sc``, ``m``."""

    qtype = T.Q2_K

    @classmethod
    def quantize_blocks(cls, xb, qw=None, row_sigma2=None):
        X = element_major(xb)
        nb = X.shape[1]
        xs = sub_blocks(X, 16)
        if qw is None:
            scales, mins, L = make_qkx(xs, np.abs(xs), 3, -0.5, 0.1, 15, True, version=2)
            scales, mins = scales.reshape(16, nb), mins.reshape(16, nb)
            max_scale = np.maximum(scales.max(axis=0), F32(0))
            max_min = np.maximum(mins.max(axis=0), F32(0))
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                ls = np.where(max_scale > 0, u8(nearest_int((F32(15) / max_scale) * scales)), 0)
                lm = np.where(max_min > 0, nearest_int((F32(15) / max_min) * mins), 0)
            sc = u8(ls | (lm << 4))
            d = np.where(max_scale > 0, max_scale / F32(15), F32(0)).astype(F32)
            dmin = np.where(max_min > 0, max_min / F32(15), F32(0)).astype(F32)
        else:
            sigma2 = seqsum(X * X) / F32(QK_K)
            w = sub_blocks(_imatrix_weights(X, qw, sigma2), 16)
            sw = seqsum(w).reshape(16, nb)
            scales, mins, L = make_qkx(xs, w, 3, -0.9, 0.05, 36, False, version=3)
            d, Ls = make_qp_quants(scales.reshape(16, nb), 15, sw)
            dmin, Lm = make_qp_quants(mins.reshape(16, nb), 15, sw)
            sc = u8(Ls | (Lm << 4))
        L = super_blocks(L, nb)
        dq = fp16_round(d)[None, :] * (sc & 0xF).astype(F32)
        mq = fp16_round(dmin)[None, :] * (sc >> 4).astype(F32)
        L = _requantize(X, 16, dq, mq, 0, 3, L)
        return cls.layout().join(scales=sc.T, qs=_pack_2bit(L.T), d=_half(d), dmin=_half(dmin))

    @classmethod
    def dequantize_blocks(cls, blocks):
        f = cls.layout().split(blocks)
        d = fp16_from_bits(f["d"].view(np.uint16))
        dmin = fp16_from_bits(f["dmin"].view(np.uint16))
        sc = f["scales"].astype(np.int64)
        dl = _expand(d * (sc & 0xF).astype(F32), 16)
        ml = _expand(dmin * (sc >> 4).astype(F32), 16)
        return dl * _unpack_2bit(f["qs"]).astype(F32) - ml


class Q3_K(BlockQuant):
    """16 sub-blocks of 16: ``x = d*sc*q`` with 3-bit ``q`` in [-4, 3] and 6-bit signed ``sc``."""

    qtype = T.Q3_K

    @classmethod
    def quantize_blocks(cls, xb, qw=None, row_sigma2=None):
        X = element_major(xb)
        nb = X.shape[1]
        xs = sub_blocks(X, 16)
        if qw is None:
            scales, L = make_q3_quants(xs, 4)
            scales = scales.reshape(16, nb)
            _, max_scale = first_absmax(scales)
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                iscale = F32(-32) / max_scale
                l = np.clip(i8(nearest_int(iscale * scales)), -32, 31) + 32
                d = np.where(max_scale != 0, F32(1) / iscale, F32(0)).astype(F32)
            packed = np.where((max_scale != 0)[:, None], pack_q3_scales(l.T), 0)
        else:
            sigma2 = F32(2) * seqsum(X * X) / F32(QK_K)
            w = sub_blocks(_imatrix_weights(X, qw, sigma2), 16)
            sw = seqsum(w).reshape(16, nb)
            scales, L = make_qx_quants(xs, 4, w)
            d, Ls = make_qx_quants(scales.reshape(16, nb), 32, sw)
            packed = pack_q3_scales(Ls.T)
        L = super_blocks(L, nb)
        sc = unpack_q3_scales(packed).T  # (16, NB)
        dq = fp16_round(d)[None, :] * sc.astype(F32)
        L = _requantize(X, 16, dq, None, -4, 3, L)
        Lb = L.T
        hm = (Lb > 3).reshape(-1, 8, 32).astype(np.int64)
        hmask = sum(hm[:, b] << b for b in range(8))
        return cls.layout().join(hmask=hmask, qs=_pack_2bit(np.where(Lb > 3, Lb - 4, Lb)),
                                 scales=packed, d=_half(d))

    @classmethod
    def dequantize_blocks(cls, blocks):
        f = cls.layout().split(blocks)
        d = fp16_from_bits(f["d"].view(np.uint16))
        dl = _expand(d * unpack_q3_scales(f["scales"]).astype(F32), 16)
        hm = f["hmask"].astype(np.int64)
        hbit = np.concatenate([(hm >> b) & 1 for b in range(8)], axis=1)  # element e: bit e//32 of hmask[e%32]
        q = _unpack_2bit(f["qs"]) - np.where(hbit == 1, 0, 4)
        return dl * q.astype(F32)


class Q4_K(BlockQuant):
    """8 sub-blocks of 32: ``x = d*sc*q - dmin*m`` with 4-bit ``q`` and 6-bit ``sc``, ``m``."""

    qtype = T.Q4_K
    nmax = 15
    ref_search = (-1.0, 0.1, 20)
    clamp_impl_codes = False  # quantize_row_q5_K_impl clamps Ls/Lm with MIN(63, .); Q4_K's does not

    @classmethod
    def scales_and_codes(cls, X, qw):
        nb = X.shape[1]
        xs = sub_blocks(X, 32)
        if qw is None:
            av_x = np.sqrt(seqsum(xs * xs) / F32(32))
            rmin, rdelta, nstep = cls.ref_search
            scales, mins, L = make_qkx(xs, av_x[None, :] + np.abs(xs), cls.nmax, rmin, rdelta, nstep, False, 2)
            scales, mins = scales.reshape(8, nb), mins.reshape(8, nb)
            max_scale = np.maximum(scales.max(axis=0), F32(0))
            max_min = np.maximum(mins.max(axis=0), F32(0))
            with np.errstate(divide="ignore"):
                inv_scale = np.where(max_scale > 0, F32(63) / max_scale, F32(0)).astype(F32)
                inv_min = np.where(max_min > 0, F32(63) / max_min, F32(0)).astype(F32)
            ls = np.minimum(63, u8(nearest_int(inv_scale * scales)))
            lm = np.minimum(63, u8(nearest_int(inv_min * mins)))
            d, dmin = max_scale / F32(63), max_min / F32(63)
        else:
            sigma2 = F32(2) * seqsum(X * X) / F32(QK_K)
            w = sub_blocks(_imatrix_weights(X, qw, sigma2), 32)
            sw = seqsum(w).reshape(8, nb)
            scales, mins, L = make_qkx(xs, w, cls.nmax, -0.9, 0.05, 36, False, version=3)
            d, ls = make_qp_quants(scales.reshape(8, nb), 63, sw)
            dmin, lm = make_qp_quants(mins.reshape(8, nb), 63, sw)
            if cls.clamp_impl_codes:
                ls, lm = np.minimum(63, ls), np.minimum(63, lm)
        packed = pack_scale_min_k4(ls.T, lm.T)
        sc, mn = get_scale_min_k4(packed)
        dq = fp16_round(d)[None, :] * sc.T.astype(F32)
        mq = fp16_round(dmin)[None, :] * mn.T.astype(F32)
        L = _requantize(X, 32, dq, mq, 0, cls.nmax, super_blocks(L, nb))
        return d, dmin, packed, L.T

    @classmethod
    def quantize_blocks(cls, xb, qw=None, row_sigma2=None):
        d, dmin, packed, Lb = cls.scales_and_codes(element_major(xb), qw)
        return cls.layout().join(d=_half(d), dmin=_half(dmin), scales=packed, qs=_pack_4bit(Lb))

    @classmethod
    def _dm(cls, f):
        d = fp16_from_bits(f["d"].view(np.uint16))
        dmin = fp16_from_bits(f["dmin"].view(np.uint16))
        sc, mn = get_scale_min_k4(f["scales"])
        return _expand(d * sc.astype(F32), 32), _expand(dmin * mn.astype(F32), 32)

    @classmethod
    def dequantize_blocks(cls, blocks):
        f = cls.layout().split(blocks)
        dl, ml = cls._dm(f)
        return dl * _unpack_4bit(f["qs"]).astype(F32) - ml


class Q5_K(Q4_K):
    """Q4_K with 5-bit codes: the 5th bits live in ``qh``."""

    qtype = T.Q5_K
    nmax = 31
    ref_search = (-0.5, 0.1, 15)
    clamp_impl_codes = True

    @classmethod
    def quantize_blocks(cls, xb, qw=None, row_sigma2=None):
        d, dmin, packed, Lb = cls.scales_and_codes(element_major(xb), qw)
        hi = (Lb >> 4).reshape(-1, 4, 2, 32)
        qh = sum((hi[:, c, 0] << (2 * c)) | (hi[:, c, 1] << (2 * c + 1)) for c in range(4))
        return cls.layout().join(d=_half(d), dmin=_half(dmin), scales=packed, qh=qh, qs=_pack_4bit(Lb))

    @classmethod
    def dequantize_blocks(cls, blocks):
        f = cls.layout().split(blocks)
        dl, ml = cls._dm(f)
        qh = f["qh"].astype(np.int64)
        hi = np.stack([(qh >> s) & 1 for s in range(8)], axis=1).reshape(-1, 256)  # bit 2c(+1) -> chunk c
        return dl * (_unpack_4bit(f["qs"]) + 16 * hi).astype(F32) - ml


class Q6_K(BlockQuant):
    """16 sub-blocks of 16: ``x = d*sc*(q - 32)`` with 6-bit ``q`` and int8 ``sc``."""

    qtype = T.Q6_K

    @classmethod
    def quantize_blocks(cls, xb, qw=None, row_sigma2=None):
        X = element_major(xb)
        nb = X.shape[1]
        xs = sub_blocks(X, 16)
        scales, L = make_qx_quants(xs, 32, sub_blocks(element_major(qw), 16) if qw is not None else None)
        scales = scales.reshape(16, nb)
        amax, max_scale = first_absmax(scales)
        zero = amax < GROUP_MAX_EPS
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            iscale = F32(-128) / max_scale
            d = np.where(zero, F32(0), F32(1) / iscale).astype(F32)
            sc = i8(np.minimum(127, nearest_int(iscale * scales)))
        dq = fp16_round(d)[None, :] * sc.astype(F32)
        L = _requantize(X, 16, dq, None, -32, 31, super_blocks(L, nb)).T
        L4 = L.reshape(-1, 2, 4, 32)
        ql = np.concatenate([(L4[:, :, 0] & 0xF) | ((L4[:, :, 2] & 0xF) << 4),
                             (L4[:, :, 1] & 0xF) | ((L4[:, :, 3] & 0xF) << 4)], axis=2).reshape(-1, 128)
        qh = sum((L4[:, :, k] >> 4) << (2 * k) for k in range(4)).reshape(-1, 64)
        out = cls.layout().join(ql=ql, qh=qh, scales=sc.T, d=_half(d))
        out[zero] = 0  # memset(&y[i], 0, sizeof(block_q6_K))
        return out

    @classmethod
    def dequantize_blocks(cls, blocks):
        f = cls.layout().split(blocks)
        d = fp16_from_bits(f["d"].view(np.uint16))
        ql = f["ql"].astype(np.int64).reshape(-1, 2, 2, 32)  # chunk c, half h (ql[l] / ql[l+32])
        qh = f["qh"].astype(np.int64).reshape(-1, 2, 1, 32)
        low = np.stack([ql[:, :, 0] & 0xF, ql[:, :, 1] & 0xF, ql[:, :, 0] >> 4, ql[:, :, 1] >> 4], axis=2)
        high = (qh >> np.array([0, 2, 4, 6]).reshape(1, 1, 4, 1)) & 3
        q = ((low | (high << 4)) - 32).reshape(-1, 256)
        dl = _expand(d * f["scales"].astype(F32), 16)  # (d * sc) * q, as the C expression
        return dl * q.astype(F32)


KQUANTS = {c.qtype: c for c in (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)}
