"""GPTQ on floating-point grids: MXFP4, NVFP4 and FP8 as grids for :func:`quantedu.gptq.gptq_quantize_weight`, and
the measurement of what GPTQ's error feedback buys on each grid against round-to-nearest (RTN).

GPTQ never looks inside the rounding: it quantizes one column, measures the error and pushes it onto the columns
not yet quantized (the OBS update). A grid is any object with ``choose(W_group) -> params`` (the group's scale,
from its columns) and ``round(w_col, params) -> (codes, dequantized)`` (:class:`quantedu.gptq.IntGrid` is the
integer one). Here the params are ``(scale, scale_code)`` per row: the float multiplier, and its stored code
(E8M0 for MXFP4, E4M3 for NVFP4; the ``zeros`` slot of the returned ``QuantizedLayer``, which a symmetric
floating-point grid does not need), so :func:`fp4_weight` can rebuild an exportable :class:`FP4Weight`.

The measure is the layer-output error GPTQ minimizes, ``tr(dW H dW^T)`` with ``dW = W - Q`` and ``H = 2 X X^T / n``
from the same calibration inputs for every grid (:func:`layer_output_error`); :func:`grid_comparison` tabulates
RTN vs GPTQ for INT4, MXFP4, NVFP4 and FP8 on real layers.
"""
from __future__ import annotations

import torch

from . import fp
from . import microscaling as ms
from .gptq import GPTQConfig, HessianAccumulator, IntGrid, gptq_quantize_weight
from .primitives import QuantConfig, QuantizedLayer


class FP4Grid:
    """MXFP4 / NVFP4 as a GPTQ grid. NVFP4's per-tensor scale comes from the weight *before* GPTQ (``W``'s amax,
    or ``tensor_amax``) and stays fixed while GPTQ moves the weights."""

    def __init__(self, config: ms.FP4Config = ms.MXFP4, W: torch.Tensor | None = None, tensor_amax=None):
        self.config = config
        if tensor_amax is None and W is not None:
            tensor_amax = W.detach().float().abs().amax()
        if config.fmt == "nvfp4" and config.global_scale and tensor_amax is None:
            raise ValueError("NVFP4's global scale needs the whole weight: FP4Grid(NVFP4, W=weight)")
        self.tensor_amax = tensor_amax
        self.global_scale = ms.global_scale_of(1.0 if tensor_amax is None else tensor_amax, config)

    @property
    def group_size(self) -> int:
        return self.config.group_size

    def choose(self, W: torch.Tensor):
        if W.shape[1] != self.group_size:
            raise ValueError(f"{self.config.label()} groups hold {self.group_size} columns, GPTQ gave {W.shape[1]}: "
                             f"use GPTQConfig(group_size={self.group_size}) (fp_grids.gptq_config(grid))")
        codes, _ = ms.choose_scales(W, self.config, tensor_amax=self.tensor_amax)
        return ms.group_scales(codes, self.global_scale, self.config)[:, 0], codes[:, 0].float()

    def round(self, w: torch.Tensor, params) -> tuple[torch.Tensor, torch.Tensor]:
        return ms.round_to_fp4(w, params[0])


class FP8Grid:
    """FP8 (E4M3 / E5M2) as a GPTQ grid: per group, ``scale = amax / max`` (per channel with group_size -1)."""

    def __init__(self, fmt: str = "e4m3", group_size: int = -1):
        self.fmt, self.layout, self.group_size = fmt, fp.FP8[fmt], group_size

    def choose(self, W: torch.Tensor):
        amax = W.detach().float().abs().amax(dim=1)
        scale = torch.where(amax > 0, amax / self.layout.max, torch.ones_like(amax))
        return scale, torch.zeros_like(scale)

    def round(self, w: torch.Tensor, params) -> tuple[torch.Tensor, torch.Tensor]:
        codes = fp.encode(w.detach().float() / params[0], self.layout, saturate=True)
        return codes, fp.decode(codes, self.layout) * params[0]


def gptq_config(grid, **kwargs) -> GPTQConfig:
    """The GPTQ settings that match ``grid``'s groups (bits only label the record: the grid does the rounding)."""
    if isinstance(grid, IntGrid):
        qc = grid.config
        g = qc.group_size if qc.granularity == "group" else -1
        return GPTQConfig(bits=qc.bits, group_size=g, sym=qc.symmetric, **kwargs)
    return GPTQConfig(bits=8 if isinstance(grid, FP8Grid) else 4, group_size=grid.group_size, **kwargs)


def rtn_on_grid(W: torch.Tensor, grid, group_size: int) -> torch.Tensor:
    """Round-to-nearest on ``grid``: every group's parameters from ``W`` itself, every column rounded, no feedback."""
    W = W.detach().float()
    g = W.shape[1] if group_size == -1 else group_size
    Q = torch.empty_like(W)
    for k in range(0, W.shape[1], g):
        params = grid.choose(W[:, k:k + g])
        for c in range(k, min(k + g, W.shape[1])):
            Q[:, c] = grid.round(W[:, c], params)[1]
    return Q


def layer_output_error(W: torch.Tensor, Q: torch.Tensor, H: torch.Tensor, relative: bool = True) -> float:
    """``tr(dW H dW^T)``, ``dW = W - Q``: the squared error of the layer's outputs on the calibration inputs (up to
    the scale of ``H``), divided by ``tr(W H W^T)`` (the outputs' own energy) when ``relative``."""
    W, Q, H = W.double(), Q.double(), H.double()
    dW = W - Q
    err = torch.einsum("ij,jk,ik->", dW, H, dW).item()
    return err / torch.einsum("ij,jk,ik->", W, H, W).item() if relative else err


def fp4_weight(layer: QuantizedLayer, grid: FP4Grid) -> ms.FP4Weight:
    """The :class:`~quantedu.microscaling.FP4Weight` of a GPTQ result on an :class:`FP4Grid` (for
    :func:`quantedu.export.fp.save_fp_checkpoint`). Natural column order only (no act-order permutation)."""
    if layer.perm is not None:
        raise ValueError("an act-order GPTQ result permutes its groups; FP4 checkpoints have no g_idx")
    return ms.FP4Weight(layer.codes, layer.zeros.to(torch.uint8), grid.global_scale, grid.config)


def layer_hessians(model, batches: torch.Tensor, names) -> dict[str, torch.Tensor]:
    """``{name: H}`` of the named ``nn.Linear`` layers on calibration ``batches`` (one full-precision forward)."""
    modules = dict(model.named_modules())
    missing = [n for n in names if not isinstance(modules.get(n), torch.nn.Linear)]
    if missing:
        raise KeyError(f"not linear layers of this model: {missing}")
    acc = {n: HessianAccumulator(modules[n].in_features) for n in names}
    handles = [modules[n].register_forward_hook(acc[n].hook()) for n in names]
    try:
        with torch.no_grad():
            for row in batches:
                model(row[None])
    finally:
        for h in handles:
            h.remove()
    return {n: a.H for n, a in acc.items()}


def default_grids() -> dict:
    """``{label: W -> grid}``: INT4 g32 (symmetric and asymmetric), MXFP4, NVFP4 and FP8 E4M3 per channel."""
    return {
        "INT4 g32 sym": lambda W: IntGrid(QuantConfig(bits=4, group_size=32, symmetric=True)),
        "INT4 g32 asym": lambda W: IntGrid(QuantConfig(bits=4, group_size=32, symmetric=False)),
        "MXFP4": lambda W: FP4Grid(ms.MXFP4, W),
        "NVFP4": lambda W: FP4Grid(ms.NVFP4, W),
        "FP8 E4M3 per-channel": lambda W: FP8Grid("e4m3"),
    }


def grid_comparison(weights: dict, hessians: dict, grids: dict | None = None, **gptq_kwargs):
    """For every layer and grid: RTN and GPTQ layer-output errors (relative, :func:`layer_output_error`) on the
    same ``H``, and ``gptq_gain = rtn / gptq``. A DataFrame, one row per (layer, grid)."""
    import pandas as pd

    rows = []
    for name, W in weights.items():
        W, H = W.detach().float(), hessians[name]
        for label, make in (grids or default_grids()).items():
            grid = make(W)
            cfg = gptq_config(grid, **gptq_kwargs)
            rtn = layer_output_error(W, rtn_on_grid(W, grid, cfg.group_size), H)
            res = gptq_quantize_weight(W, H, cfg, grid=grid)
            gptq = layer_output_error(W, res.weight, H)
            rows.append({"layer": name, "grid": label, "rtn_error": rtn, "gptq_error": gptq, "gptq_gain": rtn / gptq})
    return pd.DataFrame(rows)
