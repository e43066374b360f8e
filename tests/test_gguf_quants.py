"""quantedu.gguf: our numpy quantizers produce the same bytes as ggml's C quantizer.

Tests named ``test_ggml_*`` compare against ``ggml_quantize_chunk`` from the libggml-base that
llama-cpp-python installs. CI installs llama-cpp-python, so these tests FAIL (they do not skip) when
it is missing; the failure message says how to install it.

Why bit-exactness is possible at all: ggml-quants.c is compiled into libggml-base without
``-march=native``/``-ffast-math``, so every float operation is one IEEE binary32 operation (SSE2, no
FMA contraction, no re-association). We replay the same operations in the same order in numpy
float32, with sequential (not pairwise) sums. A build of ggml with FMA contraction (e.g. ggml-base
compiled with ``-march=native`` on some toolchains) would round some ``a*b + c`` differently and could
flip an occasional rounding decision; ``_mismatched_blocks`` counts such blocks, and the tests require
zero because this build is exact.
"""
from __future__ import annotations

import zlib

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES
from gguf import quants as gguf_quants

from quantedu import gguf
from quantedu.engines.llama_cpp import ggml as ggml_reference
from quantedu.gguf.layouts import QK_K

K_TYPES = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_XS")
ALL_TYPES = gguf.TYPES


def _distributions(rng, rows, cols):
    normal = rng.standard_normal((rows, cols)).astype(np.float32) * 0.02
    heavy = (rng.standard_t(2, (rows, cols)) * 0.01).astype(np.float32)
    outliers = normal.copy()
    outliers[:, rng.choice(cols, size=max(1, cols // 64), replace=False)] *= 80.0
    const = np.repeat(rng.standard_normal((rows, 1)).astype(np.float32), cols, axis=1)
    zeros = np.zeros((rows, cols), np.float32)
    mixed = normal.copy()
    mixed[0] = 0.0  # an all-zero row next to normal rows
    mixed[:, :32] = 1e-30  # denormal-sized block
    positive = np.abs(normal) + 0.01  # no negative values: min clamps to 0 in the asymmetric types
    return {"normal": normal, "heavy": heavy, "outliers": outliers, "const": const, "zeros": zeros,
            "mixed": mixed, "positive": positive}


def _mismatched_blocks(a: np.ndarray, b: np.ndarray, qtype) -> int:
    ts = gguf.layout(qtype).type_size
    return int((a.reshape(-1, ts) != b.reshape(-1, ts)).any(axis=1).sum())


def _cols_for(qtype):
    bs = gguf.layout(qtype).block_size
    return (QK_K, 3 * QK_K) if bs == QK_K else (bs, 3 * bs, 576)  # NVFP4's blocks are 64


# ---------------------------------------------------------------- layouts (no llama.cpp needed)
@pytest.mark.parametrize("qtype", ALL_TYPES)
def test_layouts_match_gguf_py(qtype):
    lay = gguf.layout(qtype)
    block_size, type_size = GGML_QUANT_SIZES[gguf.qtype_of(qtype)]
    assert (lay.block_size, lay.type_size) == (block_size, type_size)
    assert lay.bits_per_weight == pytest.approx(8 * type_size / block_size)
    assert sum(f.nbytes for f in lay.fields) == lay.type_size


def test_layout_split_join_roundtrip():
    rng = np.random.default_rng(0)
    lay = gguf.layout("Q4_K")
    raw = rng.integers(0, 256, (5, lay.type_size), dtype=np.uint8)
    assert np.array_equal(lay.join(**lay.split(raw)), raw)


# ---------------------------------------------------------------- against gguf-py (no llama.cpp needed)
@pytest.mark.parametrize("qtype", ALL_TYPES)
def test_dequantize_matches_gguf_py(qtype):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 2 * QK_K)).astype(np.float32)
    q = gguf.quantize(x, qtype)
    ours = gguf.dequantize(q, qtype)
    theirs = gguf_quants.dequantize(q, gguf.qtype_of(qtype)).reshape(ours.shape)
    assert np.array_equal(ours, theirs)


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"])
def test_legacy_quantize_matches_gguf_py(qtype):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((6, 96)).astype(np.float32)
    assert np.array_equal(gguf.quantize(x, qtype), gguf_quants.quantize(x, gguf.qtype_of(qtype)))


def test_more_bits_less_error():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((32, QK_K)).astype(np.float32)
    order = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0"]
    rmse = [float(np.sqrt(np.mean((gguf.dequantize(gguf.quantize(x, t), t) - x) ** 2))) for t in order]
    assert rmse == sorted(rmse, reverse=True), dict(zip(order, rmse))
    # the error of a b-bit code is a fraction of the block range: roughly halves per extra bit
    assert rmse[-1] < 0.01 < rmse[0]


@pytest.mark.parametrize("qtype", ["Q3_K", "Q4_K", "Q5_K", "IQ4_XS", "Q4_0", "Q4_1"])
def test_imatrix_lowers_weighted_error(qtype):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((64, QK_K)).astype(np.float32)
    imatrix = np.exp(rng.standard_normal(QK_K) * 2).astype(np.float32)  # a few columns matter a lot

    def werr(im):
        err = gguf.dequantize(gguf.quantize(x, qtype, im), qtype) - x
        return float((imatrix * err ** 2).sum())

    assert werr(imatrix) < werr(None)


def test_bad_inputs_say_what_to_do():
    x = np.zeros((2, 100), np.float32)
    with pytest.raises(ValueError, match="multiple of 32"):
        gguf.quantize(x, "Q4_0")
    with pytest.raises(ValueError, match="multiple of 256"):
        gguf.quantize(np.zeros((2, 576), np.float32), "Q4_K")
    with pytest.raises(ValueError, match="imatrix has 3 values"):
        gguf.quantize(np.zeros((2, 256), np.float32), "Q4_K", imatrix=np.ones(3))
    with pytest.raises(ValueError, match="unknown GGML type"):
        gguf.quantize(np.zeros((2, 256), np.float32), "Q4_KM")


def test_missing_llama_cpp_gives_install_command(monkeypatch):
    import importlib.util
    ggml_reference.lib.cache_clear()
    monkeypatch.delenv("QUANTEDU_GGML_LIB", raising=False)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else real(name, *a))
    try:
        with pytest.raises(ImportError, match="pip install 'llama-cpp-python"):
            ggml_reference.lib()
    finally:
        monkeypatch.undo()
        ggml_reference.lib.cache_clear()


# ---------------------------------------------------------------- bit-exact against ggml (needs llama.cpp)
@pytest.mark.parametrize("qtype", ALL_TYPES)
def test_ggml_layout_sizes(ggml, qtype):
    lay = gguf.layout(qtype)
    assert ggml.type_size(qtype) == lay.type_size
    assert ggml.block_size(qtype) == lay.block_size
    assert ggml.row_size(qtype, 4 * lay.block_size) == lay.row_size(4 * lay.block_size)


@pytest.mark.parametrize("use_imatrix", [False, True], ids=["ref", "imatrix"])
@pytest.mark.parametrize("qtype", ALL_TYPES)
def test_ggml_same_bytes_random(ggml, qtype, use_imatrix):
    rng = np.random.default_rng(zlib.crc32(f"{qtype}-{use_imatrix}".encode()))  # fixed per case
    checked = 0
    for cols in _cols_for(qtype):
        for name, x in _distributions(rng, 5, cols).items():
            im = (rng.random(cols) ** 3 + 1e-3).astype(np.float32) if use_imatrix else None
            ours, ref = gguf.quantize(x, qtype, im), ggml.quantize(x, qtype, im)
            assert ours.shape == ref.shape
            bad = _mismatched_blocks(ours, ref, qtype)
            n_blocks = ours.size // gguf.layout(qtype).type_size
            assert bad == 0, f"{qtype} {name} {x.shape}: {bad} of {n_blocks} blocks differ"
            checked += 1
    assert checked >= 14


@pytest.mark.parametrize("qtype", ALL_TYPES)
def test_ggml_same_floats_dequantize(ggml, qtype):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((8, QK_K)).astype(np.float32)
    q = ggml.quantize(x, qtype)
    assert np.array_equal(gguf.dequantize(q, qtype).view(np.uint32), ggml.dequantize(q, qtype).view(np.uint32))


@pytest.fixture(scope="module")
def real_tensors():
    """A representative subset of the offline model: one tensor per shape, from the first, a middle
    and the last layer (rows of 576 and of 1536), dequantized from the file's Q4_1 with gguf-py."""
    from gguf import GGUFReader

    from quantedu.models import offline_gguf_path
    reader = GGUFReader(offline_gguf_path())
    wanted = {"blk.0.ffn_down.weight", "blk.15.ffn_down.weight", "blk.29.ffn_down.weight",
              "blk.0.attn_v.weight", "blk.14.attn_q.weight", "blk.29.ffn_up.weight"}
    out = {}
    for t in reader.tensors:
        if t.name in wanted:
            out[t.name] = gguf_quants.dequantize(t.data, t.tensor_type).reshape(int(t.shape[1]), int(t.shape[0]))
    assert set(out) == wanted
    return out


@pytest.mark.parametrize("use_imatrix", [False, True], ids=["ref", "imatrix"])
@pytest.mark.parametrize("qtype", ALL_TYPES)
def test_ggml_same_bytes_real_tensors(ggml, real_tensors, qtype, use_imatrix):
    rng = np.random.default_rng(6)
    n_checked = 0
    for name, w in real_tensors.items():
        if w.shape[1] % gguf.layout(qtype).block_size:
            continue  # llama.cpp would fall back to another type for this tensor
        w = w[:96]  # enough rows to cover every code path, fast enough for CI
        im = (rng.random(w.shape[1]) + 0.05).astype(np.float32) if use_imatrix else None
        bad = _mismatched_blocks(gguf.quantize(w, qtype, im), ggml.quantize(w, qtype, im), qtype)
        assert bad == 0, f"{name} as {qtype}: {bad} blocks differ"
        n_checked += 1
    assert n_checked >= 3
