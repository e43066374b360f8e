"""W8A8 from scratch (quantedu.w8a8) and its checkpoint (quantedu.export.w8a8), checked against the definitions,
against llm-compressor's W8A8 layout, and against a reload. (Tiny models: seconds; llm-compressor: ~10 s.)"""
import copy
import json

import pytest
import torch
from safetensors import safe_open
from torch import nn

from helpers import random_llama, token_ids as ids
from quantedu import w8a8
from quantedu.checks import ModelStateError
from quantedu.export.w8a8 import load_w8a8, save_w8a8
from quantedu.primitives import fake_quantize


def tiny_llama(folder=None):
    return random_llama(folder=folder)


def outlier_activations(tokens=256, features=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, features, generator=g)
    x[:, [5, 77]] *= 60  # two outlier channels, in every token (what LLM activations look like)
    return x


def test_per_token_codes_and_scales_follow_the_definition():
    x = outlier_activations()
    x[7] = 0  # a token of zeros
    q, s = w8a8.quantize_per_token(x)
    assert q.dtype == torch.int8 and s.shape == (256, 1)
    absmax = x.abs().amax(1, keepdim=True)
    live = absmax[:, 0] > 0
    torch.testing.assert_close(s[live], absmax[live] / 127)
    assert s[7] == 1 and (q[7] == 0).all()
    # the largest magnitude of every token lands on +-127; everything else within half a step
    assert (q[live].abs().amax(1) == 127).all()
    err = (w8a8.dequantize_activations(q, s) - x).abs()
    assert (err <= s / 2 + 1e-6).all()


def test_static_per_tensor_scales_lose_the_ordinary_channels_to_the_outliers():
    """The lesson of the outlier figure, as numbers: one scale for the tensor is set by the outlier channels,
    so the ordinary channels keep ~2 codes; per-token scales are set by the same outliers, per row."""
    x = outlier_activations()
    ordinary = torch.ones(x.shape[1], dtype=torch.bool)
    ordinary[[5, 77]] = False
    q_t, s_t = w8a8.quantize_per_tensor(x)
    q_d, s_d = w8a8.quantize_per_token(x)
    assert s_t.shape == (1,) and float(s_t) == pytest.approx(float(x.abs().max()) / 127)
    assert q_t[:, ordinary].unique().numel() <= 9  # a 256-level grid reduced to a handful of codes
    rel = lambda q, s: ((w8a8.dequantize_activations(q, s) - x)[:, ordinary].norm() / x[:, ordinary].norm()).item()  # noqa: E731
    assert rel(q_t, s_t) > 0.2 and rel(q_d, s_d) < rel(q_t, s_t)
    # without the outliers both are fine: the outliers are what breaks activation quantization
    y = x[:, ordinary]
    q, s = w8a8.quantize_per_tensor(y)
    assert ((w8a8.dequantize_activations(q, s) - y).norm() / y.norm()) < 0.02


def test_weights_reuse_the_primitives_grid():
    w = torch.randn(48, 64)
    q, s = w8a8.quantize_weight_int8(w, scale_dtype=None)
    assert q.dtype == torch.int8 and s.shape == (48, 1)
    torch.testing.assert_close(q.float() * s, fake_quantize(w, w8a8.WEIGHT_INT8), rtol=0, atol=0)
    qb, sb = w8a8.quantize_weight_int8(w)  # the scale rounded to bf16 first, the codes follow it
    assert torch.equal(sb.to(torch.bfloat16).float(), sb)
    torch.testing.assert_close(qb.float(), torch.clamp(torch.round(w / sb), -128, 127))


def test_int8_product_is_the_scaled_integer_accumulator():
    torch.manual_seed(1)
    x, w = torch.randn(10, 96), torch.randn(32, 96)
    qx, sx = w8a8.quantize_per_token(x)
    qw, sw = w8a8.quantize_weight_int8(w)
    y = w8a8.int8_linear(qx, sx, qw, sw)
    exact = (qx.double() @ qw.double().T) * sw.double().T * sx.double()
    torch.testing.assert_close(y.double(), exact, rtol=1e-6, atol=1e-6)
    layer = nn.Linear(96, 32, bias=True)
    out = w8a8.W8A8Linear.from_linear(layer)(x.view(2, 5, 96))
    assert out.shape == (2, 5, 32)
    assert ((out - layer(x.view(2, 5, 96))).norm() / layer(x).norm()) < 0.02


def test_quantize_model_w8a8_replaces_linears_and_guards_the_model():
    model, batch = tiny_llama(), ids()
    ref = model(batch).logits
    res = w8a8.quantize_model_w8a8(model)
    assert len(res["layers"]) == 14 and isinstance(model.lm_head, nn.Linear)
    assert all(isinstance(m, w8a8.W8A8Linear) for m in res["layers"].values())
    assert ((model(batch).logits - ref).norm() / ref.norm()) < 0.02
    with pytest.raises(ModelStateError, match="already quantized"):
        w8a8.quantize_model_w8a8(model)
    with pytest.raises(ValueError, match="calibration data"):
        w8a8.quantize_model_w8a8(tiny_llama(), "static")
    with pytest.raises(ValueError, match="'dynamic' .* or 'static'"):
        w8a8.quantize_model_w8a8(tiny_llama(), "per-channel")


def test_static_scales_come_from_the_calibration_inputs():
    model, batch = tiny_llama(), ids()
    stats = w8a8.activation_stats(model, batch, ["model.layers.1.mlp.down_proj"])
    seen = []
    h = model.model.layers[1].mlp.down_proj.register_forward_hook(lambda m, a, o: seen.append(a[0].reshape(-1, 128)))
    for row in batch:
        model(row[None])
    h.remove()
    x = torch.cat(seen)
    torch.testing.assert_close(stats["model.layers.1.mlp.down_proj"].absmax, x.abs().amax(0))
    res = w8a8.quantize_model_w8a8(model, "static", batch)
    layer = res["layers"]["model.layers.1.mlp.down_proj"]
    assert float(layer.input_scale) == pytest.approx(float(x.abs().max()) / 127, rel=1e-6)
    with pytest.raises(KeyError, match="not linear layers"):
        w8a8.activation_stats(tiny_llama(), batch, ["model.layers.1.mlp"])


@pytest.mark.parametrize("activations", ["dynamic", "static"])
def test_checkpoint_reloads_into_the_same_emulation(tmp_path, activations):
    """bf16 model -> W8A8 -> save -> load: the reload computes bit-identical logits (same codes, scales, norms)."""
    pytest.importorskip("compressed_tensors", reason="CI installs llmcompressor, which brings compressed-tensors")
    model, batch = tiny_llama(tmp_path / "fp"), ids()
    w8a8.quantize_model_w8a8(model, activations, batch)
    path = save_w8a8(model, tmp_path / "w8a8")
    reloaded = load_w8a8(path, dtype=torch.bfloat16)
    assert torch.equal(reloaded(batch).logits, model(batch).logits)
    qcfg = json.loads((path / "config.json").read_text())["quantization_config"]
    inputs = qcfg["config_groups"]["group_0"]["input_activations"]
    assert (inputs["strategy"], inputs["dynamic"]) == (("token", True) if activations == "dynamic" else ("tensor", False))
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert ("model.layers.0.mlp.up_proj.input_scale" in keys) == (activations == "static")


def test_layout_equals_llm_compressors_w8a8(tmp_path):
    """llm-compressor's QuantizationModifier(scheme="W8A8") on the same bf16 model: the same tensor names,
    dtypes, shapes and weight scales, the same quantization_config (bar its observer name). Its codes differ
    by one step in ~10% of the weights, each explained: compressed-tensors divides w / s in bf16 before
    rounding (``round(bf16(w / s))``), the course divides in fp32 (``round(w / s)``, the nearest code)."""
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier

    base = tiny_llama(tmp_path / "fp")  # oneshot reads the config from disk
    theirs_model, ours_model = copy.deepcopy(base), copy.deepcopy(base)
    oneshot(model=theirs_model, recipe=[QuantizationModifier(targets="Linear", scheme="W8A8", ignore=["lm_head"])])
    theirs_model.save_pretrained(tmp_path / "llmc", save_compressed=True)
    w8a8.quantize_model_w8a8(ours_model)
    save_w8a8(ours_model, tmp_path / "ours")

    def read(path):
        with safe_open(str(path / "model.safetensors"), "pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, json.loads((path / "config.json").read_text())
    theirs, their_cfg = read(tmp_path / "llmc")
    ours, our_cfg = read(tmp_path / "ours")
    assert {k: (v.dtype, v.shape) for k, v in theirs.items()} == {k: (v.dtype, v.shape) for k, v in ours.items()}
    for key in ("quant_method", "format", "ignore", "quantization_status"):
        assert their_cfg["quantization_config"][key] == our_cfg["quantization_config"][key], key
    for part in ("weights", "input_activations"):
        t, o = (c["quantization_config"]["config_groups"]["group_0"][part] for c in (their_cfg, our_cfg))
        assert {k: v for k, v in t.items() if k != "observer"} == {k: v for k, v in o.items() if k != "observer"}
    weights = dict(base.named_parameters())
    for key, codes in theirs.items():
        if key.endswith(".weight_scale"):
            assert torch.equal(codes, ours[key]), key
        elif codes.dtype == torch.int8:
            w, s = weights[key], theirs[key + "_scale"]
            assert torch.equal(codes, torch.clamp(torch.round(w / s), -128, 127).to(torch.int8)), key  # bf16 division
            assert torch.equal(ours[key], torch.clamp(torch.round(w.float() / s.float()), -128, 127).to(torch.int8))
            assert (codes.int() - ours[key].int()).abs().max() <= 1


def test_export_refuses_what_vllm_would_not_compute(tmp_path):
    pytest.importorskip("compressed_tensors", reason="CI installs llmcompressor, which brings compressed-tensors")
    from quantedu.rotation import rotate_model

    with pytest.raises(ValueError, match="quantize_model_w8a8"):
        save_w8a8(tiny_llama(), tmp_path / "a")
    model = tiny_llama()
    rotate_model(model, block=32, online_down=True)
    w8a8.quantize_model_w8a8(model)
    with pytest.raises(ValueError, match="online_down=False"):
        save_w8a8(model, tmp_path / "b")
    model = tiny_llama()
    w8a8.quantize_model_w8a8(model, scale_dtype=None)
    with pytest.raises(ValueError, match="scale_dtype"):
        save_w8a8(model, tmp_path / "c")
    assert not any(tmp_path.iterdir())


def test_bad_inputs_say_what_to_do(tmp_path):
    model = tiny_llama()
    model.save_pretrained(tmp_path / "plain")
    with pytest.raises(ValueError, match="not a compressed-tensors 'int-quantized' checkpoint"):
        load_w8a8(tmp_path / "plain")
    with pytest.raises(TypeError, match="2-D int8"):
        w8a8.W8A8Linear(torch.zeros(4, 4), torch.ones(4, 1))
    with pytest.raises(ValueError, match="positive and finite"):
        w8a8.quantize_per_tensor(torch.ones(2, 3), 0.0)
    with pytest.raises(TypeError, match="floating-point activation"):
        w8a8.quantize_per_token(torch.ones(2, 3, dtype=torch.int64))
