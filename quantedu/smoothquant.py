"""SmoothQuant: move the activations' outliers into the weights, where int8 per-channel scales absorb them.

Xiao, Lin, Seznec, Wu, Demouth, Han, "SmoothQuant: Accurate and Efficient Post-Training Quantization for
Large Language Models" (ICML 2023, arXiv:2211.10438), Section 4 and ``smoothquant/smooth.py`` of
mit-han-lab/smoothquant. llm-compressor's ``SmoothQuantModifier`` is the maintained version and the
tests compare ours with it.

A few input channels of a linear layer carry values 10-100x larger than the rest, in every token. A
per-token int8 scale is then set by those channels and the others round to a few codes. Weights have
no such outliers. SmoothQuant divides input channel ``j`` by ``s_j`` and multiplies the weights' column
``j`` by the same ``s_j`` (``X W^T = (X diag(s)^-1) (W diag(s))^T``), with the division folded into the
RMSNorm that produces ``X`` (:func:`quantedu.awq.fold_scales`, exactly as AWQ folds its scales), so the
model computes the same function and the difficulty is split between activations and weights:

    s_j = max|X_j| ** alpha / max|W_j| ** (1 - alpha)

``max|X_j|`` over the calibration tokens, ``max|W_j|`` over the output rows of every layer reading ``X``
(q/k/v share one input, gate/up another). ``alpha`` ("migration strength") in ``[0, 1]``: 0 leaves
activations alone (``s = 1/max|W_j|``, weights normalized), 1 moves all of the activation range into the
weights; the paper uses 0.5 for most models and 0.75-0.85 for the hardest.

llm-compressor 0.14 computes the same formula from two different statistics (``smoothquant/base.py``,
``_calculate_smoothing_scales``): the activation's dynamic range ``max X_j - min X_j`` instead of
``max|X_j|``, and ``2 * max|W_j|``. Per channel its scale is therefore ours times
``((max X_j - min X_j) / max|X_j|) ** alpha * 2 ** (alpha - 1)`` (:func:`llm_compressor_factor`; the test
asserts it element by element): ``2**(2 alpha - 1)`` for a channel whose values span ``[-m, m]``, less for a
channel of one sign. Both are folded the same way, so both preserve the function; only the split differs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .awq import fold_scales
from .calibration import decoder_layers
from .checks import check_linear_weights
from .w8a8 import ChannelStats, activation_stats

__all__ = ["MIN_SCALE", "SmoothGroup", "llama_smooth_groups", "check_alpha", "smoothquant_scales",
           "llm_compressor_factor", "smooth_model"]

MIN_SCALE = 1e-5  # a channel that is zero in every token would get s = 0: clamp (llm-compressor's constant too)


@dataclass(frozen=True)
class SmoothGroup:
    """The norm whose output is smoothed and the linear layers that read it (names inside a block)."""

    norm: str
    layers: tuple[str, ...]


def llama_smooth_groups() -> list[SmoothGroup]:
    """Llama's two norm-fed groups (llm-compressor's default mappings): the input norm feeds q/k/v, the
    post-attention norm feeds gate/up. (o_proj and down_proj read no norm; SmoothQuant leaves them.)"""
    return [SmoothGroup("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
            SmoothGroup("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj"))]


def check_alpha(alpha) -> float:
    """``alpha`` as a float in ``[0, 1]``, or a ValueError that says what it means."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise ValueError(f"alpha (SmoothQuant's migration strength) must be a number in [0, 1], got {alpha!r}: "
                         "0 keeps the activations as they are, 1 moves their whole range into the weights; "
                         "0.5 is the paper's default")
    return float(alpha)


def smoothquant_scales(x_absmax: torch.Tensor, weights: list[torch.Tensor], alpha: float = 0.5) -> torch.Tensor:
    """``s_j = max|X_j|^alpha / max|W_j|^(1-alpha)`` per input channel ``j``.

    ``x_absmax``: ``(in_features,)`` max |activation| per channel over the calibration tokens;
    ``weights``: the ``(out, in)`` weights of every layer reading those activations (their column maxima
    are combined). A channel with no weight or no activation gets a scale from the other term alone, and
    every scale is at least :data:`MIN_SCALE`."""
    alpha = check_alpha(alpha)
    if not weights:
        raise ValueError("give the weights of the layers that read the activations (e.g. q, k and v)")
    cols = {w.shape[1] for w in weights}
    if len(cols) != 1 or cols != {x_absmax.numel()}:
        raise ValueError(f"every weight must have {x_absmax.numel()} input columns (one per activation channel), "
                         f"got {sorted(tuple(w.shape) for w in weights)}")
    w_absmax = torch.stack([w.detach().abs().float().amax(dim=0) for w in weights]).amax(dim=0)
    x = x_absmax.float()
    s = x.pow(alpha) / w_absmax.pow(1 - alpha)
    s = torch.where(w_absmax > 0, s, x.pow(alpha))  # an all-zero column: nothing to balance against
    return s.clamp(min=MIN_SCALE)


def llm_compressor_factor(stats: ChannelStats, alpha: float) -> torch.Tensor:
    """Per channel, llm-compressor's SmoothQuant scale divided by :func:`smoothquant_scales`' on the same
    calibration: ``((max - min) / max|X|)^alpha * 2^(alpha - 1)`` (see the module docstring)."""
    alpha = check_alpha(alpha)
    return ((stats.max - stats.min) / stats.absmax).pow(alpha) * 2.0 ** (alpha - 1)


@torch.no_grad()
def smooth_model(model: nn.Module, batches, alpha: float = 0.5, groups: list[SmoothGroup] | None = None) -> dict:
    """SmoothQuant every decoder block of ``model`` in place (the function is unchanged; weights are not
    quantized: follow with :func:`quantedu.w8a8.quantize_model_w8a8`).

    ``batches``: calibration token ids ``(n_samples, seq_len)``. The statistics of every norm's output come
    from one pass of the original model (:func:`quantedu.w8a8.activation_stats`); smoothing block ``i``
    does not change what later blocks see, so a block-by-block walk would give the same numbers.
    Returns ``{"scales": {"model.layers.3.input_layernorm": s}, "stats": {same keys: ChannelStats},
    "alpha": alpha}``.
    """
    alpha = check_alpha(alpha)
    groups = llama_smooth_groups() if groups is None else groups
    layers = decoder_layers(model)
    prefix = next(name for name, m in model.named_modules() if m is layers)
    check_linear_weights(model)
    first = {f"{prefix}.{i}.{g.layers[0]}": (i, g) for i in range(len(layers)) for g in groups}
    stats = activation_stats(model, batches, first)
    out: dict = {"scales": {}, "stats": {}, "alpha": alpha}
    for name, (i, group) in first.items():
        block = layers[i]
        norm = block.get_submodule(group.norm)
        linears = [block.get_submodule(n) for n in group.layers]
        s = smoothquant_scales(stats[name].absmax, [m.weight for m in linears], alpha)
        fold_scales(norm, linears, s)
        key = f"{prefix}.{i}.{group.norm}"
        out["scales"][key], out["stats"][key] = s.cpu(), stats[name]
    return out
