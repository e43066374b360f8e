"""GPTQ int32 packing: round trips, words written out by hand, bad input refused."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from quantedu.export.packing import pack_int32, unpack_int32


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("dim", [0, 1])
def test_pack_unpack_round_trip(bits, dim):
    n = 32 * 3  # a multiple of 32 / gcd(32, bits) for every width
    shape = (n, 5) if dim == 0 else (5, n)
    codes = torch.randint(0, 2**bits, shape, generator=torch.Generator().manual_seed(bits))
    packed = pack_int32(codes, bits, dim=dim)
    assert packed.dtype == torch.int32
    assert packed.shape[dim] == n * bits // 32
    assert torch.equal(unpack_int32(packed, bits, dim=dim).long(), codes)


@settings(max_examples=30, deadline=None)
@given(bits=st.sampled_from([2, 3, 4, 8]), words=st.integers(1, 6), cols=st.integers(1, 4), seed=st.integers(0, 999))
def test_pack_unpack_property(bits, words, cols, seed):
    n = words * 32 // math.gcd(32, bits)
    codes = torch.randint(0, 2**bits, (n, cols), generator=torch.Generator().manual_seed(seed))
    assert torch.equal(unpack_int32(pack_int32(codes, bits), bits).long(), codes)


def _signed(word: int) -> int:
    return word - 2**32 if word >= 2**31 else word


def test_gptq_4bit_word_by_hand():
    # GPTQ packs value j of a word at shift 4 * j: codes 1..8 read as the hex digits 0x87654321.
    codes = torch.tensor([[1], [2], [3], [4], [5], [6], [7], [8]])
    assert pack_int32(codes, 4).item() == _signed(0x87654321)
    assert pack_int32(torch.tensor([[3]] * 16), 2).item() == _signed(0xFFFFFFFF)
    assert pack_int32(torch.tensor([[0x12], [0x34], [0xAB], [0xCD]]), 8).item() == _signed(0xCDAB3412)


def test_gptq_3bit_words_by_hand():
    # IST-DASLab quant.py packs 32 3-bit values into 3 words; values 10 and 21 straddle words.
    v = [(7 * j + 3) % 8 for j in range(32)]
    w0 = sum(v[j] << (3 * j) for j in range(10)) | ((v[10] & 0b11) << 30)
    w1 = (v[10] >> 2) | sum(v[j] << (3 * (j - 11) + 1) for j in range(11, 21)) | ((v[21] & 1) << 31)
    w2 = (v[21] >> 1) | sum(v[j] << (3 * (j - 22) + 2) for j in range(22, 32))
    packed = pack_int32(torch.tensor(v).unsqueeze(1), 3)
    assert packed[:, 0].tolist() == [_signed(w0), _signed(w1), _signed(w2)]


def test_packing_refuses_bad_input():
    with pytest.raises(ValueError, match="whole int32 words"):
        pack_int32(torch.zeros(7, 2, dtype=torch.long), 4)
    with pytest.raises(ValueError, match="codes must lie"):
        pack_int32(torch.full((8, 1), 16), 4)
    with pytest.raises(ValueError, match="2, 3, 4 or 8"):
        pack_int32(torch.zeros(32, 1, dtype=torch.long), 5)
