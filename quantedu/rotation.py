"""Rotations: spread outliers over many channels so that every quantization grid sees a tamer tensor.

QuaRot (Ashkboos et al., arXiv:2404.00456) and SpinQuant (Liu et al., arXiv:2405.16406) multiply the
residual stream of a Llama by an orthogonal matrix ``Q`` and fold ``Q`` into the weights around it, so
the model computes exactly the same function while every weight and activation is expressed in a
rotated basis. A Hadamard matrix is the rotation of choice: all its entries are ``+-1/sqrt(n)``, so one
large channel is spread evenly over ``n`` channels, and a vector of outliers becomes a vector of
Gaussian-looking values (kurtosis near 3). QuIP# (Tseng et al.) uses the same idea for weights.

What is rotated here (SpinQuant's names):

* **R1**, the residual stream, offline. RMSNorm commutes with an orthogonal ``Q`` only when its weight is
  all ones, so each norm's weight is first folded into the linear layers that read it
  (:func:`quantedu.awq.fold_scales` with ``s = weight``). Then ``E -> E Q`` (embeddings), ``W -> W Q``
  for the layers reading the stream (q/k/v, gate/up, lm_head) and ``W -> Q^T W`` for those writing to it
  (o_proj, down_proj). A tied lm_head is untied first: the embedding and the head now need different
  matrices (``E Q`` and ``W_head diag(norm) Q``).
* **R2**, per attention head, offline (``per_head=True``): the value rows of each KV head ``H^T W_v`` and
  the matching columns of o_proj ``W_o H`` (a Hadamard of ``head_dim``), so o_proj's input is rotated too.
* **R4**, the input of down_proj, online (``online_down=True``): ``down_proj(x) -> (W H)(H^T x)``; the
  ``H^T x`` is computed at run time (:class:`OnlineHadamardMLP`), since the SiLU-gated product in front
  of it cannot absorb a matrix.

``576 = 9 x 64`` is not a power of two and has no Hadamard matrix of its own in the Sylvester family,
so the course model is rotated with a **block-diagonal** Hadamard: nine independent 64 x 64 blocks
(:func:`block_hadamard`), which is what llm-compressor's QuIP / SpinQuant transforms do with
``transform_block_size=64``. It spreads an outlier over the 64 channels of its block only.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .awq import fold_scales
from .calibration import decoder_layers

__all__ = ["hadamard", "block_hadamard", "apply_block_hadamard", "kurtosis", "max_to_mean", "outlier_stats",
           "layer_outlier_stats",
           "rotate_input", "rotate_output", "fold_rotation", "OnlineHadamardMLP", "rotate_model"]


# --- the matrices -----------------------------------------------------------------------------------


def hadamard(n: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The normalized Sylvester Hadamard matrix of order ``n`` (a power of two): ``H H^T = I``, entries
    ``+-1/sqrt(n)``, symmetric. ``H_1 = [1]``, ``H_2n = [[H, H], [H, -H]] / sqrt(2)``."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1 or n & (n - 1):
        raise ValueError(f"a Sylvester Hadamard matrix has an order that is a power of two, got {n!r}; for "
                         "other widths use block_hadamard(width, block) with a power-of-two block dividing it")
    H = torch.ones(1, 1, dtype=dtype)
    while H.shape[0] < n:
        H = torch.cat([torch.cat([H, H], 1), torch.cat([H, -H], 1)], 0)
    return H / math.sqrt(n)


def _check_block(width: int, block: int) -> None:
    if isinstance(block, bool) or not isinstance(block, int) or block < 1 or block & (block - 1):
        raise ValueError(f"the Hadamard block size must be a power of two, got {block!r}")
    if width % block:
        divisors = [b for b in (512, 256, 128, 64, 32, 16, 8, 4, 2) if width % b == 0]
        raise ValueError(f"a Hadamard block of {block} does not divide the width {width} ({width} = "
                         f"{width // block} x {block} + {width % block}); use a power of two that divides it: "
                         f"{', '.join(map(str, divisors)) or 'none, the width is odd'}")


def block_hadamard(width: int, block: int = 64, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``(width, width)`` block-diagonal matrix of ``width / block`` copies of :func:`hadamard` ``(block)``.

    ``block_hadamard(576, 64)``: nine 64 x 64 Hadamard blocks. A ValueError names the block sizes that fit."""
    _check_block(width, block)
    return torch.block_diag(*[hadamard(block, dtype)] * (width // block))


def apply_block_hadamard(x: torch.Tensor, block: int = 64) -> torch.Tensor:
    """``x @ block_hadamard(x.shape[-1], block)`` without building the big matrix (the online rotation)."""
    width = x.shape[-1]
    _check_block(width, block)
    H = hadamard(block, torch.float32).to(x.device)
    return (x.float().reshape(*x.shape[:-1], width // block, block) @ H).reshape(x.shape).to(x.dtype)


# --- how heavy are the tails ------------------------------------------------------------------------


def kurtosis(x: torch.Tensor) -> float:
    """Pearson kurtosis ``E[(x - mean)^4] / var^2`` of all values of ``x``: 3 for a Gaussian, 1.8 for a
    uniform distribution, in the hundreds for a tensor with a few huge outliers."""
    v = x.detach().double().flatten()
    c = v - v.mean()
    var = c.pow(2).mean()
    return float(c.pow(4).mean() / var.pow(2)) if var > 0 else float("nan")


def max_to_mean(x: torch.Tensor) -> float:
    """``max|x| / mean|x|``: how far the largest value (which sets a max-based scale) is from a typical one."""
    a = x.detach().double().abs()
    return float(a.max() / a.mean()) if a.mean() > 0 else float("nan")


def outlier_stats(x: torch.Tensor) -> dict:
    """``{"kurtosis", "max_to_mean"}`` of a tensor (weights, or activations ``(tokens, features)``)."""
    return {"kurtosis": kurtosis(x), "max_to_mean": max_to_mean(x)}


@torch.no_grad()
def layer_outlier_stats(model: nn.Module, name: str, batches) -> dict:
    """:func:`outlier_stats` of linear layer ``name``'s weight and of its inputs over the token ids ``batches``
    (``(n, seq_len)``): ``{"weight": {...}, "input": {...}}``. Run it on a model before and after
    :func:`rotate_model` to see what the rotation did to that layer."""
    from .calibration import check_batches, observe_linear_inputs

    layer = model.get_submodule(name)
    if not isinstance(layer, nn.Linear):
        raise TypeError(f"{name} is a {type(layer).__name__}, not a linear layer")
    xs: list[torch.Tensor] = []
    device = next(model.parameters()).device
    with observe_linear_inputs(model, lambda _n, x: xs.append(x.float().cpu()), names={name}):
        for row in check_batches(batches):
            model(row[None].to(device), use_cache=False)
    return {"weight": outlier_stats(layer.weight), "input": outlier_stats(torch.cat(xs))}


# --- the online rotation of down_proj's input -------------------------------------------------------


class OnlineHadamardMLP(nn.Module):
    """A Llama MLP whose down_proj reads ``x H`` (block Hadamard, computed at run time) instead of ``x``;
    its weight holds ``W H`` (``H`` is symmetric and orthogonal, so ``(x H)(W H)^T = x W^T``). Keeps the
    attribute names ``gate_proj``/``up_proj``/``down_proj``, so the calibration walks, GPTQ and the W8A8
    conversion find the same layers, and they see the rotated input."""

    def __init__(self, mlp: nn.Module, block: int):
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj, self.act_fn = mlp.gate_proj, mlp.up_proj, mlp.down_proj, mlp.act_fn
        _check_block(self.down_proj.in_features, block)
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act_fn(self.gate_proj(x)) * self.up_proj(x)
        return self.down_proj(apply_block_hadamard(h, self.block))


# --- rotating a model -------------------------------------------------------------------------------


def _rmsnorms(block: nn.Module) -> None:
    for name in ("input_layernorm", "post_attention_layernorm"):
        norm = getattr(block, name, None)
        if norm is None or getattr(norm, "weight", None) is None or getattr(norm, "bias", None) is not None \
                or "RMSNorm" not in type(norm).__name__:
            raise TypeError(f"rotating the residual stream needs RMSNorms without bias (Llama, Mistral, Qwen); "
                            f"{type(block).__name__}.{name} is {type(norm).__name__}")


@torch.no_grad()
def _fuse_norm(norm: nn.Module, layers: list[nn.Linear]) -> None:
    """Fold an RMSNorm's weight into the layers that read it; the norm's weight becomes all ones."""
    fold_scales(norm, layers, norm.weight.detach().float().clone())
    norm.weight.fill_(1.0)  # exactly 1 (w / w may differ from 1 by a rounding, and a zero weight gives 0/0)


@torch.no_grad()
def rotate_input(layer: nn.Linear, Q: torch.Tensor) -> None:
    """The layer now reads ``x Q`` instead of ``x``: ``W -> W Q`` keeps its output (``Q`` orthogonal)."""
    layer.weight.copy_((layer.weight.double() @ Q.double()).to(layer.weight.dtype))


@torch.no_grad()
def rotate_output(layer: nn.Linear, Q: torch.Tensor) -> None:
    """The layer now produces ``y Q`` instead of ``y``: ``W -> Q^T W`` and ``b -> b Q``."""
    layer.weight.copy_((Q.double().T @ layer.weight.double()).to(layer.weight.dtype))
    if layer.bias is not None:
        layer.bias.copy_((layer.bias.double() @ Q.double()).to(layer.bias.dtype))


def fold_rotation(first: nn.Linear, second: nn.Linear, Q: torch.Tensor) -> None:
    """Rotate the space between two linear layers (``second`` reads what ``first`` writes, directly or through
    a residual stream): ``first`` writes ``y Q``, ``second`` reads it back, ``second(first(x))`` is unchanged.
    ``Q``: any orthogonal ``(n, n)`` matrix, ``n = first.out_features = second.in_features``."""
    n = first.out_features
    if Q.shape != (n, n) or second.in_features != n:
        raise ValueError(f"Q must be ({n}, {n}) and second must read {n} features; got Q {tuple(Q.shape)}, "
                         f"second.in_features {second.in_features}")
    rotate_output(first, Q)
    rotate_input(second, Q)


def _untie(model: nn.Module) -> bool:
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    if head is None or head.weight.data_ptr() != emb.weight.data_ptr():
        return False
    head.weight = nn.Parameter(emb.weight.detach().clone(), requires_grad=emb.weight.requires_grad)
    model.config.tie_word_embeddings = False
    return True


@torch.no_grad()
def rotate_model(model: nn.Module, block: int = 64, per_head: bool = False, online_down: bool = False,
                 seed: int | None = None) -> dict:
    """Rotate a Llama-style model in place so that it computes the same function (R1; R2 with
    ``per_head``; R4 with ``online_down``: see the module docstring).

    ``block``: the Hadamard block (a power of two dividing the hidden size, the intermediate size for
    ``online_down`` and the head dimension for ``per_head`` up to its own size). ``seed``: multiply the
    residual rotation by random signs (QuaRot's randomized Hadamard, ``Q = diag(+-1) H``); ``None``: the
    plain block Hadamard, llm-compressor's ``transform_type="hadamard"``.

    Returns ``{"Q": the residual rotation (hidden, hidden) float64, "untied": bool}``. Check with logits:
    the rotated model's equal the original's to float error (fp32: ~1e-5 relative).
    """
    layers = decoder_layers(model)
    hidden = model.config.hidden_size
    _check_block(hidden, block)
    for blk in layers:
        _rmsnorms(blk)
    head_dim = getattr(model.config, "head_dim", None) or hidden // model.config.num_attention_heads
    if online_down:
        _check_block(model.config.intermediate_size, block)
    if per_head:
        _check_block(head_dim, min(head_dim, block))  # everything is checked before the model is changed
    Q = block_hadamard(hidden, block)
    if seed is not None:
        signs = torch.randint(0, 2, (hidden,), generator=torch.Generator().manual_seed(seed)) * 2 - 1
        Q = signs.double().view(-1, 1) * Q
    Q = Q.to(next(model.parameters()).device)
    untied = _untie(model)
    emb = model.get_input_embeddings()
    emb.weight.copy_((emb.weight.double() @ Q).to(emb.weight.dtype))
    for blk in layers:
        attn, mlp = blk.self_attn, blk.mlp
        _fuse_norm(blk.input_layernorm, [attn.q_proj, attn.k_proj, attn.v_proj])
        _fuse_norm(blk.post_attention_layernorm, [mlp.gate_proj, mlp.up_proj])
        for layer in (attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj):
            rotate_input(layer, Q)
        rotate_output(attn.o_proj, Q)
        rotate_output(mlp.down_proj, Q)
        if per_head:
            Hh = hadamard(min(head_dim, block), torch.float64).to(Q.device)
            Hh = torch.block_diag(*[Hh] * (head_dim // Hh.shape[0]))
            kv = attn.v_proj.out_features // head_dim
            rotate_output(attn.v_proj, torch.block_diag(*[Hh] * kv))           # each value head: v -> v H
            rotate_input(attn.o_proj, torch.block_diag(*[Hh] * (attn.o_proj.in_features // head_dim)))
        if online_down:
            rotate_input(mlp.down_proj, block_hadamard(mlp.down_proj.in_features, block).to(Q.device))
            blk.mlp = OnlineHadamardMLP(mlp, block)
    head = model.get_output_embeddings()
    _fuse_norm(model.model.norm, [head])
    rotate_input(head, Q)
    return {"Q": Q.cpu(), "untied": untied}
