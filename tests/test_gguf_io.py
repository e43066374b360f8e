"""quantedu.gguf io / mixes / imatrix / llama: files llama.cpp accepts, and the same choices llama.cpp makes.

Tests named ``test_llama_*`` need llama-cpp-python (CI installs it): they FAIL, not skip, without it.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as T
from gguf import GGUFWriter

from quantedu.gguf import io, mixes
from quantedu.gguf.imatrix import ImatrixCollector, gguf_tensor_names


@pytest.fixture(scope="module")
def llama_cpp():
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        from quantedu.engines.llama_cpp.ggml import INSTALL_HINT
        pytest.fail(INSTALL_HINT)
    from quantedu.engines.llama_cpp import bindings as llama
    return llama


@pytest.fixture(scope="module")
def source():
    from quantedu.models import offline_gguf_path
    return offline_gguf_path()


@pytest.fixture(scope="module")
def source_infos(source):
    r = io.open_gguf(source)
    return [mixes.TensorInfo(t.name, tuple(int(s) for s in t.shape), t.tensor_type) for t in r.tensors]


def _tiny_gguf(path, n=64):
    w = GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    rng = np.random.default_rng(0)
    w.add_tensor("blk.0.ffn_down.weight", rng.standard_normal((4, 256)).astype(np.float32))
    w.add_tensor("blk.0.attn_norm.weight", np.ones(256, np.float32))
    from quantedu import gguf
    q = gguf.quantize(rng.standard_normal((8, 256)).astype(np.float32), "Q4_K")
    w.add_tensor("blk.0.ffn_up.weight", q, raw_dtype=T.Q4_K)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_describe_counts_bytes_and_bits(tmp_path):
    p = tmp_path / "tiny.gguf"
    _tiny_gguf(p)
    d = io.contents(p)
    t = d.tensors.set_index("name")
    assert t.loc["blk.0.ffn_up.weight", "type"] == "Q4_K"
    assert t.loc["blk.0.ffn_up.weight", "bytes"] == 8 * 144
    assert t.loc["blk.0.ffn_up.weight", "bits_per_weight"] == pytest.approx(4.5)
    assert t.loc["blk.0.ffn_down.weight", "bits_per_weight"] == 32
    # linear layers only: (4*256*32 + 8*256*4.5) / (4*256 + 8*256)
    assert d.linear_bits_per_weight == pytest.approx((4 * 256 * 32 + 8 * 144 * 8) / (12 * 256))
    assert "general.architecture" in set(d.metadata["key"])


def test_truncated_or_corrupt_file_is_a_clear_error(tmp_path):
    p = tmp_path / "tiny.gguf"
    _tiny_gguf(p)
    data = p.read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[: len(data) - 100])
    with pytest.raises(io.GGUFError, match="truncated"):
        io.contents(tmp_path / "cut.gguf")
    (tmp_path / "head.gguf").write_bytes(data[:40])
    with pytest.raises(io.GGUFError, match="truncated or corrupt"):
        io.contents(tmp_path / "head.gguf")
    (tmp_path / "junk.gguf").write_bytes(b"PK\x03\x04" + data[4:])
    with pytest.raises(io.GGUFError, match="not a GGUF file"):
        io.contents(tmp_path / "junk.gguf")


def test_use_more_bits_pattern():
    # llama-quant.cpp: first and last eighth of the layers, and every third layer in between
    assert [i for i in range(30) if mixes.use_more_bits(i, 30)] == [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]


def test_fallback_for_rows_not_multiple_of_256(source_infos):
    types = mixes.assign_types(source_infos, "Q4_K_M", n_layer=30, n_head=9, n_head_kv=3)
    assert types["blk.0.attn_q.weight"] == T.Q5_0  # 576 columns: Q4_K does not fit
    assert types["blk.3.ffn_down.weight"] == T.Q4_K  # 1536 columns
    assert types["blk.0.ffn_down.weight"] == T.Q6_K  # use_more_bits layer
    assert types["token_embd.weight"] == T.Q8_0  # tied output, 576 % 256 != 0
    assert types["blk.0.attn_norm.weight"] == T.F32


def test_imatrix_is_mean_square_of_inputs_keyed_by_gguf_name():
    from quantedu.testmodel import tiny_llama
    model = tiny_llama(vocab_size=64, hidden_size=32, intermediate_size=64)
    names = gguf_tensor_names(model)
    assert names["model.layers.1.mlp.down_proj"] == "blk.1.ffn_down.weight"
    seen = []
    h = model.model.layers[1].mlp.down_proj.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach()))
    batches = [torch.randint(0, 64, (2, 7)), torch.randint(0, 64, (1, 5))]
    with ImatrixCollector(model) as col, torch.no_grad():
        for b in batches:
            model(b)
    h.remove()
    im = col.result()
    x = torch.cat([s.reshape(-1, s.shape[-1]) for s in seen])
    assert x.shape[0] == 2 * 7 + 5
    np.testing.assert_allclose(im["blk.1.ffn_down.weight"], (x ** 2).mean(0).numpy(), rtol=1e-5)
    assert set(im) == {f"blk.{i}.{n}.weight" for i in range(2)
                       for n in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")}


@pytest.mark.parametrize("mix", ["Q2_K", "Q4_K_M"])
def test_llama_mix_types_match_llama_model_quantize(llama_cpp, source, source_infos, tmp_path, mix):
    out = llama_cpp.quantize_file(source, tmp_path / f"{mix}.gguf", mix, nthread=2)
    theirs = {t.name: t.tensor_type for t in io.open_gguf(out).tensors}
    ours = mixes.assign_types(source_infos, mix, n_layer=30, n_head=9, n_head_kv=3)
    assert {n: ours[n] for n in theirs} == theirs


@pytest.fixture(scope="module")
def model():
    from quantedu.models import load_model
    m, _ = load_model("smollm2-135m")
    return m


@pytest.fixture(scope="module")
def our_q4_0(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "ours-Q4_0.gguf"
    return path, io.write_gguf(model, path, "Q4_0")


@pytest.fixture(scope="module")
def theirs_q4_0(llama_cpp, source, tmp_path_factory):
    return llama_cpp.quantize_file(source, tmp_path_factory.mktemp("gguf") / "theirs-Q4_0.gguf", "Q4_0", nthread=2)


def test_llama_our_whole_file_has_llama_cpp_bytes(our_q4_0, theirs_q4_0):
    """Every tensor of our Q4_0-mix file (Q4_0 matrices, Q8_0 tied embedding, F32 norms) has the bytes
    llama.cpp's own quantizer writes from the same weights."""
    ours, plan = our_q4_0
    a = {t.name: t for t in io.open_gguf(ours).tensors}
    b = {t.name: t for t in io.open_gguf(theirs_q4_0).tensors}
    assert set(a) == set(b)
    for name, tb in b.items():
        assert a[name].tensor_type == tb.tensor_type == plan[name], name
        assert np.array_equal(np.asarray(a[name].data), np.asarray(tb.data)), name


def test_llama_runs_our_file(llama_cpp, our_q4_0, theirs_q4_0):
    """llama.cpp loads our file (metadata, tokenizer, tensor names) and generates what its own file does."""
    from quantedu.data import evaluation_text
    texts, ppls = [], []
    for path in (our_q4_0[0], theirs_q4_0):
        llm = llama_cpp.load(path, n_ctx=256, logits_all=True)
        try:
            texts.append(llama_cpp.greedy(llm, "The capital of France is", max_tokens=8))
            ppls.append(llama_cpp.perplexity(llm, evaluation_text(), n_windows=1, seq_len=256))
            assert llama_cpp.tokens_per_second(llm, n_tokens=4) > 0
        finally:
            llm.close()
    assert texts[0] == texts[1] and len(texts[0].strip()) > 0
    assert ppls[0] == pytest.approx(ppls[1]) and 3 < ppls[0] < 60


# ----------------------------------------------------- a file read back into torch; what a mix really gives

@pytest.fixture(scope="module")
def small_llama():
    """A 2-layer random Llama with the course vocabulary (write_gguf copies the course file's tokenizer) and rows
    of 256 and 512: every K-quant fits, and q/k have several heads, so a wrong un-permutation would show."""
    from quantedu.testmodel import tiny_llama
    return tiny_llama(seed=3, varied=True, vocab_size=49152, hidden_size=256, intermediate_size=512,
                      num_attention_heads=4, num_key_value_heads=2)


def test_read_weights_into_gives_back_what_write_gguf_wrote(small_llama, tmp_path):
    from quantedu import gguf
    from quantedu.testmodel import tiny_llama
    io.write_gguf(small_llama, tmp_path / "f32.gguf", "F32")
    other = tiny_llama(seed=4, varied=True, vocab_size=49152, hidden_size=256, intermediate_size=512,
                       num_attention_heads=4, num_key_value_heads=2)
    io.read_weights_into(other, tmp_path / "f32.gguf")
    for (name, a), b in zip(small_llama.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), name
    # a quantized file: each tensor comes back as the dequantized bytes of its type, in the model's own layout
    original = io.model_tensors(small_llama)
    kinds = {"attn_q": "Q4_K", "attn_k": "Q6_K", "attn_v": "Q2_K", "ffn_down": "Q5_K", "ffn_up": "Q4_0"}
    types = {n: t for n in original for k, t in kinds.items() if f".{k}." in n}  # the rest stays F32
    plan = io.write_gguf(small_llama, tmp_path / "q.gguf", types)
    io.read_weights_into(other, tmp_path / "q.gguf")
    back = io.model_tensors(other)
    assert {t.name for t in plan.values()} == {"F32", *kinds.values()}
    for name, w in original.items():
        if plan[name] == T.F32:
            assert np.array_equal(back[name], w), name
        else:
            expect = gguf.dequantize(gguf.quantize(w, plan[name].name), plan[name].name)
            assert np.array_equal(back[name], expect), name


def test_read_weights_into_refuses_a_file_of_another_model(small_llama, tmp_path):
    from quantedu.testmodel import tiny_llama
    io.write_gguf(small_llama, tmp_path / "f32.gguf", "F32")
    wider = tiny_llama(vocab_size=49152, hidden_size=512, intermediate_size=512, num_attention_heads=4,
                       num_key_value_heads=2)
    with pytest.raises(ValueError, match=r"is \(49152, 256\) in .* but \(49152, 512\) in the model"):
        io.read_weights_into(wider, tmp_path / "f32.gguf")
    deeper = tiny_llama(vocab_size=49152, hidden_size=256, intermediate_size=512, num_hidden_layers=3,
                        num_attention_heads=4, num_key_value_heads=2)
    with pytest.raises(ValueError, match="lacks"):
        io.read_weights_into(deeper, tmp_path / "f32.gguf")


def test_mix_counts_name_what_fell_back(source_infos):
    from quantedu import memory
    blocks = [t for t in source_infos if t.name.startswith("blk.") and mixes.should_quantize(t)]
    narrow = sum(t.shape[0] % 256 != 0 for t in blocks)  # rows of 576: no room for a 256-weight block
    assert 0 < narrow < len(blocks)
    for mix in ("Q2_K", "Q4_K_M", "Q5_K_M", "IQ4_XS"):
        c = mixes.mix_counts(source_infos, mix, 30, 9, 3)
        assert c.matrices == len(blocks) and c.n_got + c.n_fell_back == len(blocks)
        assert c.n_fell_back == narrow, mix
        plan = mixes.assign_types(source_infos, mix, 30, 9, 3)
        assert c.bits_per_weight == mixes.plan_bits_per_weight(source_infos, plan)
        assert f"{c.n_got} of {c.matrices}" in str(c)
    assert mixes.mix_counts(source_infos, "Q8_0", 30, 9, 3).n_fell_back == 0  # blocks of 32 fit 576
    shape = memory.model_shape("llama-3-8b")
    c8 = mixes.mix_counts(mixes.shape_tensor_infos(shape), "Q4_K_M", shape.layers, shape.heads, shape.kv_heads)
    assert c8.n_fell_back == 0 and c8.n_got == 7 * shape.layers
    assert 4.5 < c8.bits_per_weight < mixes.mix_counts(source_infos, "Q4_K_M", 30, 9, 3).bits_per_weight


def test_llama_file_has_the_types_mix_counts_predicts(llama_cpp, source, source_infos, tmp_path):
    """The counts are llama.cpp's: in the file llama_model_quantize writes, each fallback type holds as many of
    the blocks' matrices as mix_counts says fell back to it."""
    from collections import Counter
    out = llama_cpp.quantize_file(source, tmp_path / "Q2_K.gguf", "Q2_K", nthread=2)
    in_file = Counter(t.tensor_type.name for t in io.open_gguf(out).tensors
                      if t.name.startswith("blk.") and len(t.shape) == 2)
    c = mixes.mix_counts(source_infos, "Q2_K", 30, 9, 3)
    expected = Counter(c.got)
    for move, n in c.fell_back.items():
        expected[move.split("->")[1]] += n
    assert in_file == expected
