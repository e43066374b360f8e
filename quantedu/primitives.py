"""Quantization primitives that every algorithm in quantedu reuses.

The three plain functions follow torchao's split (``choose_qparams`` / ``quantize`` /
``dequantize``); the integer conventions follow the GPTQ reference (IST-DASLab ``quant.py``) and
compressed-tensors, which agree with each other:

* codes are unsigned integers in ``[0, 2**bits - 1]`` with an integer zero point, as GPTQ/AWQ
  checkpoints store them (``qzeros``);
* asymmetric: the range ``[min(w, 0), max(w, 0)]`` is mapped onto the codes, so 0.0 is exactly
  representable; ``scale = (max - min) / (2**bits - 1)``, ``zero = round(-min / scale)``;
* symmetric: ``scale = absmax / ((2**bits - 1) / 2)`` and ``zero = 2**(bits - 1)``. The grid is
  ``scale * (q - zero)`` for ``q`` in ``[0, 2**bits-1]``, i.e. ``[-8, 7] * scale`` at 4 bits:
  compressed-tensors' signed int4 with the same scale gives identical values.

Shapes: a weight ``w`` is ``(rows, cols)`` = ``(out_features, in_features)``. Parameters have shape
``(rows, n_groups)``; per-tensor uses one group for the whole tensor (shape ``(1, 1)``).
A last group shorter than ``group_size`` is allowed (SmolLM2's 576 columns with groups of 128).
``g_idx[c]`` names the group of column ``c`` (act-order checkpoints permute it).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Literal

import torch

from .checks import require_finite

Granularity = Literal["tensor", "channel", "group"]


@dataclass(frozen=True)
class QuantConfig:
    """How a weight is quantized. ``group_size`` is used only when ``granularity == "group"``."""

    bits: int = 4
    group_size: int = 128
    symmetric: bool = False
    granularity: Granularity = "group"

    def __post_init__(self):
        if not isinstance(self.bits, int) or not 1 <= self.bits <= 8:
            raise ValueError(f"bits must be an integer from 1 to 8, got {self.bits!r}")
        if self.granularity not in ("tensor", "channel", "group"):
            raise ValueError(
                f"granularity must be 'tensor', 'channel' or 'group', got {self.granularity!r}"
            )
        if self.granularity == "group" and (not isinstance(self.group_size, int) or self.group_size < 1):
            raise ValueError(f"group_size must be a positive integer, got {self.group_size!r}")

    @property
    def maxq(self) -> int:
        return 2**self.bits - 1

    def n_groups(self, cols: int) -> int:
        if self.granularity == "group":
            return math.ceil(cols / self.group_size)
        return 1

    def label(self) -> str:
        kind = "sym" if self.symmetric else "asym"
        gran = {"tensor": "per-tensor", "channel": "per-channel"}.get(
            self.granularity, f"g{self.group_size}"
        )
        return f"W{self.bits} {kind} {gran}"


@dataclass(frozen=True)
class WeightOnlyConfig:
    """What every weight-only algorithm config shares (GPTQ's and AWQ's): bits, group size (``-1``:
    one group per output row), symmetric or not, validated once here."""

    bits: int = 4
    group_size: int = 128
    sym: bool = True

    def __post_init__(self):
        if self.bits not in (2, 3, 4, 8):
            raise ValueError(f"{self._name()} bits must be 2, 3, 4 or 8, got {self.bits!r}")
        if self.group_size != -1 and (not isinstance(self.group_size, int) or self.group_size < 1):
            raise ValueError(f"group_size must be a positive integer or -1 (per-channel), got {self.group_size!r}")

    def _name(self) -> str:
        return type(self).__name__.removesuffix("Config")

    def quant_config(self) -> QuantConfig:
        if self.group_size == -1:
            return QuantConfig(bits=self.bits, symmetric=self.sym, granularity="channel")
        return QuantConfig(bits=self.bits, group_size=self.group_size, symmetric=self.sym)

    def label(self) -> str:
        return f"{self._name()} {self.quant_config().label()}"


def _check_weight(w: torch.Tensor) -> None:
    if not isinstance(w, torch.Tensor) or w.dim() != 2:
        shape = tuple(w.shape) if hasattr(w, "shape") else type(w).__name__
        raise ValueError(f"expected a 2-D weight tensor (out_features, in_features), got {shape}")
    if not torch.is_floating_point(w):
        raise TypeError(f"expected a floating-point weight, got {w.dtype}")
    require_finite(w)


def _wide(x: torch.Tensor) -> torch.Tensor:
    """``x`` in at least fp32 (fp16/bf16 are widened; fp32/fp64 stay as they are)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _check_ratio(clip_ratio) -> None:
    bad = (clip_ratio <= 0) | (clip_ratio > 1) if not isinstance(clip_ratio, torch.Tensor) else \
        bool(((clip_ratio <= 0) | (clip_ratio > 1) | ~torch.isfinite(clip_ratio)).any())
    if bad:
        raise ValueError(f"clip_ratio must be in (0, 1] (the fraction of each group's range kept), got "
                         f"{clip_ratio if not isinstance(clip_ratio, torch.Tensor) else 'a tensor with values outside it'}")


def group_index(cols: int, config: QuantConfig, device=None) -> torch.Tensor:
    """Column -> group index for the natural (non act-order) layout."""
    if config.granularity != "group":
        return torch.zeros(cols, dtype=torch.long, device=device)
    return torch.arange(cols, device=device) // config.group_size


def group_min_max(w: torch.Tensor, config: QuantConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group minimum and maximum of ``w`` as ``(rows, n_groups)`` tensors (ragged last group)."""
    _check_weight(w)
    rows, cols = w.shape
    if config.granularity == "tensor":
        return w.min().reshape(1, 1), w.max().reshape(1, 1)
    if config.granularity == "channel":
        return w.min(dim=1, keepdim=True).values, w.max(dim=1, keepdim=True).values
    g = config.group_size
    n_full = cols // g
    mins, maxs = [], []
    if n_full:
        full = w[:, : n_full * g].reshape(rows, n_full, g)
        mins.append(full.min(dim=2).values)
        maxs.append(full.max(dim=2).values)
    if cols % g:
        tail = w[:, n_full * g :]
        mins.append(tail.min(dim=1, keepdim=True).values)
        maxs.append(tail.max(dim=1, keepdim=True).values)
    return torch.cat(mins, dim=1), torch.cat(maxs, dim=1)


def qparams_from_range(
    xmin: torch.Tensor, xmax: torch.Tensor, config: QuantConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and integer zero point that map ``[xmin, xmax]`` (widened to include 0) onto the codes.

    Computed in fp32 whatever the weight's dtype: in fp16 a group whose range is below ~1e-6 would give
    a scale that underflows to 0, and then 0/0 = NaN codes.
    """
    xmin, xmax = _wide(xmin), _wide(xmax)
    xmin = torch.minimum(xmin, torch.zeros_like(xmin))
    xmax = torch.maximum(xmax, torch.zeros_like(xmax))
    maxq = config.maxq
    if config.symmetric:
        absmax = torch.maximum(xmin.abs(), xmax)
        # An all-zero group would give scale 0 and divide by zero later: any scale represents it.
        absmax = torch.where(absmax == 0, torch.ones_like(absmax), absmax)
        scale = absmax / (maxq / 2)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # a range so small it underflows
        zero = torch.full_like(scale, float((maxq + 1) // 2))
    else:
        span = xmax - xmin
        span = torch.where(span == 0, torch.ones_like(span), span)
        scale = span / maxq
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        zero = torch.round(-xmin / scale).clamp(0, maxq)
    return scale, zero


def choose_qparams(
    w: torch.Tensor, config: QuantConfig, clip_ratio: float | torch.Tensor = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scales and integer zero points for ``w``, shape ``(rows, n_groups)``.

    ``clip_ratio`` shrinks the range before choosing (1.0 = plain min/max); ``mse_clip_search``
    picks it per group.
    """
    _check_ratio(clip_ratio)
    xmin, xmax = group_min_max(w, config)
    return qparams_from_range(xmin * clip_ratio, xmax * clip_ratio, config)


def _expand(p: torch.Tensor, w: torch.Tensor, config: QuantConfig, g_idx: torch.Tensor | None):
    """Broadcast per-group parameters to every column of ``w``."""
    if config.granularity == "tensor":
        return p.expand_as(w)
    if config.granularity == "channel":
        return p.expand(-1, w.shape[1])
    if g_idx is None:
        g_idx = group_index(w.shape[1], config, device=w.device)
    return p[:, g_idx]


def round_to_grid(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, maxq: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The rounding kernel every quantizer here shares: codes ``clamp(round(w/s) + z, 0, maxq)`` and
    their values ``s * (q - z)``. ``scale``/``zero`` broadcast against ``w``; no checks (hot loops call it)."""
    q = torch.clamp(torch.round(_wide(w) / scale) + zero, 0, maxq)
    return q, scale * (q - zero)


def quantize(
    w: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor,
    config: QuantConfig,
    g_idx: torch.Tensor | None = None,
) -> torch.Tensor:
    """Integer codes in ``[0, 2**bits - 1]`` (dtype uint8 for bits <= 8)."""
    _check_weight(w)
    s, z = _expand(scale, w, config, g_idx), _expand(zero, w, config, g_idx)
    return round_to_grid(w, s, z, config.maxq)[0].to(torch.uint8)


def dequantize(
    q: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor,
    config: QuantConfig,
    g_idx: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Real values ``scale * (q - zero)`` of the codes."""
    s = _expand(scale, q, config, g_idx).to(dtype)
    z = _expand(zero, q, config, g_idx).to(dtype)
    return s * (q.to(dtype) - z)


def grouped_view(w: torch.Tensor, config: QuantConfig) -> torch.Tensor:
    """``w`` as ``(rows, n_groups, group_len)`` (per-tensor: ``(1, 1, numel)``), the ragged last group
    padded with zeros. Padding is harmless: every range is widened to include 0 anyway, and 0 is
    exactly representable, so padded entries change no parameter and add no error."""
    _check_weight(w)
    rows, cols = w.shape
    if config.granularity == "tensor":
        return w.reshape(1, 1, rows * cols)
    if config.granularity == "channel":
        return w.reshape(rows, 1, cols)
    g = config.group_size
    n = math.ceil(cols / g)
    if n * g != cols:
        w = torch.nn.functional.pad(w, (0, n * g - cols))
    return w.reshape(rows, n, g)


def _ungroup(x: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Inverse of :func:`grouped_view` (drops the padding)."""
    rows, cols = shape
    if x.shape[0] != rows:  # per-tensor view (1, 1, rows * cols)
        return x.reshape(rows, cols)
    return x.reshape(rows, -1)[:, :cols]


def _fake_quantize_grouped(wg: torch.Tensor, config: QuantConfig, clip_ratio) -> torch.Tensor:
    """RTN on a grouped view; parameters broadcast over the last dim instead of being gathered."""
    xmin, xmax = wg.amin(dim=-1), wg.amax(dim=-1)
    scale, zero = qparams_from_range(xmin * clip_ratio, xmax * clip_ratio, config)
    return round_to_grid(wg, scale.unsqueeze(-1), zero.unsqueeze(-1), config.maxq)[1]


def fake_quantize(
    w: torch.Tensor,
    config: QuantConfig,
    clip_ratio: float | torch.Tensor = 1.0,
    g_idx: torch.Tensor | None = None,
) -> torch.Tensor:
    """Round-to-nearest quantize then dequantize: the weights the quantized model really uses."""
    _check_ratio(clip_ratio)
    if g_idx is None:  # natural group order: same numbers as the path below, without gathers
        return _ungroup(_fake_quantize_grouped(grouped_view(w, config), config, clip_ratio), w.shape).to(w.dtype)
    scale, zero = choose_qparams(w, config, clip_ratio)
    q = quantize(w, scale, zero, config, g_idx)
    return dequantize(q, scale, zero, config, g_idx, dtype=w.dtype)


def quantization_error(w: torch.Tensor, config: QuantConfig, clip_ratio=1.0) -> torch.Tensor:
    """Per-group sum of squared errors of RTN at ``clip_ratio``, shape ``(rows, n_groups)``."""
    wg = grouped_view(w, config)
    return ((_fake_quantize_grouped(wg, config, clip_ratio) - wg) ** 2).sum(dim=-1)


def mse_clip_search(
    w: torch.Tensor, config: QuantConfig, grid: int = 100, max_shrink: float = 0.8
) -> torch.Tensor:
    """Per-group clip ratio in ``[1 - max_shrink, 1]`` minimizing the RTN squared error.

    The same grid search as the GPTQ reference's ``Quantizer(mse=True)`` (``norm=2.4`` there;
    plain squared error here): clipping outliers coarsens nothing else and can lower the total error.
    """
    wg = grouped_view(w, config)
    best_err = ((_fake_quantize_grouped(wg, config, 1.0) - wg) ** 2).sum(dim=-1)
    best_ratio = torch.ones_like(best_err)
    for i in range(1, int(max_shrink * grid) + 1):
        ratio = 1 - i / grid
        # Per-group ratio broadcast to per-group ranges inside choose_qparams.
        err = ((_fake_quantize_grouped(wg, config, ratio) - wg) ** 2).sum(dim=-1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_ratio = torch.where(better, torch.full_like(best_ratio, ratio), best_ratio)
    return best_ratio


def rtn(w: torch.Tensor, config: QuantConfig, mse_clip: bool = False) -> torch.Tensor:
    """Round-to-nearest fake quantization, the baseline of every comparison in the course."""
    ratio = mse_clip_search(w, config) if mse_clip else 1.0
    return fake_quantize(w, config, ratio)


# --- the quantized-layer record ---------------------------------------------------------------------


@dataclass
class QuantizedLayer:
    """One quantized linear layer, whatever made it (RTN, GPTQ, AWQ) and whatever exports it.

    ``weight == scales[:, g_idx] * (codes - zeros[:, g_idx])`` in the original column order: ``codes``
    uint8 ``(rows, cols)``, ``scales``/``zeros`` ``(rows, n_groups)`` (zeros integer-valued), ``g_idx``
    int32 ``(cols,)``. The optional fields are what an algorithm reports about its choice: GPTQ's
    quantization order ``perm`` (act-order) and objective ``loss``/``row_losses``; AWQ's folded
    input scale ``awq_scale``, the exponent ``awq_alpha`` its search chose, the search's loss for every
    exponent tried ``awq_losses`` (shared by the layers of one scale group) and clipping ``clip_ratio``.
    """

    weight: torch.Tensor  # dequantized weight, in the layer's dtype
    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    g_idx: torch.Tensor
    config: QuantConfig
    perm: torch.Tensor | None = None
    loss: float | None = None
    row_losses: torch.Tensor | None = None
    awq_scale: torch.Tensor | None = None
    awq_alpha: float | None = None
    awq_losses: tuple[float, ...] | None = None
    clip_ratio: torch.Tensor | None = None

    def _map(self, fn) -> "QuantizedLayer":
        return replace(self, **{f.name: fn(getattr(self, f.name)) for f in fields(self)
                                if isinstance(getattr(self, f.name), torch.Tensor)})

    def to(self, device) -> "QuantizedLayer":
        return self._map(lambda t: t.to(device))

    def rows(self, start: int, stop: int) -> "QuantizedLayer":
        """The record of output rows ``start:stop`` (layers stacked for one pass, e.g. q/k/v)."""
        per_row = {"weight", "codes", "scales", "zeros", "row_losses", "clip_ratio"}
        part = replace(self, **{n: getattr(self, n)[start:stop].clone() for n in per_row
                                if getattr(self, n) is not None})
        part = replace(part, g_idx=self.g_idx.clone(), perm=None if self.perm is None else self.perm.clone())
        if part.row_losses is not None:
            part.loss = float(part.row_losses.sum())
        return part

    def dequantized(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize(self.codes, self.scales, self.zeros, self.config, g_idx=self.g_idx.long(), dtype=dtype)

    def check(self) -> None:
        """Assert the stored codes/scales/zeros/g_idx reproduce ``weight``."""
        torch.testing.assert_close(self.dequantized().to(self.weight.dtype), self.weight, rtol=0, atol=1e-6)


def quantize_weight(w: torch.Tensor, config: QuantConfig, clip_ratio: float | torch.Tensor = 1.0) -> QuantizedLayer:
    """Round-to-nearest ``w`` into a :class:`QuantizedLayer` (natural group order, computed in fp32)."""
    scale, zero = choose_qparams(_wide(w), config, clip_ratio)
    if config.granularity != "group":  # one parameter per row: broadcast it like a single group
        scale, zero = scale.expand(w.shape[0], 1).contiguous(), zero.expand(w.shape[0], 1).contiguous()
    g_idx = group_index(w.shape[1], config, device=w.device)
    codes = quantize(_wide(w), scale, zero, config, g_idx)
    return QuantizedLayer(dequantize(codes, scale, zero, config, g_idx, dtype=w.dtype), codes, scale, zero,
                          g_idx.to(torch.int32), config)
