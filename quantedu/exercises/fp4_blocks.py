"""Notebook 08's exercises: an MXFP4 block quantizer byte for byte, and NVFP4's two-level scale.

* ``08.mxfp4_block``: ggml-quants.c ``quantize_row_mxfp4_ref`` (``block_mxfp4`` of ggml-common.h), checked against
  :func:`quantedu.gguf.quantize` ``"MXFP4"``, whose bytes are ggml's (``tests/test_gguf_fp4.py``).
* ``08.nvfp4_scales``: NVIDIA's / llm-compressor's NVFP4 scales (a per-tensor fp32 ``g = 448 * 6 / amax`` and one
  E4M3 scale per 16 weights, ``e4m3(g * amax16 / 6)``), checked against
  :func:`quantedu.microscaling.choose_scales`, which equals llm-compressor's (``tests/test_export_fp.py``).

Each checker recomputes the answer with the usual mistakes built in (:func:`_mx_variant`, :func:`_nv_variant`) and
names the one that reproduces the learner's output.
"""
from __future__ import annotations

import numpy as np
import torch

from .. import fp, gguf
from .. import microscaling as ms
from .core import Exercise, case, first_difference, fmt, register
from .gguf_blocks import _as_bytes
from .inputs import course_tensor

E2M1 = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6], np.float32)


# --- reference solutions (learner style) ------------------------------------------------------------


def mxfp4_block(xb):
    xb = np.asarray(xb, dtype=np.float32)
    amax = np.abs(xb).max(axis=1)
    safe = np.where(amax > 0, amax, np.float32(1))
    e = np.where(amax > 0, np.floor(np.log2(safe)) - 2 + 127, 0).astype(np.uint8)   # E8M0: exponent + 127
    d = np.ldexp(np.float32(1), e.astype(np.int64) - 127).astype(np.float32)        # the block's scale 2**(e-127)
    grid = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6], np.float32)
    err = np.abs(grid * d[:, None, None] - xb[:, :, None])                           # (blocks, 32, 16), float32
    codes = np.argmin(err, axis=-1).astype(np.uint8)                                 # first of equal errors wins
    qs = codes[:, :16] | (codes[:, 16:] << 4)                                        # x[j] low, x[j+16] high
    return np.concatenate([e[:, None], qs], axis=1)


def nvfp4_scales(w):
    w = torch.as_tensor(w, dtype=torch.float32)
    g = 448 * 6 / w.abs().max()                                     # per tensor: amax -> 448 * 6
    amax16 = w.reshape(w.shape[0], -1, 16).abs().amax(dim=-1)      # per 16 consecutive weights of a row
    s = (g * (amax16 / 6)).clamp(max=448).to(torch.float8_e4m3fn)  # round to nearest even E4M3
    return g, s.view(torch.uint8)


# --- 08.mxfp4_block ----------------------------------------------------------------------------------


def _mx_variant(xb, scale="floor", bias=127, pairs="half", low_first=True, ties="first", neg_zero=False):
    """ggml's MXFP4 bytes with one mistake built in (the defaults give ggml's bytes)."""
    xb = np.asarray(xb, np.float32)
    amax = np.abs(xb).max(axis=1)
    safe = np.where(amax > 0, amax, np.float32(1)).astype(np.float64)
    k = np.floor(np.log2(safe.astype(np.float32)))
    E = {"floor": k - 2, "ceil": np.ceil(np.log2(safe / 6)), "six": np.floor(np.log2(safe / 6))}[scale]
    e = np.where(amax > 0, E + bias, 0).astype(np.int64) & 0xFF
    d = np.ldexp(np.float32(1), np.where(amax > 0, E, -127).astype(np.int64)).astype(np.float32)
    if ties == "first":  # ggml: the first of equal float32 errors in table order
        with np.errstate(over="ignore", invalid="ignore"):
            codes = np.argmin(np.abs(E2M1 * d[:, None, None] - xb[:, :, None]), axis=-1)
    else:  # magnitudes by thresholds, halves to the even code or away from zero, then the sign bit
        bounds = np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0])
        v = np.abs(xb / d[:, None]).astype(np.float64)
        mag = np.searchsorted(bounds, v, side="right" if ties == "away" else "left")
        if ties == "even":
            at = np.isin(v, bounds)
            mag = np.where(at & (mag % 2 == 1), mag + 1, mag)
        codes = mag | (np.signbit(xb) & (mag > 0)) << 3
    if neg_zero:  # the sign bit set on values that round to 0
        codes = np.where((codes == 0) & np.signbit(xb), 8, codes)
    codes = codes.astype(np.uint8)
    a, b = (codes[:, :16], codes[:, 16:]) if pairs == "half" else (codes[:, 0::2], codes[:, 1::2])
    qs = a | (b << 4) if low_first else b | (a << 4)
    return np.concatenate([e[:, None].astype(np.uint8), qs], axis=1)


_MX_MISTAKES = [
    (dict(scale="ceil"), "ggml's exponent is floor(log2(amax)) - 2, which puts the block's largest value in [4, 8) "
                         "on the E2M1 scale (values above 6 clip to 6); ceil(log2(amax / 6)) is the no-clipping "
                         "variant, another format's choice."),
    (dict(scale="six"), "the exponent is floor(log2(amax)) - 2 (2 = E2M1's largest exponent), not "
                        "floor(log2(amax / 6))."),
    (dict(bias=128), "E8M0 stores the exponent plus 127 (the scale is 2**(e - 127))."),
    (dict(bias=0), "E8M0 stores the exponent plus 127 (the scale is 2**(e - 127)); you stored it without the bias."),
    (dict(pairs="adjacent"), "ggml pairs element j with element j + 16 (qs[j] = code[j] | code[j+16] << 4), not "
                             "neighbours (that is compressed-tensors' packing)."),
    (dict(low_first=False), "element j goes in the LOW nibble of qs[j], element j + 16 in the high nibble."),
    (dict(ties="even"), "at an exact midpoint ggml keeps the first of the equal errors in its table order, i.e. the "
                        "smaller magnitude (1.75 -> 1.5, 3.5 -> 3); round-to-nearest-even gives 2 and 4."),
    (dict(ties="away"), "at an exact midpoint ggml keeps the smaller magnitude (0.75 -> 0.5, 1.75 -> 1.5, 3.5 -> 3): "
                        "the first of equal errors; halves do not round away from zero."),
    (dict(ties="even", neg_zero=True), "at an exact midpoint ggml keeps the smaller magnitude (1.75 -> 1.5), and a "
                                       "negative value that rounds to 0 is code 0, not -0 (code 8)."),
    (dict(neg_zero=True), "a negative value that rounds to 0 gets code 0 (index 0 of the table wins the tie with "
                          "-0, index 8), never code 8."),
]


def _mx_case(label, make):
    @case(label)
    def run(fn):
        xb = make()
        exp = gguf.quantize(xb, "MXFP4")
        got, problem = _as_bytes(fn(xb.copy()), len(xb), 17)
        if problem:
            return problem
        diff = first_difference(exp, got, "MXFP4 bytes", names=("block", "byte"))
        if not diff:
            return None
        b, k = (int(i) for i in np.argwhere(exp != got)[0])
        amax = float(np.abs(xb[b]).max())
        if amax == 0:
            return f"{diff}. Likely cause: an all-zero block stores e = 0 and codes 0 (log2(0) is -inf)."
        cause = next((c for kw, c in _MX_MISTAKES if np.array_equal(_mx_variant(xb[b:b + 1], **kw)[0], got[b])), "")
        where = "e, the E8M0 exponent" if k == 0 else f"qs[{k - 1}] (elements {k - 1} and {k + 15})"
        return f"{diff}: {where} of block {b}." + (f" Likely cause: {cause}" if cause else "")
    return run


def _midpoints():
    xb = np.zeros((2, 32), np.float32)
    xb[0, :10] = [6.0, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -1.75, -3.5]  # amax 6: the scale is 1
    xb[1, :6] = [0.75, 1.75, 3.5, -0.75, 0.1, 6.0]
    xb[1, 16:22] = [5.0, 2.5, -5.0, 4.0, 3.0, -0.2]  # the second half goes in the high nibbles
    return xb


def _negatives():
    rng = np.random.default_rng(80)
    xb = (rng.standard_normal((4, 32)) * 0.02).astype(np.float32)
    xb[:, 3] = [-0.3, -0.11, -0.9, -0.05]  # largest magnitude negative
    xb[:, 20] = -1e-4  # rounds to zero
    return xb


def _clipping():
    """Blocks whose amax mantissa is above 1.5: floor clips the largest value, ceil would not."""
    xb = (np.random.default_rng(81).standard_normal((3, 32)) * 0.05).astype(np.float32)
    xb[:, 7] = [0.2, 1.9, -0.47]
    return xb


register(Exercise(
    id="08.mxfp4_block",
    title="an MXFP4 block quantizer, byte for byte",
    statement="""\
Write `mxfp4_block(xb)` for blocks of 32 float32 weights, `xb` of shape `(n_blocks, 32)`, returning ggml's
`block_mxfp4` bytes `(n_blocks, 17)` uint8: one E8M0 byte `e` (the scale is `2**(e - 127)`), then 16 bytes of
E2M1 codes, two per byte. ggml (`quantize_row_mxfp4_ref`) takes `e = floor(log2(amax)) - 2 + 127` (`e = 0` for an
all-zero block), maps every value to the nearest of the 16 E2M1 values times the scale (the code of value
`[0, 0.5, 1, 1.5, 2, 3, 4, 6, -0, -0.5, ..., -6][i]` is `i`), keeping the *first* of equal errors, and stores
element `j` in the low nibble and element `j + 16` in the high nibble of byte `j`. The checker compares bytes.""",
    reference="`quantedu.gguf.quantize(xb, \"MXFP4\")` (the bytes of ggml's `quantize_row_mxfp4_ref`)",
    imports="import numpy as np\n\nfrom quantedu.exercises import check, hint",
    stubs=('''\
def mxfp4_block(xb):
    """Bytes (n_blocks, 17) of GGML MXFP4 blocks: the E8M0 exponent, then 16 bytes of E2M1 code pairs."""
    ...  # YOUR CODE
''',),
    solution=(mxfp4_block,),
    cases=lambda context: [
        _mx_case("hand-made: values exactly between two E2M1 values (scale 1)", _midpoints),
        _mx_case("hand-made: negative largest values, and a negative value that rounds to 0", _negatives),
        _mx_case("hand-made: an all-zero block", lambda: np.zeros((2, 32), np.float32)),
        _mx_case("hand-made: largest values with a mantissa above 1.5 (they clip to 6)", _clipping),
        _mx_case("30000 random normal blocks",
                 lambda: (np.random.default_rng(82).standard_normal((30000, 32)) * 0.02).astype(np.float32)),
        _mx_case("the course model: blk.0.ffn_down.weight, all of it",
                 lambda: course_tensor("blk.0.ffn_down.weight").reshape(-1, 32)),
    ],
    hints=(
        "amax = np.abs(xb).max(axis=1); e = floor(log2(amax)) - 2 + 127, or 0 when amax == 0; the scale is "
        "d = 2**(e - 127) (np.ldexp(np.float32(1), e - 127)).",
        "Compare every value with all 16 candidates: err = np.abs(grid * d[:, None, None] - xb[:, :, None]) in "
        "float32, then np.argmin(err, axis=-1): argmin keeps the first of equal errors, as ggml's loop does.",
        "Bytes: e as uint8, then codes[:, :16] | (codes[:, 16:] << 4).",
    ),
))


# --- 08.nvfp4_scales ---------------------------------------------------------------------------------


def _nv_variant(w, g_rule="ggml6", div=6.0, rounding="nearest_even", axis="row"):
    """``(g, codes)`` with one mistake built in (the defaults are NVIDIA's / llm-compressor's)."""
    w = torch.as_tensor(w, dtype=torch.float32)
    amax = w.abs().max()
    g = {"ggml6": 448 * 6 / amax, "none": torch.tensor(1.0), "inverted": amax / (448 * 6),
         "no6": 448 / amax}[g_rule].reshape(1)
    wg = w if axis == "row" else w.T.contiguous()
    a16 = wg.reshape(wg.shape[0], -1, 16).abs().amax(-1)
    if axis != "row":
        a16 = a16.reshape(w.shape[1], w.shape[0] // 16).T
    return g, fp.ue4m3_encode(g * (a16 / div), rounding=rounding)


_ROW_GROUPS = ("a group is 16 consecutive weights of a ROW (along the input dimension): reshape w to "
               "(rows, cols // 16, 16).")
_NV_MISTAKES = [
    (dict(g_rule="none"), "the per-tensor scale is missing: g = 448 * 6 / amax(w) lifts the block scales "
                          "amax16 / 6 (~0.01 for LLM weights) out of E4M3's subnormals, where few bits are left."),
    (dict(g_rule="inverted"), "g multiplies the block scales: g = 448 * 6 / amax(w), not amax(w) / (448 * 6)."),
    (dict(g_rule="no6"), "g = 448 * 6 / amax(w): the tensor's largest group has amax / 6 as its scale, which g must "
                         "bring to 448, E4M3's largest value."),
    (dict(div=1.0), "a group's scale is amax16 / 6 (6 is E2M1's largest value), times g."),
    (dict(rounding="up"), "round the scale to the NEAREST E4M3 value (ties to even: torch's .to(torch.float8_e4m3fn)); "
                          "rounding up is the no-clipping variant, another format's choice."),
    (dict(rounding="ggml"), "that is ggml's UE4M3 rounding (halves up); NVIDIA's recipe rounds to nearest even "
                            "(torch's .to(torch.float8_e4m3fn))."),
    (dict(axis="column"), _ROW_GROUPS),
]


def _nv_case(label, make):
    @case(label)
    def run(fn):
        w = make()
        exp_codes, exp_g = ms.choose_scales(torch.from_numpy(w), ms.NVFP4)
        out = fn(torch.from_numpy(w.copy()))
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            return "nvfp4_scales must return (g, scale_codes)"
        g = torch.as_tensor(out[0], dtype=torch.float32).reshape(-1)
        codes = torch.as_tensor(out[1])
        if codes.dtype == torch.float8_e4m3fn:
            codes = codes.view(torch.uint8)
        if g.numel() != 1:
            return f"g is one number for the whole tensor; got {g.numel()} values"
        g_diff = first_difference(exp_g.numpy(), g.numpy(), "global scale g", rtol=1e-6)
        if tuple(codes.shape) != tuple(exp_codes.shape):
            cause = (" Likely cause: " + _ROW_GROUPS
                     if tuple(codes.shape) == (w.shape[0] // 16, w.shape[1]) else "")
            return (f"scale codes: expected one per 16 weights of a row, shape {tuple(exp_codes.shape)}; "
                    f"got {tuple(codes.shape)}.{cause}")
        if codes.is_floating_point():
            hint_ = (" Return the E4M3 bit patterns, s.to(torch.float8_e4m3fn).view(torch.uint8), not their values."
                     if torch.equal(codes.float(), fp.ue4m3_decode(exp_codes)) else "")
            return f"scale codes must be uint8 E4M3 bit patterns; got dtype {codes.dtype}.{hint_}"
        for kw, cause in _NV_MISTAKES:
            try:
                vg, vc = _nv_variant(w, **kw)
            except RuntimeError:  # e.g. column groups of a tensor with fewer than 16 rows
                continue
            if (torch.equal(vc, codes) and not torch.equal(vc, exp_codes)) or (
                    g_diff and torch.allclose(vg, g, rtol=1e-6, atol=0)):
                where = g_diff or first_difference(exp_codes.numpy(), codes.numpy(), "scale code",
                                                   names=("row", "group"))
                return f"{where}. Likely cause: {cause}"
        if g_diff:
            return g_diff
        # codes from the learner's own g: a g that differs in the last bit would otherwise move a group
        amax16 = torch.from_numpy(w).reshape(w.shape[0], -1, 16).abs().amax(-1)
        diff = first_difference(fp.ue4m3_encode(g * (amax16 / 6)).numpy(), codes.numpy(), "scale code",
                                names=("row", "group"))
        if diff:
            r, c = (int(i) for i in np.argwhere(fp.ue4m3_encode(g * (amax16 / 6)).numpy() != codes.numpy())[0])
            return (f"{diff}: group {c} of row {r} has amax {fmt(float(amax16[r, c]))}, so its scale is "
                    f"e4m3({fmt(float(g))} * {fmt(float(amax16[r, c]))} / 6)")
        return None
    return run


def _hand():
    w = np.zeros((16, 32), np.float32)
    w[0, :16] = np.linspace(-0.03, 0.06, 16)
    w[0, 16:] = np.linspace(-0.01, 0.005, 16)
    w[1, :16] = 0.002
    w[1, 16:] = np.linspace(0.1, -0.12, 16)
    w[2:] = np.outer(np.linspace(0.5, 2, 14), np.linspace(-0.02, 0.03, 32))
    return w


register(Exercise(
    id="08.nvfp4_scales",
    title="NVFP4's two-level scale",
    statement="""\
NVFP4 stores a weight as an E2M1 value times `s / g`: `s` is one FP8 E4M3 number per 16 consecutive weights of a
row, `g` one float32 number per tensor. Write `nvfp4_scales(w)` for a weight `w` `(rows, cols)` (cols a multiple of
16) returning `(g, scale_codes)`: `g = 448 * 6 / amax(w)` (it maps the tensor's largest group onto E4M3's largest
value, 448), and for every group `s = g * amax16 / 6` rounded to the nearest E4M3 value (clamped to 448) as uint8
bit patterns `(rows, cols // 16)`. This is NVIDIA's recipe as llm-compressor implements it; the checker compares
`g` and the codes.""",
    reference="`quantedu.microscaling.choose_scales(w, microscaling.NVFP4)` (= llm-compressor 0.14's NVFP4A16)",
    imports="import torch\n\nfrom quantedu.exercises import check, hint",
    stubs=('''\
def nvfp4_scales(w):
    """(g, scale_codes): the per-tensor float32 scale and the E4M3 codes (rows, cols // 16) uint8."""
    ...  # YOUR CODE
''',),
    solution=(nvfp4_scales,),
    cases=lambda context: [
        _nv_case("hand-made: 16 x 32 weights, 32 groups", _hand),
        _nv_case("hand-made: a tensor with all-zero groups", lambda: np.concatenate(
            [_hand(), np.zeros((16, 32), np.float32)])),
        _nv_case("random normal weights 256 x 512",
                 lambda: (np.random.default_rng(83).standard_normal((256, 512)) * 0.02).astype(np.float32)),
        _nv_case("the course model: blk.0.attn_q.weight", lambda: course_tensor("blk.0.attn_q.weight")),
    ],
    hints=(
        "g = 448 * 6 / w.abs().max(): one number. The groups: w.reshape(rows, cols // 16, 16).abs().amax(dim=-1).",
        "s = g * (amax16 / 6); torch rounds to the nearest E4M3 value for you: "
        "s.clamp(max=448).to(torch.float8_e4m3fn).",
        "The codes are the bit patterns: .view(torch.uint8).",
    ),
))
