"""AWQ: activation-aware weight quantization.

Lin, Tang, Tang, Yang, Chen, Wang, Xiao, Dang, Gan, Han, "AWQ: Activation-aware Weight Quantization
for LLM Compression and Acceleration" (MLSys 2024, arXiv:2306.00978). The steps follow the authors'
reference, mit-han-lab/llm-awq ``awq/quantize/auto_scale.py`` and ``auto_clip.py``; llm-compressor's
``AWQModifier`` is the maintained version of the scale search and the tests check ours against it.

Weights that meet large activations matter most ("salient" input channels). Instead of keeping them
in higher precision, AWQ multiplies input channel ``c`` of a linear layer by ``s_c > 1`` and divides
the layer's input by the same ``s_c``, folding the division into the operation that produces the
input (an RMSNorm weight, or the rows of the previous linear layer), so the model computes the same
function. Rounding error of a scaled-up weight is relatively smaller, so salient channels are
quantized more finely. Per block and per group of layers sharing one input:

1. statistics: ``s_x[c] = mean |x_c|`` over the calibration tokens;
2. scale search: ``s = s_x ** alpha`` (normalized so ``sqrt(max(s) * min(s)) = 1``), ``alpha`` on a
   grid of ``n_grid`` values in ``[0, 1)``; keep the ``alpha`` whose quantized output of the inspected
   module (attention, MLP or single layer) ``Q(W * s) (x / s)`` has the smallest mean squared error to the full-precision output;
3. fold ``1/s`` into the previous op and ``s`` into the layers (the function is unchanged);
4. clipping search: per output row and group, shrink the weight range to ``±max|w| * r`` with ``r``
   in ``[1 - max_shrink, 1]``, keeping the ``r`` whose layer output error is smallest (not for
   q/k_proj: their error passes through the q·k product, which the per-layer error does not see);
5. round to nearest with integer zero points (:mod:`quantedu.primitives`; ragged last group allowed).

Two exact shortcuts make this cheap on a CPU without changing any result: a group with a single
linear layer (o_proj, down_proj) scores a candidate from the Gram matrix ``H = X^T X`` of its inputs,
``||dW X||^2 = tr(dW H dW^T)``, instead of re-running the layer on every token; and the clipping
search uses the diagonal blocks of the same ``H``, one per quantization group, over all tokens (the
reference subsamples 512 tokens and multiplies elementwise).

Llama's ``v_proj -> o_proj`` pair is scaled only when ``v_proj`` has as many outputs as ``o_proj``
has inputs: with grouped-query attention (SmolLM2: 3 KV heads for 9 query heads) one ``v`` channel
feeds several ``o_proj`` inputs, and llm-awq (PR #67) and llm-compressor both skip that pair.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from .checks import InPlaceGuard
from .calibration import (decoder_layers, first_tensor, linear_layers, observe_linear_inputs, sequential_blocks,
                          warn_if_starved)
from .primitives import (QuantConfig, QuantizedLayer, WeightOnlyConfig, fake_quantize, group_index, group_min_max,
                         quantize_weight)

__all__ = [
    "AWQConfig", "ScaleGroup", "AWQBlock", "llama_scale_groups", "activation_scale", "weight_scale",
    "candidate_scales", "fold_scales", "search_scale", "search_clip", "awq_block", "awq_quantize_model",
    "channel_magnitudes",
]


@dataclass(frozen=True)
class AWQConfig(WeightOnlyConfig):
    """AWQ settings; defaults are the reference's (4 bits, asymmetric, group 128, 20-point grids).

    ``group_size=-1``: one scale per output row. ``duo_scaling``: AutoAWQ/llm-compressor's variant
    ``s = s_x^a / s_w^(1-a)`` (``s_w`` = mean normalized weight magnitude per input channel).
    ``quantized_inputs``: calibrate block ``i+1`` on the quantized block ``i``'s outputs (llm-awq
    uses the full-precision outputs: False). ``search_samples``: score ``alpha`` of the attention and
    MLP groups on only the first that many calibration sequences (their forward passes are most of
    AWQ's cost; statistics, single-layer groups and clipping always use every token). None: all.
    """

    sym: bool = False
    n_grid: int = 20
    duo_scaling: bool = False
    clip: bool = True
    clip_grid: int = 20
    max_shrink: float = 0.5
    quantized_inputs: bool = False
    search_samples: int | None = None

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.n_grid, int) or self.n_grid < 1:
            raise ValueError(f"n_grid must be a positive integer (20 in the reference), got {self.n_grid!r}")
        if self.search_samples is not None and (not isinstance(self.search_samples, int) or self.search_samples < 1):
            raise ValueError(f"search_samples must be a positive integer or None (all), got {self.search_samples!r}")
        if not isinstance(self.clip_grid, int) or self.clip_grid < 1:
            raise ValueError(f"clip_grid must be a positive integer (20 in the reference), got {self.clip_grid!r}")
        if not 0 <= self.max_shrink < 1:
            raise ValueError(f"max_shrink must lie in [0, 1), got {self.max_shrink!r}; 0.5 is the reference's")

    def ratios(self) -> list[float]:
        """The exponents tried: ``i / n_grid`` for ``i < n_grid`` (llm-awq: 0, 0.05, ..., 0.95)."""
        return [i / self.n_grid for i in range(self.n_grid)]



@dataclass(frozen=True)
class ScaleGroup:
    """Layers that share one input, the op that produces it, and the module whose output is scored."""

    prev: str  # RMSNorm/LayerNorm or nn.Linear whose output is the layers' input
    layers: tuple[str, ...]
    inspect: str  # module whose output error decides alpha
    kind: str  # "attention", "module" or "linear" (single layer: Gram-matrix loss)


def llama_scale_groups(block: nn.Module) -> list[ScaleGroup]:
    """The reference's four Llama groups, minus v->o under grouped-query attention (see module doc)."""
    attn, mlp = block.self_attn, block.mlp
    groups = [ScaleGroup("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                         "self_attn", "attention")]
    if attn.v_proj.weight.shape == attn.o_proj.weight.shape:
        groups.append(ScaleGroup("self_attn.v_proj", ("self_attn.o_proj",), "self_attn.o_proj", "linear"))
    groups.append(ScaleGroup("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj"), "mlp", "module"))
    if mlp.up_proj.out_features == mlp.down_proj.in_features:
        groups.append(ScaleGroup("mlp.up_proj", ("mlp.down_proj",), "mlp.down_proj", "linear"))
    return groups


# --- the pieces -----------------------------------------------------------------------------------


def activation_scale(x: torch.Tensor) -> torch.Tensor:
    """``s_x``: mean absolute activation of each input channel over all tokens."""
    return x.reshape(-1, x.shape[-1]).abs().float().mean(0)


def weight_scale(weights: list[torch.Tensor], qc: QuantConfig) -> torch.Tensor:
    """Mean over output rows of ``|w| / max|w| of its group`` per input channel (duo scaling)."""
    total = 0
    for w in weights:
        _, hi = group_min_max(w.abs().float(), qc)
        g_idx = group_index(w.shape[1], qc, device=w.device)
        total = total + (w.abs().float() / (hi[:, g_idx] + 1e-6)).sum(0)
    return total / sum(w.shape[0] for w in weights)


def candidate_scales(x_mean: torch.Tensor, ratio: float, w_mean: torch.Tensor | None = None) -> torch.Tensor:
    """``s = s_x^ratio`` (or ``s_x^ratio / s_w^(1-ratio)``), normalized to geometric mid-range 1."""
    s = x_mean.pow(ratio)
    if w_mean is not None:
        s = s / (w_mean.pow(1 - ratio) + 1e-4)
    s = s.clamp(min=1e-4)
    s = s / (s.max() * s.min()).sqrt()
    return torch.nan_to_num(s, nan=1.0, posinf=1.0)


@torch.no_grad()
def fold_scales(prev: nn.Module, layers: list[nn.Linear], s: torch.Tensor) -> None:
    """Divide ``prev``'s output by ``s`` and multiply the layers' input channels by ``s``.

    ``prev`` is a norm (weight, optional bias: per channel) or a linear layer (its last ``len(s)``
    output rows, as llm-awq's ``scale_fc_fc``). The composed function is unchanged.
    """
    s = s.to(layers[0].weight.device)
    if isinstance(prev, nn.Linear):
        prev.weight[-s.numel():].div_(s.view(-1, 1).to(prev.weight.dtype))
    elif getattr(prev, "weight", None) is not None and prev.weight.dim() == 1:
        prev.weight.div_(s.to(prev.weight.dtype))
    else:
        raise TypeError(f"cannot fold AWQ scales into {type(prev).__name__}: need a norm with a weight or a Linear")
    if getattr(prev, "bias", None) is not None:
        prev.bias[-s.numel():].div_(s.to(prev.bias.dtype))
    for layer in layers:
        layer.weight.mul_(s.view(1, -1).to(layer.weight.dtype))


def gram_loss(dW: torch.Tensor, H: torch.Tensor, n_tokens: int) -> float:
    """Mean squared output error ``||dW X||^2 / (tokens * rows)`` from ``H = X^T X``."""
    return float(((dW.float() @ H) * dW.float()).sum() / (n_tokens * dW.shape[0]))


@torch.no_grad()
def search_scale(layers: list[nn.Linear], x_mean: torch.Tensor, loss, config: AWQConfig) -> tuple[torch.Tensor, float, list[float]]:
    """Grid search of ``alpha``: returns (best scales, best alpha, loss of every alpha).

    ``loss()`` scores the layers' current (fake-quantized) weights; originals are restored after.
    """
    qc = config.quant_config()
    originals = [layer.weight.data.clone() for layer in layers]
    w_mean = weight_scale(originals, qc) if config.duo_scaling else None
    history: list[float] = []
    best = (math.inf, None, None)
    try:
        for ratio in config.ratios():
            s = candidate_scales(x_mean, ratio, w_mean).to(originals[0].dtype)
            for layer, W in zip(layers, originals):
                # Q(W * s) / s applied to x equals Q(W * s) applied to x / s (the folded model).
                layer.weight.data = fake_quantize(W * s.view(1, -1), qc) / s.view(1, -1)
            err = loss()
            history.append(err)
            if err < best[0]:
                best = (err, ratio, s.clone())
    finally:
        for layer, W in zip(layers, originals):
            layer.weight.data = W
    if best[2] is None:
        raise FloatingPointError(f"AWQ scale search found no finite loss: {history}")
    return best[2], best[1], history


def _group_blocks(H: torch.Tensor, g: int) -> torch.Tensor:
    """Diagonal ``g x g`` blocks of ``H`` as ``(n_groups, g, g)`` (last one zero-padded if ragged)."""
    cols = H.shape[0]
    n = math.ceil(cols / g)
    Hp = F.pad(H, (0, n * g - cols, 0, n * g - cols))
    idx = torch.arange(n, device=H.device)
    return Hp.reshape(n, g, n, g)[idx, :, idx, :]


@torch.no_grad()
def search_clip(W: torch.Tensor, H: torch.Tensor, config: AWQConfig) -> torch.Tensor:
    """Per (row, group) ratio ``r``: clip to ``±max|w|*r`` minimizing ``dw_g H_g dw_g^T``; shape (rows, n_groups)."""
    qc = config.quant_config()
    rows, cols = W.shape
    g = qc.group_size if qc.granularity == "group" else cols
    n = math.ceil(cols / g)
    Hg = _group_blocks(H.float(), g)
    xmin, xmax = group_min_max(W, qc)
    absmax = torch.maximum(xmin.abs(), xmax.abs())
    g_idx = group_index(cols, qc, device=W.device)
    best_err = torch.full((rows, n), math.inf, device=W.device)
    best_r = torch.ones(rows, n, device=W.device, dtype=W.dtype)
    for i in range(int(config.max_shrink * config.clip_grid)):
        r = 1 - i / config.clip_grid
        hi = (absmax * r)[:, g_idx]
        Wc = torch.clamp(W, -hi, hi)
        dW = fake_quantize(Wc, qc) - W
        dW = F.pad(dW.float(), (0, n * g - cols)).reshape(rows, n, g)
        err = torch.einsum("rgi,gij,rgj->rg", dW, Hg, dW)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_r = torch.where(better, torch.full_like(best_r, r), best_r)
    return best_r


def apply_clip(layer: nn.Linear, ratio: torch.Tensor, qc: QuantConfig) -> None:
    W = layer.weight.data
    xmin, xmax = group_min_max(W, qc)
    hi = (torch.maximum(xmin.abs(), xmax.abs()) * ratio)[:, group_index(W.shape[1], qc, device=W.device)]
    layer.weight.data = torch.clamp(W, -hi, hi)


def quantize_layer(layer: nn.Linear, qc: QuantConfig) -> QuantizedLayer:
    """Round to nearest with integer zero points; the layer keeps the dequantized weight."""
    res = quantize_weight(layer.weight.data, qc)
    layer.weight.data = res.weight.clone()
    return res


# --- one block ------------------------------------------------------------------------------------


@dataclass
class AWQBlock:
    """What AWQ decided in one decoder block, per scale group (keyed by the op its scales fold into,
    e.g. ``input_layernorm``): the scales, the exponent chosen and the loss of every exponent tried;
    and the block's quantized layers (empty when ``quantize_weights=False``)."""

    scales: dict[str, torch.Tensor]
    alpha: dict[str, float]
    history: dict[str, list[float]]
    layers: dict[str, QuantizedLayer]


@torch.no_grad()
def awq_block(block: nn.Module, inputs: list[torch.Tensor], kwargs: dict, config: AWQConfig,
              quantize_weights: bool = True, groups: list[ScaleGroup] | None = None) -> dict:
    """Scale search, folding, clipping search and quantization of one decoder block, in place.

    Returns an :class:`AWQBlock`; each quantized layer's record carries its group's scale, alpha and losses.
    """
    groups = llama_scale_groups(block) if groups is None else groups
    qc = config.quant_config()
    mods = dict(block.named_modules())
    feats: dict[str, list[torch.Tensor]] = {}
    first_of = {grp.layers[0] for grp in groups}
    with observe_linear_inputs(block, lambda name, x: feats.setdefault(name, []).append(x), names=first_of):
        for x in inputs:
            block(x, **kwargs)
    X = {name: torch.cat(v) for name, v in feats.items()}  # (tokens, in_features)
    n_tok = next(iter(X.values())).shape[0]
    H = {name: x.float().T @ x.float() for name, x in X.items()}
    out = AWQBlock(scales={}, alpha={}, history={}, layers={})
    attn_kwargs = {k: v for k, v in kwargs.items() if k not in ("use_cache",)}
    seq_shape = (len(inputs), -1, inputs[0].shape[-1])
    group_of: dict[str, str] = {}

    for grp in groups:
        layers = [mods[n] for n in grp.layers]
        x = X[grp.layers[0]]
        if grp.kind == "linear" and n_tok > x.shape[1]:
            W0 = layers[0].weight.data.clone()
            Hx = H[grp.layers[0]]
            loss = lambda: gram_loss(layers[0].weight.data - W0, Hx, n_tok)  # noqa: E731
        elif grp.kind == "linear":  # fewer tokens than features: the direct product is cheaper
            ref_lin = layers[0](x)
            loss = lambda: float((layers[0](x) - ref_lin).float().pow(2).mean())  # noqa: E731
        else:
            module = mods[grp.inspect]
            xs = x.view(seq_shape)[: config.search_samples]  # (sequences, seq_len, features)
            run = ((lambda: first_tensor(module(xs, **attn_kwargs))) if grp.kind == "attention"
                   else (lambda: module(xs.reshape(-1, xs.shape[-1]))))
            ref = run()
            loss = lambda: float((run() - ref).float().pow(2).mean())  # noqa: E731
        s, alpha, history = search_scale(layers, activation_scale(x), loss, config)
        fold_scales(mods[grp.prev], layers, s)
        # The layers' inputs are now x / s: keep the statistics consistent for clipping.
        H[grp.layers[0]] = H[grp.layers[0]] / (s.view(-1, 1) * s.view(1, -1)).float()
        out.scales[grp.prev], out.alpha[grp.prev], out.history[grp.prev] = s.cpu(), alpha, history
        for n in grp.layers:
            group_of[n] = grp.prev

    input_of = {n: grp.layers[0] for grp in groups for n in grp.layers}
    clip_ratio: dict[str, torch.Tensor] = {}
    if config.clip:
        for name, layer in linear_layers(block).items():
            if name.endswith(("q_proj", "k_proj")) or name not in input_of:
                continue  # q/k: the error passes through q.k^T, which a per-layer loss does not see
            clip_ratio[name] = search_clip(layer.weight.data, H[input_of[name]], config)
            apply_clip(layer, clip_ratio[name], qc)
    if quantize_weights:
        for name, layer in linear_layers(block).items():
            res = quantize_layer(layer, qc)
            prev = group_of.get(name)
            out.layers[name] = replace(res, clip_ratio=clip_ratio.get(name), **({} if prev is None else dict(
                awq_scale=out.scales[prev], awq_alpha=out.alpha[prev], awq_losses=tuple(out.history[prev]))))
    return out


# --- the whole model ------------------------------------------------------------------------------


@torch.no_grad()
def awq_quantize_model(model: nn.Module, batches: torch.Tensor, config: AWQConfig = AWQConfig(),
                       progress: bool = True) -> dict[str, QuantizedLayer]:
    """AWQ every decoder block of ``model`` in place (weights become dequantized AWQ weights).

    ``batches``: calibration token ids ``(n_samples, seq_len)``. One block, its calibration inputs,
    its linear-layer inputs and their Gram matrices are in memory at a time; the model stays on its
    device (CPU or CUDA). Returns ``{"model.layers.3.mlp.up_proj": QuantizedLayer, ...}``, the same record
    GPTQ returns; a layer's ``awq_scale``/``awq_alpha``/``awq_losses``/``clip_ratio`` say what AWQ chose.
    """
    warn_if_starved(model, batches, f"AWQ {config.label()}")  # fewer than 2 tokens per input: inconclusive
    with InPlaceGuard(model, config.label()):
        return _awq_model(model, batches, config, progress)


def _awq_model(model: nn.Module, batches: torch.Tensor, config: AWQConfig,
               progress: bool) -> dict[str, QuantizedLayer]:
    layers = decoder_layers(model)
    prefix = next(name for name, m in model.named_modules() if m is layers)
    result: dict[str, QuantizedLayer] = {}

    def process(index, block, inputs, kwargs):
        for name, layer in awq_block(block, inputs, kwargs, config).layers.items():
            result[f"{prefix}.{index}.{name}"] = layer.to("cpu")

    sequential_blocks(model, batches, process, quantized_inputs=config.quantized_inputs, desc=config.label(),
                      progress=progress)
    return result


@torch.no_grad()
def channel_magnitudes(model: nn.Module, batches: torch.Tensor) -> dict[str, torch.Tensor]:
    """Step 1 of AWQ over the whole model as it is: ``s_x`` (mean |activation| per input channel, float32, CPU)
    of every linear layer of the decoder blocks, keyed by full name (``model.layers.0.self_attn.q_proj``), over
    every token of ``batches``."""
    from .calibration import check_batches
    batches = check_batches(batches)
    sums: dict[str, torch.Tensor] = {}
    count = {"tokens": 0}
    layers = decoder_layers(model)
    prefix = next(name for name, m in model.named_modules() if m is layers)

    def add(name, x):
        sums[name] = sums.get(name, 0) + x.abs().float().sum(0).cpu()

    device = next(model.parameters()).device
    with observe_linear_inputs(layers, add):
        for row in batches:
            model(row.unsqueeze(0).to(device), use_cache=False)
            count["tokens"] += row.numel()
    return {f"{prefix}.{name}": s / count["tokens"] for name, s in sums.items()}
