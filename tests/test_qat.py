"""QAT: the straight-through estimator, LSQ scale gradients, and a step that lowers the loss."""
import copy

import pytest
import torch
from torch import nn

from quantedu import qat
from quantedu.primitives import QuantConfig, fake_quantize


@pytest.fixture
def model(tiny_llama):
    return copy.deepcopy(tiny_llama)


def test_round_ste_passes_gradients_straight_through():
    x = torch.tensor([0.2, 1.7, -2.5], requires_grad=True)
    y = qat.round_ste(x)
    assert y.tolist() == torch.round(x.detach()).tolist()
    y.sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 1.0]


def test_fake_quant_linear_starts_at_rtn_and_has_lsq_gradient():
    torch.manual_seed(0)
    lin = nn.Linear(40, 3, bias=False)
    cfg = QuantConfig(3, 16)
    fq = qat.FakeQuantLinear(lin, cfg, train_weight=True)
    wq = fq.quantized_weight()
    assert torch.allclose(wq, fake_quantize(lin.weight.detach(), cfg), atol=1e-6)
    with torch.no_grad():
        fq.log_scale -= 0.7  # a smaller step: the largest weights now fall outside the grid
    wq = fq.quantized_weight()
    r = torch.randn_like(wq)
    (wq * r).sum().backward()
    # LSQ: d w_q / d s = round(w/s) - w/s inside the grid, the clamp bound (q - z) outside.
    s = fq.log_scale.exp().detach()[:, fq.g_idx]
    z = fq.zero[:, fq.g_idx]
    v = lin.weight.detach() / s
    q = torch.round(v) + z
    inside = (q >= 0) & (q <= cfg.maxq)
    dwq_ds = torch.where(inside, torch.round(v) - v, q.clamp(0, cfg.maxq) - z)
    expected = torch.zeros_like(fq.log_scale).index_add_(1, fq.g_idx, r * dwq_ds * s)  # chain rule for log s
    assert torch.allclose(fq.log_scale.grad, expected, atol=1e-5)
    assert 0 < inside.sum() < inside.numel()
    assert torch.allclose(fq.weight.grad, torch.where(inside, r, torch.zeros_like(r)))  # STE, clipped outside


def test_prepare_freezes_all_but_scales_and_chosen_blocks(model):
    names = qat.prepare_qat(model, QuantConfig(4, 32), train_weights=1)
    assert len(names) == 14 and "lm_head" not in names
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(n.endswith("log_scale") or n.startswith("model.layers.1.") for n in trainable)
    assert "model.layers.1.mlp.down_proj.weight" in trainable
    assert "model.layers.0.mlp.down_proj.weight" not in trainable
    assert not any("embed" in n or "norm" in n for n in trainable)


@pytest.mark.parametrize("loss", ["kd", "ce"])
def test_a_qat_step_reduces_the_loss(model, loss):
    torch.manual_seed(0)
    with torch.no_grad():  # a random model at init predicts ~uniform tokens: sharpen it so 2 bits hurt
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(4)
    ids = torch.randint(0, 256, (4, 32))
    qat.prepare_qat(model, QuantConfig(2, 32), train_weights="all")
    opt = qat.make_optimizer(model, lr_scale=3e-3, lr_weight=1e-3)
    first = qat.qat_step(model, ids, opt, loss)
    after_one = qat.qat_loss(model, ids, loss).item()
    assert after_one < first
    for _ in range(8):
        qat.qat_step(model, ids, opt, loss)
    assert qat.qat_loss(model, ids, loss).item() < after_one


def test_kd_loss_is_zero_without_quantization(model):
    qat.prepare_qat(model, QuantConfig(8, 32))
    qat.set_quantize(model, False)
    ids = torch.randint(0, 256, (2, 16))
    assert qat.qat_loss(model, ids, "kd").item() == pytest.approx(0.0, abs=1e-6)  # teacher == student


def test_train_qat_end_to_end_converts_to_plain_linears(model):
    cal = torch.randint(0, 256, (8, 24))
    plan = qat.QATPlan(steps=4, batch_size=2, seq_len=16, n_samples=8, train_weights=1)
    result = qat.train_qat(model, cal, QuantConfig(3, 32), plan, progress=False)
    assert result["steps"] == 4 and len(result["losses"]) == 4 and result["tokens"] == 4 * 2 * 16
    assert not any(isinstance(m, qat.FakeQuantLinear) for m in model.modules())
    w = model.model.layers[0].self_attn.q_proj.weight
    assert w[0, :32].unique().numel() <= 8  # the trained weights still sit on a 3-bit grid
    assert model.lm_head.weight is model.model.embed_tokens.weight
    with pytest.raises(ValueError, match="calibration"):
        qat.train_qat(copy.deepcopy(model), torch.randint(0, 256, (8, 4)), QuantConfig(3, 32), plan)


def test_blockwise_qat_lowers_every_block_error(model):
    cal = torch.randint(0, 256, (8, 32))
    plan = qat.QATPlan(mode="blockwise", steps=15, batch_size=4, seq_len=32, n_samples=8, train_weights="all",
                       lr_scale=2e-2, lr_weight=1e-4)
    result = qat.train_qat(model, cal, QuantConfig(2, 32), plan, progress=False)
    assert [b["block"] for b in result["per_block"]] == [0, 1]
    assert all(b["mse after"] < b["mse before"] for b in result["per_block"])
    assert not any(isinstance(m, qat.FakeQuantLinear) for m in model.modules())
    assert not any(p.requires_grad for p in model.parameters())
    assert model.model.layers[1].mlp.up_proj.weight[0, :32].unique().numel() <= 4  # on a 2-bit grid


def test_plan_scales_up_on_gpu():
    cpu, gpu = qat.plan("cpu"), qat.plan("cuda")
    assert cpu.mode == "blockwise" and gpu.mode == "e2e"
    assert gpu.tokens > 10 * cpu.tokens and gpu.train_weights == "all"
    with pytest.raises(ValueError, match="mode"):
        qat.train_qat(torch.nn.Linear(2, 2), torch.zeros(1, 200, dtype=torch.long), QuantConfig(),
                      qat.QATPlan(mode="magic", seq_len=8))


def test_plan_loss_must_fit_its_mode():
    assert qat.QATPlan().loss == "kd" and qat.QATPlan(mode="blockwise").loss == "mse"
    assert qat.plan("cpu").loss == "mse"
    with pytest.raises(ValueError, match="blockwise QAT matches"):
        qat.QATPlan(mode="e2e", loss="mse")
    with pytest.raises(ValueError, match="blockwise QAT matches"):
        qat.QATPlan(mode="blockwise", loss="kd")
