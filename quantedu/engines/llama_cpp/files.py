"""Reading the files the tools write: a GGUF file's metadata and tensor table (:func:`read_header`, the one
header reader: :mod:`quantedu.gguf.header`), its tensors' raw bytes and two files compared (:func:`compare_tensors`, :func:`metadata_differences`), and an
imatrix file's importance values (:func:`read_imatrix`)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...gguf.header import Cursor, read_header


def read_imatrix(path) -> dict:
    """An imatrix file (GGUF or legacy ``.dat``) -> ``{tensor name: float32 importance per column}``,
    computed exactly as ``llama-quantize`` loads it (``in_sum2 / counts``; legacy: ``values / ncall``)."""
    path = Path(path)
    with open(path, "rb") as f:
        magic = f.read(4)
    out = {}
    if magic == b"GGUF":
        from gguf import GGUFReader
        r = GGUFReader(path)
        tensors = {t.name: np.asarray(t.data, dtype=np.float32) for t in r.tensors}
        for name, sums in tensors.items():
            if not name.endswith(".in_sum2"):
                continue
            base = name[: -len(".in_sum2")]
            counts = tensors[base + ".counts"].reshape(-1)
            sums = sums.reshape(len(counts), -1)
            vals = np.where(counts[:, None] > 0, sums / np.where(counts > 0, counts, 1)[:, None], np.float32(1))
            out[base] = vals.astype(np.float32).reshape(-1)
        return out
    cur = Cursor(path.read_bytes(), path)
    for _ in range(cur.take("<i")):
        name = cur.raw(cur.take("<i")).decode()
        ncall, nval = cur.take("<i"), cur.take("<i")
        vals = np.frombuffer(cur.buf, np.float32, nval, cur.pos).copy()
        cur.pos += 4 * nval
        out[name] = (vals / np.float32(ncall)).astype(np.float32) if ncall > 0 else vals
    return out


def tensor_bytes(path) -> dict:
    """``{tensor name: (type name, raw bytes as a uint8 memmap)}`` of a GGUF file."""
    _, tensors = read_header(path)
    data = np.memmap(path, dtype=np.uint8, mode="r")
    return {t["name"]: (t["type"], data[t["offset"]: t["offset"] + t["bytes"]]) for t in tensors}


def compare_tensors(a, b) -> "object":
    """Two GGUF files tensor by tensor: a DataFrame (name, type in each, identical bytes)."""
    import pandas as pd
    ta, tb = tensor_bytes(a), tensor_bytes(b)
    rows = []
    for name in list(ta) + [n for n in tb if n not in ta]:
        x, y = ta.get(name), tb.get(name)
        rows.append({"name": name, "type_a": x[0] if x else None, "type_b": y[0] if y else None,
                     "identical": bool(x and y and x[0] == y[0] and np.array_equal(x[1], y[1]))})
    return pd.DataFrame(rows)


def metadata_differences(a, b) -> "object":
    """The metadata keys whose values differ between two GGUF files (long values shortened)."""
    import pandas as pd
    ma, mb = read_header(a)[0], read_header(b)[0]

    def short(k, m):
        if k not in m:
            return "-"
        v = m[k]
        text = f"[{len(v)} items]" if isinstance(v, list) and len(v) > 8 else repr(v)
        return text if len(text) <= 60 else text[:57] + "..."
    rows = [{"key": k, "a": short(k, ma), "b": short(k, mb)} for k in sorted(set(ma) | set(mb))
            if ma.get(k, None) != mb.get(k, None) or (k in ma) != (k in mb)]
    return pd.DataFrame(rows, columns=["key", "a", "b"])
