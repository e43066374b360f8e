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

from .checks import InPlaceGuard, require_finite
from .runtime import torch_threads
from .primitives import QuantConfig, QuantizedLayer, WeightOnlyConfig, choose_qparams, round_to_grid

__all__ = [
    "GPTQConfig",
    "HessianAccumulator",
    "IntGrid",
    "hessian_inverse",
    "gptq_block",
    "gptq_quantize_weight",
    "gptq_quantize_model",
    "layer_hessians",
    "output_error",
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


class IntGrid:
    """The integer grid of :mod:`quantedu.primitives` as GPTQ uses it: a group's ``(scale, zero)`` per row
    chosen from its columns, and one column rounded on it. Any object with these two methods is a grid GPTQ
    can quantize onto (floating-point grids: :mod:`quantedu.fp_grids`); error feedback does not care how a column
    is rounded."""

    def __init__(self, config: QuantConfig):
        self.config = config
        self._per_row = replace(config, granularity="channel")

    def choose(self, W: torch.Tensor):
        """``(scale, zero)``, each ``(rows,)``, of a group whose columns are ``W`` ``(rows, g)``."""
        s, z = choose_qparams(W, self._per_row)
        return s[:, 0], z[:, 0]

    def round(self, w: torch.Tensor, params) -> tuple[torch.Tensor, torch.Tensor]:
        """``(codes, dequantized)`` of one column ``w`` ``(rows,)`` on the group's grid."""
        scale, zero = params
        return round_to_grid(w, scale, zero, self.config.maxq)


@torch.no_grad()
def gptq_quantize_weight(W: torch.Tensor, H: torch.Tensor, config: GPTQConfig = GPTQConfig(), grid=None,
                         hinv_fn=None, block_fn=None) -> QuantizedLayer:
    """Quantize one weight ``W`` (out_features, in_features) given its input Hessian ``H``.

    ``grid``: what a column is rounded onto (default :class:`IntGrid` of ``config``). ``hinv_fn`` /
    ``block_fn``: replace :func:`hessian_inverse` / :func:`gptq_block` (the exercises grade a learner's
    version of a step inside the real algorithm this way).
    """
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
        return _gptq(W, H, config, grid or IntGrid(config.quant_config()), hinv_fn or hessian_inverse,
                     block_fn or gptq_block)


def hessian_inverse(H: torch.Tensor, damp_percent: float) -> torch.Tensor:
    """Step 1: the upper Cholesky factor of ``(H + damping)^-1``, whose row ``q`` GPTQ reads for column ``q``.

    Dead inputs (a zero on the diagonal: always zero in calibration) get ``H[i, i] = 1`` so ``H`` stays
    invertible; damping adds ``damp_percent * mean(diag(H))`` to the diagonal. Row ``q`` of the factor is row
    ``q`` of the inverse Hessian of the columns ``>= q`` (those not yet fixed) divided by the square root of
    its diagonal entry, so one factorization gives every OBS update (paper, Section 4 step 3).
    """
    H = H.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    diag = torch.arange(H.shape[0], device=H.device)
    H[diag, diag] += damp_percent * torch.mean(torch.diag(H))
    try:
        return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    except torch.linalg.LinAlgError:
        raise ValueError(f"H + damping is not positive definite (damp_percent={damp_percent}): too few or too "
                         "similar calibration samples for this layer. Raise damp_percent (e.g. 0.1) or "
                         "calibrate on more tokens.") from None


def gptq_block(W1: torch.Tensor, Hinv1: torch.Tensor, quantize) -> tuple[torch.Tensor, torch.Tensor]:
    """Step 2: the column loop over one block (Algorithm 1's inner loop). ``W1`` ``(rows, B)`` is the block as
    updated so far, ``Hinv1`` its ``(B, B)`` part of :func:`hessian_inverse`; ``quantize(i, W1)`` returns column
    ``i`` rounded on its group's grid (it sees the block as updated, to choose the grid of a group that starts
    at ``i``). Returns ``(Q1, Err1)``: the quantized block and each column's error scaled by ``1/Hinv1[i, i]``,
    which the caller pushes onto the later blocks (step 3)."""
    W1 = W1.clone()
    Q1, Err1 = torch.zeros_like(W1), torch.zeros_like(W1)
    for i in range(W1.shape[1]):
        w, d = W1[:, i], Hinv1[i, i]
        q = quantize(i, W1)
        err = (w - q) / d
        # OBS update of the block's columns not yet quantized.
        W1[:, i:] -= err.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)
        Q1[:, i], Err1[:, i] = q, err
    return Q1, Err1


def _gptq(W: torch.Tensor, H: torch.Tensor, config: GPTQConfig, grid, hinv_fn, block_fn) -> QuantizedLayer:
    qc = config.quant_config()
    dtype = W.dtype
    W = W.detach().clone().float()
    H = H.detach().clone().float().to(W.device)
    rows, cols = W.shape
    g = config.group_size if config.group_size != -1 else cols

    # Dead inputs (always zero in calibration) carry no information about the error: any value
    # is optimal, so set the weight to 0 and give H a unit diagonal there to keep it invertible (before
    # act-order sorts the columns by diag(H)).
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0

    n_groups = math.ceil(cols / g)
    params = [None] * n_groups
    if config.static_groups:
        # Every group's grid comes from the original weight, before any error was pushed into it.
        params = [grid.choose(W[:, k * g:(k + 1) * g]) for k in range(n_groups)]

    perm = None
    if config.desc_act:
        # Columns with large inputs first: their error is compensated by the most remaining columns.
        perm = torch.argsort(torch.diag(H), descending=True)
        W, H = W[:, perm], H[perm][:, perm]

    Hinv = hinv_fn(H, config.damp_percent)
    Q = torch.zeros_like(W)
    codes = torch.zeros_like(W, dtype=torch.uint8)
    losses = torch.zeros(rows, device=W.device)
    # group of each *position* in quantization order; g_idx is per original column
    order_group = torch.arange(cols, device=W.device) // g
    if perm is not None and config.static_groups:
        order_group = perm // g  # a permuted column keeps the group of its original position

    for i1 in range(0, cols, config.block_size):
        i2 = min(i1 + config.block_size, cols)

        def quantize(i, W1, i1=i1, i2=i2):
            col, grp = i1 + i, int(order_group[i1 + i])
            if not config.static_groups and col % g == 0:
                # A new group starts: choose its grid from the weights as GPTQ has updated them so far
                # (the rest of the block from W1, later blocks from W: exact when block_size % g == 0).
                params[grp] = grid.choose(torch.cat([W1[:, i:], W[:, i2:]], dim=1)[:, :g])
            q, deq = grid.round(W1[:, i], params[grp])
            codes[:, col] = q.to(torch.uint8)
            return deq

        Q1, Err1 = block_fn(W[:, i1:i2], Hinv[i1:i2, i1:i2], quantize)
        Q[:, i1:i2] = Q1
        losses += (Err1 ** 2).sum(dim=1) / 2  # the OBS error added, (w - q)^2 / (2 [H_F^-1]_qq), per row
        # Step 3, the lazy batch update: every later column receives the whole block's error in one matmul
        # (memory-bound -> compute-bound).
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]

    scales, zeros = (torch.stack(p, dim=1) for p in zip(*params))
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
    grid=None,
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

    ``grid``: ``W -> grid`` (e.g. a value of :func:`quantedu.fp_grids.default_grids`), called on each weight GPTQ
    quantizes (q/k/v and gate/up stacked: NVFP4's per-tensor scale is then shared, as llm-compressor shares it);
    default the integer grid of ``config``. ``config.group_size`` must be the grid's.

    Returns ``{"model.layers.3.self_attn.q_proj": QuantizedLayer, ...}`` (codes/scales/zeros/g_idx for export).
    """
    from .calibration import warn_if_starved
    warn_if_starved(model, batches, config.label())  # "GPTQ W4 sym g64"; fewer than 2 tokens per input: inconclusive
    if inputs_from not in ("quantized", "fp"):
        raise ValueError(f"inputs_from must be 'quantized' or 'fp', got {inputs_from!r}")
    with InPlaceGuard(model, config.label()):
        return _gptq_model(model, batches, config, inputs_from, device, progress, grid)


def _gptq_model(model, batches, config, inputs_from, device, progress, grid=None) -> dict[str, QuantizedLayer]:
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
            W = torch.cat([linears[n].weight.data for n in names])
            res = gptq_quantize_weight(W, acc[first].H, config, grid=None if grid is None else grid(W))
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


# --- measuring GPTQ on single layers (notebook 03's sweeps) ---------------------------------------------


@torch.no_grad()
def layer_hessians(model: nn.Module, batches: torch.Tensor, names, per_sample: bool = False) -> dict[str, torch.Tensor]:
    """GPTQ's Hessian of each named linear layer (full names) from calibration ``batches``, accumulated as
    :func:`gptq_quantize_model` does (one sample per row, :class:`HessianAccumulator`), but on the model as it
    is (no block-by-block quantization). ``per_sample=True``: one ``2 x^T x`` per row, stacked ``(rows, in,
    in)``, whose mean over the first ``n`` rows is the Hessian of ``n`` samples (for a sweep over the amount of
    calibration). Fewer tokens than the budget asks warn, as a quantization would
    (:func:`quantedu.calibration.warn_if_starved`)."""
    from .calibration import check_batches, observe_linear_inputs, warn_if_starved
    batches = check_batches(batches)
    warn_if_starved(model, batches, "GPTQ Hessians")
    names = list(names)
    widths = {n: model.get_submodule(n).in_features for n in names}
    device = next(model.parameters()).device
    acc = {n: HessianAccumulator(widths[n], device) for n in names}
    samples: dict[str, list[torch.Tensor]] = {n: [] for n in names}

    def add(name, x):
        if per_sample:
            xf = x.float()
            samples[name].append((2 * xf.T @ xf).cpu())
        else:
            acc[name].add(x)

    with observe_linear_inputs(model, add, names=set(names)):
        for row in batches:
            model(row.unsqueeze(0).to(device), use_cache=False)
    return {n: torch.stack(samples[n]) if per_sample else acc[n].H for n in names}


def output_error(W: torch.Tensor, Q: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """Per-token squared output error of ``Q`` in place of ``W`` on inputs ``X`` ``(tokens, in)``, relative to
    the mean squared output: ``||(W - Q) x_t||^2 / mean_t ||W x_t||^2``. Its mean over the tokens is GPTQ's
    objective as a share of the output's energy, ``tr(E H E^T) / tr(W H W^T)`` with ``H`` from ``X``; per token,
    two quantizations can be compared with the verdict rule (:func:`quantedu.verdict.verdict`)."""
    if W.shape != Q.shape or X.dim() != 2 or X.shape[1] != W.shape[1]:
        raise ValueError(f"need W and Q (rows, in) and X (tokens, in); got {tuple(W.shape)}, {tuple(Q.shape)}, "
                         f"{tuple(X.shape)}")
    X = X.float().to(W.device)
    err = ((X @ (W.float() - Q.float()).T) ** 2).sum(1)
    return err / ((X @ W.float().T) ** 2).sum(1).mean()
