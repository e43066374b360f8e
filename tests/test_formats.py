"""Number formats: what the bit layouts predict equals what torch's dtypes hold."""
import pytest
import torch

from quantedu import number_formats as formats
from quantedu.number_formats import FLOAT_LAYOUTS, FloatLayout

TORCH_FLOATS = [n for n, (_, dt) in FLOAT_LAYOUTS.items() if dt is not None]


@pytest.mark.parametrize("name", TORCH_FLOATS)
def test_layout_matches_torch_finfo(name):
    lay, dtype = FLOAT_LAYOUTS[name]
    fi = torch.finfo(dtype)
    assert lay.bits == fi.bits
    assert lay.max == fi.max
    assert lay.smallest_normal == fi.smallest_normal
    assert lay.eps == fi.eps


@pytest.mark.parametrize("name", TORCH_FLOATS)
def test_layout_matches_raw_bit_patterns(name):
    lay, dtype = FLOAT_LAYOUTS[name]
    seen = formats.from_bit_patterns(dtype)
    assert seen["smallest_subnormal"] == lay.smallest_subnormal
    assert seen["smallest_normal"] == lay.smallest_normal
    assert seen["next_after_1"] == 1 + lay.eps


@pytest.mark.parametrize("name", [n for n in TORCH_FLOATS if torch.finfo(FLOAT_LAYOUTS[n][1]).bits <= 16])
def test_enumerated_values_equal_every_finite_bit_pattern(name):
    lay, dtype = FLOAT_LAYOUTS[name]
    nbits = torch.finfo(dtype).bits
    container = torch.uint8 if nbits == 8 else torch.int16
    patterns = torch.arange(2**nbits, dtype=torch.int64)
    if nbits == 16:
        patterns = torch.where(patterns >= 2**15, patterns - 2**16, patterns)
    values = patterns.to(container).view(dtype).to(torch.float64)
    finite_nonneg = torch.unique(values[torch.isfinite(values) & (values >= 0)])
    assert torch.equal(finite_nonneg, torch.unique(lay.values()))


def test_fp8_and_fp4_known_structure():
    # E4M3 "fn": the top exponent still holds numbers; 0b0.1111.110 = 1.75 * 2**8 = 448.
    assert FLOAT_LAYOUTS["fp8_e4m3"][0].max == 1.75 * 2 ** (15 - 7)
    # E2M1 has no special values: 16 patterns, 15 distinct values (+0 == -0), from -6 to 6.
    grid = formats.representable_values("fp4_e2m1")
    assert len(grid) == 15 and grid.max() == 6 and grid.min() == -6
    assert FloatLayout(2, 1, "none").values().tolist() == [0, 0.5, 1, 1.5, 2, 3, 4, 6]


def test_int_formats():
    i8, i4 = formats.get_format("int8"), formats.get_format("int4")
    assert (i8.min, i8.max) == (torch.iinfo(torch.int8).min, torch.iinfo(torch.int8).max)
    assert (i4.min, i4.max) == (-8, 7)
    assert len(formats.representable_values("int4")) == 16


def test_table_and_round_trip():
    table = formats.formats_table()
    assert list(table.index) == ["fp32", "fp16", "bf16", "fp8_e4m3", "fp8_e5m2", "fp4_e2m1", "int8", "int4"]
    assert table.loc["bf16", "max"] > table.loc["fp16", "max"]  # bf16 keeps fp32's range ...
    assert table.loc["bf16", "resolution_at_1"] > table.loc["fp16", "resolution_at_1"]  # ... not its precision
    x = torch.linspace(1, 2, 1001, dtype=torch.float64)
    for name in ("fp16", "bf16", "fp8_e4m3"):
        err = formats.round_trip_error(x, name).abs().max().item()
        assert err <= formats.get_format(name).resolution_at_1 / 2 + 1e-12
    assert torch.isfinite(formats.round_trip_error(torch.tensor([1e6]), "fp8_e4m3")).all()


def test_unknown_format():
    with pytest.raises(KeyError, match="unknown format"):
        formats.get_format("fp7")
