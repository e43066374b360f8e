"""Block layouts of the GGML quantization types, derived from their field definitions.

Every GGML quantized tensor is a sequence of fixed-size *blocks*; a block stores ``block_size``
weights as a few scale fields plus packed integer codes. The byte size of a block and its bits per
weight are *computed* here from the list of fields (as ggml-common.h declares the ``block_*`` structs),
never typed in as constants. ``tests/test_gguf_quants.py`` checks them against ggml's ``ggml_type_size``
and gguf-py's ``GGML_QUANT_SIZES``.

Sizes follow ggml/src/ggml-common.h (``block_q4_0`` ... ``block_iq4_xs``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gguf import GGMLQuantizationType as T

QK = 32  # block size of the legacy formats (QK4_0 = QK4_1 = QK5_0 = QK5_1 = QK8_0 = QK4_NL)
QK_K = 256  # super-block size of the K-quants and IQ4_XS


@dataclass(frozen=True)
class Field:
    """One member of a block struct: ``count`` elements of numpy ``dtype``."""

    name: str
    dtype: str
    count: int
    doc: str = ""

    @property
    def nbytes(self) -> int:
        return np.dtype(self.dtype).itemsize * self.count


def half(name: str, doc: str) -> Field:
    """A float16 scale (``ggml_half``)."""
    return Field(name, "<f2", 1, doc)


def packed(name: str, n_values: int, bits: int, doc: str) -> Field:
    """``n_values`` codes of ``bits`` bits each, packed into bytes."""
    assert (n_values * bits) % 8 == 0
    return Field(name, "u1", n_values * bits // 8, doc)


@dataclass(frozen=True)
class BlockLayout:
    """A block struct: fields in memory order, and how many weights one block holds."""

    qtype: T
    block_size: int
    fields: tuple[Field, ...]

    @property
    def name(self) -> str:
        return self.qtype.name

    @property
    def type_size(self) -> int:
        """Bytes per block (``sizeof(block_xxx)``; the structs have no padding)."""
        return sum(f.nbytes for f in self.fields)

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.type_size / self.block_size

    @property
    def offsets(self) -> dict[str, int]:
        out, pos = {}, 0
        for f in self.fields:
            out[f.name] = pos
            pos += f.nbytes
        return out

    def row_size(self, n_per_row: int) -> int:
        """Bytes of one row of ``n_per_row`` weights (``ggml_row_size``)."""
        if n_per_row % self.block_size:
            raise ValueError(
                f"{self.name} needs rows whose length is a multiple of {self.block_size}; got {n_per_row}. "
                f"Pick a type with a smaller block (e.g. Q8_0, Q5_0, IQ4_NL have blocks of 32)."
            )
        return n_per_row // self.block_size * self.type_size

    def split(self, blocks: np.ndarray) -> dict[str, np.ndarray]:
        """View ``(n_blocks, type_size)`` uint8 as ``{field: (n_blocks, count) array}``."""
        blocks = np.ascontiguousarray(blocks, dtype=np.uint8).reshape(-1, self.type_size)
        out, pos = {}, 0
        for f in self.fields:
            raw = np.ascontiguousarray(blocks[:, pos:pos + f.nbytes])
            out[f.name] = raw.view(np.dtype(f.dtype))
            pos += f.nbytes
        return out

    def join(self, **values: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`split`: pack field arrays ``(n_blocks, count)`` into ``(n_blocks, type_size)``."""
        n = len(next(iter(values.values())))
        out = np.empty((n, self.type_size), dtype=np.uint8)
        pos = 0
        for f in self.fields:
            arr = np.ascontiguousarray(np.asarray(values[f.name]).astype(np.dtype(f.dtype), copy=False))
            out[:, pos:pos + f.nbytes] = arr.reshape(n, f.count).view(np.uint8)
            pos += f.nbytes
        return out


_L = BlockLayout
LAYOUTS: dict[T, BlockLayout] = {
    # legacy: one scale (and min) per 32 weights
    T.Q4_0: _L(T.Q4_0, QK, (half("d", "scale"), packed("qs", QK, 4, "codes 0..15, x = d*(q-8)"))),
    T.Q4_1: _L(T.Q4_1, QK, (half("d", "scale"), half("m", "min"), packed("qs", QK, 4, "x = d*q + m"))),
    T.Q5_0: _L(T.Q5_0, QK, (half("d", "scale"), packed("qh", QK, 1, "5th bits"), packed("qs", QK, 4, "low nibbles"))),
    T.Q5_1: _L(T.Q5_1, QK, (half("d", "scale"), half("m", "min"), packed("qh", QK, 1, "5th bits"),
                            packed("qs", QK, 4, "low nibbles"))),
    T.Q8_0: _L(T.Q8_0, QK, (half("d", "scale"), Field("qs", "i1", QK, "int8 codes, x = d*q"))),
    # K-quants: a super-block of 256 with quantized sub-block scales (and mins)
    T.Q2_K: _L(T.Q2_K, QK_K, (packed("scales", QK_K // 16, 8, "4-bit scale | 4-bit min per 16"),
                              packed("qs", QK_K, 2, "2-bit codes"),
                              half("d", "scale of the scales"), half("dmin", "scale of the mins"))),
    T.Q3_K: _L(T.Q3_K, QK_K, (packed("hmask", QK_K, 1, "3rd bits"), packed("qs", QK_K, 2, "low 2 bits"),
                              packed("scales", QK_K // 16, 6, "6-bit signed scales per 16"),
                              half("d", "scale of the scales"))),
    T.Q4_K: _L(T.Q4_K, QK_K, (half("d", "scale of the scales"), half("dmin", "scale of the mins"),
                              packed("scales", 2 * QK_K // 32, 6, "6-bit scale and min per 32"),
                              packed("qs", QK_K, 4, "4-bit codes"))),
    T.Q5_K: _L(T.Q5_K, QK_K, (half("d", "scale of the scales"), half("dmin", "scale of the mins"),
                              packed("scales", 2 * QK_K // 32, 6, "6-bit scale and min per 32"),
                              packed("qh", QK_K, 1, "5th bits"), packed("qs", QK_K, 4, "low nibbles"))),
    T.Q6_K: _L(T.Q6_K, QK_K, (packed("ql", QK_K, 4, "low nibbles"), packed("qh", QK_K, 2, "high 2 bits"),
                              Field("scales", "i1", QK_K // 16, "int8 scale per 16"),
                              half("d", "scale of the scales"))),
    # non-linear 4-bit grid
    T.IQ4_NL: _L(T.IQ4_NL, QK, (half("d", "scale"), packed("qs", QK, 4, "indices into kvalues"))),
    T.IQ4_XS: _L(T.IQ4_XS, QK_K, (half("d", "scale of the scales"),
                                  Field("scales_h", "<u2", 1, "high 2 bits of 8 6-bit scales"),
                                  packed("scales_l", QK_K // 32, 4, "low 4 bits of the scales"),
                                  packed("qs", QK_K, 4, "indices into kvalues"))),
}


def layout(qtype) -> BlockLayout:
    """The layout of ``qtype`` (a ``GGMLQuantizationType`` or its name, e.g. ``"Q4_K"``)."""
    qt = T[qtype.upper()] if isinstance(qtype, str) else T(qtype)
    if qt not in LAYOUTS:
        raise KeyError(f"no block layout for {qt.name}; supported: {', '.join(t.name for t in LAYOUTS)}")
    return LAYOUTS[qt]
