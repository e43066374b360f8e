"""SmoothQuant from scratch (quantedu.smoothquant): the formula, the fold, what it buys W8A8, and llm-compressor's
SmoothQuantModifier on the same calibration, element by element. (Tiny models: seconds.)"""
import copy

import pytest
import torch

from helpers import random_llama, token_ids as ids
from quantedu import smoothquant, w8a8
from quantedu.calibration import decoder_layers


def tiny_llama():
    """Random norm weights (the fold is exercised) and two large norm channels (outlier activations)."""
    return random_llama(outlier_channels=(3, 40))


def test_scales_follow_the_formula():
    x = torch.tensor([4.0, 1.0, 0.0, 9.0])
    w1 = torch.tensor([[1.0, -2.0, 0.5, 0.0], [0.5, 1.0, -3.0, 0.0]])
    w2 = torch.tensor([[-4.0, 0.5, 1.0, 0.0]])
    s = smoothquant.smoothquant_scales(x, [w1, w2], alpha=0.5)
    w_max = torch.tensor([4.0, 2.0, 3.0, 0.0])
    assert s[0] == pytest.approx(2.0 / 2.0) and s[1] == pytest.approx(1.0 / 2.0 ** 0.5)
    assert s[2] == smoothquant.MIN_SCALE          # a channel that is always 0
    assert s[3] == pytest.approx(3.0)             # no weight to balance: the activation term alone
    torch.testing.assert_close(smoothquant.smoothquant_scales(x, [w1, w2], 1.0)[:2], x[:2])
    torch.testing.assert_close(smoothquant.smoothquant_scales(x, [w1, w2], 0.0)[:3], 1 / w_max[:3])


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan"), "0.5", True])
def test_alpha_outside_zero_one_is_refused(alpha):
    with pytest.raises(ValueError, match=r"must be a number in \[0, 1\].*0.5 is the paper's default"):
        smoothquant.smoothquant_scales(torch.ones(4), [torch.ones(2, 4)], alpha)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        smoothquant.smooth_model(tiny_llama(), ids(), alpha)


def test_smoothing_keeps_the_function_and_flattens_the_activations():
    model, batch = tiny_llama(), ids()
    ref = model(batch).logits
    before = w8a8.activation_stats(model, batch, ["model.layers.0.self_attn.q_proj"])
    res = smoothquant.smooth_model(model, batch, alpha=0.5)
    torch.testing.assert_close(model(batch).logits, ref, rtol=1e-4, atol=1e-5)
    assert set(res["scales"]) == {f"model.layers.{i}.{n}" for i in (0, 1)
                                  for n in ("input_layernorm", "post_attention_layernorm")}
    after = w8a8.activation_stats(model, batch, ["model.layers.0.self_attn.q_proj"])
    spread = lambda st: float(st.absmax.max() / st.absmax.median())  # noqa: E731
    name = "model.layers.0.self_attn.q_proj"
    assert spread(after[name]) < spread(before[name]) / 5  # the outlier channels are tamed
    # the activations are divided by s, exactly
    torch.testing.assert_close(after[name].absmax, before[name].absmax / res["scales"]["model.layers.0.input_layernorm"],
                               rtol=1e-4, atol=1e-6)


def test_smoothquant_lowers_the_w8a8_error():
    """On a model with outlier channels, smoothing (alpha 0.5) before W8A8 lowers the logits' error, per-token
    and per-tensor activations alike (measured: 0.026 -> 0.014 and 0.076 -> 0.055 relative)."""
    batch = ids()
    ref = tiny_llama()(batch).logits

    def err(activations, alpha):
        model = tiny_llama()
        if alpha is not None:
            smoothquant.smooth_model(model, batch, alpha)
        w8a8.quantize_model_w8a8(model, activations, batch)
        return float((model(batch).logits - ref).norm() / ref.norm())
    assert err("dynamic", 0.5) < 0.7 * err("dynamic", None)
    assert err("static", 0.5) < 0.85 * err("static", None)


def test_scales_equal_llm_compressor_times_the_explained_factor(tmp_path):
    """llm-compressor 0.14's SmoothQuantModifier on the same model and calibration rows.

    Its norm weights after smoothing give its scales (``w_before / w_after``). They differ from ours by design:
    it uses the range ``max X_j - min X_j`` for ``max|X_j|`` and ``2 max|W_j|`` for ``max|W_j|``, so per channel
    ``s_theirs = s_ours * ((max - min) / max|X|)^alpha * 2^(alpha - 1)`` (``llm_compressor_factor``). Asserted
    for every element of all four smoothed norms; the factor really varies (it is not one constant).
    Fails (does not skip) without llmcompressor: CI installs it."""
    from llmcompressor.modifiers.transform.smoothquant import SmoothQuantModifier
    from tokenizers import Tokenizer, models as tk_models
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    from quantedu.engines import llm_compressor as reference

    alpha = 0.6
    tiny_llama().save_pretrained(tmp_path / "fp")  # oneshot reads the config from disk
    theirs = LlamaForCausalLM.from_pretrained(tmp_path / "fp").eval()
    ours, batch = copy.deepcopy(theirs), ids()
    norms_before = {n: p.detach().clone() for n, p in theirs.named_parameters() if "norm" in n}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(tk_models.WordLevel({f"t{i}": i for i in range(256)}, unk_token="t0")),
        pad_token="t0")
    reference.run_oneshot(theirs, batch, [SmoothQuantModifier(smoothing_strength=alpha)], tokenizer,
                          pipeline="sequential")
    res = smoothquant.smooth_model(ours, batch, alpha)
    their_params = dict(theirs.named_parameters())
    factors = []
    for key, s in res["scales"].items():
        s_theirs = norms_before[f"{key}.weight"] / their_params[f"{key}.weight"]
        factor = smoothquant.llm_compressor_factor(res["stats"][key], alpha)
        torch.testing.assert_close(s_theirs, s * factor, rtol=1e-5, atol=0)
        assert (factor <= 2 ** (2 * alpha - 1) + 1e-6).all()  # range <= 2 max|X|
        factors.append(factor)
        # the balance layers got the same (their) scales: both folds are the same operation
        block = decoder_layers(theirs)[int(key.split(".")[2])]
        first = "self_attn.q_proj" if key.endswith("input_layernorm") else "mlp.gate_proj"
        before = dict(tiny_llama().named_parameters())[f"{key.rsplit('.', 1)[0]}.{first}.weight"]
        torch.testing.assert_close(block.get_submodule(first).weight, before * s_theirs, rtol=1e-5, atol=1e-7)
    spread = torch.cat(factors)
    assert float(spread.max() / spread.min()) > 1.05, "one constant factor would not test the element-wise claim"


def test_weights_that_do_not_read_the_activations_are_refused():
    with pytest.raises(ValueError, match="4 input columns"):
        smoothquant.smoothquant_scales(torch.ones(4), [torch.ones(2, 4), torch.ones(2, 5)], 0.5)
    with pytest.raises(ValueError, match="give the weights"):
        smoothquant.smoothquant_scales(torch.ones(4), [], 0.5)
