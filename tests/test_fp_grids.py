"""GPTQ on floating-point grids (quantedu.fp_grids): the grids plug into quantedu.gptq, round like the FP4/FP8
quantizers, help where the inputs are correlated, and a GPTQ-on-FP4 result exports and reloads exactly."""
from __future__ import annotations

import pytest
import torch

from quantedu import fp, fp_grids
from quantedu import microscaling as ms
from quantedu.gptq import IntGrid, gptq_quantize_weight
from quantedu.primitives import QuantConfig, fake_quantize

GRIDS = fp_grids.default_grids()


def _weight(rows=48, cols=128, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(rows, cols, generator=gen) * 0.02 * (1 + 3 * torch.rand(cols, generator=gen))


def _correlated_h(cols=128, seed=1):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(1024, 8, generator=gen) @ torch.randn(8, cols, generator=gen) + 0.1 * torch.randn(1024, cols,
                                                                                                     generator=gen)
    return 2 * X.T @ X / len(X)


@pytest.mark.parametrize("label", list(GRIDS))
def test_rtn_on_a_grid_is_the_plain_quantizer(label):
    W = _weight()
    grid = GRIDS[label](W)
    Q = fp_grids.rtn_on_grid(W, grid, fp_grids.gptq_config(grid).group_size)
    plain = {"INT4 g32 sym": lambda: fake_quantize(W, QuantConfig(bits=4, group_size=32, symmetric=True)),
             "INT4 g32 asym": lambda: fake_quantize(W, QuantConfig(bits=4, group_size=32, symmetric=False)),
             "MXFP4": lambda: ms.fake_quantize(W, ms.MXFP4), "NVFP4": lambda: ms.fake_quantize(W, ms.NVFP4),
             "FP8 E4M3 per-channel": lambda: fp.fp8_fake_quantize(W, "e4m3", "channel")}[label]()
    torch.testing.assert_close(Q, plain, rtol=0, atol=1e-7)


@pytest.mark.parametrize("label", list(GRIDS))
def test_gptq_with_a_diagonal_hessian_is_rtn(label):
    """Uncorrelated inputs: the OBS update of a column touches no other column, so GPTQ rounds like RTN."""
    W = _weight()
    grid = GRIDS[label](W)
    cfg = fp_grids.gptq_config(grid)
    H = torch.diag(torch.rand(128) + 0.5)
    res = gptq_quantize_weight(W, H, cfg, grid=grid)
    assert torch.equal(res.weight, fp_grids.rtn_on_grid(W, grid, cfg.group_size))


@pytest.mark.parametrize("label", ["MXFP4", "NVFP4", "INT4 g32 sym"])
def test_gptq_lowers_the_layer_output_error_on_correlated_inputs(label):
    W, H = _weight(), _correlated_h()
    table = fp_grids.grid_comparison({"w": W}, {"w": H}, {label: GRIDS[label]})
    row = table.iloc[0]
    assert row.gptq_error < row.rtn_error and row.gptq_gain > 1.2, row.to_dict()


def test_layer_output_error_is_the_output_error():
    W, Q = _weight(), _weight(seed=5)
    X = torch.randn(256, 128)
    H = 2 * X.T @ X / len(X)
    direct = ((X @ (W - Q).T) ** 2).sum() * 2 / len(X)
    assert fp_grids.layer_output_error(W, Q, H, relative=False) == pytest.approx(direct.item(), rel=1e-4)
    assert fp_grids.layer_output_error(W, W, H) == 0


def test_fp4_grid_refuses_other_group_sizes_and_needs_the_weight_for_nvfp4():
    W, H = _weight(), _correlated_h()
    with pytest.raises(ValueError, match="group_size=32"):
        gptq_quantize_weight(W, H, fp_grids.gptq_config(IntGrid(QuantConfig(bits=4, group_size=64))),
                             grid=fp_grids.FP4Grid(ms.MXFP4))
    with pytest.raises(ValueError, match="needs the whole weight"):
        fp_grids.FP4Grid(ms.NVFP4)


@pytest.mark.parametrize("cfg,scheme", [(ms.MXFP4, "MXFP4A16"), (ms.NVFP4, "NVFP4A16")])
def test_gptq_on_fp4_exports_and_reloads_exactly(cfg, scheme, tmp_path):
    """The GPTQ result's codes and scale codes are an FP4Weight: the compressed-tensors checkpoint reloads to the
    weights GPTQ computed (bfloat16 for FP4, as compressed-tensors unpacks it)."""
    from helpers import require_module

    from quantedu.export import fp as export_fp
    from quantedu.testmodel import tiny_llama
    require_module("compressed_tensors")
    model = tiny_llama(seed=4)
    records = {}
    for name in ("model.layers.0.mlp.down_proj", "model.layers.1.self_attn.q_proj"):
        lin = model.get_submodule(name)
        W = lin.weight.detach()
        grid = fp_grids.FP4Grid(cfg, W)
        res = gptq_quantize_weight(W, _correlated_h(W.shape[1]), fp_grids.gptq_config(grid), grid=grid)
        records[name] = fp_grids.fp4_weight(res, grid)
        assert torch.equal(records[name].dequantize(), res.weight)
        with torch.no_grad():
            lin.weight.copy_(res.weight)
    reloaded = export_fp.load_fp_checkpoint(export_fp.save_fp_checkpoint(model, records, tmp_path / "ct", scheme))
    for name in records:
        assert torch.equal(reloaded.get_submodule(name).weight, model.get_submodule(name).weight.to(torch.bfloat16))


def test_gptq_quantize_model_takes_a_grid_per_weight(tiny_llama):
    """``grid=``: the integer grid of the config gives the default's weights; an MXFP4 grid is called once per
    weight GPTQ quantizes, and every layer's weight is then exactly its E2M1 codes x E8M0 scales (what an export
    stores); the embedding is left alone."""
    import copy

    from quantedu.gptq import gptq_quantize_model
    calib = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0))
    cfg = fp_grids.gptq_config(GRIDS["INT4 g32 sym"](None))
    default, hooked, fp4 = (copy.deepcopy(tiny_llama) for _ in range(3))
    gptq_quantize_model(default, calib, cfg, progress=False)
    gptq_quantize_model(hooked, calib, cfg, progress=False, grid=GRIDS["INT4 g32 sym"])
    for a, b in zip(default.parameters(), hooked.parameters()):
        assert torch.equal(a, b)
    seen = []
    layers = gptq_quantize_model(fp4, calib, fp_grids.gptq_config(GRIDS["MXFP4"](None)),
                                 progress=False, grid=lambda W: seen.append(W.shape) or GRIDS["MXFP4"](W))
    assert len(seen) == 4 * len(tiny_llama.model.layers)  # q/k/v stacked, o, gate/up stacked, down
    for name, layer in layers.items():  # the weight is its E2M1 codes x its E8M0 scales, as an export stores it
        stored = fp_grids.fp4_weight(layer, GRIDS["MXFP4"](None))
        assert torch.equal(stored.dequantize(), fp4.get_submodule(name).weight.detach().float()), name
        assert stored.codes.max() < 16 and stored.scale_codes.dtype == torch.uint8
    assert torch.equal(fp4.model.embed_tokens.weight, tiny_llama.model.embed_tokens.weight)
