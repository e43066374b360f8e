"""W8A8: int8 weights *and* int8 activations, so the matmuls themselves run in integer arithmetic.

Weight-only formats (W4A16) shrink the weights and dequantize them back to 16 bits before every matmul.
W8A8 also quantizes what flows into each linear layer, so the product ``X W^T`` is computed on int8
codes with int32 accumulation, which is what vLLM's CPU backend (oneDNN) and GPU int8 tensor cores
accelerate. The conventions follow vLLM's kernels and compressed-tensors' ``int-quantized`` checkpoints
(what llm-compressor's ``W8A8`` scheme writes):

* **weights**: symmetric int8, one scale per output channel (row), computed once, offline, with
  :mod:`quantedu.primitives` (``scale = max|w_row| / 127.5``, codes ``q - 128`` in ``[-128, 127]``);
  the scale is rounded to the serving dtype first (vLLM keeps it in bf16), so codes and scale agree;
* **activations, dynamic per token** (the default): every row ``x_t`` of the input gets its own scale
  ``s_t = max_j |x_tj| / 127`` at run time (vLLM's ``dynamic_scaled_int8_quant``: it multiplies by
  ``1 / s_t`` and rounds half to even); no calibration;
* **activations, static per tensor**: one scale per layer fixed from calibration data,
  ``s = max |x| / 127`` over every calibration token and channel; cheaper at run time, and fragile:
  a few outlier channels (LLM activations have them, see :func:`activation_stats`) set ``s`` for
  all, so most values fall on a handful of codes near 0. SmoothQuant (:mod:`quantedu.smoothquant`)
  and rotations (:mod:`quantedu.rotation`) move those outliers away first.

The product is ``y = (q_x q_w^T) * s_x * s_w``: the integer accumulator (exact here, computed in
float64, as int32 is exact in the kernel) scaled per token and per output channel, cast to the
activation dtype. :class:`W8A8Linear` is that layer; :func:`quantize_model_w8a8` swaps a model's
``nn.Linear`` layers for it, and :func:`quantedu.export.w8a8.save_w8a8` writes the result as the
checkpoint vLLM serves.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Literal

import torch
from torch import nn

from .calibration import check_batches, observe_linear_inputs
from .checks import InPlaceGuard, require_finite
from .primitives import QuantConfig, choose_qparams, quantize

__all__ = ["INT8_MAX", "WEIGHT_INT8", "ChannelStats", "activation_scale_per_token", "quantize_activations",
           "quantize_per_token", "quantize_per_tensor", "dequantize_activations", "quantize_weight_int8",
           "int8_linear", "W8A8Linear", "activation_stats", "quantize_model_w8a8", "w8a8_layers"]

INT8_MAX = 127  # activations: vLLM divides by 127 (not 127.5) and clamps to [-128, 127]
WEIGHT_INT8 = QuantConfig(bits=8, symmetric=True, granularity="channel")  # one scale per output row
Activations = Literal["dynamic", "static"]


# --- activations -----------------------------------------------------------------------------------


def _as_rows(x: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not torch.is_floating_point(x) or x.dim() < 1:
        raise TypeError(f"expected a floating-point activation tensor (..., features), got "
                        f"{type(x).__name__ if not isinstance(x, torch.Tensor) else x.dtype}")
    return x.reshape(-1, x.shape[-1])


def activation_scale_per_token(x: torch.Tensor) -> torch.Tensor:
    """``s_t = max_j |x_tj| / 127`` for every token (row), shape ``(tokens, 1)``, in fp32.

    A token that is all zeros gets scale 1 (any scale represents it; 0 would divide by zero)."""
    absmax = _as_rows(x).abs().amax(dim=1, keepdim=True).float()
    return torch.where(absmax > 0, absmax / INT8_MAX, torch.ones_like(absmax))


def quantize_activations(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """int8 codes ``clamp(round(x * (1/scale)), -128, 127)`` of ``x`` (rows) with ``scale`` ``(tokens, 1)``
    or a scalar. Multiplying by the reciprocal, in fp32, is what vLLM's CPU kernel does."""
    inv = 1.0 / scale.float()
    return torch.clamp(torch.round(_as_rows(x).float() * inv), -128, INT8_MAX).to(torch.int8)


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic per-token int8: ``(codes (tokens, features) int8, scales (tokens, 1) fp32)``."""
    scale = activation_scale_per_token(x)
    return quantize_activations(x, scale), scale


def quantize_per_tensor(x: torch.Tensor, scale: float | torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Static per-tensor int8: one ``scale`` for every element (``None``: ``max|x| / 127`` of this ``x``,
    i.e. calibrate on it). Returns ``(codes, scale as a 1-element fp32 tensor)``."""
    rows = _as_rows(x)
    if scale is None:
        absmax = rows.abs().max().float()
        scale = absmax / INT8_MAX if absmax > 0 else torch.tensor(1.0)
    scale = torch.as_tensor(scale, dtype=torch.float32).reshape(1)
    if not bool(scale > 0) or not torch.isfinite(scale).all():
        raise ValueError(f"a static activation scale must be positive and finite, got {float(scale)}")
    return quantize_activations(rows, scale), scale


def dequantize_activations(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``q * scale`` in fp32 (what the int8 codes stand for)."""
    return q.float() * scale.float()


# --- weights and the int8 product -------------------------------------------------------------------


def quantize_weight_int8(w: torch.Tensor, scale_dtype: torch.dtype | None = torch.bfloat16) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel symmetric int8 weight: ``(codes (rows, cols) int8, scale (rows, 1) fp32)``.

    The scale comes from :func:`quantedu.primitives.choose_qparams` and is rounded to ``scale_dtype``
    (``None``: kept in fp32) *before* rounding the weights: vLLM stores the checkpoint's scale in the
    serving dtype, so the codes must be the ones that scale implies."""
    w32 = w.detach().float()
    scale, zero = choose_qparams(w32, WEIGHT_INT8)
    if scale_dtype is not None:
        scale = scale.to(scale_dtype).float()
    codes = quantize(w32, scale, zero, WEIGHT_INT8).to(torch.int16) - zero.to(torch.int16)
    return codes.to(torch.int8), scale


def int8_linear(qx: torch.Tensor, sx: torch.Tensor, qw: torch.Tensor, sw: torch.Tensor,
                bias: torch.Tensor | None = None, dtype: torch.dtype = torch.float32, static: bool = False) -> torch.Tensor:
    """``(qx @ qw^T) * sx * sw (+ bias)``, rounded as vLLM's CPU kernel (oneDNN) rounds it, so the result is
    bit-identical: the integer accumulator (exact: float64 holds every int32) converted to fp32, then the
    scales in oneDNN's order: a ``static`` per-tensor activation scale before the weight scales; dynamic
    per-token scales after them (oneDNN applies only the weight scales, vLLM's epilogue the token scales);
    then cast to ``dtype``. ``qx (tokens, in)``, ``sx (tokens, 1)`` or ``(1,)``; ``qw (out, in)``, ``sw (out, 1)``."""
    acc = (qx.double() @ qw.double().T).float()
    sw, sx = sw.float().reshape(1, -1), sx.float().reshape(-1, 1)
    y = acc * sx * sw if static else acc * sw * sx
    if bias is not None:
        y = y + bias.float()
    return y.to(dtype)


class W8A8Linear(nn.Module):
    """A linear layer computing in int8: per-channel int8 weights, int8 activations (dynamic per token,
    or static per tensor when ``input_scale`` is set), output in the input's dtype.

    Buffers (saved with the model, moved by ``.to``): ``qweight`` int8 ``(out, in)``, ``weight_scale``
    fp32 ``(out, 1)``, ``input_scale`` fp32 ``(1,)`` when static."""

    def __init__(self, qweight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None = None,
                 input_scale: torch.Tensor | None = None):
        super().__init__()
        if qweight.dtype != torch.int8 or qweight.dim() != 2:
            raise TypeError(f"qweight must be a 2-D int8 tensor, got {qweight.dtype} {tuple(qweight.shape)}")
        self.out_features, self.in_features = qweight.shape
        self.register_buffer("qweight", qweight)
        self.register_buffer("weight_scale", weight_scale.float().reshape(-1, 1))
        self.register_buffer("input_scale", None if input_scale is None else input_scale.float().reshape(1))
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear, input_scale: torch.Tensor | None = None,
                    scale_dtype: torch.dtype | None = torch.bfloat16) -> "W8A8Linear":
        require_finite(linear.weight.detach())
        qweight, scale = quantize_weight_int8(linear.weight, scale_dtype)
        return cls(qweight, scale, linear.bias, input_scale)

    @property
    def activations(self) -> str:
        return "dynamic" if self.input_scale is None else "static"

    def dequantized_weight(self) -> torch.Tensor:
        return self.qweight.float() * self.weight_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        if self.input_scale is None:
            qx, sx = quantize_per_token(x)
        else:
            qx, sx = quantize_per_tensor(x, self.input_scale)
        y = int8_linear(qx, sx, self.qweight, self.weight_scale, self.bias, x.dtype, static=self.input_scale is not None)
        return y.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, activations={self.activations}"


# --- calibration: what flows into each layer --------------------------------------------------------


@dataclass(frozen=True)
class ChannelStats:
    """Per-input-channel minimum and maximum of a layer's input over calibration tokens."""

    min: torch.Tensor
    max: torch.Tensor
    tokens: int

    @property
    def absmax(self) -> torch.Tensor:
        """``max_t |x_tj|`` per channel ``j`` (SmoothQuant's ``max|X_j|``)."""
        return torch.maximum(self.min.abs(), self.max.abs())

    def merged(self, x: torch.Tensor) -> "ChannelStats":
        x = x.detach().float()
        return ChannelStats(torch.minimum(self.min, x.amin(0)), torch.maximum(self.max, x.amax(0)),
                            self.tokens + x.shape[0])


@torch.no_grad()
def activation_stats(model: nn.Module, batches, names: Iterable[str] | None = None) -> dict[str, ChannelStats]:
    """Per-channel min/max of the input of every linear layer (or those in ``names``, full module names)
    over the calibration token ids ``batches`` ``(n_samples, seq_len)``; one forward pass per row.

    ``activation_stats(model, ids, ["model.layers.5.mlp.down_proj"])[...].absmax`` is the picture of
    outlier channels: a few channels hundreds of times larger than the median."""
    batches = check_batches(batches)
    stats: dict[str, ChannelStats] = {}
    wanted = None if names is None else set(names)
    if wanted is not None:
        known = {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
        if wanted - known:
            raise KeyError(f"not linear layers of this model: {sorted(wanted - known)[:5]} (names look like "
                           f"{sorted(known)[0] if known else 'model.layers.0.mlp.down_proj'})")

    def add(name, x):
        stats[name] = stats[name].merged(x) if name in stats else ChannelStats(
            x.float().amin(0), x.float().amax(0), x.shape[0])

    device = next(model.parameters()).device
    with observe_linear_inputs(model, add, names=wanted):
        for row in batches:
            model(row.unsqueeze(0).to(device), use_cache=False)
    return stats


# --- the whole model -------------------------------------------------------------------------------


def _targets(model: nn.Module, skip: tuple[str, ...]) -> dict[str, nn.Linear]:
    from .rtn import skip_pattern

    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and skip_pattern(n, skip) is None}


@torch.no_grad()
def quantize_model_w8a8(model: nn.Module, activations: Activations = "dynamic", batches=None,
                        skip: Iterable[str] = ("lm_head",), scale_dtype: torch.dtype | None = torch.bfloat16) -> dict:
    """Replace every ``nn.Linear`` (except ``skip``) by a :class:`W8A8Linear`, in place.

    ``activations="dynamic"``: per-token scales at run time (no calibration; vLLM's and llm-compressor's
    ``W8A8`` default). ``"static"``: one scale per layer, ``max|x| / 127`` over the calibration token ids
    ``batches`` (run through the model *before* it is changed). ``scale_dtype``: the dtype the weight
    scales are stored and served in (bf16 for vLLM; ``None`` keeps fp32). Returns
    ``{"layers": {name: W8A8Linear}, "activations": ..., "input_absmax": {name: float} (static only)}``.
    """
    if activations not in ("dynamic", "static"):
        raise ValueError(f"activations must be 'dynamic' (per token) or 'static' (per tensor), got {activations!r}")
    if activations == "static" and batches is None:
        raise ValueError("static activation scales need calibration data: pass batches=<token ids (n, seq_len)>, "
                         "e.g. quantedu.data.calibration_batches(tokenizer, 16, 512)")
    label = f"W8A8 ({activations} activations)"
    InPlaceGuard(model, label).__enter__()  # only checks: refuses a model already quantized in place, before any work
    skip = tuple(skip)
    targets = _targets(model, skip)
    if not targets:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layers outside {skip} to quantize")
    absmax = {}
    if activations == "static":
        stats = activation_stats(model, batches, targets)
        absmax = {n: float(s.absmax.max()) for n, s in stats.items()}
    with InPlaceGuard(model, label):
        layers = {}
        for name, linear in targets.items():
            scale = None
            if activations == "static":
                scale = torch.tensor([absmax[name] / INT8_MAX if absmax[name] > 0 else 1.0])
            layer = W8A8Linear.from_linear(linear, scale, scale_dtype).to(linear.weight.device)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, layer)
            layers[name] = layer
    out = {"layers": layers, "activations": activations}
    if absmax:
        out["input_absmax"] = absmax
    return out


def w8a8_layers(model: nn.Module) -> dict[str, W8A8Linear]:
    """The :class:`W8A8Linear` layers of a model, by name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, W8A8Linear)}
