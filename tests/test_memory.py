"""Memory math: every number equals the arithmetic written out by hand."""
import copy

import gguf
import pytest
from helpers import offline_gguf
import torch

from quantedu import memory as M
from quantedu.primitives import QuantConfig
from quantedu.export.write import gptq_state_dict
from quantedu.rtn import rtn_layers


def test_llama_2_7b_parameter_count_by_hand():
    h, layers, inter, vocab = 4096, 32, 11008, 32000
    per_block = 4 * h * h + 3 * h * inter  # q, k, v, o (no GQA) + gate, up, down
    hand = layers * per_block + 2 * vocab * h + (2 * layers + 1) * h  # untied head, RMSNorm weights
    assert M.model_shape("llama-2-7b").n_params() == hand == 6_738_415_616


def test_gqa_shrinks_k_and_v_only():
    s = M.model_shape("llama-2-70b")
    shapes = s.linear_shapes()
    assert shapes["k_proj"] == shapes["v_proj"] == (8 * 128, 8192)
    assert shapes["q_proj"] == (8192, 8192)


def test_bits_per_weight_of_group_formats():
    assert M.bits_per_weight("int4-g128") == 4 + (16 + 4) / 128 == 4.15625
    assert M.bits_per_weight("int4-g32") == 4 + 20 / 32
    assert M.bits_per_weight(M.GroupFormat(4, 128, zero_bits=0)) == 4 + 16 / 128  # symmetric: no zero point
    assert M.bits_per_weight("int8-channel") == 8
    # A ragged last group still stores a whole scale + zero: 576 columns = 4 groups of 128 + one of 64.
    assert M.bits_per_weight("int4-g128", cols=576) == 4 + 5 * 20 / 576
    assert M.tensor_bytes(10, 576, "int4-g128") == 10 * (576 * 4 + 5 * 20) / 8


@pytest.mark.parametrize("name,hand", [("Q4_0", (2 + 16) * 8 / 32), ("Q8_0", (2 + 32) * 8 / 32),
                                       ("Q4_K", (2 + 2 + 12 + 128) * 8 / 256), ("Q6_K", (128 + 64 + 16 + 2) * 8 / 256),
                                       ("Q2_K", (16 + 64 + 2 + 2) * 8 / 256)])
def test_gguf_bits_per_weight_from_layouts(name, hand):
    assert M.bits_per_weight(name) == hand
    block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name]]
    assert hand == type_size * 8 / block  # gguf-py's table agrees
    assert M.tensor_bytes(3, 512, name) == 3 * 512 // block * type_size


def test_gguf_rows_must_fill_blocks():
    with pytest.raises(ValueError, match="multiple of 256"):
        M.tensor_bytes(1, 576, "Q4_K")


def test_kv_cache_by_hand():
    assert M.kv_bytes_per_token("llama-2-7b") == 2 * 32 * 32 * 128 * 2 == 524_288
    assert M.kv_cache_bytes("llama-2-7b", 8192) == 4 * 2**30  # 4 GiB at 8k context, fp16
    assert M.kv_bytes_per_token("llama-2-70b") == 2 * 80 * 8 * 128 * 2  # GQA: 8 KV heads, not 64
    assert M.kv_cache_bytes("smollm2-135m", 1000, batch=3, dtype_bits=8) == 2 * 30 * 3 * 64 * 1 * 1000 * 3


def test_weight_bytes_tied_and_untied():
    w = M.weight_bytes("smollm2-135m", "int4-g128")
    assert w["lm_head"] == 0  # tied: stored once, as the embedding
    assert w["embedding"] == 49152 * 576 * 2
    s = M.model_shape("llama-2-7b")
    w7 = M.weight_bytes(s, "int4-g128")
    assert w7["lm_head"] == w7["embedding"] == 32000 * 4096 * 2
    assert w7["linear"] == pytest.approx(s.params()["linear"] * 4.15625 / 8)


def test_activation_estimate_by_hand():
    s = M.ModelShape(hidden=8, layers=1, heads=2, kv_heads=1, head_dim=4, intermediate=16, vocab=10)
    b, t = 3, 5
    residual = 2 * b * t * 8 * 2
    attn = b * t * (2 * 2 + 2 * 1) * 4 * 2
    mlp = 3 * b * t * 16 * 2
    assert M.activation_bytes(s, b, t) == residual + max(attn, mlp) + b * 10 * 4
    assert M.activation_bytes(s, b, t, attention="eager", logits="all") == (
        residual + max(attn + b * 2 * t * t * 4, mlp) + b * t * 10 * 4)


def test_seed_table_and_correction():
    seed = M.naive_table()
    assert seed.loc["7B", "FP16"] == 14.0 and seed.loc["70B", "INT4"] == 35.0
    corrected = M.corrected_table("llama-2-7b", formats=("int4-g128",), context=8192)
    row = corrected.loc["int4-g128"]
    assert row["weights GiB"] > row["naive GiB (params x nominal bits)"]  # scales + fp16 embeddings
    assert row["total GiB"] == pytest.approx(row["weights GiB"] + 4.0)


def test_shape_from_config_model_and_file(tiny_llama, tmp_path):
    s = M.model_shape(tiny_llama)
    assert (s.hidden, s.layers, s.kv_heads, s.head_dim, s.tied) == (64, 2, 2, 16, True)
    assert M.model_shape(tiny_llama.config) == s
    tiny_llama.config.to_json_file(tmp_path / "config.json")
    assert M.model_shape(tmp_path / "config.json").hidden == 64
    with pytest.raises(ValueError, match="preset"):
        M.model_shape(str(tmp_path / "nothing-here"))


def test_predicted_equals_measured_on_a_tiny_model(tiny_llama):
    shape = M.model_shape(tiny_llama)
    measured = M.measured_tensor_bytes(tiny_llama)["parameters"]
    assert measured == M.weight_bytes(shape, "fp32", embed_spec="fp32")["total"]
    # A packed int4 g32 checkpoint: codes + fp16 scales + packed zeros, fp16 embedding and norms.
    model = copy.deepcopy(tiny_llama)
    cfg = QuantConfig(4, 32)
    sd = gptq_state_dict(model, rtn_layers(model, cfg), cfg, checkpoint_format="gptq_v2", dtype=torch.float16)
    stored = sum(t.numel() * t.element_size() for k, t in sd.items() if not k.endswith(".g_idx"))
    assert stored == M.weight_bytes(shape, "int4-g32", embed_spec="fp16")["total"]


def test_offline_gguf_file_matches_layouts():
    path = offline_gguf()
    out = M.gguf_file_bytes(path)  # raises if any tensor's bytes differ from its layout
    assert out["tensors"] + out["metadata + alignment"] == out["file"] == path.stat().st_size
    assert set(out["by_type"]) >= {"Q4_1", "F32"}


def test_calculator_function_and_llama_like():
    s = M.llama_like(7e9)
    assert s.hidden % 128 == 0 and s.n_params() >= 7e9 > M.llama_like(6e9).n_params() * 0.9
    fp = M.footprint(s, "int4-g128", context=4096, batch=2)
    assert fp["KV cache"] == M.kv_cache_bytes(s, 4096, 2)
    assert set(fp) == {"linear weights", "embeddings + head + norms", "KV cache", "activations"}
    assert torch.tensor(list(fp.values())).min() > 0


@pytest.mark.parametrize("name, block, scale_bits", [("MXFP4", 32, 8), ("NVFP4", 16, 8)])
def test_fp4_formats_are_4_bit_with_their_block_scale(name, block, scale_bits):
    """MXFP4: 32 E2M1 codes share one E8M0 scale; NVFP4: 16 codes share one UE4M3 scale (GGUF layouts)."""
    assert M.nominal_bits(name) == 4
    assert M.bits_per_weight(name) == (block * 4 + scale_bits) / block
    assert M.tensor_bytes(3, 64, name) == 3 * (64 // block) * (block * 4 + scale_bits) // 8
