"""ggml's own C quantizers, called through ctypes: the bit-exact reference for :mod:`quantedu.gguf`.

``llama-cpp-python`` ships ``llama_cpp/lib/libggml-base.so``; it exports ``ggml_quantize_chunk`` (the
function ``llama-quantize`` calls for every tensor), ``ggml_row_size`` / ``ggml_type_size`` /
``ggml_blck_size``, and ``ggml_get_type_traits`` whose ``to_float`` is the dequantizer llama.cpp uses.
ggml-base is built without ``-march=native``, so these are the portable scalar C paths of
ggml/src/ggml-quants.c. Each call here is single-threaded.
"""
from __future__ import annotations

import ctypes
import functools
import importlib.util
import os
from pathlib import Path

import numpy as np

INSTALL_HINT = ("llama-cpp-python is not installed; ggml's reference quantizer comes with it. Install it with\n"
                "    CMAKE_ARGS=\"-DLLAVA_BUILD=OFF\" pip install 'llama-cpp-python[server]==0.3.36'\n"
                "(it compiles llama.cpp: about 10-15 minutes on 2 cores).")

_to_float_t = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.POINTER(ctypes.c_float), ctypes.c_int64)


class _TypeTraits(ctypes.Structure):
    # struct ggml_type_traits in ggml.h
    _fields_ = [("type_name", ctypes.c_char_p), ("blck_size", ctypes.c_int64),
                ("blck_size_interleave", ctypes.c_int64), ("type_size", ctypes.c_size_t),
                ("is_quantized", ctypes.c_bool), ("to_float", ctypes.c_void_p), ("from_float_ref", ctypes.c_void_p)]


def library_path() -> Path:
    """Path of ``libggml-base`` inside the installed ``llama_cpp`` package (or ``$QUANTEDU_GGML_LIB``)."""
    override = os.environ.get("QUANTEDU_GGML_LIB")
    if override:
        return Path(override)
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(INSTALL_HINT)
    lib_dir = Path(list(spec.submodule_search_locations)[0]) / "lib"
    for name in ("libggml-base.so", "libggml-base.dylib", "ggml-base.dll"):
        if (lib_dir / name).exists():
            return lib_dir / name
    raise ImportError(f"llama_cpp is installed but {lib_dir} has no libggml-base library. {INSTALL_HINT}")


@functools.lru_cache(maxsize=1)
def lib() -> ctypes.CDLL:
    """Load libggml-base once and declare the signatures we call."""
    so = ctypes.CDLL(str(library_path()))
    so.ggml_quantize_chunk.restype = ctypes.c_size_t
    so.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                       ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    so.ggml_row_size.restype = ctypes.c_size_t
    so.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    so.ggml_type_size.restype = ctypes.c_size_t
    so.ggml_type_size.argtypes = [ctypes.c_int]
    so.ggml_blck_size.restype = ctypes.c_int64
    so.ggml_blck_size.argtypes = [ctypes.c_int]
    so.ggml_quantize_requires_imatrix.restype = ctypes.c_bool
    so.ggml_quantize_requires_imatrix.argtypes = [ctypes.c_int]
    so.ggml_get_type_traits.restype = ctypes.POINTER(_TypeTraits)
    so.ggml_get_type_traits.argtypes = [ctypes.c_int]
    return so


def is_available() -> bool:
    try:
        lib()
        return True
    except (ImportError, OSError):
        return False


def _t(qtype) -> int:
    from ...gguf import qtype_of
    return int(qtype_of(qtype))


def row_size(qtype, n_per_row: int) -> int:
    return int(lib().ggml_row_size(_t(qtype), n_per_row))


def type_size(qtype) -> int:
    return int(lib().ggml_type_size(_t(qtype)))


def block_size(qtype) -> int:
    return int(lib().ggml_blck_size(_t(qtype)))


def quantize(x: np.ndarray, qtype, imatrix: np.ndarray | None = None) -> np.ndarray:
    """``ggml_quantize_chunk(type, x, dst, 0, nrows, n_per_row, imatrix)`` -> ``(..., row_bytes)`` uint8."""
    t = _t(qtype)
    x = np.ascontiguousarray(x, dtype=np.float32)
    n_per_row = x.shape[-1]
    rows = x.reshape(-1, n_per_row)
    if n_per_row % block_size(t):
        raise ValueError(f"rows of {n_per_row} are not a multiple of the block size {block_size(t)}")
    rs = row_size(t, n_per_row)
    out = np.empty((rows.shape[0], rs), dtype=np.uint8)
    qw = None
    if imatrix is not None:
        qw = np.ascontiguousarray(imatrix, dtype=np.float32).reshape(-1)
        if qw.shape[0] != n_per_row:
            raise ValueError(f"imatrix has {qw.shape[0]} values, rows have {n_per_row}")
    elif lib().ggml_quantize_requires_imatrix(t):
        raise ValueError("this type requires an importance matrix")
    n = lib().ggml_quantize_chunk(t, rows.ctypes.data, out.ctypes.data, 0, rows.shape[0], n_per_row,
                                  None if qw is None else qw.ctypes.data)
    assert n == out.nbytes, (n, out.nbytes)
    return out.reshape(*x.shape[:-1], rs)


def dequantize(data: np.ndarray, qtype) -> np.ndarray:
    """The type traits' ``to_float`` over every row: ``(..., row_bytes)`` -> ``(..., n_per_row)`` float32."""
    t = _t(qtype)
    traits = lib().ggml_get_type_traits(t).contents
    if not traits.to_float:
        raise ValueError(f"ggml has no to_float for type {t}")
    to_float = _to_float_t(traits.to_float)
    data = np.ascontiguousarray(data, dtype=np.uint8)
    n_blocks = data.shape[-1] // traits.type_size
    n = n_blocks * traits.blck_size
    flat = data.reshape(-1)
    out = np.empty(flat.size // traits.type_size * traits.blck_size, dtype=np.float32)
    to_float(flat.ctypes.data, out.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), out.size)
    return out.reshape(*data.shape[:-1], n)
