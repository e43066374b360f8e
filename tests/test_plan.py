"""The planner (issue 25): vLLM's tensor-parallel split and refusals, llama.cpp's layer split, what fits.

Expected numbers are written out by hand from the models' published shapes and the engines' rules; the
byte counts of a rank are checked against ``quantedu.memory`` applied to the whole model (one formula).
The engine measurements (vLLM's loaded weights per rank, llama.cpp's reported buffers) are in
tests/test_plan_engines.py.
"""
import pytest

from quantedu import cli, memory
from quantedu import plan as P

W4 = memory.GroupFormat(4, 128, zero_bits=0)  # W4A16 g128 symmetric: codes + an fp16 scale per 128


def test_tp_splits_follow_vllms_sharding_rules():
    s = memory.model_shape("llama-3.1-70b")  # 64 heads, 8 KV heads, head_dim 128, MLP 28672, vocab 128256
    rows = {name: (how, full, rank) for name, how, full, rank in P.tp_splits(s, 4)}
    assert rows["q_proj"] == ("column", (8192, 8192), (64 // 4 * 128, 8192))
    assert rows["k_proj"] == rows["v_proj"] == ("column", (8 * 128, 8192), (8 // 4 * 128, 8192))
    assert rows["gate_proj"] == rows["up_proj"] == ("column", (28672, 8192), (28672 // 4, 8192))
    assert rows["o_proj"] == ("row", (8192, 8192), (8192, 8192 // 4))
    assert rows["down_proj"] == ("row", (8192, 28672), (8192, 28672 // 4))
    assert rows["embed_tokens"][2] == rows["lm_head"][2] == (128256 // 4, 8192)  # 128256 = 2004 x 64: no padding
    assert rows["norms"][1:] == ((161, 8192), (161, 8192))  # 2 per layer + the final one, on every rank


def test_vocab_is_padded_to_64_before_it_is_split():
    s = memory.ModelShape(hidden=256, layers=2, heads=4, kv_heads=4, head_dim=64, intermediate=512, vocab=1000)
    assert P.rank_shape(s, 2).vocab == 1024 // 2  # 1000 -> 1024 (16 x 64), 512 rows per rank


def test_rank_bytes_add_up_to_the_model_when_nothing_is_replicated():
    s = memory.model_shape("llama-3.1-70b")
    whole = memory.weight_bytes(s, W4, embed_spec="bf16")
    rank = memory.weight_bytes(P.rank_shape(s, 4), W4, embed_spec="bf16")
    assert 4 * rank["linear"] == whole["linear"]  # every group stays whole on its rank (7168 = 56 x 128)
    assert 4 * rank["embedding"] == whole["embedding"] and 4 * rank["lm_head"] == whole["lm_head"]
    assert rank["norms"] == whole["norms"]  # replicated
    p = P.plan("llama-3.1-70b", gpus=4, gpu_memory_gb=80, scheme="w4a16")
    assert p.per_gpu["weights"] == rank["total"]
    assert p.per_gpu["KV cache"] == memory.kv_cache_bytes(s, 4096) / 4  # 8 KV heads -> 2 per rank


def test_more_ranks_than_kv_heads_replicate_them():
    s = memory.model_shape("llama-3.1-8b")  # 32 heads, 8 KV heads
    rank = P.rank_shape(s, 16)
    assert (rank.heads, rank.kv_heads) == (2, 1)  # vLLM: each rank keeps one whole KV head, 2 copies of each
    how, _, per_rank = {n: r for n, *r in P.tp_splits(s, 16)}["k_proj"]
    assert per_rank == (128, 4096) and "replicated x2" in how
    one_token = 2 * 32 * 1 * 128 * 2  # K and V, 32 layers, one KV head of 128, bf16
    assert P.plan(s, gpus=16, gpu_memory_gb=80, scheme="bf16").kv_per_token == one_token


@pytest.mark.parametrize("model,tp,heads", [("smollm2-135m", 2, 9), ("llama-3.1-70b", 3, 64)])
def test_heads_that_do_not_divide_are_refused_with_vllms_reason(model, tp, heads):
    with pytest.raises(P.PlanError, match=rf"Total number of attention heads \({heads}\) must be divisible by "
                                          rf"tensor parallel size \({tp}\)"):
        P.plan(model, gpus=tp, scheme="bf16")


def test_kv_heads_must_split_or_replicate_evenly():
    s = memory.ModelShape(hidden=768, layers=2, heads=12, kv_heads=4, head_dim=64, intermediate=1536, vocab=512)
    with pytest.raises(P.PlanError, match="4 KV heads cannot be shared by 6 ranks"):
        P.rank_shape(s, 6)  # 12 heads split, but 6 neither divides 4 nor is a multiple of it


def test_70b_w4a16_fits_on_4x80_and_not_on_1x24_with_the_reason():
    four = P.plan("meta-llama/Llama-3.1-70B-Instruct", gpus=4, gpu_memory_gb=80, context=8192, batch=8,
                  scheme="w4a16")
    assert four.fits and four.tensor_parallel == 4 and four.total <= 0.9 * 80 * 2**30
    one = P.plan("llama-3.1-70b", gpus=1, gpu_memory_gb=24, context=8192, scheme="w4a16")
    whole = memory.weight_bytes("llama-3.1-70b", W4, embed_spec="bf16")["total"]
    assert not one.fits and one.per_gpu["weights"] == whole > 0.9 * 24 * 2**30
    assert f"weights alone need {whole / 2**30:.2f} GiB" in one.reason and "21.60 GiB usable" in one.reason
    assert one.max_context == 0


def test_kv_cache_bounds_the_context_and_the_reason_says_so():
    p = P.plan("llama-3.1-8b", gpus=1, gpu_memory_gb=24, context=131072, batch=4, scheme="bf16")
    assert not p.fits and "KV cache for 131072 tokens x 4 sequences" in p.reason
    left = 0.9 * 24 * 2**30 - p.per_gpu["weights"] - p.per_gpu["activations"]
    per_token = 2 * 32 * 8 * 128 * 2
    assert p.max_context == int(left // (per_token * 4)) // 16 * 16  # whole vLLM blocks of 16 tokens
    assert P.plan("llama-3.1-8b", gpus=1, gpu_memory_gb=24, context=p.max_context, batch=4, scheme="bf16").fits
    assert P.plan("llama-3.1-8b", gpus=1, gpu_memory_gb=24, context=p.max_context + 16, batch=4, scheme="bf16").fits \
        is False


def test_group_must_divide_every_layer_on_every_rank():
    with pytest.raises(P.PlanError, match="group size 128 does not divide .*q_proj \\(576 columns\\)"):
        P.plan("smollm2-135m", scheme="w4a16-g128")  # 576 = 4.5 x 128: llm-compressor refuses it too
    assert P.plan("smollm2-135m", scheme="w4a16-g64").fits
    assert P.plan("llama-3.1-8b", gpus=1, gpu_memory_gb=24, scheme="w4a16-g1024").fits  # 4096, 14336 = 14 x 1024
    with pytest.raises(P.PlanError, match=r"down_proj \(1792 columns per rank\)"):  # 14336 / 8 = 1792 = 1.75 x 1024
        P.plan("llama-3.1-8b", gpus=8, gpu_memory_gb=24, scheme="w4a16-g1024")


def test_scheme_names_and_fp4_bits_per_weight():
    assert P.parse_scheme("nvfp4").weights.bits_per_weight() == 4.5   # e2m1 codes + an fp8 scale per 16
    assert P.parse_scheme("mxfp4").weights.bits_per_weight() == 4.25  # e2m1 codes + an e8m0 scale per 32
    assert P.parse_scheme("W4A16-asym-g64").weights == memory.GroupFormat(4, 64)  # zero point packed at 4 bits
    assert P.parse_scheme("q4_k_m").gguf
    with pytest.raises(ValueError, match="unknown scheme 'int3'"):
        P.parse_scheme("int3")


def test_llama_cpp_splits_whole_layers_like_upper_bound():
    # llama-model.cpp: layer il of n_layer + 1 goes to the first GPU whose cumulative share exceeds il / (n_layer + 1)
    devs = P.layer_devices(32, 2)
    assert devs.count(0) == 17 and devs[:17] == [0] * 17 and devs[-1] == 1  # il <= 16: il / 33 < 0.5
    p = P.plan("llama-3.1-8b", gpus=2, gpu_memory_gb=24, scheme="Q4_K_M")
    tb = P.gguf_tensor_bytes(memory.model_shape("llama-3.1-8b"), "Q4_K_M")
    assert p.layers_per_gpu == (17, 15) and p.host == tb["token_embd.weight"]
    gpu0 = sum(b for n, b in tb.items() if n.startswith("blk.") and int(n.split(".")[1]) < 17)
    gpu1 = sum(b for n, b in tb.items() if n.startswith("blk.") and int(n.split(".")[1]) >= 17) + \
        tb["output.weight"] + tb["output_norm.weight"]
    assert p.per_gpu["weights"] == max(gpu0, gpu1)


def test_calibration_peak_is_one_layer_not_the_model():
    p = P.plan("llama-3.1-70b", gpus=4, gpu_memory_gb=80, scheme="w4a16")
    c = p.calibration
    assert c["method"] == "gptq" and c["peak"] < 0.9 * 80 * 2**30  # sequential onloading: one GPU suffices
    assert c["host"] > memory.weight_bytes("llama-3.1-70b", "bf16")["total"]  # the bf16 model waits in RAM
    assert P.calibration_peak("llama-3.1-70b", None)["peak"] < c["peak"]  # data-free FP8 keeps no Hessians


def test_config_path_and_dict_give_the_same_plan(tmp_path):
    import json
    config = {"hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
              "head_dim": 64, "intermediate_size": 1536, "vocab_size": 49152, "tie_word_embeddings": True,
              "max_position_embeddings": 8192}
    (tmp_path / "config.json").write_text(json.dumps(config))
    a = P.plan(tmp_path, scheme="w4a16-g64", context=2048)
    b = P.plan(config, scheme="w4a16-g64", context=2048)
    c = P.plan("smollm2-135m", scheme="w4a16-g64", context=2048)
    assert a.per_gpu == b.per_gpu == c.per_gpu and a.model_max_context == 8192


def test_bad_numbers_are_refused():
    for kwargs in ({"gpus": 0}, {"context": -1}, {"batch": 1.5}, {"gpu_memory_gb": 0}):
        with pytest.raises(ValueError, match="must be a positive"):
            P.plan("llama-3.1-8b", **kwargs)


def test_cli_plan_prints_the_plan_and_refusals(capsys):
    assert cli.main(["plan", "llama-3.1-70b", "--gpus", "4", "--gpu-memory", "80", "--context", "8192",
                     "--batch", "8", "--scheme", "w4a16"]) == 0
    out = capsys.readouterr().out
    assert "fits: yes" in out and "--tensor-parallel-size 4" in out and "down_proj" in out
    assert cli.main(["plan", "llama-3.1-70b", "--gpus", "1", "--gpu-memory", "24", "--scheme", "w4a16"]) == 0
    assert "fits: NO - the weights alone need" in capsys.readouterr().out
    assert cli.main(["plan", "smollm2-135m", "--gpus", "2"]) == 2
    assert "must be divisible by tensor parallel size (2)" in capsys.readouterr().err
