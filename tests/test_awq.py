"""AWQ (quantedu.awq): scale folding, the two grid searches, quantization, export, and agreement
with llm-compressor's AWQModifier. Tiny random Llama models only: the whole file runs in seconds."""
from __future__ import annotations

import copy

import pytest
from helpers import require_module
import torch
from quantedu import awq, testmodel
from quantedu.engines import llm_compressor
from quantedu.calibration import capture_block_inputs, decoder_layers
from quantedu.primitives import QuantConfig, dequantize, fake_quantize


def tiny_llama(kv_heads: int = 4, seed: int = 0):
    """Non-trivial norm weights (folding into them is really tested) and uneven input channels, untied."""
    return testmodel.tiny_llama(seed, varied=True, num_key_value_heads=kv_heads, max_position_embeddings=128,
                                tie_word_embeddings=False)


def token_batches(n: int = 4, seq: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 256, (n, seq), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_folding_preserves_the_function(kv_heads):
    model, ids = tiny_llama(kv_heads), token_batches()
    ref = model(ids).logits
    folded = copy.deepcopy(model)
    for block in decoder_layers(folded):
        groups = awq.llama_scale_groups(block)
        # GQA: v_proj has fewer outputs than o_proj has inputs, so that pair is not scaled.
        assert any(g.prev == "self_attn.v_proj" for g in groups) == (kv_heads == 4)
        mods = dict(block.named_modules())
        for g in groups:
            s = torch.rand(mods[g.layers[0]].in_features) * 4 + 0.25
            awq.fold_scales(mods[g.prev], [mods[n] for n in g.layers], s)
    changed = [n for n, p in folded.named_parameters() if not torch.equal(p, dict(model.named_parameters())[n])]
    assert any("input_layernorm" in n for n in changed) and any("down_proj" in n for n in changed)
    err = (folded(ids).logits - ref).abs().max().item()
    print(f"function-preservation max |logit diff| = {err:.2e} (logits up to {ref.abs().max():.2f})")
    assert err < 1e-4

    # The searched scales, folded without quantizing, also leave the function unchanged.
    searched = copy.deepcopy(model)
    inputs, kwargs = capture_block_inputs(searched, ids)
    res = awq.awq_block(decoder_layers(searched)[0], inputs, kwargs, awq.AWQConfig(group_size=32, clip=False),
                        quantize_weights=False)
    assert any(a > 0 for a in res.alpha.values())
    assert (searched(ids).logits - ref).abs().max().item() < 1e-4


def test_scale_search_picks_the_mse_minimum():
    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 16, bias=False)
    # A constructed salient case: 4 input channels carry 30x larger activations.
    x = torch.randn(512, 64)
    x[:, :4] *= 30
    cfg = awq.AWQConfig(bits=3, group_size=32)
    qc = cfg.quant_config()
    W = layer.weight.data.clone()
    ref = x @ W.T

    # Independent brute force over the same grid.
    brute = []
    for ratio in cfg.ratios():
        s = awq.candidate_scales(awq.activation_scale(x), ratio)
        out = (x / s) @ fake_quantize(W * s, qc).T  # the folded, quantized layer
        brute.append(((out - ref) ** 2).mean().item())
    s, alpha, history = awq.search_scale([layer], awq.activation_scale(x), lambda: ((layer(x) - ref) ** 2).mean().item(), cfg)
    assert history == pytest.approx(brute, rel=1e-4)
    assert alpha == cfg.ratios()[min(range(len(brute)), key=brute.__getitem__)]
    assert min(brute) < 0.8 * brute[0], "scaling salient channels must beat plain RTN (alpha = 0) here"
    assert alpha > 0 and torch.equal(layer.weight.data, W), "weights are restored after the search"
    torch.testing.assert_close(s, awq.candidate_scales(awq.activation_scale(x), alpha))

    # The Gram-matrix loss used for single-layer groups equals the direct one.
    dW = fake_quantize(W * s, qc) / s - W
    assert awq.gram_loss(dW, x.T @ x, x.shape[0]) == pytest.approx(((x @ dW.T) ** 2).mean().item(), rel=1e-4)


def test_clip_search_matches_brute_force_with_ragged_group():
    torch.manual_seed(0)
    W, x = torch.randn(8, 64), torch.randn(300, 64) * (torch.rand(64) * 3)
    cfg = awq.AWQConfig(bits=3, group_size=48)  # groups of 48 and 16: the last one is ragged
    qc = cfg.quant_config()
    ratio = awq.search_clip(W, x.T @ x, cfg)
    assert ratio.shape == (8, 2) and (ratio < 1).any() and (ratio == 1).any()
    groups = [slice(0, 48), slice(48, 64)]
    for r in range(8):
        for gi, cols in enumerate(groups):
            errs = []
            for i in range(int(cfg.max_shrink * cfg.clip_grid)):
                c = 1 - i / cfg.clip_grid
                w = W[r : r + 1].clone()
                hi = w[:, cols].abs().max() * c
                w[:, cols] = w[:, cols].clamp(-hi, hi)
                dq = fake_quantize(w, qc) - W[r : r + 1]
                errs.append(((x[:, cols] @ dq[:, cols].T) ** 2).sum().item())
            best = 1 - min(range(len(errs)), key=errs.__getitem__) / cfg.clip_grid
            assert ratio[r, gi].item() == pytest.approx(best), (r, gi, errs)


@pytest.mark.parametrize("bits,group", [(4, 48), (3, 32)])
def test_whole_model_codes_reproduce_weights(bits, group):
    model, ids = tiny_llama(kv_heads=2), token_batches()
    fp = copy.deepcopy(model)
    res = awq.awq_quantize_model(model, ids, awq.AWQConfig(bits=bits, group_size=group))
    assert len(res) == 2 * 7
    for name, q in res.items():
        assert int(q.codes.max()) <= 2**bits - 1
        assert torch.equal(q.zeros, q.zeros.round())
        w = dict(model.named_modules())[name].weight
        torch.testing.assert_close(dequantize(q.codes, q.scales, q.zeros, q.config, q.g_idx.long()), w, rtol=0, atol=1e-6)
        assert q.scales.shape[1] == -(-w.shape[1] // group)  # ragged last group counted
    # AWQ beats RTN on the calibration tokens' logits (both vs. the fp model).
    rtn = copy.deepcopy(fp)
    with torch.no_grad():
        for layer in decoder_layers(rtn):
            for m in layer.modules():
                if isinstance(m, torch.nn.Linear):
                    m.weight.copy_(fake_quantize(m.weight, QuantConfig(bits=bits, group_size=group)))
    ref = fp(ids).logits
    err_awq = ((model(ids).logits - ref) ** 2).mean()
    err_rtn = ((rtn(ids).logits - ref) ** 2).mean()
    assert err_awq < err_rtn, (err_awq, err_rtn)


def test_export_reload_equality(tmp_path):
    require_module("compressed_tensors")
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    from quantedu.export.write import save_compressed_tensors

    model, ids = tiny_llama(kv_heads=2), token_batches()
    cfg = awq.AWQConfig(bits=4, group_size=32)
    res = awq.awq_quantize_model(model, ids, cfg)
    path = save_compressed_tensors(model, res, cfg, tmp_path / "awq")
    # dequantize=True: transformers decompresses into plain nn.Linear weights we can compare.
    reloaded = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, quantization_config=CompressedTensorsConfig(dequantize=True)).eval()
    for name, m in reloaded.named_modules():
        if name in res:
            torch.testing.assert_close(m.weight.data, dict(model.named_modules())[name].weight.data, rtol=0, atol=1e-6)
    # The folded norms travel in the checkpoint too: same logits.
    torch.testing.assert_close(reloaded(ids).logits, model(ids).logits, rtol=0, atol=1e-4)


def test_scales_agree_with_llm_compressor(tmp_path):
    """Block 0 of the same model and calibration: llm-compressor's AWQModifier picks the same scales.

    Fails (does not skip) without llmcompressor: CI installs it. Two patches, test-only:
    * ``IntermediatesCache.pin_memory`` is a no-op: on a CPU-only machine llm-compressor 0.14 asks for
      an accelerator there ("Cannot access accelerator device when none is available").
    * its grid is set to the reference's exponents ``i / n_grid`` (llm-compressor uses ``i / (n_grid-1)``);
      ``duo_scaling=False`` is the paper's ``s = s_x^alpha``.
    """
    from llmcompressor.modifiers.transform.awq import AWQModifier
    from tokenizers import Tokenizer, models as tk_models
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    cfg = awq.AWQConfig(bits=4, group_size=32, clip=False)
    tiny_llama().save_pretrained(tmp_path / "fp")  # oneshot reads the config from disk
    model = LlamaForCausalLM.from_pretrained(tmp_path / "fp").eval()
    ours = copy.deepcopy(model)
    ids = token_batches()

    picked: dict[str, torch.Tensor] = {}
    best_scale = AWQModifier._compute_best_scale

    def spy(self, mapping, *args, **kwargs):
        s = best_scale(self, mapping, *args, **kwargs)
        picked[mapping.smooth_name] = s.clone()
        return s

    mp = pytest.MonkeyPatch()
    mp.setattr(AWQModifier, "_compute_best_scale", spy)
    mp.setattr(AWQModifier, "_get_grid_search_params", lambda self: [(r, False) for r in cfg.ratios()])
    try:
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=Tokenizer(tk_models.WordLevel({f"t{i}": i for i in range(256)}, unk_token="t0")),
            pad_token="t0")
        llm_compressor.run_oneshot(model, ids, llm_compressor.awq_recipe(cfg, duo_scaling=False, n_grid=cfg.n_grid),
                              tokenizer, pipeline="sequential")
    finally:
        mp.undo()

    inputs, kwargs = capture_block_inputs(ours, ids)
    res = awq.awq_block(decoder_layers(ours)[0], inputs, kwargs, cfg, quantize_weights=False)
    assert len(res.scales) == 4
    for prev, s in res.scales.items():
        theirs = picked[f"model.layers.0.{prev}"]
        print(f"{prev}: alpha {res.alpha[prev]}, max |s_ours - s_llmcompressor| = {(s - theirs).abs().max():.1e}")
        torch.testing.assert_close(s, theirs, rtol=1e-5, atol=1e-6)
    assert len(set(res.alpha.values())) > 1, "a case where every group picks the same alpha proves little"

    # llm-compressor quantizes in forward and keeps the original weights: a plain copy of its state dict is not
    # the quantized model until bake_weights writes the quantized weights in
    plain = LlamaForCausalLM.from_pretrained(tmp_path / "fp").eval()
    weights = {k: v for k, v in model.state_dict().items() if k in plain.state_dict()}
    with torch.no_grad():
        quantized = model(ids[:1]).logits
        plain.load_state_dict(weights)
        assert not torch.allclose(plain(ids[:1]).logits, quantized, atol=1e-4)
        assert llm_compressor.bake_weights(model) == 7 * len(decoder_layers(model))
        assert torch.equal(model(ids[:1]).logits, quantized)  # the forward's own quantization changes nothing now
        plain.load_state_dict({k: v for k, v in model.state_dict().items() if k in plain.state_dict()})
        torch.testing.assert_close(plain(ids[:1]).logits, quantized, rtol=0, atol=1e-5)
