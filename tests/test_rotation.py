"""Rotations from scratch (quantedu.rotation): the Hadamard matrices, the outlier statistics, a rotated Llama that
computes the same function (tiny model and the course model), and llm-compressor's SpinQuant on the same block."""
import copy

import pytest
import torch

from helpers import random_llama as tiny_llama, token_ids
from quantedu import rotation


def ids():
    return token_ids(n=2)


@pytest.mark.parametrize("n", [1, 2, 8, 64])
def test_hadamard_is_orthonormal_and_symmetric(n):
    H = rotation.hadamard(n)
    torch.testing.assert_close(H @ H.T, torch.eye(n, dtype=H.dtype))
    assert torch.equal(H, H.T)
    assert torch.allclose(H.abs(), torch.full_like(H, n ** -0.5))


@pytest.mark.parametrize("n", [0, 3, 12, 576, 2.0, True])
def test_hadamard_needs_a_power_of_two(n):
    with pytest.raises(ValueError, match="power of two"):
        rotation.hadamard(n)


def test_block_hadamard_fits_576_as_nine_blocks_of_64():
    Q = rotation.block_hadamard(576, 64)
    torch.testing.assert_close(Q @ Q.T, torch.eye(576, dtype=Q.dtype))
    assert torch.equal(Q[64:128, 64:128], rotation.hadamard(64)) and not Q[:64, 64:].any()
    x = torch.randn(5, 576)
    torch.testing.assert_close(rotation.apply_block_hadamard(x, 64), (x.double() @ Q).float(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("block, match", [(128, r"does not divide the width 576 .*64, 32"),
                                          (256, "does not divide"), (48, "power of two"), (0, "power of two")])
def test_a_block_that_does_not_fit_is_refused_with_the_sizes_that_do(block, match):
    with pytest.raises(ValueError, match=match):
        rotation.block_hadamard(576, block)


def test_rotation_spreads_outlier_channels():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 128, generator=g)
    x[:, [3, 70]] *= 50  # outlier channels, as in LLM activations
    before, after = rotation.outlier_stats(x), rotation.outlier_stats(rotation.apply_block_hadamard(x, 64))
    assert before["kurtosis"] > 20 and after["kurtosis"] < 6
    assert after["max_to_mean"] < before["max_to_mean"] / 3
    gauss = torch.randn(200000, generator=g)
    assert rotation.kurtosis(gauss) == pytest.approx(3.0, abs=0.05)
    one_hot = torch.zeros(64)
    one_hot[5] = 8.0
    assert rotation.max_to_mean(rotation.apply_block_hadamard(one_hot[None], 64)) == pytest.approx(1.0)


@pytest.mark.parametrize("options", [{}, {"per_head": True}, {"online_down": True},
                                     {"per_head": True, "online_down": True, "seed": 1}],
                         ids=["R1", "R1+R2", "R1+R4", "R1+R2+R4 random signs"])
def test_the_rotated_tiny_model_computes_the_same_function(options):
    model, batch = tiny_llama(), ids()
    ref = model(batch).logits
    info = rotation.rotate_model(model, block=32, **options)
    torch.testing.assert_close(model(batch).logits, ref, rtol=1e-5, atol=1e-5)
    assert info["untied"] and not model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    norms = [p for n, p in model.named_parameters() if "norm" in n]
    assert all(torch.equal(p, torch.ones_like(p)) for p in norms)
    Q = info["Q"]
    torch.testing.assert_close(Q @ Q.T, torch.eye(64, dtype=Q.dtype))
    assert (options.get("seed") is None) == torch.equal(Q, rotation.block_hadamard(64, 32))


def test_bad_options_are_refused_before_the_model_changes():
    model = tiny_llama(hidden=96, heads=3, kv_heads=1, intermediate=160)  # 96 = 3 x 32, 160 = 5 x 32, head_dim 32
    before = {n: p.clone() for n, p in model.state_dict().items()}
    with pytest.raises(ValueError, match="does not divide the width 96"):
        rotation.rotate_model(model, block=64)
    with pytest.raises(ValueError, match="does not divide the width 160"):
        rotation.rotate_model(tiny_llama(hidden=64, intermediate=160), block=64, online_down=True)
    assert all(torch.equal(before[n], p) for n, p in model.state_dict().items())
    layer_norm_model = tiny_llama()
    layer_norm_model.model.layers[1].input_layernorm = torch.nn.LayerNorm(64)
    with pytest.raises(TypeError, match="RMSNorms without bias"):
        rotation.rotate_model(layer_norm_model, block=32)


def test_the_rotated_course_model_computes_the_same_function(course_model):
    """SmolLM2-135M (576 = 9 x 64, intermediate 1536 = 24 x 64, head_dim 64), R1+R2+R4 with blocks of 64."""
    model, tok = course_model
    model = copy.deepcopy(model)
    batch = tok("Quantization maps real numbers onto a small grid of codes, and rotations", return_tensors="pt").input_ids
    ref = model(batch).logits
    rotation.rotate_model(model, block=64, per_head=True, online_down=True)
    out = model(batch).logits
    assert float((out - ref).abs().max() / ref.abs().max()) < 1e-4
    assert torch.equal(out.argmax(-1), ref.argmax(-1))


def test_same_weights_as_llm_compressor_spinquant_except_its_centered_embeddings(tmp_path):
    """llm-compressor 0.14's SpinQuantModifier (R1 + R2, transform_type="hadamard", block 64) on the same model:
    every linear weight and norm is bit-identical to ours. One difference, explained: it also centers each
    embedding row (``E - mean(E)``, QuaRot's step for LayerNorm models) before rotating, so its embedding equals
    ``center(E) Q``, and with RMSNorm that changes the function: its logits move, ours do not."""
    from llmcompressor.modifiers.transform.spinquant import SpinQuantModifier
    from tokenizers import Tokenizer, models as tk_models
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    from quantedu.engines import llm_compressor as reference

    tiny_llama(hidden=128, heads=2, kv_heads=1, head_dim=64, intermediate=256).save_pretrained(tmp_path / "fp")
    theirs = LlamaForCausalLM.from_pretrained(tmp_path / "fp").eval()
    original, ours, batch = copy.deepcopy(theirs), copy.deepcopy(theirs), ids()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(tk_models.WordLevel({f"t{i}": i for i in range(256)}, unk_token="t0")),
        pad_token="t0")
    recipe = [SpinQuantModifier(rotations=["R1", "R2"], transform_type="hadamard", transform_block_size=64)]
    reference.run_oneshot(theirs, batch, recipe, tokenizer, pipeline="sequential")
    info = rotation.rotate_model(ours, block=64, per_head=True)
    mine, their_params = dict(ours.named_parameters()), dict(theirs.named_parameters())
    assert set(mine) == set(their_params)
    for name, p in mine.items():
        if name != "model.embed_tokens.weight":
            assert torch.equal(p, their_params[name]), name
    E = original.model.embed_tokens.weight.double()
    centered = (E - E.mean(-1, keepdim=True)) @ info["Q"]
    torch.testing.assert_close(their_params["model.embed_tokens.weight"].double(), centered, rtol=0, atol=1e-6)
    ref = original(batch).logits
    assert float((ours(batch).logits - ref).abs().max()) < 1e-4
    assert float((theirs(batch).logits - ref).abs().max()) > 1e-2


def test_layer_outlier_stats_see_the_rotation():
    """On a model with outlier channels in its norms, rotating lowers the kurtosis of q_proj's input."""
    model, batch = tiny_llama(outlier_channels=(3, 40)), ids()
    before = rotation.layer_outlier_stats(model, "model.layers.0.self_attn.q_proj", batch)
    rotation.rotate_model(model, block=64)
    after = rotation.layer_outlier_stats(model, "model.layers.0.self_attn.q_proj", batch)
    assert after["input"]["kurtosis"] < before["input"]["kurtosis"] / 2
    assert after["input"]["max_to_mean"] < before["input"]["max_to_mean"]
    with pytest.raises(TypeError, match="not a linear layer"):
        rotation.layer_outlier_stats(model, "model.layers.0.mlp", batch)
