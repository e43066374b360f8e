"""Notebook 05's exercises: a Q8_0 block quantizer and Q4_K's 6-bit sub-block scales, byte for byte.

ggml/src/ggml-quants.c ``quantize_row_q8_0_ref`` and the scale part of ``quantize_row_q4_K_ref``
(``get_scale_min_k4``'s layout, ggml-common.h ``block_q4_K``). Checked against :func:`quantedu.gguf.quantize`,
whose bytes are ggml's (``tests/test_gguf_quants.py`` compares them with ggml's C through ctypes).

Q4_K's float sub-block scales and mins come from llama.cpp's search (``make_qkx2_quants``);
:func:`q4k_subblock_scales` runs the package's search exactly as :class:`quantedu.gguf.kquants.Q4_K` does,
and :func:`q4k_scale_fields` is the part of ``quantize_row_q4_K_ref`` that the exercise asks for, built
from the package's pieces (the tests prove the two reproduce ``gguf.quantize``'s bytes).
"""
from __future__ import annotations

import numpy as np

from .. import gguf
from ..gguf.base import element_major, sub_blocks
from ..gguf.kquants import Q4_K, get_scale_min_k4, pack_scale_min_k4
from ..gguf.numerics import F32, fp16_bits, nearest_int, roundf, seqsum, u8
from ..gguf.search import make_qkx
from .core import Exercise, case, first_difference, fmt, register
from .inputs import course_tensor


# --- reference solutions (learner style) ------------------------------------------------------------


def q8_0(xb):
    xb = np.asarray(xb, dtype=np.float32)
    d = np.abs(xb).max(axis=1) / np.float32(127)
    inv = np.zeros_like(d)
    np.divide(np.float32(1), d, out=inv, where=d != 0)         # id = 1/d, 0 for an all-zero block
    v = xb * inv[:, None]
    q = np.trunc(v) + np.where(np.abs(v - np.trunc(v)) >= 0.5, np.sign(v), 0)   # C roundf: halves away from 0
    d_bytes = d.astype(np.float16).view(np.uint8).reshape(-1, 2)
    return np.concatenate([d_bytes, q.astype(np.int8).view(np.uint8)], axis=1)


def q4k_scales(scales, mins):
    scales, mins = np.asarray(scales, np.float32), np.asarray(mins, np.float32)
    max_scale = np.maximum(scales.max(axis=1), 0)               # per super-block: over its 8 sub-blocks
    max_min = np.maximum(mins.max(axis=1), 0)
    with np.errstate(divide="ignore"):
        inv_scale = np.where(max_scale > 0, np.float32(63) / max_scale, 0).astype(np.float32)
        inv_min = np.where(max_min > 0, np.float32(63) / max_min, 0).astype(np.float32)
    ls = np.minimum(63, np.rint(inv_scale[:, None] * scales)).astype(np.uint8)   # nearest, halves to even
    lm = np.minimum(63, np.rint(inv_min[:, None] * mins)).astype(np.uint8)
    packed = np.zeros((len(scales), 12), dtype=np.uint8)
    packed[:, 0:4] = ls[:, :4] | (ls[:, 4:] >> 4) << 6         # sc[0..3], top bits of sc[4..7]
    packed[:, 4:8] = lm[:, :4] | (lm[:, 4:] >> 4) << 6         # m[0..3], top bits of m[4..7]
    packed[:, 8:12] = (ls[:, 4:] & 0xF) | (lm[:, 4:] & 0xF) << 4
    return max_scale / np.float32(63), max_min / np.float32(63), packed


# --- helpers built from the package -----------------------------------------------------------------


def q4k_subblock_scales(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The float scales and mins ``(n_superblocks, 8)`` that Q4_K's reference search finds for ``x``
    (rows of a multiple of 256 weights), exactly as :meth:`Q4_K.scales_and_codes` computes them."""
    X = element_major(np.asarray(x, dtype=F32).reshape(-1, 256))
    xs = sub_blocks(X, 32)
    av_x = np.sqrt(seqsum(xs * xs) / F32(32))
    rmin, rdelta, nstep = Q4_K.ref_search
    scales, mins, _ = make_qkx(xs, av_x[None, :] + np.abs(xs), Q4_K.nmax, rmin, rdelta, nstep, False, 2)
    nb = X.shape[1]
    return scales.reshape(8, nb).T.copy(), mins.reshape(8, nb).T.copy()


def q4k_scale_fields(scales: np.ndarray, mins: np.ndarray):
    """``(d, dmin, packed)`` as ``quantize_row_q4_K_ref`` stores them: fp16 bits ``(n,)`` and ``(n, 12)`` bytes."""
    ls, lm, d, dmin = _six_bit(scales, mins)
    return fp16_bits(d), fp16_bits(dmin), u8(pack_scale_min_k4(ls, lm)).astype(np.uint8)


def _six_bit(scales, mins, per_block=True, rounding=nearest_int):
    scales, mins = np.asarray(scales, F32), np.asarray(mins, F32)
    axis = 1 if per_block else None
    max_scale = np.maximum(scales.max(axis=axis), F32(0)) * np.ones(len(scales), F32)
    max_min = np.maximum(mins.max(axis=axis), F32(0)) * np.ones(len(mins), F32)
    with np.errstate(divide="ignore"):
        inv_scale = np.where(max_scale > 0, F32(63) / max_scale, F32(0)).astype(F32)
        inv_min = np.where(max_min > 0, F32(63) / max_min, F32(0)).astype(F32)
    ls = np.minimum(63, u8(rounding(inv_scale[:, None] * scales)))
    lm = np.minimum(63, u8(rounding(inv_min[:, None] * mins)))
    return ls, lm, max_scale / F32(63), max_min / F32(63)


def _as_bytes(got, n: int, width: int):
    if isinstance(got, (bytes, bytearray)):
        got = np.frombuffer(got, dtype=np.uint8)
    arr = np.asarray(got)
    if arr.size != n * width:
        return None, f"expected {n} blocks of {width} bytes, shape ({n}, {width}); got shape {arr.shape}"
    if arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0 or arr.max() > 255:
            return None, f"expected bytes (dtype uint8), got dtype {arr.dtype}: use .view(np.uint8)"
        arr = arr.astype(np.uint8)
    return arr.reshape(n, width), None


# --- 05.q8_0 -----------------------------------------------------------------------------------------


def _q8_case(label, make):
    @case(label)
    def run(fn):
        xb = make()
        exp = gguf.quantize(xb, "Q8_0")
        got, problem = _as_bytes(fn(xb.copy()), len(xb), 34)
        if problem:
            return problem
        diff = first_difference(exp, got, "Q8_0 bytes", names=("block", "byte"))
        if not diff:
            return None
        b, k = (int(i) for i in np.argwhere(exp != got)[0])
        d = np.abs(xb).max(axis=1) / F32(127)
        if k < 2:
            d_got = got[b, :2].copy().view(np.float16)[0]
            if np.array_equal(got[b, :2], exp[b, 1::-1]):
                return f"{diff}. Likely cause: byte order: GGUF is little-endian (numpy's float16 .view(np.uint8) is)."
            if np.array_equal(got[b, :32].view(np.int8), exp[b, 2:].view(np.int8)):
                return f"{diff}. Likely cause: block_q8_0 starts with d (2 bytes), then the 32 codes."
            causes = [(np.abs(xb[b]).max() / 128, "d = max|x| / 127: the codes use -127..127."),
                      (xb[b].max() / 127, "d comes from the largest magnitude, max|x|, not the largest value.")]
            cause = next((c for v, c in causes if np.float16(v) == d_got), "")
            return (f"{diff}: your d is {fmt(float(d_got))}, ggml's {fmt(float(d[b]))}."
                    + (f" Likely cause: {cause}" if cause else ""))
        if d[b] == 0:
            return f"{diff}. Likely cause: an all-zero block has d = 0: use id = 0 (all codes 0), never x / 0."
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = np.where(d != 0, F32(1) / d, F32(0)).astype(F32)
            v = xb * inv[:, None]
            causes = [(np.round(v), "np.round rounds halves to even (2.5 -> 2); C's roundf rounds them away from 0 "
                                    "(2.5 -> 3, -0.5 -> -1)."),
                      (np.trunc(v), "astype(np.int8) truncates toward zero: round first."),
                      (roundf(xb / d[:, None]), "ggml multiplies by id = 1/d; x / d and x * (1/d) can differ in the "
                                                "last bit, and then a code that sits on a half differs."),
                      (roundf(xb / np.float16(d).astype(F32)[:, None]), "ggml rounds with the float32 d; only the "
                                                                        "stored copy of d is float16.")]
        codes = got[:, 2:].view(np.int8)
        cause = next((c for v, c in causes if np.array_equal(np.nan_to_num(v).astype(np.int64)[b], codes[b])), "")
        return f"{diff} (code {k - 2} of block {b})." + (f" Likely cause: {cause}" if cause else "")
    return run


def _halves():
    xb = np.zeros((1, 32), F32)
    xb[0, :8] = [127, 0.5, -0.5, 1.5, 2.5, -2.5, 3.5, -126.5]
    return xb


def _negative_max():
    rng = np.random.default_rng(40)
    xb = rng.standard_normal((3, 32)).astype(F32)
    xb[:, 5] = [-4.0, -6.5, -3.25]
    return xb


def _random_blocks():
    return (np.random.default_rng(41).standard_normal((30000, 32)) * 0.02).astype(F32)


register(Exercise(
    id="05.q8_0",
    title="a Q8_0 block quantizer, byte for byte",
    statement="""\
Write `q8_0(xb)` for blocks of 32 float32 weights, `xb` of shape `(n_blocks, 32)`: per block `d = max|x| / 127`
and int8 codes `q = round(x / d)`, stored as ggml's `block_q8_0` (ggml-common.h): `d` as float16 (2 bytes,
little-endian), then the 32 codes. Return the bytes, `(n_blocks, 34)` uint8. ggml's C code decides every
detail (how it divides, how it rounds, what an all-zero block gives): the checker compares bytes.""",
    reference="`quantedu.gguf.quantize(xb, \"Q8_0\")` (the bytes of ggml's `quantize_row_q8_0_ref`)",
    imports="import numpy as np\n\nfrom quantedu.exercises import check, hint",
    stubs=('''\
def q8_0(xb):
    """Bytes (n_blocks, 34) of GGML Q8_0 blocks: float16 d, then 32 int8 codes."""
    ...  # YOUR CODE
''',),
    solution=(q8_0,),
    cases=lambda context: [
        _q8_case("hand-made: codes that land exactly on halves (d = 1)", _halves),
        _q8_case("hand-made: blocks whose largest weight is negative", _negative_max),
        _q8_case("hand-made: an all-zero block", lambda: np.zeros((2, 32), F32)),
        _q8_case("30000 random normal blocks", _random_blocks),
        _q8_case("the course model: blk.0.ffn_down.weight, all of it", lambda: course_tensor(
            "blk.0.ffn_down.weight").reshape(-1, 32)),
    ],
    hints=(
        "ggml computes id = 1/d (0 when d == 0) and then x * id, in float32.",
        "C's roundf rounds halves away from zero; np.round rounds them to even. "
        "np.trunc(v) + np.where(np.abs(v - np.trunc(v)) >= 0.5, np.sign(v), 0) is roundf.",
        "Bytes: d.astype(np.float16).view(np.uint8).reshape(-1, 2), then q.astype(np.int8).view(np.uint8).",
    ),
))


# --- 05.q4k_scales -----------------------------------------------------------------------------------


def _layout_slips(packed: np.ndarray):
    """Byte-level slips of the 12-byte layout, applied to the right bytes."""
    swapped = packed.copy()
    swapped[:, 8:12] = (packed[:, 8:12] >> 4) | ((packed[:, 8:12] & 0xF) << 4)
    no_high = packed.copy()
    no_high[:, 0:8] &= 63
    mins_first = packed.copy()
    mins_first[:, 0:4], mins_first[:, 4:8] = packed[:, 4:8], packed[:, 0:4]
    return [(swapped, "bytes 8-11 hold ls[4..7] & 0xF in the LOW nibble and lm[4..7] & 0xF in the high one."),
            (no_high, "the top 2 bits of ls[4..7] (lm[4..7]) go to bits 6-7 of bytes 0-3 (bytes 4-7)."),
            (mins_first, "bytes 0-3 hold the scales ls[0..3], bytes 4-7 the mins lm[0..3].")]


def _q4k_case(label, make):
    @case(label)
    def run(fn):
        scales, mins, expected = make()
        out = fn(scales.copy(), mins.copy())
        if not isinstance(out, (tuple, list)) or len(out) != 3:
            return "q4k_scales must return (d, dmin, packed)"
        n = len(scales)
        d_exp, dmin_exp, packed_exp = expected
        for name, exp, got in (("d", d_exp, out[0]), ("dmin", dmin_exp, out[1])):
            got = np.asarray(got, dtype=np.float32).reshape(-1)
            if got.shape != (n,):
                return f"{name} must hold one value per super-block, shape ({n},); got {got.shape}"
            bits = fp16_bits(got)
            diff = first_difference(exp.view(np.float16), bits.view(np.float16), name, names=("super-block",))
            if diff:
                b = int(np.argwhere(bits != exp)[0][0])
                src = scales if name == "d" else mins
                cause = ""
                if np.float16(src.max() / 63) == bits.view(np.float16)[b]:
                    cause = (f" Super-block {b} is wrong: is your super-block scale the max over its own 8 "
                             f"sub-blocks (axis=1), not over all of them?")
                elif np.float16(src[b].max() / 64) == bits.view(np.float16)[b]:
                    cause = " Likely cause: six bits hold 0..63: d = max / 63."
                return f"{diff}.{cause}"
        packed, problem = _as_bytes(out[2], n, 12)
        if problem:
            return problem
        diff = first_difference(packed_exp, packed, "scale bytes", names=("super-block", "byte"))
        if not diff:
            return None
        slips = _layout_slips(packed_exp)
        for per_block, rounding, cause in ((True, np.trunc, "you truncated the 6-bit scales (astype); round them "
                                                            "to nearest (np.rint: halves to even, like nearest_int)."),
                                           (False, nearest_int, "is your super-block scale the max over its own 8 "
                                                                "sub-blocks, not over all of them?")):
            ls, lm, _, _ = _six_bit(scales, mins, per_block, rounding)
            slips.append((u8(pack_scale_min_k4(ls, lm)), cause))
        cause = next((c for v, c in slips if np.array_equal(v, packed)), "")
        return f"{diff}." + (f" Likely cause: {cause}" if cause else "")
    return run


def _weights_case(make_x):
    def make():
        x = make_x()
        scales, mins = q4k_subblock_scales(x)
        f = gguf.layout("Q4_K").split(gguf.quantize(x, "Q4_K"))
        return scales, mins, (f["d"].reshape(-1).view(np.uint16), f["dmin"].reshape(-1).view(np.uint16),
                              f["scales"].reshape(-1, 12))
    return make


def _hand(scales, mins):
    def make():
        s, m = np.asarray(scales, F32), np.asarray(mins, F32)
        return s, m, q4k_scale_fields(s, m)
    return make


_S = [0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.035, 0.04]
_M = [0.003, 0.001, 0.0, 0.002, 0.0025, 0.0005, 0.0015, 0.0035]

register(Exercise(
    id="05.q4k_scales",
    title="Q4_K's 6-bit sub-block scales, packed as ggml packs them",
    statement="""\
A Q4_K super-block has 8 sub-blocks, each with a float scale and min found by llama.cpp's search. Write
`q4k_scales(scales, mins)` for `(n_superblocks, 8)` float32 arrays: quantize each super-block's scales to 6 bits
against their maximum (`d = max / 63`, `ls = nearest_int(63 / max * scale)`, at most 63; `d = 0` and `ls = 0` when
the max is 0), the same for the mins (`dmin`, `lm`), and pack the 16 six-bit numbers into the 12 bytes of
`block_q4_K.scales` (the layout in the table above). Return `(d, dmin, packed)`: float arrays `(n,)` and uint8
`(n, 12)`.""",
    reference="`quantedu.gguf.quantize(x, \"Q4_K\")`'s `d`, `dmin` and `scales` bytes (= ggml's)",
    imports="import numpy as np\n\nfrom quantedu.exercises import check, hint",
    stubs=('''\
def q4k_scales(scales, mins):
    """(d, dmin, packed): per super-block the two float scales and the 12 bytes of 6-bit ls / lm."""
    ...  # YOUR CODE
''',),
    solution=(q4k_scales,),
    cases=lambda context: [
        _q4k_case("hand-made: one super-block (ls[4..7] >= 16: their top bits matter)", _hand([_S], [_M])),
        _q4k_case("hand-made: two super-blocks, the second 100x smaller",
                  _hand([_S, [v / 100 for v in _S]], [_M, [v / 100 for v in _M]])),
        _q4k_case("hand-made: a super-block of zeros", _hand([[0.0] * 8, _S], [[0.0] * 8, _M])),
        _q4k_case("random normal weights, 64 super-blocks (scales from llama.cpp's search)",
                  _weights_case(lambda: (np.random.default_rng(42).standard_normal((16, 1024)) * 0.02).astype(F32))),
        _q4k_case("the course model: blk.0.ffn_down.weight, first 64 rows (384 super-blocks)",
                  _weights_case(lambda: course_tensor("blk.0.ffn_down.weight", 64))),
    ],
    hints=(
        "Per super-block (axis=1): max_scale = max(scales.max(axis=1), 0); inv = 63 / max_scale (0 if the max is 0).",
        "ls = np.minimum(63, np.rint(inv[:, None] * scales)); d = max_scale / 63. The same for the mins.",
        "Bytes 0-3: ls[0..3] | (ls[4..7] >> 4) << 6; bytes 4-7: lm[0..3] | (lm[4..7] >> 4) << 6; "
        "bytes 8-11: (ls[4..7] & 0xF) | (lm[4..7] & 0xF) << 4.",
    ),
))
