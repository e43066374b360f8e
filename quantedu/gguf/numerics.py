"""Float32 arithmetic that reproduces ggml's C quantizers bit for bit.

ggml-quants.c (in ``libggml-base``) is compiled without ``-march=native`` and without ``-ffast-math``,
so on x86-64 every ``float`` operation is a single IEEE-754 binary32 operation (SSE2, no FMA
contraction, no re-association). numpy float32 ufuncs are the same IEEE operations, so we match the C
code exactly as long as we

* keep every operand float32 (never let numpy promote to float64),
* evaluate expressions in C's left-to-right order (``w*x*l`` is ``(w*x)*l``),
* sum sequentially (C loops ``s += t[i]``; ``np.sum`` uses pairwise summation, which rounds differently).

Arrays handed to the search routines are *element-major*: shape ``(n, G)`` where ``x[i]`` is element
``i`` of every one of the ``G`` groups. Sequential sums then become ``n`` vector additions over ``G``.
"""
from __future__ import annotations

import numpy as np

F32 = np.float32
GROUP_MAX_EPS = F32(1e-15)  # ggml-quants.c: "all zero" threshold
_MAGIC = F32(12582912.0)  # 1.5 * 2**23


def f32(x) -> np.ndarray:
    """Return ``x`` as a float32 array (no copy when it already is one)."""
    return np.asarray(x, dtype=F32)


def nearest_int(v: np.ndarray) -> np.ndarray:
    """ggml's ``nearest_int``: add 1.5*2**23 in float32 and read the low mantissa bits.

    Round-half-to-even for ``|v| < 2**22``; outside that range it returns the same garbage the C code
    does (ggml builds with asserts off), which keeps even degenerate inputs bit-exact.
    """
    bits = (f32(v) + _MAGIC).view(np.int32)
    return (bits & 0x007FFFFF) - 0x00400000


def roundf(v: np.ndarray) -> np.ndarray:
    """C ``roundf``: round half away from zero (``np.round`` rounds half to even)."""
    v = f32(v)
    t = np.trunc(v)
    frac = np.abs(v - t)  # exact: the fractional part of a float is representable
    return t + np.where(frac >= F32(0.5), np.sign(v), F32(0)).astype(F32)


def seqsum(terms: np.ndarray, start_zero: bool = True) -> np.ndarray:
    """Sequential float32 sum over axis 0, exactly like ``float s = 0; for (...) s += t[i];``.

    ``start_zero=False`` mirrors loops that start from the first term (``float s = t[0]``); the only
    difference is the sign of an all-negative-zero sum.
    """
    s = terms[0].copy()
    for t in terms[1:]:
        s += t
    if start_zero:
        s += F32(0.0)  # 0.0f + (-0.0f) == +0.0f in C
    return s


def first_absmax(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(amax, max)`` over axis 0 as ggml computes them: ``if (|x| > amax) {amax = |x|; max = x;}``.

    The first element of largest magnitude wins; starting from ``amax = 0`` gives ``max = 0`` for
    an all-zero group.
    """
    ax = np.abs(x)
    idx = np.argmax(ax, axis=0)
    cols = np.arange(x.shape[1])
    amax = ax[idx, cols]
    mx = np.where(amax > 0, x[idx, cols], F32(0)).astype(F32)
    return amax, mx


def fp16_bits(v: np.ndarray) -> np.ndarray:
    """GGML_FP32_TO_FP16 (round to nearest even) as raw uint16 bits."""
    with np.errstate(over="ignore"):
        return f32(v).astype(np.float16).view(np.uint16)


def fp16_round(v: np.ndarray) -> np.ndarray:
    """GGML_FP16_TO_FP32(GGML_FP32_TO_FP16(v)): the value a reader will see."""
    with np.errstate(over="ignore"):
        return f32(v).astype(np.float16).astype(F32)


def fp16_from_bits(bits: np.ndarray) -> np.ndarray:
    """Decode raw uint16 half-precision bits to float32."""
    return np.ascontiguousarray(bits, dtype=np.uint16).view(np.float16).astype(F32)


def u8(v: np.ndarray) -> np.ndarray:
    """Assignment to ``uint8_t`` (wraps modulo 256)."""
    return np.asarray(v, dtype=np.int64) & 0xFF


def i8(v: np.ndarray) -> np.ndarray:
    """Assignment to ``int8_t`` (wraps into [-128, 127])."""
    return ((np.asarray(v, dtype=np.int64) + 128) & 0xFF) - 128
