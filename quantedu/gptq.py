"""GPTQ: post-training quantization with second-order error compensation.

Frantar, Ashkboos, Hoefler, Alistarh, "GPTQ: Accurate Post-Training Quantization for Generative
Pre-trained Transformers" (ICLR 2023, arXiv:2210.17323). The per-layer algorithm follows the
authors' reference ``gptq.py`` (IST-DASLab/gptq, ``GPTQ.fasterquant``); llm-compressor's
``modifiers/gptq/gptq_quantize.py`` is the same algorithm and the tests check ours against it.

For one linear layer with weight ``W`` (rows x cols) and calibration inputs ``X`` (cols x tokens)
GPTQ minimizes the layer-output error ``||W X - Q X||^2 = tr((W - Q) X X^T (W - Q)^T)``. Its Hessian
with respect to any row of ``W`` is ``H = 2 X X^T``, the ``H`` of the papers and of this code (which
also averages it over the samples); with that ``H`` the error is ``1/2 tr((W - Q) H (W - Q)^T)``.
The scale of ``H`` changes the objective, not its minimizer. Quantizing column ``q`` and then moving
the remaining columns by ``-(w_q - quant(w_q)) / [H_F^-1]_qq * [H_F^-1]_q,:`` (``H_F``: the Hessian of
the columns not yet quantized) is the optimal (OBS) compensation; GPTQ does it for all rows at once,
in a fixed column order. Row ``q`` of the upper Cholesky factor ``U`` of ``H^-1`` is row ``q`` of
``H_F^-1`` divided by ``sqrt([H_F^-1]_qq) = U_qq``, so one factorization gives every update instead of
re-inverting ``H`` after every column.

Conventions (see :mod:`quantedu.primitives`): unsigned codes with integer zero points, groups of
``group_size`` consecutive input columns, ``g_idx[c]`` = group of column ``c``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import nn

from .checks import in_place, require_finite
from .evaluate import torch_threads
from .primitives import QuantizedLayer, WeightOnlyConfig, choose_qparams, round_to_grid

__all__ = [
    "GPTQConfig",
    "HessianAccumulator",
    "gptq_quantize_weight",
    "gptq_quantize_model",
]


@dataclass(frozen=True)
class GPTQConfig(WeightOnlyConfig):
    """Settings of GPTQ; the names are the ones GPTQ checkpoints store in ``quantization_config``.

    ``group_size=-1`` means one scale per output row (per-channel). ``desc_act`` quantizes the
    columns in order of decreasing ``diag(H)`` (act-order); ``static_groups`` fixes every group's
    scale/zero from the original weight before GPTQ starts, so groups stay contiguous in the
    original column order and the checkpoint needs no permuted ``g_idx`` (llm-compressor's
    ``actorder="static"``/``"weight"``). ``damp_percent`` adds that fraction of ``mean(diag(H))``
    to the diagonal so the Cholesky factorization exists.
    """

    desc_act: bool = False
    static_groups: bool = False
    damp_percent: float = 0.01
    block_size: int = 128

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.damp_percent < 1:
            raise ValueError(f"damp_percent must lie in [0, 1), got {self.damp_percent!r}; 0.01 is usual")
        if not isinstance(self.block_size, int) or self.block_size < 1:
            raise ValueError(f"block_size must be a positive integer, got {self.block_size!r}")

    def label(self) -> str:
        extra = (" desc_act" + (" static" if self.static_groups else "")) if self.desc_act else ""
        return super().label() + extra


class HessianAccumulator:
    """Running ``H = 2/n * sum_i X_i X_i^T`` over calibration samples (reference ``add_batch``).

    ``n`` counts samples (sequences), as the reference and llm-compressor do. With this ``H`` the
    layer's squared output error, summed over the ``n`` samples, is ``n/2 * tr(E H E^T)``; the scale of ``H``
    does not change GPTQ's result (damping is relative to ``mean(diag(H))``), only its numerics.
    """

    def __init__(self, columns: int, device=None):
        self.H = torch.zeros(columns, columns, dtype=torch.float32, device=device)
        self.n = 0

    @torch.no_grad()
    def add(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.H.shape[0]:
            raise ValueError(f"input has {x.shape[-1]} features, the Hessian expects {self.H.shape[0]}")
        batch = x.shape[0] if x.dim() > 2 else 1
        x = x.reshape(-1, x.shape[-1]).to(self.H.device, torch.float32)
        # Rescale the old average and add the new samples: H stays an average, no overflow.
        self.H *= self.n / (self.n + batch)
        self.n += batch
        x = math.sqrt(2 / self.n) * x
        self.H.addmm_(x.t(), x)

    def hook(self):
        """A forward hook for ``nn.Linear`` that adds the layer's input."""
        return lambda module, args, output: self.add(args[0])


@torch.no_grad()
def gptq_quantize_weight(W: torch.Tensor, H: torch.Tensor, config: GPTQConfig = GPTQConfig()) -> QuantizedLayer:
    """Quantize one weight ``W`` (out_features, in_features) given its input Hessian ``H``."""
    if W.dim() != 2 or H.shape != (W.shape[1], W.shape[1]):
        raise ValueError(f"need W (rows, cols) and H (cols, cols); got {tuple(W.shape)} and {tuple(H.shape)}")
    require_finite(W, "W")
    require_finite(H, "H")
    if not bool(H.diagonal().any()):
        # Every input was zero or none was seen: that is a hook that never fired, not a perfect layer.
        raise ValueError("the Hessian H is all zero: no calibration input reached this layer (a forgotten or "
                         "removed forward hook, or empty calibration batches). Feed calibration data through "
                         "the layer before quantizing it.")
    # The column loop is thousands of tiny ops: on CPU, a thread pool's fork/join per op costs more
    # than the op, and collapses when the cores are shared (measured: 10-25x slower with 2 threads).
    with torch_threads(1 if W.device.type == "cpu" else None):
        return _gptq(W, H, config)


def _gptq(W: torch.Tensor, H: torch.Tensor, config: GPTQConfig) -> QuantizedLayer:
    qc = config.quant_config()
    dtype = W.dtype
    W = W.detach().clone().float()
    H = H.detach().clone().float().to(W.device)
    rows, cols = W.shape
    g = config.group_size if config.group_size != -1 else cols
    maxq = qc.maxq

    # Dead inputs (always zero in calibration) carry no information about the error: any value
    # is optimal, so set the weight to 0 and give H a unit diagonal there to keep it invertible.
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0

    if config.static_groups:
        # Every group's grid comes from the original weight, before any error was pushed into it.
        static_scale, static_zero = choose_qparams(W, qc)

    perm = None
    if config.desc_act:
        # Columns with large inputs first: their error is compensated by the most remaining columns.
        perm = torch.argsort(torch.diag(H), descending=True)
        W, H = W[:, perm], H[perm][:, perm]

    # Dampening: H + lambda*I with lambda a fraction of the average diagonal.
    diag = torch.arange(cols, device=W.device)
    H[diag, diag] += config.damp_percent * torch.mean(torch.diag(H))
    # Row q of the upper Cholesky factor U of H^-1 is row q of the inverse Hessian of the columns >= q
    # (those not yet fixed) divided by the square root of its diagonal entry, U[q, q]: so
    # (w - q) / U[q, q] * U[q, q:] is the OBS update of column q. No re-inversion per column
    # (paper, Section 4 step 3).
    try:
        Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    except torch.linalg.LinAlgError:
        raise ValueError(f"H + damping is not positive definite (damp_percent={config.damp_percent}): too few "
                         "or too similar calibration samples for this layer. Raise damp_percent (e.g. 0.1) or "
                         "calibrate on more tokens.") from None

    Q = torch.zeros_like(W)
    codes = torch.zeros_like(W, dtype=torch.uint8)
    losses = torch.zeros(rows, device=W.device)
    n_groups = math.ceil(cols / g)
    scales = torch.zeros(rows, n_groups, device=W.device)
    zeros = torch.zeros(rows, n_groups, device=W.device)
    # group of each *position* in quantization order; g_idx is per original column
    order_group = torch.arange(cols, device=W.device) // g
    if perm is not None and config.static_groups:
        order_group = perm // g  # a permuted column keeps the group of its original position
    scale = zero = None

    # Lazy batch updates: within a block of columns only the block is updated column by column;
    # the rest of W receives the block's accumulated error in one matmul (memory-bound -> compute-bound).
    for i1 in range(0, cols, config.block_size):
        i2 = min(i1 + config.block_size, cols)
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            grp = int(order_group[col])
            if config.static_groups:
                scale, zero = static_scale[:, grp], static_zero[:, grp]
            elif col % g == 0:
                # A new group starts: choose its grid from the weights as GPTQ has updated them so far
                # (the rest of the block from W1, later blocks from W: exact when block_size % g == 0).
                ahead = torch.cat([W1[:, i:], W[:, i2:]], dim=1)[:, :g]
                s, z = choose_qparams(ahead, replace(qc, granularity="channel"))
                scale, zero = s[:, 0], z[:, 0]
                scales[:, grp], zeros[:, grp] = scale, zero
            w = W1[:, i]
            d = Hinv1[i, i]
            q, deq = round_to_grid(w, scale, zero, maxq)
            codes[:, col], Q[:, col] = q.to(torch.uint8), deq
            err = (w - deq) / d
            losses += (w - deq) ** 2 / d**2 / 2  # the OBS error added, (w - q)^2 / (2 [H_F^-1]_qq)
            # OBS update of the not-yet-quantized columns of this block.
            W1[:, i:] -= err.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        # Deferred update of every later column with the whole block's error.
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]

    if config.static_groups:
        scales, zeros = static_scale.reshape(rows, -1), static_zero.reshape(rows, -1)
    g_idx = order_group.clone()
    if perm is not None:
        invperm = torch.argsort(perm)
        Q, codes, g_idx = Q[:, invperm], codes[:, invperm], order_group[invperm]
    return QuantizedLayer(
        weight=Q.to(dtype), codes=codes, scales=scales, zeros=zeros, g_idx=g_idx.to(torch.int32),
        config=qc, perm=perm, loss=float(losses.sum()), row_losses=losses,
    )


@torch.no_grad()
def gptq_quantize_model(
    model: nn.Module,
    batches: torch.Tensor,
    config: GPTQConfig = GPTQConfig(),
    inputs_from: Literal["quantized", "fp"] = "quantized",
    device: str | torch.device | None = None,
    progress: bool = True,
) -> dict[str, QuantizedLayer]:
    """Quantize every linear layer of every decoder block in place (weights become dequantized GPTQ).

    ``batches`` are calibration token ids ``(n_samples, seq_len)``. Blocks are processed one at a
    time: the block is moved to ``device`` with its calibration inputs, every ``nn.Linear`` in it
    gets a Hessian hook, one forward pass fills the Hessians, GPTQ quantizes the layers, and the
    block's outputs become the next block's inputs; then the block goes back where it was. Memory on
    ``device`` is one block, its inputs and its Hessians.

    ``inputs_from="quantized"`` (default, as in the reference ``llama.py`` and llm-compressor) runs the
    block again *after* quantizing it, so block ``k+1`` is calibrated on what the quantized model will
    really feed it and can compensate the errors of blocks ``<= k``. ``"fp"`` feeds every block the
    full-precision model's activations (errors do not compound in the calibration, but they do at
    inference time). The walk is :func:`quantedu.calibration.sequential_blocks`, shared with AWQ.

    Returns ``{"model.layers.3.self_attn.q_proj": QuantizedLayer, ...}`` (codes/scales/zeros/g_idx for export).
    """
    from .calibration import warn_if_starved
    warn_if_starved(model, batches, f"GPTQ {config.label()}")  # fewer than 2 tokens per input: inconclusive
    if inputs_from not in ("quantized", "fp"):
        raise ValueError(f"inputs_from must be 'quantized' or 'fp', got {inputs_from!r}")
    with in_place(model, config.label()):
        return _gptq_model(model, batches, config, inputs_from, device, progress)


def _gptq_model(model, batches, config, inputs_from, device, progress) -> dict[str, QuantizedLayer]:
    from .calibration import decoder_layers, linear_layers, observe_linear_inputs, run_block, sequential_blocks

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    layers = decoder_layers(model)
    prefix = next(name for name, m in model.named_modules() if m is layers)
    results: dict[str, QuantizedLayer] = {}

    def process(k, layer, hidden, kwargs):
        linears = linear_layers(layer)
        # q/k/v (and gate/up) read the same tensor: one Hessian serves them all (it is X X^T of the input).
        owner = _input_owners(layer, linears, hidden[0], kwargs)
        acc = {name: HessianAccumulator(linears[name].in_features, device) for name in set(owner.values())}
        with observe_linear_inputs(layer, lambda name, x: acc[name].add(x), names=set(acc)):
            run_block(layer, hidden, kwargs)  # fills the Hessians
        for first in acc:
            # Rows are independent given H: layers sharing an input (q/k/v, gate/up) are stacked and
            # quantized in one pass over the columns (one Cholesky, one column loop).
            names = [n for n in linears if owner[n] == first]
            res = gptq_quantize_weight(torch.cat([linears[n].weight.data for n in names]), acc[first].H, config)
            start = 0
            for n in names:
                m = linears[n]
                part = res.rows(start, start + m.out_features)
                start += m.out_features
                m.weight.data.copy_(part.weight)
                results[f"{prefix}.{k}.{n}"] = part.to("cpu")

    sequential_blocks(model, batches, process, quantized_inputs=inputs_from == "quantized", desc=config.label(),
                      device=device, progress=progress)
    return results


def _input_owners(layer, linears, x, kwargs) -> dict[str, str]:
    """Map each linear layer to the first layer that reads the very same input tensor (one probe sample)."""
    seen, owner, alive = {}, {}, []

    def probe(name):
        def hook(module, args):
            # Keep every probed input alive: a freed tensor's address can be reused by a later,
            # different input (e.g. the MLP's normed input where the attention's was).
            alive.append(args[0])
            key = (args[0].data_ptr(), tuple(args[0].shape), args[0].stride())
            owner[name] = seen.setdefault(key, name)
        return hook

    handles = [m.register_forward_pre_hook(probe(n)) for n, m in linears.items()]
    try:
        layer(x, **kwargs)
    finally:
        for hd in handles:
            hd.remove()
    return owner
