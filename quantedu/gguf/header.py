"""A GGUF file's header, read with ``struct``: its metadata and its tensor table, nothing else.

``gguf.GGUFReader`` turns every tokenizer string into a numpy array (seconds for a 49k vocabulary); reading
the header directly is instant, which matters when a notebook cell compares several files. The layout
(GGUF v3): magic ``GGUF``, version, tensor count, key-value count, the key-values (a key string, a value
type, the value: scalars, strings, arrays), then per tensor its name, dimensions, type and offset; the data
starts at the next multiple of ``general.alignment`` (32 by default).
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
STRING, ARRAY = 8, 9


class GGUFError(ValueError):
    """A file is not a readable GGUF (truncated, corrupt, or not GGUF at all)."""


class Cursor:
    """Little-endian ``struct`` values read one after another from a byte buffer."""

    def __init__(self, buf: bytes, path=None):
        self.buf, self.pos, self.path = buf, 0, path

    def unpack(self, fmt: str) -> tuple:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.buf):
            raise GGUFError(f"{self.path} is truncated or corrupt (its header ends early); re-create it")
        out = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return out

    def take(self, fmt: str):
        return self.unpack(fmt)[0]

    def raw(self, n: int) -> bytes:
        out = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return out

    def string(self) -> str:
        return self.raw(self.take("<Q")).decode("utf-8", errors="replace")


def _value(cur: Cursor, vtype: int, keep: bool):
    """One metadata value: decoded when ``keep``, else skipped (the cursor still moves past it)."""
    if vtype == STRING:
        text = cur.string()
        return text if keep else None
    if vtype == ARRAY:
        sub, n = cur.take("<I"), cur.take("<Q")
        if sub == STRING:
            items = [cur.string() for _ in range(n)]
            return items if keep else None
        if keep:
            return list(cur.unpack(f"<{n}{SCALARS[sub][1]}"))
        cur.pos += n * struct.calcsize(SCALARS[sub])
        return None
    return cur.take(SCALARS[vtype])


def read_header(path, values: bool = True) -> tuple[dict, list[dict]]:
    """``(metadata, tensors)`` of a GGUF file. ``metadata``: ``{key: value}`` (arrays as lists; only scalars
    when ``values=False``, which skips strings and arrays: faster still). ``tensors``: per tensor ``name``,
    ``type``, ``shape``, ``n_params``, ``bytes``, ``bits_per_weight`` and the absolute ``offset`` of its data.
    A truncated or corrupt file raises :class:`GGUFError` saying so."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    path = Path(path)
    if not path.is_file():
        raise GGUFError(f"{path} does not exist")
    size = path.stat().st_size
    with open(path, "rb") as f:
        cur = Cursor(f.read(min(size, 64 << 20)), path)
    if cur.take("<4s") != b"GGUF":
        raise GGUFError(f"{path} is not a GGUF file")
    cur.take("<I")  # the version: 3 for every file llama.cpp writes today; the layout below is v2/v3's
    n_tensors, n_kv = cur.take("<Q"), cur.take("<Q")
    meta = {}
    for _ in range(n_kv):
        key = cur.string()
        vtype = cur.take("<I")
        value = _value(cur, vtype, values or key == "general.alignment")
        if value is not None:
            meta[key] = value
    alignment = int(meta.get("general.alignment", 32))
    tensors = []
    for _ in range(n_tensors):
        name = cur.string()
        shape = tuple(cur.take("<Q") for _ in range(cur.take("<I")))
        qtype, offset = GGMLQuantizationType(cur.take("<I")), cur.take("<Q")
        n_el = int(np.prod(shape))
        bs, ts = GGML_QUANT_SIZES[qtype]
        tensors.append({"name": name, "type": qtype.name, "shape": shape, "n_params": n_el, "bytes": n_el // bs * ts,
                        "bits_per_weight": 8 * ts / bs, "offset": offset})
    start = -(-cur.pos // alignment) * alignment
    for t in tensors:
        t["offset"] += start
    end = max((t["offset"] + t["bytes"] for t in tensors), default=0)
    if end > size:
        raise GGUFError(f"{path} is truncated: tensor data ends at byte {end:,} but the file has {size:,}; "
                        "re-create it")
    return meta, tensors


__all__ = ["GGUFError", "Cursor", "read_header"]
