"""replace_linear / quantize_model_rtn: what is touched, what is skipped and why, ties kept intact."""
import copy

import pytest
import torch
from torch import nn

from quantedu.export.packing import unpack_int32
from quantedu.primitives import QuantConfig, dequantize, fake_quantize
from quantedu.rtn import quantize_model_rtn, rtn_layers, replace_linear, rtn_fn, summary_line


@pytest.fixture
def model(tiny_llama):
    return copy.deepcopy(tiny_llama)  # deepcopy keeps the embedding/head tie


def _n_linear(m):
    return sum(isinstance(x, nn.Linear) for x in m.modules())


def test_rtn_touches_every_block_linear_and_skips_the_tied_head(model):
    emb = model.model.embed_tokens.weight.detach().clone()
    before = {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    cfg = QuantConfig(3, 32)
    report = quantize_model_rtn(model, cfg, progress=False)
    assert len(report) == _n_linear(model) == 15
    quantized = report[report.action == "quantized"]
    assert len(quantized) == 14 and (quantized.rel_error > 0).all()
    head = report.set_index("name").loc["lm_head"]
    assert head.action == "skipped" and "by name" in head.reason and "embed_tokens" in head.reason
    assert torch.equal(model.model.embed_tokens.weight, emb)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and name != "lm_head":
            assert torch.equal(m.weight, fake_quantize(before[name], cfg))
            assert m.weight[0, :32].unique().numel() <= 2**3  # at most 8 levels per group
    assert "14 linear layers quantized, 1 skipped" in summary_line(report)


def test_tie_is_never_quantized_silently(model):
    emb = model.model.embed_tokens.weight.detach().clone()
    report = replace_linear(model, rtn_fn(QuantConfig(4, 32)), skip=(), progress=False)
    head = report.set_index("name").loc["lm_head"]
    assert head.action == "skipped" and "tied to model.embed_tokens.weight" in head.reason
    assert torch.equal(model.model.embed_tokens.weight, emb)


def test_untie_quantizes_a_copy(model):
    emb = model.model.embed_tokens.weight.detach().clone()
    report = replace_linear(model, rtn_fn(QuantConfig(4, 32)), skip=(), untie=True, progress=False)
    assert report.set_index("name").loc["lm_head"].action == "quantized"
    assert torch.equal(model.model.embed_tokens.weight, emb)
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    assert not torch.equal(model.lm_head.weight, emb)
    assert model.config.tie_word_embeddings is False


def test_skip_patterns_refusals_and_bad_output(model):
    def picky(w, name):
        if w.shape[0] == 32:
            raise ValueError("rows of 32 are not supported")
        return w * 0.5

    report = replace_linear(model, picky, skip=("*.mlp.*", "lm_head"), progress=False).set_index("name")
    assert report.loc["model.layers.0.mlp.up_proj"].reason == "skipped by name ('*.mlp.*')"
    assert "rows of 32" in report.loc["model.layers.0.self_attn.k_proj"].reason
    assert report.loc["model.layers.1.self_attn.q_proj"].action == "quantized"
    assert report.loc["model.layers.1.self_attn.q_proj"].rel_error == pytest.approx(0.25)
    with pytest.raises(ValueError, match="returned shape"):
        replace_linear(model, lambda w, n: w[:1], progress=False)
    with pytest.raises(ValueError, match="no nn.Linear"):
        replace_linear(nn.Sequential(nn.ReLU()), lambda w, n: w)


def test_quantized_model_still_runs(model):
    ids = torch.randint(0, 256, (1, 16))
    with torch.no_grad():
        ref = model(ids).logits
        quantize_model_rtn(model, QuantConfig(8, 32), progress=False)
        out = model(ids).logits
    assert torch.isfinite(out).all()
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()  # 8 bits: a small change


def test_rtn_records_pack_and_unpack_to_the_rtn_weight(model):
    from quantedu.export.write import gptq_state_dict

    cfg = QuantConfig(4, 32)
    layers = rtn_layers(model, cfg)
    name = "model.layers.0.mlp.down_proj"
    w = model.get_submodule(name).weight.detach()
    layers[name].check()
    torch.testing.assert_close(layers[name].weight, fake_quantize(w, cfg), rtol=0, atol=1e-6)
    sd = gptq_state_dict(model, layers, cfg, checkpoint_format="gptq_v2")
    rows, cols = w.shape
    assert sd[f"{name}.qweight"].shape == (cols * 4 // 32, rows) and sd[f"{name}.qzeros"].shape == (cols // 32, rows * 4 // 32)
    q = unpack_int32(sd[f"{name}.qweight"], 4, dim=0).t()
    zero = unpack_int32(sd[f"{name}.qzeros"], 4, dim=1).t().float()
    w_hat = dequantize(q, sd[f"{name}.scales"].t().float(), zero, cfg)
    torch.testing.assert_close(w_hat, fake_quantize(w, cfg), rtol=0, atol=1e-6)
