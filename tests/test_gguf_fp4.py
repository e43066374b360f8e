"""MXFP4 / NVFP4 GGUF blocks: our numpy bytes equal ggml's C reference (and gguf-py's) on random, real and
adversarial blocks, and llama.cpp loads and runs files the course writes with them.

ggml's C comes from the libggml-base that llama-cpp-python ships (``quantedu.engines.llama_cpp.ggml``); CI installs
it, so these tests FAIL without it. The ``test_llama_quantize_*`` test needs the built llama.cpp tools
(``make llama-tools``): it fails on CI and skips elsewhere when they are missing (``helpers.missing``).
"""
from __future__ import annotations

import functools

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T
from gguf import quants as gguf_quants

from quantedu import gguf
from quantedu.checks import NonFiniteError
from quantedu.engines.llama_cpp import fp4 as llama_fp4
from quantedu.gguf import fp4, fp4_files, io

FP4_TYPES = ("MXFP4", "NVFP4")
E2M1_MIDPOINTS = np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0], np.float32)


def _mismatched(ours, theirs, qtype) -> int:
    ts = gguf.layout(qtype).type_size
    return int((ours.reshape(-1, ts) != theirs.reshape(-1, ts)).any(axis=1).sum())


def _power_of_two_edges(rng) -> np.ndarray:
    """Rows whose largest magnitude sits on, or 1-3 float32 steps below, every power of two from 2**-140 to
    2**127: there ``floorf(log2f(amax))`` (ggml's MXFP4 exponent) is not the exact floor."""
    rows = []
    for k in range(-140, 128):
        for step in (0, -1, -3):
            bits = int(np.array(2.0**k, np.float32).view(np.uint32)) + step
            amax = np.array(bits, np.uint32).view(np.float32)
            r = np.clip(rng.standard_normal(64).astype(np.float32), -1, 1) * amax
            r[rng.integers(64)] = -amax if k % 2 else amax
            rows.append(r)
    return np.stack(rows).astype(np.float32)


def _adversarial(rng) -> dict[str, np.ndarray]:
    mid = np.zeros((6, 64), np.float32)
    for i, s in enumerate((1.0, 0.5, 2.0**-10, 2.0**20, 3.0, 1 / 6)):
        mid[i, 0] = mid[i, 32] = 6 * s  # amax 6 * 2**k: the E2M1 grid unscaled, so midpoints stay midpoints
        mid[i, 1:8], mid[i, 8:15] = E2M1_MIDPOINTS * s, -E2M1_MIDPOINTS * s
        mid[i, 16:23] = mid[i, 48:55] = E2M1_MIDPOINTS * s
    huge = (rng.standard_normal((4, 64)) * 0.01).astype(np.float32)
    huge[:, 5] = [3.4e38, -1e30, 1e10, 65504.0]  # one value dwarfs its block
    tiny = rng.standard_normal((5, 64)).astype(np.float32) * np.array(
        [[1e-38], [1e-40], [1e-44], [2.0**-126], [2.0**-125]], np.float32)  # subnormal scales, E8M0 wrap-around
    nv_top = np.zeros((8, 64), np.float32)  # NVFP4 scales amax/6 around ggml's "256 and up -> 448" quirk
    for i, s in enumerate((239.9, 240.0, 250.0, 256.0, 300.0, 447.0, 448.0, 449.0)):
        nv_top[i, :16] = 6 * s * np.linspace(-1, 1, 16)
    nv_sub = np.zeros((8, 64), np.float32)  # NVFP4 scales among UE4M3's subnormals, incl. the [7.5, 8)/512 cap
    for i, s in enumerate((7.4, 7.5, 7.6, 7.99, 0.4, 0.6, 1.0, 8.0)):
        nv_sub[i, :16] = 6 * s / 512 * np.linspace(-1, 1, 16)
    return {"power-of-two edges": _power_of_two_edges(rng), "E2M1 midpoints": mid, "one huge value": huge,
            "zeros": np.zeros((3, 64), np.float32), "subnormal scales": tiny, "NVFP4 scales near 448": nv_top,
            "NVFP4 subnormal scales": nv_sub.astype(np.float32)}


def _random(rng) -> dict[str, np.ndarray]:
    normal = (rng.standard_normal((16, 576)) * 0.02).astype(np.float32)
    heavy = (rng.standard_t(2, (16, 576)) * 0.01).astype(np.float32)
    wide = (rng.standard_normal((16, 576)) * 10.0 ** rng.integers(-30, 30, (16, 1))).astype(np.float32)
    return {"normal": normal, "student-t": heavy, "scales 1e-30..1e30": wide}


# ---------------------------------------------------------------- layouts
@pytest.mark.parametrize("qtype", FP4_TYPES)
def test_layouts_are_ggml_and_gguf_py_sizes(ggml, qtype):
    lay = gguf.layout(qtype)
    assert (lay.block_size, lay.type_size) == GGML_QUANT_SIZES[T[qtype]]
    assert (lay.block_size, lay.type_size) == (ggml.block_size(qtype), ggml.type_size(qtype))
    assert lay.bits_per_weight == {"MXFP4": 4.25, "NVFP4": 4.5}[qtype]


# ---------------------------------------------------------------- bytes equal ggml's C
@pytest.mark.parametrize("qtype", FP4_TYPES)
def test_ggml_same_bytes_random_and_adversarial(ggml, qtype):
    rng = np.random.default_rng(23)
    checked = 0
    for name, x in {**_random(rng), **_adversarial(rng)}.items():
        ours, theirs = gguf.quantize(x, qtype), ggml.quantize(x, qtype)
        assert ours.shape == theirs.shape
        assert _mismatched(ours, theirs, qtype) == 0, f"{qtype} {name}: blocks differ from ggml's"
        deq = ggml.dequantize(theirs, qtype)
        assert np.array_equal(gguf.dequantize(theirs, qtype).view(np.uint32), deq.view(np.uint32)), name
        checked += x.size
    assert checked > 60_000


def test_adversarial_cases_reach_the_quirks(ggml):
    """The adversarial inputs exercise what they claim to: ggml's exponent differs from the exact floor just below
    powers of two, wraps below 2**-125, and NVFP4 maps scales that round to 256 or more to 448 (the tests above
    then prove we agree on them)."""
    rng = np.random.default_rng(23)
    adv = _adversarial(rng)
    x = adv["power-of-two edges"].reshape(-1, 32)
    amax = np.abs(x).max(axis=1)
    exact = (np.frexp(amax.astype(np.float64))[1] - 1 - 2 + 127) & 0xFF
    e = ggml.quantize(x, "MXFP4")[:, 0]
    assert (e != exact).sum() > 100  # log2f rounds up to the next integer there
    e_tiny = ggml.quantize(adv["subnormal scales"], "MXFP4").reshape(-1, 17)[:, 0]
    assert {255, 248, 232} & set(e_tiny.tolist())  # 2**-126 -> 0xFF, 1e-40 -> 248: the uint8_t cast wrapped
    d = ggml.quantize(adv["NVFP4 scales near 448"], "NVFP4").reshape(-1, 36)[::1, :4]
    assert d[:4, 0].tolist() == [0x77, 0x77, 0x7E, 0x7E]  # 239.9, 240 -> 240; 250 and 256 -> 448, not 256


def test_e2m1_midpoints_go_toward_zero_in_ggml(ggml):
    """ggml's best_index keeps the first of equal errors: 0.75 -> 0.5, 1.75 -> 1.5, 3.5 -> 3 (round-to-even,
    OCP and llm-compressor, give 1, 2, 4)."""
    x = np.zeros((1, 32), np.float32)
    x[0, :8] = [6.0, 0.75, 1.75, 3.5, -0.75, -3.5, 0.25, 5.0]  # amax 6 -> scale 1: the E2M1 grid itself
    got = gguf.dequantize(ggml.quantize(x, "MXFP4"), "MXFP4")[0, :8]
    assert got.tolist() == [6.0, 0.5, 1.5, 3.0, -0.5, -3.0, 0.0, 4.0]


@pytest.fixture(scope="module")
def real_tensors():
    """Six tensors of the course model (first, middle, last layer; rows of 576 and 1536), from the offline file."""
    from helpers import offline_gguf

    from quantedu.exercises.inputs import course_tensor
    offline_gguf()
    names = ("blk.0.ffn_down.weight", "blk.15.ffn_down.weight", "blk.29.ffn_down.weight",
             "blk.0.attn_v.weight", "blk.14.attn_q.weight", "blk.29.ffn_up.weight")
    return {n: course_tensor(n) for n in names}


@pytest.mark.parametrize("qtype", FP4_TYPES)
def test_ggml_same_bytes_real_tensors(ggml, real_tensors, qtype):
    for name, w in real_tensors.items():
        w = w[:192]  # every row is an independent run of blocks: 192 rows x 576/1536 columns keeps CI fast
        assert _mismatched(gguf.quantize(w, qtype), ggml.quantize(w, qtype), qtype) == 0, f"{name} as {qtype}"


# ---------------------------------------------------------------- gguf-py
def test_gguf_py_mxfp4_same_bytes(real_tensors):
    rng = np.random.default_rng(24)
    for name, x in {**_random(rng), **_adversarial(rng), **{k: v[:64] for k, v in real_tensors.items()}}.items():
        assert np.array_equal(gguf.quantize(x, "MXFP4"), gguf_quants.quantize(x, T.MXFP4)), name


@pytest.mark.parametrize("qtype", FP4_TYPES)
def test_gguf_py_dequantizes_to_our_values(qtype):
    rng = np.random.default_rng(25)
    x = np.concatenate([v.reshape(-1, 576) for v in _random(rng).values()])
    q = gguf.quantize(x, qtype)
    theirs = gguf_quants.dequantize(q, T[qtype]).reshape(x.shape)
    assert np.array_equal(gguf.dequantize(q, qtype).view(np.uint32), theirs.view(np.uint32))


def test_gguf_py_cannot_quantize_nvfp4():
    """Why the NVFP4 quantizer is compared with ggml's C only: gguf 0.19 has no NVFP4 quantizer."""
    with pytest.raises(NotImplementedError):
        gguf_quants.quantize(np.zeros((1, 64), np.float32), T.NVFP4)


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("qtype", FP4_TYPES)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input_is_refused_with_its_address(qtype, bad):
    x = np.zeros((3, 128), np.float32)
    x[2, 70] = bad
    with pytest.raises(NonFiniteError, match="row 2, column 70"):
        gguf.quantize(x, qtype)


def test_rows_the_block_does_not_divide_are_refused():
    with pytest.raises(ValueError, match="multiple of 64"):
        gguf.quantize(np.zeros((2, 96), np.float32), "NVFP4")


# ---------------------------------------------------------------- files llama.cpp runs
@functools.lru_cache(maxsize=None)
def _llama(hidden=64, inter=128, seed=0):
    """A random Llama with the course vocabulary, so the offline GGUF's tokenizer fits it (write_gguf copies it)."""
    from quantedu.testmodel import tiny_llama
    return tiny_llama(seed, vocab_size=49152, hidden_size=hidden, intermediate_size=inter, max_position_embeddings=512)


def test_plan_counts_fallbacks():
    tensors = {"token_embd.weight": np.zeros((10, 96)), "blk.0.attn_norm.weight": np.zeros(96),
               "blk.0.attn_q.weight": np.zeros((96, 96)), "blk.0.ffn_down.weight": np.zeros((96, 144)),
               "blk.0.ffn_up.weight": np.zeros((144, 128))}
    types, fb = fp4_files.fp4_types(tensors, "NVFP4")
    assert types == {"token_embd.weight": "Q8_0", "blk.0.attn_norm.weight": "F32", "blk.0.attn_q.weight": "MXFP4",
                     "blk.0.ffn_down.weight": "F16", "blk.0.ffn_up.weight": "NVFP4"}
    assert set(fb) == {"blk.0.attn_q.weight", "blk.0.ffn_down.weight"}
    types, fb = fp4_files.fp4_types(tensors, "MXFP4")
    assert set(fb) == {"blk.0.ffn_down.weight"} and types["blk.0.attn_q.weight"] == "MXFP4"


@pytest.mark.parametrize("qtype", FP4_TYPES)
def test_llama_runs_our_fp4_file_and_ggml_dequantizes_it_to_our_values(ggml, qtype, tmp_path):
    """A random Llama with the course vocabulary whose shapes force fallbacks (rows of 96: NVFP4 -> MXFP4; rows of
    144: F16): the file's types are the plan, every FP4 tensor holds our quantizer's bytes, ggml's C dequantizer
    reads them as our dequantizer does, and llama.cpp loads the file and generates."""
    from quantedu.engines.llama_cpp import bindings as llama
    model = _llama(hidden=96, inter=144)
    out = fp4_files.write_fp4_gguf(model, tmp_path / f"{qtype}.gguf", qtype)
    expected_fallbacks = {"MXFP4": 2, "NVFP4": 14}[qtype]  # 2 ffn_down; + 6 more per layer for NVFP4's 96-row ones
    assert out.n_fallbacks == expected_fallbacks, out.summary()
    tensors = io.model_tensors(model)
    file = {t.name: t for t in io.open_gguf(out.path).tensors}
    assert {n: t.tensor_type.name for n, t in file.items()} == out.types
    n_fp4 = 0
    for name, t in file.items():
        if t.tensor_type.name in FP4_TYPES:
            assert np.array_equal(np.asarray(t.data).reshape(-1), gguf.quantize(tensors[name], t.tensor_type.name)
                                  .reshape(-1)), name
            n_fp4 += 1
    assert n_fp4 == 12  # 14 linear tensors; NVFP4's 12 demoted ones are MXFP4
    assert all(llama_fp4.compare_with_ggml(out.path).values())
    lin = [n for n in out.types if n.startswith("blk.") and tensors[n].ndim == 2]
    predicted = sum(gguf.layout(out.types[n]).row_size(tensors[n].shape[1]) * tensors[n].shape[0]
                    if out.types[n] not in ("F16", "F32") else tensors[n].size * 2 for n in lin)
    assert out.sizes["linear_bits_per_weight"] == pytest.approx(8 * predicted / sum(tensors[n].size for n in lin))
    llm = llama.load(out.path, n_ctx=64, logits_all=True)
    try:
        ids = llama.tokenize(llm, "The capital of France is")
        llm.eval(ids)
        logits = np.asarray(llm.scores[:len(ids)])
    finally:
        llm.close()
    assert logits.shape == (len(ids), 49152) and np.isfinite(logits).all() and logits.std() > 0


@pytest.fixture(scope="module")
def llama_tools():
    from helpers import missing

    from quantedu.engines import llama_cpp as lt
    if not lt.available():
        missing(f"llama.cpp's tools are not built ({lt.BUILD_COMMAND}): {lt.status()['why']}")
    return lt


@pytest.fixture(scope="module")
def f32_source(llama_tools, tmp_path_factory):
    path = tmp_path_factory.mktemp("fp4-src") / "f32.gguf"
    io.write_gguf(_llama(seed=1), path, "F32")
    return path


@pytest.mark.parametrize("qtype", FP4_TYPES)
def test_llama_quantize_writes_our_bytes(f32_source, qtype, tmp_path):
    """``llama-quantize --tensor-type attn_q=<fp4> ... F32.gguf OUT Q8_0`` (llama.cpp's own code path) and our
    writer give the same type and bytes for every tensor of the file."""
    theirs = llama_fp4.llama_quantize_fp4(f32_source, tmp_path / "theirs.gguf", qtype)
    ours = fp4_files.write_fp4_gguf(_llama(seed=1), tmp_path / "ours.gguf", qtype).path
    a = {t.name: t for t in io.open_gguf(ours).tensors}
    b = {t.name: t for t in io.open_gguf(theirs).tensors}
    assert set(a) == set(b)
    assert sum(t.tensor_type.name == qtype for t in b.values()) == 14
    for name, t in b.items():
        assert a[name].tensor_type == t.tensor_type, name
        assert np.array_equal(np.asarray(a[name].data), np.asarray(t.data)), name


def test_fp4_exponent_helpers_match_the_c_formulas():
    """Our two scale helpers against hand-computed C semantics, no library needed."""
    assert fp4.mxfp4_exponent(np.array([0, 1.0, 6.0, 8.0, 2.0**-126], np.float32)).tolist() == [0, 125, 127, 128, 255]
    codes = fp4.fp32_to_ue4m3(np.array([0, -1, np.nan, 1.0, 1.0625, 1.1875, 239.9, 240, 248, 300, 500], np.float32))
    # 1.0625 = 1 + 1/16 is a half: ggml rounds it up to 1.125 (code 0x39); RNE would keep 1.0 (0x38).
    # 248 rounds to 256, E4M3's exponent 15, which ggml treats as overflow: 448 (0x7E), as for 300 and 500
    assert codes.tolist() == [0, 0, 0, 0x38, 0x39, 0x3A, 0x77, 0x77, 0x7E, 0x7E, 0x7E]
