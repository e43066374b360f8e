"""Packing b-bit codes into int32 words: the GPTQ checkpoint layout (``qweight``/``qzeros``), which
compressed-tensors' ``pack-quantized`` and AutoAWQ's GEMM words reuse (AutoAWQ after a nibble reorder).

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
