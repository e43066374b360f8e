"""Number formats a weight can be stored in, with their range and resolution computed, not typed.

Floating-point formats are described by their bit layout (sign, exponent, mantissa, bias) as in
the OCP 8-bit floating point specification (FP8 E4M3 / E5M2) and IEEE 754 (fp16, fp32); bf16 is
fp32 with the mantissa cut to 7 bits. For every format torch implements, the numbers derived from
the layout are checked against ``torch.finfo`` and against the bit patterns themselves
(``tests/test_formats.py``): the smallest subnormal is the pattern ``0...01`` reinterpreted as the
dtype, the largest finite value is the largest pattern that is not inf/NaN.

Integer formats (int8, int4, ...) are uniform grids: their "resolution" is one step, and what a
step is worth in real units is the quantization scale (``quantedu.primitives``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class FloatLayout:
    """A binary floating-point format: 1 sign bit, ``exp_bits`` exponent bits, ``man_bits`` mantissa bits.

    ``special``: ``"ieee"``: the all-ones exponent is reserved for inf/NaN (fp32, fp16, bf16, e5m2);
    ``"fn"`` (e4m3fn, "finite"): no infinities, only the all-ones pattern ``S.1111.111`` is NaN, so the
    top exponent still holds numbers up to mantissa ``1...10``; ``"none"`` (e2m1): every pattern is a number.
    """

    exp_bits: int
    man_bits: int
    special: str = "ieee"

    @property
    def bits(self) -> int:
        return 1 + self.exp_bits + self.man_bits

    @property
    def bias(self) -> int:
        return 2 ** (self.exp_bits - 1) - 1

    @property
    def max(self) -> float:
        if self.special == "ieee":
            top_exp = 2**self.exp_bits - 2 - self.bias  # all-ones exponent is inf/NaN
            mantissa = 2 - 2.0**-self.man_bits  # 1.111...1
        elif self.special == "fn":
            top_exp = 2**self.exp_bits - 1 - self.bias
            mantissa = 2 - 2.0 ** (1 - self.man_bits)  # 1.11...10 (1.11...11 is NaN)
        else:
            top_exp = 2**self.exp_bits - 1 - self.bias
            mantissa = 2 - 2.0**-self.man_bits
        return mantissa * 2.0**top_exp

    @property
    def smallest_normal(self) -> float:
        return 2.0 ** (1 - self.bias)  # exponent field 1, mantissa 0

    @property
    def smallest_subnormal(self) -> float:
        return 2.0 ** (1 - self.bias - self.man_bits)  # exponent field 0, mantissa 0...01

    @property
    def eps(self) -> float:
        """Gap between 1.0 and the next representable number: the relative resolution."""
        return 2.0**-self.man_bits

    def values(self) -> torch.Tensor:
        """Every finite non-negative value, sorted (only sensible for small formats, <= 16 bits)."""
        if self.bits > 16:
            raise ValueError("enumerating values only makes sense for formats of at most 16 bits")
        e = torch.arange(2**self.exp_bits, dtype=torch.float64).repeat_interleave(2**self.man_bits)
        m = torch.arange(2**self.man_bits, dtype=torch.float64).repeat(2**self.exp_bits)
        frac = m / 2**self.man_bits
        normal = (1 + frac) * 2.0 ** (e - self.bias)
        subnormal = frac * 2.0 ** (1 - self.bias)
        v = torch.where(e == 0, subnormal, normal)
        top = 2**self.exp_bits - 1
        if self.special == "ieee":
            finite = e < top
        elif self.special == "fn":
            finite = ~((e == top) & (m == 2**self.man_bits - 1))
        else:
            finite = torch.ones_like(e, dtype=torch.bool)
        return torch.sort(v[finite]).values


# Layouts of the formats in the course. The dtype is None where torch has no such dtype.
FLOAT_LAYOUTS: dict[str, tuple[FloatLayout, torch.dtype | None]] = {
    "fp32": (FloatLayout(8, 23), torch.float32),
    "fp16": (FloatLayout(5, 10), torch.float16),
    "bf16": (FloatLayout(8, 7), torch.bfloat16),
    "fp8_e4m3": (FloatLayout(4, 3, "fn"), getattr(torch, "float8_e4m3fn", None)),
    "fp8_e5m2": (FloatLayout(5, 2), getattr(torch, "float8_e5m2", None)),
    # FP4 E2M1 (MXFP4/NVFP4 element): no inf, no NaN at all; torch only has a packed pair dtype.
    "fp4_e2m1": (FloatLayout(2, 1, "none"), None),
}
INT_BITS = {"int8": 8, "int4": 4, "int3": 3, "int2": 2}


@dataclass(frozen=True)
class NumberFormat:
    name: str
    bits: int
    kind: str  # "float" or "int"
    max: float
    min: float
    smallest_normal: float  # smallest positive normal number (ints: 1)
    smallest_subnormal: float  # smallest positive number (ints: 1)
    resolution_at_1: float  # gap between 1.0 and the next value (ints: 1, one step)
    decimal_digits: float  # log10(1 / relative resolution)
    source: str  # where the numbers come from


def _bits_as(dtype: torch.dtype, pattern: int) -> float:
    """Reinterpret an unsigned bit pattern as ``dtype`` (the ground truth for a layout)."""
    nbits = torch.finfo(dtype).bits
    int_dtype = {8: torch.uint8, 16: torch.int16, 32: torch.int32}[nbits]
    if pattern >= 2 ** (nbits - 1) and int_dtype is not torch.uint8:
        pattern -= 2**nbits  # the signed container
    return torch.tensor([pattern], dtype=int_dtype).view(dtype).to(torch.float64).item()


def from_bit_patterns(dtype: torch.dtype) -> dict:
    """Smallest subnormal, smallest normal and next-after-1.0 read off raw bit patterns of ``dtype``."""
    nbits = torch.finfo(dtype).bits
    man_bits = round(-torch.log2(torch.tensor(torch.finfo(dtype).eps)).item())
    one = torch.tensor([1.0], dtype=dtype).view({8: torch.uint8, 16: torch.int16, 32: torch.int32}[nbits])
    one_bits = int(one.item()) & (2**nbits - 1)
    return {
        "smallest_subnormal": _bits_as(dtype, 1),
        "smallest_normal": _bits_as(dtype, 1 << man_bits),
        "next_after_1": _bits_as(dtype, one_bits + 1),
    }


def float_format(name: str) -> NumberFormat:
    """Range and resolution of a float format, from ``torch.finfo`` when torch has the dtype."""
    lay, dtype = FLOAT_LAYOUTS[name]
    if dtype is not None:
        fi = torch.finfo(dtype)
        sub = from_bit_patterns(dtype)["smallest_subnormal"]
        return NumberFormat(name, fi.bits, "float", float(fi.max), float(fi.min), float(fi.smallest_normal),
                            sub, float(fi.eps), float(torch.log10(torch.tensor(1 / fi.eps)).item()),
                            f"torch.finfo({dtype}) + bit patterns")
    return NumberFormat(name, lay.bits, "float", lay.max, -lay.max, lay.smallest_normal,
                        lay.smallest_subnormal, lay.eps, float(torch.log10(torch.tensor(1 / lay.eps)).item()),
                        f"bit layout E{lay.exp_bits}M{lay.man_bits} (no torch dtype)")


def int_format(name: str) -> NumberFormat:
    """A signed two's-complement integer grid of ``bits`` bits (with torch.iinfo where it exists)."""
    bits = INT_BITS[name]
    if bits == 8:
        ii = torch.iinfo(torch.int8)
        lo, hi, source = ii.min, ii.max, "torch.iinfo(torch.int8)"
    else:
        lo, hi, source = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1, f"two's complement, {bits} bits"
    # Relative resolution at the top of the range: one step out of the largest magnitude.
    digits = float(torch.log10(torch.tensor(float(hi))).item())
    return NumberFormat(name, bits, "int", float(hi), float(lo), 1.0, 1.0, 1.0, digits, source)


def get_format(name: str) -> NumberFormat:
    if name in FLOAT_LAYOUTS:
        return float_format(name)
    if name in INT_BITS:
        return int_format(name)
    raise KeyError(f"unknown format {name!r}; choose one of {list(FLOAT_LAYOUTS) + list(INT_BITS)}")


def formats_table(names=("fp32", "fp16", "bf16", "fp8_e4m3", "fp8_e5m2", "fp4_e2m1", "int8", "int4")):
    """A DataFrame with one row per format (the table notebook 01 shows)."""
    import pandas as pd

    rows = [asdict(get_format(n)) for n in names]
    return pd.DataFrame(rows).set_index("name")


def representable_values(name: str) -> torch.Tensor:
    """All finite values of a small format, negative and positive (for plotting the grid)."""
    if name in INT_BITS:
        f = int_format(name)
        return torch.arange(int(f.min), int(f.max) + 1, dtype=torch.float64)
    lay, _ = FLOAT_LAYOUTS[name]
    pos = lay.values()
    return torch.cat([-pos.flip(0)[:-1], pos])


def round_trip_error(x: torch.Tensor, name: str) -> torch.Tensor:
    """``x`` cast to a torch float format and back, minus ``x`` (saturating fp8 casts first)."""
    _, dtype = FLOAT_LAYOUTS[name]
    if dtype is None:
        raise ValueError(f"torch has no dtype for {name}")
    fi = torch.finfo(dtype)
    y = x.clamp(fi.min, fi.max) if fi.bits == 8 else x  # e5m2 overflows to inf (e4m3fn saturates): clamp both
    return y.to(dtype).to(x.dtype) - x
