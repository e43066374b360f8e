"""Base class of the block quantizers and the row/block plumbing they share.

A quantizer class (one per GGML type, gguf-py ``quants.py`` style) implements two classmethods on
numpy arrays of whole blocks:

* ``quantize_blocks(xb, qw, row_sigma2) -> (n_blocks, type_size) uint8``
* ``dequantize_blocks(blocks) -> (n_blocks, block_size) float32``

``qw`` are the importance weights of every element of the blocks (the imatrix repeated for each row)
or ``None``; ``row_sigma2`` is the mean of squares of the block's whole row (only the legacy imatrix
paths of ggml use it). :func:`quantize_rows` feeds them rows in chunks to bound memory.
"""
from __future__ import annotations

from typing import ClassVar

import numpy as np

from ..checks import require_finite
from .layouts import BlockLayout, layout
from .numerics import F32, seqsum

CHUNK_WEIGHTS = 1 << 18  # weights per vectorized chunk: ~1 MB float32 arrays stay in cache


class BlockQuant:
    """One GGML block type: ``quantize_blocks`` / ``dequantize_blocks`` over ``(n_blocks, ...)`` arrays."""

    qtype: ClassVar = None
    uses_row_sigma2: ClassVar[bool] = False  # legacy imatrix paths weight by the row's mean square

    @classmethod
    def layout(cls) -> BlockLayout:
        return layout(cls.qtype)

    @classmethod
    def quantize_blocks(cls, xb: np.ndarray, qw: np.ndarray | None, row_sigma2: np.ndarray | None) -> np.ndarray:
        raise NotImplementedError

    @classmethod
    def dequantize_blocks(cls, blocks: np.ndarray) -> np.ndarray:
        raise NotImplementedError


def element_major(xb: np.ndarray) -> np.ndarray:
    """``(n_blocks, block_size)`` -> ``(block_size, n_blocks)`` contiguous (see numerics docstring)."""
    return np.ascontiguousarray(np.asarray(xb, dtype=F32).T)


def sub_blocks(X: np.ndarray, size: int) -> np.ndarray:
    """Element-major super-blocks ``(256, NB)`` -> element-major sub-blocks ``(size, n_sub*NB)``;
    group ``g = j*NB + b`` is sub-block ``j`` of super-block ``b``."""
    n, nb = X.shape
    return np.ascontiguousarray(X.reshape(n // size, size, nb).transpose(1, 0, 2).reshape(size, -1))


def super_blocks(S: np.ndarray, nb: int) -> np.ndarray:
    """Inverse of :func:`sub_blocks`: ``(size, n_sub*NB)`` -> ``(n_sub*size, NB)``."""
    size = S.shape[0]
    return np.ascontiguousarray(S.reshape(size, -1, nb).transpose(1, 0, 2).reshape(-1, nb))


def _check(x: np.ndarray, qt: BlockLayout) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim < 1 or x.shape[-1] == 0:
        raise ValueError("quantize needs an array whose last axis holds the weights of one row")
    if x.shape[-1] % qt.block_size:
        qt.row_size(x.shape[-1])  # raises the explanatory error
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"quantize needs floating-point weights, got {x.dtype}")
    x = np.ascontiguousarray(x, dtype=F32)
    require_finite(x.reshape(-1, x.shape[-1]), f"{qt.name} input")
    return x


def quantize_rows(cls: type[BlockQuant], x: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
    """Quantize ``x`` (``(..., n_per_row)``) row by row like ``ggml_quantize_chunk``.

    Returns ``(..., row_size)`` uint8, the bytes a GGUF file stores (same shape convention as
    ``gguf.quants.quantize``). ``imatrix`` has one importance per column (``n_per_row`` values).
    """
    lay = cls.layout()
    x = _check(x, lay)
    n_per_row = x.shape[-1]
    rows = x.reshape(-1, n_per_row)
    qw_row = None
    if imatrix is not None:
        qw_row = np.ascontiguousarray(imatrix, dtype=F32).reshape(-1)
        if qw_row.shape[0] != n_per_row:
            raise ValueError(f"imatrix has {qw_row.shape[0]} values but rows have {n_per_row} columns")
    bpr = n_per_row // lay.block_size
    out = np.empty((rows.shape[0], bpr * lay.type_size), dtype=np.uint8)
    step = max(1, CHUNK_WEIGHTS // n_per_row)
    for r0 in range(0, rows.shape[0], step):
        chunk = rows[r0:r0 + step]
        nr = chunk.shape[0]
        xb = chunk.reshape(nr * bpr, lay.block_size)
        qw = sig = None
        if qw_row is not None:
            qw = np.broadcast_to(qw_row.reshape(1, bpr, lay.block_size), (nr, bpr, lay.block_size))
            qw = qw.reshape(nr * bpr, lay.block_size)
            if cls.uses_row_sigma2:
                # float sum_x2 = 0; for (j < n_per_row) sum_x2 += x[j]*x[j]; sigma2 = sum_x2/n_per_row;
                xt = element_major(chunk)
                sig = seqsum(xt * xt) / F32(n_per_row)
                sig = np.repeat(sig, bpr)
        out[r0:r0 + nr] = cls.quantize_blocks(xb, qw, sig).reshape(nr, -1)
    return out.reshape(*x.shape[:-1], -1)


def dequantize_rows(cls: type[BlockQuant], data: np.ndarray) -> np.ndarray:
    """Inverse of :func:`quantize_rows`: ``(..., row_size)`` uint8 -> ``(..., n_per_row)`` float32."""
    lay = cls.layout()
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        raise TypeError(f"dequantize needs the uint8 bytes that quantize returned (rows, row_bytes), got "
                        f"{type(data).__name__} of {getattr(data, 'dtype', '?')}: casting them would decode garbage")
    data = np.ascontiguousarray(data)
    if data.shape[-1] % lay.type_size:
        raise ValueError(f"{lay.name} rows must be a multiple of {lay.type_size} bytes; got {data.shape[-1]}")
    n_blocks = data.shape[-1] // lay.type_size
    vals = cls.dequantize_blocks(data.reshape(-1, lay.type_size))
    return vals.reshape(*data.shape[:-1], n_blocks * lay.block_size)
