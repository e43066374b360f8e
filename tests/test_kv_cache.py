"""KV-cache bytes per llama.cpp cache type: the formula (quantedu.lt_kv.kv_cache_type_bytes) against what
llama-perplexity reports for every type it has, on the course GGUF; the flags; a type llama.cpp lacks.
(llama.cpp runs: ~1 s each at a 256-token context, the bytes scale with the context by the formula.)"""
import pytest

from quantedu import memory
from quantedu.engines.llama_cpp import kv_cache as lt_kv
from quantedu.engines.llama_cpp.locate import ToolError

SHAPE = "smollm2-135m"  # 30 layers, 3 KV heads x 64: rows of 192 values


def test_the_formula_counts_blocks_of_32():
    f16 = lt_kv.kv_cache_type_bytes(SHAPE, 4096, "f16")
    assert f16["K"] == f16["V"] == 30 * 4096 * 192 * 2
    assert f16["total"] == memory.kv_cache_bytes(SHAPE, 4096)  # the course's f16 formula is the same number
    q8 = lt_kv.kv_cache_type_bytes(SHAPE, 4096, "q8_0")
    assert q8["K"] == 30 * 4096 * (192 // 32) * 34  # 2-byte scale + 32 int8 codes per block
    mixed = lt_kv.kv_cache_type_bytes(SHAPE, 4096, "Q8_0", "q4_0")
    assert (mixed["k_type"], mixed["v_type"]) == ("q8_0", "q4_0")
    assert mixed["V"] == 30 * 4096 * 6 * 18 and mixed["total"] == q8["K"] + mixed["V"]
    assert lt_kv.kv_cache_type_bytes(SHAPE, 4096, "q4_0")["total"] / f16["total"] == pytest.approx(18 / 64)


@pytest.mark.parametrize("bad", ["q4_k", "fp8", "int8", "q2_K", ""])
def test_a_cache_type_llama_cpp_lacks_is_refused_with_the_list(bad):
    with pytest.raises(ValueError, match=r"no KV cache type .*f32, f16, bf16, q8_0, q4_0, q4_1, iq4_nl, q5_0, q5_1"):
        lt_kv.kv_cache_type_bytes(SHAPE, 512, bad)
    with pytest.raises(ValueError, match="no KV cache type"):
        lt_kv.kv_cache_flags("f16", bad)


def test_flags_turn_on_flash_attention_for_a_quantized_v():
    assert lt_kv.kv_cache_flags("q8_0", "f16") == ["-ctk", "q8_0", "-ctv", "f16"]
    assert lt_kv.kv_cache_flags("Q8_0", "q4_0") == ["-ctk", "q8_0", "-ctv", "q4_0", "-fa", "on"]
    assert lt_kv.kv_cache_flags("iq4_nl") == ["-ctk", "iq4_nl", "-ctv", "iq4_nl", "-fa", "on"]


def test_parse_reads_llama_cpps_line():
    log = ("llama_kv_cache:        CPU KV buffer size =    90.00 MiB\n"
           "llama_kv_cache: size =   47.81 MiB (  4096 cells,  30 layers,  1/1 seqs), K (q8_0):   23.91 MiB, "
           "V (q8_0):   23.91 MiB\nllama_kv_cache: attn_rot_k = 1, n_embd_head_k_all = 64\n"
           "llama_kv_cache: attn_rot_v = 0, n_embd_head_k_all = 64\n")
    kv = lt_kv.parse_kv_cache(log)
    assert (kv.cells, kv.layers, kv.seqs, kv.k_type, kv.v_type) == (4096, 30, 1, "q8_0", "q8_0")
    assert (kv.k_mib, kv.total_mib, kv.rotate_k, kv.rotate_v) == (23.91, 47.81, True, False)
    with pytest.raises(ToolError, match="-lv 4"):
        lt_kv.parse_kv_cache("nothing here")


CASES = [(k, k) for k in lt_kv.KV_CACHE_TYPES] + [("q8_0", "q4_0"), ("f16", "q8_0"), ("q4_0", "f16")]


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    from quantedu.data import evaluation_text

    path = tmp_path_factory.mktemp("kv") / "text.txt"
    path.write_text(evaluation_text())
    return path


@pytest.fixture(scope="module")
def gguf():
    import os

    from quantedu.engines import llama_cpp as lt
    from quantedu.models import offline_gguf_path

    st = lt.status()
    if not st["ok"]:
        if os.environ.get("CI"):
            pytest.fail(st["why"])
        pytest.skip(st["why"].splitlines()[0])
    return offline_gguf_path()


@pytest.mark.parametrize("k_type, v_type", CASES, ids=[f"{k}-{v}" for k, v in CASES])
def test_predicted_bytes_equal_what_llama_cpp_reports(gguf, text_file, k_type, v_type):
    res = lt_kv.kv_cache_perplexity(gguf, text_file, k_type, v_type, ctx=256, chunks=1, n_threads=1)
    kv = res["kv"]
    assert (kv.k_type, kv.v_type, kv.cells, kv.layers) == (k_type, v_type, 256, 30)
    pred = lt_kv.kv_cache_type_bytes(SHAPE, kv.cells, k_type, v_type)
    mib = lt_kv.KVCacheReport.mib
    assert (mib(pred["K"]), mib(pred["V"]), mib(pred["total"])) == (kv.k_mib, kv.v_mib, kv.total_mib)
    assert res["ppl"] > 1 and res["tokens_per_s"] > 0
    quantized = k_type not in ("f32", "f16", "bf16")
    assert kv.rotate_k == quantized  # this llama.cpp rotates a quantized K cache (Hadamard) by default


def test_llama_cpps_rotation_of_a_quantized_cache_can_be_turned_off(gguf, text_file):
    """This llama.cpp rotates a quantized K/V cache with a Hadamard transform (QuaRot's idea, applied to the
    cache); LLAMA_ATTN_ROT_DISABLE=1 turns it off: same bytes, other numbers."""
    on = lt_kv.kv_cache_perplexity(gguf, text_file, "q4_0", ctx=256, chunks=1)
    off = lt_kv.kv_cache_perplexity(gguf, text_file, "q4_0", ctx=256, chunks=1, rotation=False)
    assert (on["kv"].rotate_k, on["kv"].rotate_v) == (True, True)
    assert (off["kv"].rotate_k, off["kv"].rotate_v) == (False, False)
    assert on["kv"].total_mib == off["kv"].total_mib and on["ppl"] != off["ppl"]


def test_kv_cache_kld_scores_each_type_against_the_f16_cache(gguf, text_file, tmp_path):
    rows = lt_kv.kv_cache_kld(gguf, text_file, tmp_path / "base.kld", [("q8_0", "q8_0"), ("q4_0", "q4_0")], SHAPE,
                              ctx=256, chunks=1)
    assert [(r["K"], r["V"]) for r in rows] == [("f16", "f16"), ("q8_0", "q8_0"), ("q4_0", "q4_0")]
    assert all(r["equal"] and r["cells"] == 256 for r in rows)
    # --kl-divergence prints no "seconds per pass": each quantized type is timed by a plain llama-perplexity chunk
    assert all(r["tokens_per_s"] > 0 for r in rows)
    assert "kld" not in rows[0] and rows[1]["rotated"] and not rows[0]["rotated"]
    q8, q4 = rows[1], rows[2]
    assert 0 <= q8["kld"] < q4["kld"] and q4["same_top"] < 1  # 4 bits lose more than 8 against the same reference
    assert q8["ppl_base"] == pytest.approx(q4["ppl_base"])
