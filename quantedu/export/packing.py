"""Packing b-bit codes into int32 words, one pack/unpack pair per checkpoint layout:

* :func:`pack_int32` / :func:`unpack_int32`: GPTQ's ``qweight``/``qzeros`` (a little-endian bitstream);
* :func:`pack_bitstream` / :func:`unpack_bitstream`: compressed-tensors' ``pack-quantized`` (the same
  bitstream, padded to whole words, so any length packs);
* :func:`pack_awq` / :func:`unpack_awq`: AutoAWQ's GEMM words (the same bitstream after a nibble reorder).

Reference: IST-DASLab gptq ``quant.py`` / AutoGPTQ ``pack`` (2/4/8 bits), and the 3-bit layout of
AutoGPTQ's ``QuantLinear.pack`` (values 10 and 21 straddle word boundaries).
"""
from __future__ import annotations

import math

import torch


def pack_int32(codes: torch.Tensor, bits: int, dim: int = 0) -> torch.Tensor:
    """Pack unsigned ``bits``-bit codes into int32 words along ``dim``, as a little-endian bitstream.

    Value ``j`` occupies bits ``[j*bits, (j+1)*bits)`` of the stream; word ``k`` holds stream bits
    ``[32k, 32k+32)``. For 2/4/8 bits this is GPTQ's ``qweight``/``qzeros`` layout (value ``j % (32/bits)``
    at shift ``bits * (j % (32/bits))``); for 3 bits it is GPTQ's 3-words-per-32-values layout, where
    values 10 and 21 straddle word boundaries. ``codes.shape[dim] * bits`` must be a multiple of 32.
    """
    if bits not in (2, 3, 4, 8):
        raise ValueError(f"packing supports 2, 3, 4 or 8 bits, got {bits}")
    codes = codes.movedim(dim, 0).to(torch.int64)
    n = codes.shape[0]
    if (n * bits) % 32:
        raise ValueError(
            f"{n} values of {bits} bits do not fill whole int32 words along dim {dim}; "
            f"pad that dimension to a multiple of {32 // math.gcd(32, bits)}"
        )
    if codes.numel() and (codes.min() < 0 or codes.max() >= 2**bits):
        raise ValueError(f"codes must lie in [0, {2**bits - 1}] for {bits}-bit packing")
    rest = codes.shape[1:]
    flat = codes.reshape(n, -1)
    # Expand each value into its bits, lay them end to end, regroup by 32.
    shifts = torch.arange(bits, device=codes.device)
    bitstream = ((flat.unsqueeze(1) >> shifts.view(1, bits, 1)) & 1).reshape(n * bits, -1)
    words = bitstream.reshape(n * bits // 32, 32, -1)
    weights = (1 << torch.arange(32, device=codes.device, dtype=torch.int64)).view(1, 32, 1)
    packed = (words * weights).sum(dim=1)
    packed = torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)
    return packed.reshape(n * bits // 32, *rest).movedim(0, dim)


def unpack_int32(packed: torch.Tensor, bits: int, dim: int = 0) -> torch.Tensor:
    """Inverse of :func:`pack_int32`: int32 words -> unsigned codes (uint8)."""
    if bits not in (2, 3, 4, 8):
        raise ValueError(f"packing supports 2, 3, 4 or 8 bits, got {bits}")
    words = packed.movedim(dim, 0).to(torch.int64) & 0xFFFFFFFF
    n_words = words.shape[0]
    rest = words.shape[1:]
    flat = words.reshape(n_words, -1)
    bitstream = ((flat.unsqueeze(1) >> torch.arange(32, device=packed.device).view(1, 32, 1)) & 1)
    bitstream = bitstream.reshape(n_words * 32 // bits, bits, -1)
    values = (bitstream << torch.arange(bits, device=packed.device).view(1, bits, 1)).sum(dim=1)
    return values.to(torch.uint8).reshape(n_words * 32 // bits, *rest).movedim(0, dim)


def pack_bitstream(codes: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """compressed-tensors' packing along ``dim``: :func:`pack_int32` with the stream padded to whole words."""
    n = codes.shape[dim]
    words = math.ceil(n * bits / 32)
    pad = (-n) % 32
    if pad:
        shape = list(codes.shape)
        shape[dim] = pad
        codes = torch.cat([codes, torch.zeros(shape, dtype=codes.dtype, device=codes.device)], dim=dim)
    return pack_int32(codes, bits, dim=dim).narrow(dim, 0, words).contiguous()


def unpack_bitstream(packed: torch.Tensor, bits: int, dim: int, length: int) -> torch.Tensor:
    """Inverse of :func:`pack_bitstream`: the first ``length`` codes along ``dim``."""
    return unpack_int32(packed, bits, dim=dim).narrow(dim, 0, length)


# AutoAWQ's GEMM kernel reads the 8 nibbles of a packed word in this order (awq/modules/linear/gemm.py;
# vLLM's auto_awq.py undoes it with the inverse [0, 4, 1, 5, 2, 6, 3, 7]).
AWQ_PACK_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)


def pack_awq(x: torch.Tensor) -> torch.Tensor:
    """``(n, rows)`` 4-bit values -> ``(n, rows/8)`` int32, nibble ``i`` of word ``w`` = value ``8w + ORDER[i]``."""
    n, rows = x.shape
    order = torch.tensor(AWQ_PACK_ORDER)
    return pack_int32(x.reshape(n, rows // 8, 8)[:, :, order].reshape(n, rows), 4, dim=1).contiguous()


def unpack_awq(words: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_awq`: ``(n, rows/8)`` int32 in AutoAWQ's nibble order -> ``(n, rows)`` values."""
    n, w = words.shape
    nibbles = unpack_int32(words, 4, dim=1).reshape(n, w, 8)  # nibble i of each word
    inverse = torch.argsort(torch.tensor(AWQ_PACK_ORDER))  # value j sits in nibble inverse[j]
    return nibbles[:, :, inverse].reshape(n, w * 8)
