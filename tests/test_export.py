"""Export: compressed-tensors and GPTQ checkpoints reload to the same logits as the in-memory model."""
import copy
import json

import pytest
import torch

from quantedu import export
from quantedu.export.read import load_gptq_model, load_gptq_weights
from quantedu.export.write import save_compressed_tensors, save_gptq
from quantedu.gptq import GPTQConfig, gptq_quantize_model
from quantedu.export.packing import unpack_int32


@pytest.fixture(scope="module")
def ct():
    try:
        import compressed_tensors  # noqa: F401
    except ImportError as exc:  # pragma: no cover - CI installs it with llm-compressor
        pytest.fail(f"compressed-tensors is needed to reload the export: pip install 'llmcompressor==0.14.0.1' ({exc})")


def quantized_copy(tiny_llama, cfg, seed=0):
    model = copy.deepcopy(tiny_llama)
    calib = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(seed))
    return model, gptq_quantize_model(model, calib, cfg, progress=False)


def logits(model, seed=1):
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize(
    "cfg",
    [GPTQConfig(bits=4, group_size=32), GPTQConfig(bits=4, group_size=32, sym=False, desc_act=True, static_groups=True),
     GPTQConfig(bits=3, group_size=-1, sym=False), GPTQConfig(bits=8, group_size=64)],
    ids=lambda c: c.label(),
)
def test_compressed_tensors_reloads_with_transformers_to_the_same_logits(tiny_llama, tmp_path, ct, cfg):
    from transformers import AutoModelForCausalLM

    model, results = quantized_copy(tiny_llama, cfg)
    path = save_compressed_tensors(model, results, cfg, tmp_path / "ct")
    qc = json.loads((path / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors" and qc["format"] == "pack-quantized"
    assert qc["ignore"] == ["lm_head"]
    from safetensors import safe_open

    with safe_open(str(path / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        packed = f.get_tensor("model.layers.0.mlp.down_proj.weight_packed")
    assert "model.layers.0.mlp.down_proj.weight" not in keys and packed.dtype == torch.int32
    assert packed.shape == (64, 128 * cfg.bits // 32)  # 64 x 128 weight, dense bitstream per row
    assert ("model.layers.0.mlp.down_proj.weight_zero_point" in keys) == (not cfg.sym)
    reloaded = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    torch.testing.assert_close(logits(reloaded), logits(model), rtol=0, atol=1e-5)
    for name, res in results.items():
        torch.testing.assert_close(reloaded.get_submodule(name).weight, res.weight, rtol=0, atol=1e-6)


def test_compressed_tensors_refuses_what_it_cannot_store(tiny_llama, tmp_path, ct):
    model, results = quantized_copy(tiny_llama, GPTQConfig(bits=4, group_size=48))  # 64 columns: ragged
    with pytest.raises(ValueError, match="ragged"):
        save_compressed_tensors(model, results, GPTQConfig(group_size=48).quant_config(), tmp_path / "a")
    cfg = GPTQConfig(bits=4, group_size=32, desc_act=True)  # dynamic act-order: permuted g_idx
    model, results = quantized_copy(tiny_llama, cfg)
    with pytest.raises(ValueError, match="g_idx"):
        save_compressed_tensors(model, results, cfg.quant_config(), tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize(
    "cfg",
    [GPTQConfig(bits=4, group_size=32, desc_act=True), GPTQConfig(bits=3, group_size=48, sym=False),
     GPTQConfig(bits=2, group_size=-1)],
    ids=lambda c: c.label(),
)
def test_gptq_layout_round_trips(tiny_llama, tmp_path, cfg):
    model, results = quantized_copy(tiny_llama, cfg)
    fmt = "gptq" if cfg.sym else "gptq_v2"  # v1 cannot store an asymmetric zero point of 0
    if not cfg.sym and min(int(r.zeros.min()) for r in results.values()) == 0:
        with pytest.raises(ValueError, match="gptq_v2"):
            save_gptq(model, results, cfg.quant_config(), tmp_path / "v1")
    path = save_gptq(model, results, cfg, tmp_path / "gptq", checkpoint_format=fmt)
    qc = json.loads((path / "config.json").read_text())["quantization_config"]
    assert qc["checkpoint_format"] == fmt
    assert (qc["quant_method"], qc["bits"], qc["group_size"], qc["desc_act"], qc["sym"]) == (
        "gptq", cfg.bits, cfg.group_size, cfg.desc_act, cfg.sym)
    weights = load_gptq_weights(path)
    assert set(weights) == set(results)
    for name, res in results.items():
        torch.testing.assert_close(weights[name], res.weight, rtol=0, atol=1e-6)
    torch.testing.assert_close(logits(load_gptq_model(path)), logits(model), rtol=0, atol=1e-5)


def test_gptq_layout_bits_are_where_the_kernels_read_them(tiny_llama, tmp_path):
    """qweight packs 8 input columns per int32 (column j at bits 4j..4j+3); v1 qzeros store zero - 1."""
    from safetensors.torch import load_file

    cfg = GPTQConfig(bits=4, group_size=32)
    model, results = quantized_copy(tiny_llama, cfg)
    sd = load_file(str(save_gptq(model, results, cfg.quant_config(), tmp_path / "g") / "model.safetensors"))
    name = "model.layers.1.self_attn.o_proj"
    codes = results[name].codes.long()  # (64 out, 64 in)
    qweight = sd[f"{name}.qweight"].long() & 0xFFFFFFFF
    assert qweight.shape == (64 * 4 // 32, 64)
    for j in (0, 5, 13, 63):
        assert torch.equal((qweight[j // 8] >> (4 * (j % 8))) & 0xF, codes[:, j])
    # symmetric 4-bit: zero 8 stored as 7 in every nibble
    assert torch.equal(sd[f"{name}.qzeros"], torch.full((2, 8), 0x77777777, dtype=torch.int32))
    assert torch.equal(unpack_int32(sd[f"{name}.qzeros"], 4, dim=1), torch.full((2, 64), 7, dtype=torch.uint8))


def test_writes_are_atomic(tiny_llama, tmp_path, monkeypatch):
    cfg = GPTQConfig(bits=4, group_size=32)
    model, results = quantized_copy(tiny_llama, cfg)
    target = tmp_path / "out"
    save_gptq(model, results, cfg.quant_config(), target)
    before = (target / "model.safetensors").read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    import safetensors.torch

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_gptq(model, results, cfg.quant_config(), target)
    assert (target / "model.safetensors").read_bytes() == before  # the old checkpoint is intact
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary left behind
    assert hasattr(export, "save_compressed_tensors")


def awq_copy(tiny_llama, sym=False, group_size=32):
    from quantedu.awq import AWQConfig, awq_quantize_model

    model = copy.deepcopy(tiny_llama)
    calib = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0))
    cfg = AWQConfig(bits=4, group_size=group_size, sym=sym, n_grid=4, clip_grid=4)
    return model, awq_quantize_model(model, calib, cfg), cfg


@pytest.mark.parametrize("sym", [False, True], ids=["asym", "sym"])
def test_awq_gemm_layout_round_trips(tiny_llama, tmp_path, sym):
    """save_awq writes AutoAWQ's GEMM layout; our reader gives back the exact weights (fp16 scales)."""
    from quantedu.export.read import load_awq_weights, load_quantized_model
    from quantedu.export.write import save_awq

    model, layers, cfg = awq_copy(tiny_llama, sym=sym)
    path = save_awq(model, layers, cfg, tmp_path / "awq")
    config = json.loads((path / "config.json").read_text())
    qc = config["quantization_config"]
    assert qc == {"quant_method": "awq", "version": "gemm", "bits": 4, "zero_point": True, "group_size": 32,
                  "modules_to_not_convert": ["lm_head"]}
    assert config["dtype"] == "float16"
    weights = load_awq_weights(path)
    assert set(weights) == set(layers)
    for name, res in layers.items():
        exact = (res.scales.half().float()[:, res.g_idx.long()]) * (res.codes.float() - res.zeros[:, res.g_idx.long()])
        torch.testing.assert_close(weights[name], exact, rtol=0, atol=0)
    torch.testing.assert_close(logits(load_quantized_model(path)), logits(model), rtol=0, atol=2e-2)


def test_awq_gemm_bits_are_where_autoawq_puts_them(tiny_llama, tmp_path):
    """qweight (in, out/8): nibble i of word w holds output 8w + [0,2,4,6,1,3,5,7][i]; qzeros the same."""
    from safetensors.torch import load_file

    from quantedu.export.write import save_awq

    model, layers, cfg = awq_copy(tiny_llama)
    sd = load_file(str(save_awq(model, layers, cfg, tmp_path / "a") / "model.safetensors"))
    name = "model.layers.0.mlp.up_proj"
    codes, zeros = layers[name].codes.long(), layers[name].zeros.long()  # (128 out, 64 in), (128, 2)
    qweight, qzeros = sd[f"{name}.qweight"].long() & 0xFFFFFFFF, sd[f"{name}.qzeros"].long() & 0xFFFFFFFF
    assert qweight.shape == (64, 16) and qzeros.shape == (2, 16) and sd[f"{name}.scales"].shape == (2, 128)
    assert sd[f"{name}.scales"].dtype == torch.float16 and f"{name}.g_idx" not in sd
    order = [0, 2, 4, 6, 1, 3, 5, 7]
    for out in (0, 1, 5, 8, 77, 127):
        nibble = order.index(out % 8)
        assert torch.equal((qweight[:, out // 8] >> (4 * nibble)) & 0xF, codes[out, :])
        assert torch.equal((qzeros[:, out // 8] >> (4 * nibble)) & 0xF, zeros[out, :])


def test_awq_gemm_refuses_what_it_cannot_store(tiny_llama, tmp_path):
    from quantedu.export.write import save_awq

    model, results = quantized_copy(tiny_llama, GPTQConfig(bits=3, group_size=32, sym=False))
    with pytest.raises(ValueError, match="4-bit"):
        save_awq(model, results, GPTQConfig(bits=3, group_size=32, sym=False), tmp_path / "a")
    cfg = GPTQConfig(bits=4, group_size=32, desc_act=True)  # dynamic act-order: permuted g_idx
    model, results = quantized_copy(tiny_llama, cfg)
    with pytest.raises(ValueError, match="permuted"):
        save_awq(model, results, cfg, tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_static_groups_act_order_is_stored_as_natural_order(tiny_llama, tmp_path):
    """Act-order with static groups keeps contiguous groups: desc_act false (what vLLM serves), same weights."""
    cfg = GPTQConfig(bits=4, group_size=32, desc_act=True, static_groups=True)
    model, results = quantized_copy(tiny_llama, cfg)
    path = save_gptq(model, results, cfg, tmp_path / "static")
    qc = json.loads((path / "config.json").read_text())["quantization_config"]
    assert (qc["desc_act"], qc["static_groups"]) == (False, True)
    for name, w in load_gptq_weights(path).items():
        torch.testing.assert_close(w, results[name].weight, rtol=0, atol=1e-6)
    dynamic = GPTQConfig(bits=4, group_size=32, desc_act=True)
    model, results = quantized_copy(tiny_llama, dynamic)
    path = save_gptq(model, results, dynamic.quant_config(), tmp_path / "dynamic")  # desc_act from the g_idx
    assert json.loads((path / "config.json").read_text())["quantization_config"]["desc_act"] is True


def test_compressed_tensors_reader_matches_the_records(tiny_llama, tmp_path, ct):
    from quantedu.export.read import load_quantized_weights

    for cfg in (GPTQConfig(bits=4, group_size=32), GPTQConfig(bits=4, group_size=32, sym=False)):
        model, results = quantized_copy(tiny_llama, cfg)
        weights = load_quantized_weights(save_compressed_tensors(model, results, cfg, tmp_path / cfg.label()))
        for name, res in results.items():
            torch.testing.assert_close(weights[name], res.weight, rtol=0, atol=1e-6)
