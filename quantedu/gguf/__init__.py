"""GGUF and llama.cpp's quantization formats, from scratch in numpy.

>>> from quantedu import gguf
>>> q = gguf.quantize(w, "Q4_K")            # (rows, row_bytes) uint8, the bytes llama.cpp writes
>>> w_hat = gguf.dequantize(q, "Q4_K")      # (rows, cols) float32

Modules: :mod:`~quantedu.gguf.layouts` (block structs), :mod:`~quantedu.gguf.legacy` (Q4_0 ... Q8_0),
:mod:`~quantedu.gguf.kquants` (Q2_K ... Q6_K), :mod:`~quantedu.gguf.iquants` (IQ4_NL, IQ4_XS),
:mod:`~quantedu.gguf.fp4` (MXFP4, NVFP4), :mod:`~quantedu.gguf.fp4_files` (FP4 GGUF files),
:mod:`~quantedu.gguf.search` (llama.cpp's scale searches), :mod:`~quantedu.gguf.imatrix`,
:mod:`~quantedu.gguf.mixes` (the ``llama-quantize`` mixes), :mod:`~quantedu.gguf.io` (the file: header reader,
writer). llama.cpp itself (its C quantizer, the bit-exact reference; its tools and servers) lives in
:mod:`quantedu.engines.llama_cpp`.
"""
from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType

from .base import BlockQuant, dequantize_rows, quantize_rows
from .fp4 import FP4
from .fp4 import LAYOUTS as FP4_LAYOUTS
from .iquants import IQUANTS
from .kquants import KQUANTS
from .layouts import LAYOUTS, BlockLayout, layout
from .legacy import LEGACY

LAYOUTS.update(FP4_LAYOUTS)  # MXFP4 / NVFP4 (issue 23): their layouts live beside their quantizers in fp4.py
QUANTIZERS: dict[GGMLQuantizationType, type[BlockQuant]] = {**LEGACY, **KQUANTS, **IQUANTS, **FP4}
TYPES = tuple(t.name for t in QUANTIZERS)


def qtype_of(qtype) -> GGMLQuantizationType:
    """``"q4_k"`` / ``"Q4_K"`` / ``GGMLQuantizationType.Q4_K`` / ``12`` -> ``GGMLQuantizationType.Q4_K``."""
    if isinstance(qtype, str):
        try:
            return GGMLQuantizationType[qtype.upper()]
        except KeyError:
            raise ValueError(f"unknown GGML type {qtype!r}; ours: {', '.join(TYPES)}") from None
    return GGMLQuantizationType(qtype)


def quantizer(qtype) -> type[BlockQuant]:
    qt = qtype_of(qtype)
    if qt not in QUANTIZERS:
        raise ValueError(f"{qt.name} is not implemented here; implemented: {', '.join(TYPES)}")
    return QUANTIZERS[qt]


def quantize(x: np.ndarray, qtype, imatrix: np.ndarray | None = None) -> np.ndarray:
    """Quantize ``x`` (``(..., n_per_row)``) to GGML ``qtype``; returns ``(..., row_bytes)`` uint8.

    ``imatrix``: per-column importance (length ``n_per_row``), as ``llama-imatrix`` computes it; None
    uses ggml's reference (no-imatrix) path. Bytes equal ``ggml_quantize_chunk``'s.
    """
    return quantize_rows(quantizer(qtype), x, imatrix)


def dequantize(data: np.ndarray, qtype) -> np.ndarray:
    """Inverse of :func:`quantize`: ``(..., row_bytes)`` uint8 -> ``(..., n_per_row)`` float32."""
    return dequantize_rows(quantizer(qtype), data)


__all__ = ["BlockLayout", "BlockQuant", "LAYOUTS", "QUANTIZERS", "TYPES", "dequantize", "layout", "qtype_of",
           "quantize", "quantizer"]
