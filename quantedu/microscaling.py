"""MXFP4 and NVFP4 as weight quantizers in torch: choose the block scales, round to E2M1, dequantize.

Both formats store every weight as a 4-bit E2M1 number (0, 0.5, 1, 1.5, 2, 3, 4, 6 and negatives) times a scale
shared by a small group of consecutive weights of a row (``w`` is ``(out_features, in_features)``):

* **MXFP4** (OCP Microscaling Formats v1.0): groups of 32, scale ``2**E`` stored as one E8M0 byte.
* **NVFP4** (NVIDIA): groups of 16, scale ``s`` stored as FP8 E4M3, divided by one fp32 *global* scale per tensor
  ``g = 448 * 6 / amax(w)`` that lifts the block scales into E4M3's range (without it the ``amax / 6`` of a
  typical LLM weight group, ~0.01, lands among E4M3's subnormals, which have fewer significant bits: ggml's GGUF
  NVFP4 has no global scale). Value = ``E2M1 * s / g``.

The scale of a group is chosen from its largest magnitude ``amax``, and *how it is rounded* is a real choice
(:data:`SCALE_ROUNDINGS`, measured by :func:`scale_rounding_effect`). For MXFP4:

* ``"floor"``: ``E = floor(log2 amax) - 2``, so amax lands in [4, 8) x 2**E and everything above 6 x 2**E clips
  to 6 (up to 25 % off). The OCP MX spec, ggml / llama.cpp, gguf-py.
* ``"round"``: as floor, one higher when amax's mantissa is >= 1.75 (amax rounded to one mantissa bit first);
  clips only in (6, 7) x 2**E. llm-compressor / compressed-tensors 0.19 and vLLM's reference.
* ``"ceil"``: ``E = ceil(log2(amax / 6))``: nothing clips, but the step is up to 2x coarser ("round-up").

NVFP4 block scales ``amax / 6 * g`` are rounded to E4M3 ``"nearest_even"`` (NVIDIA, llm-compressor), ``"up"``
(nothing clips) or ``"ggml"`` (ggml's UE4M3 rounding, :func:`quantedu.gguf.fp4.fp32_to_ue4m3`). E2M1 values round to
nearest, ties to even (:func:`quantedu.fp.encode`); ggml breaks ties toward zero instead (see :mod:`quantedu.gguf.fp4`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from . import fp
from .checks import require_finite

SCALE_ROUNDINGS = {"mxfp4": ("floor", "round", "ceil"), "nvfp4": ("nearest_even", "up", "ggml")}
E2M1_MAX, E4M3_MAX = 6.0, 448.0


@dataclass(frozen=True)
class FP4Config:
    """``fmt``: ``"mxfp4"`` or ``"nvfp4"``; ``group_size`` (32 / 16 by the formats' definitions; other sizes are
    experiments); ``scale_rounding`` (see the module docstring); ``global_scale`` (NVFP4 only: the per-tensor fp32
    scale; False is ggml's GGUF NVFP4, which has none)."""

    fmt: str = "mxfp4"
    group_size: int | None = None
    scale_rounding: str | None = None
    global_scale: bool = True

    def __post_init__(self):
        if self.fmt not in SCALE_ROUNDINGS:
            raise ValueError(f"fmt must be one of {list(SCALE_ROUNDINGS)}, got {self.fmt!r}")
        if self.group_size is None:
            object.__setattr__(self, "group_size", 32 if self.fmt == "mxfp4" else 16)
        if self.scale_rounding is None:
            object.__setattr__(self, "scale_rounding", SCALE_ROUNDINGS[self.fmt][0])
        if self.scale_rounding not in SCALE_ROUNDINGS[self.fmt]:
            raise ValueError(f"{self.fmt} scale_rounding must be one of {SCALE_ROUNDINGS[self.fmt]}, "
                             f"got {self.scale_rounding!r}")
        if not isinstance(self.group_size, int) or self.group_size < 1:
            raise ValueError(f"group_size must be a positive integer, got {self.group_size!r}")

    @property
    def bits_per_weight(self) -> float:
        """4 bits + one 8-bit scale per group (the per-tensor fp32 scale of NVFP4 is negligible)."""
        return 4 + 8 / self.group_size

    def label(self) -> str:
        g = "" if self.fmt == "mxfp4" or self.global_scale else " no-global"
        return f"{self.fmt.upper()} g{self.group_size} {self.scale_rounding}{g}"


MXFP4 = FP4Config("mxfp4")
NVFP4 = FP4Config("nvfp4")


class FP4Weight(NamedTuple):
    """A quantized weight: E2M1 ``codes`` ``(rows, cols)`` uint8, scale ``scale_codes`` ``(rows, groups)`` uint8
    (E8M0 or E4M3), the NVFP4 ``global_scale`` (float32 ``(1,)``, 1.0 without one) and the config."""

    codes: torch.Tensor
    scale_codes: torch.Tensor
    global_scale: torch.Tensor
    config: FP4Config

    def dequantize(self) -> torch.Tensor:
        return dequantize(self.codes, group_scales(self.scale_codes, self.global_scale, self.config), self.config)


def _groups(w: torch.Tensor, cfg: FP4Config) -> torch.Tensor:
    if w.ndim != 2:
        raise ValueError(f"expected a 2-D weight (out_features, in_features), got shape {tuple(w.shape)}")
    if w.shape[1] % cfg.group_size:
        raise ValueError(f"{cfg.fmt.upper()} groups of {cfg.group_size} must divide the {w.shape[1]} columns of a "
                         f"weight {tuple(w.shape)}; keep such a layer in higher precision (or pick a group size "
                         f"that divides {w.shape[1]})")
    return w.reshape(w.shape[0], -1, cfg.group_size)


def mx_exponent(amax: torch.Tensor, rounding: str = "floor") -> torch.Tensor:
    """The MX scale exponent ``E`` (scale ``2**E``) of group maxima ``amax`` (int64), see the module docstring.
    Zero groups get E8M0 code 0 (``E = -127``); exponents are clamped to E8M0's codes 0..254."""
    a = amax.detach().double().cpu().numpy()
    mant, exp = np.frexp(a)  # exact: amax = (2 * mant) * 2**(exp - 1), 2 * mant in [1, 2)
    k = exp.astype(np.int64) - 1
    if rounding == "floor":
        e = k - 2
    elif rounding == "round":
        e = k - 2 + (2 * mant >= 1.75)
    elif rounding == "ceil":
        e = k - 2 + (2 * mant > 1.5)
    else:
        raise ValueError(f"MX scale rounding must be one of {SCALE_ROUNDINGS['mxfp4']}, got {rounding!r}")
    e = np.where(a > 0, np.clip(e, -127, 127), -127)
    return torch.from_numpy(e)


def global_scale_of(tensor_amax, cfg: FP4Config) -> torch.Tensor:
    """NVFP4's ``g = 448 * 6 / amax`` (float32, shape (1,)); 1.0 for MXFP4, without a global scale or for zeros."""
    amax = torch.as_tensor(tensor_amax, dtype=torch.float32).reshape(1)
    if cfg.fmt == "mxfp4" or not cfg.global_scale or float(amax) == 0:
        return torch.ones(1)
    # llm-compressor writes ``448 * 6 / amax``; torch evaluates a Python number divided by a tensor as
    # ``amax.reciprocal() * 2688`` (Tensor.__rtruediv__): two float32 roundings, which we keep to agree bit for bit.
    return torch.reciprocal(amax) * (E4M3_MAX * E2M1_MAX)


def choose_scales(w: torch.Tensor, cfg: FP4Config = MXFP4, tensor_amax=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale_codes (rows, groups) uint8, global_scale (1,))`` for ``w``.

    ``tensor_amax``: the amax the NVFP4 global scale comes from; default ``w``'s own. llm-compressor shares one
    global scale among layers that vLLM fuses (q/k/v, gate/up): pass their common amax to match it.
    """
    require_finite(w, f"{cfg.fmt.upper()} input")
    amax = _groups(w.detach().float(), cfg).abs().amax(dim=-1)
    if cfg.fmt == "mxfp4":
        return (mx_exponent(amax, cfg.scale_rounding) + 127).to(torch.uint8), torch.ones(1)
    g = global_scale_of(w.detach().float().abs().amax() if tensor_amax is None else tensor_amax, cfg)
    target = g * (amax / E2M1_MAX)  # the same float32 operations as compressed-tensors
    return fp.ue4m3_encode(target, rounding=cfg.scale_rounding), g


def group_scales(scale_codes: torch.Tensor, global_scale: torch.Tensor, cfg: FP4Config) -> torch.Tensor:
    """The float32 multiplier of every group ``(rows, groups)``: ``2**E`` (MXFP4) or ``s / g`` (NVFP4)."""
    if cfg.fmt == "mxfp4":
        return fp.e8m0_decode(scale_codes)
    return fp.ue4m3_decode(scale_codes, ggml=cfg.scale_rounding == "ggml") / global_scale.float()


def round_to_fp4(x: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(codes, dequantized)`` of ``x`` on the E2M1 grid times ``scale`` (broadcast): ``x / scale`` rounded to
    nearest, ties to even, clamped to +-6. A zero scale (an all-zero group, or an NVFP4 group far below the
    tensor's largest) gives code 0."""
    x, scale = x.detach().float(), scale.float()
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = fp.encode(torch.where(scale > 0, x / safe, torch.zeros_like(x)), fp.E2M1)
    return codes, fp.decode(codes, fp.E2M1) * scale


def quantize(w: torch.Tensor, scales: torch.Tensor, cfg: FP4Config = MXFP4) -> torch.Tensor:
    """E2M1 codes ``(rows, cols)`` of ``w`` with one scale per group (``scales`` ``(rows, groups)``)."""
    return round_to_fp4(_groups(w, cfg), scales[..., None])[0].reshape(w.shape)


def dequantize(codes: torch.Tensor, scales: torch.Tensor, cfg: FP4Config = MXFP4) -> torch.Tensor:
    """``E2M1(codes) * scale`` as float32 ``(rows, cols)``."""
    vals = _groups(fp.decode(codes, fp.E2M1), cfg)
    return (vals * scales.float()[..., None]).reshape(codes.shape)


def quantize_fp4(w: torch.Tensor, cfg: FP4Config = MXFP4, tensor_amax=None) -> FP4Weight:
    """Scales and codes of ``w`` in one call; ``.dequantize()`` gives the weight the model computes with."""
    scale_codes, g = choose_scales(w, cfg, tensor_amax)
    return FP4Weight(quantize(w, group_scales(scale_codes, g, cfg), cfg), scale_codes, g, cfg)


def fake_quantize(w: torch.Tensor, cfg: FP4Config = MXFP4, tensor_amax=None) -> torch.Tensor:
    """``w`` rounded onto the FP4 grid, in ``w``'s dtype."""
    return quantize_fp4(w, cfg, tensor_amax).dequantize().to(w.dtype)


def scale_rounding_effect(weights: dict, configs=None):
    """For each named weight and each scale rounding: the relative squared error ``|W - Q(W)|^2 / |W|^2``, the
    share of weights beyond the grid (``|w| > 6 x scale``: they clip to +-6),
    and the share of groups whose scale differs from the first rounding's. A DataFrame, one row per pair."""
    import pandas as pd

    if configs is None:
        configs = [FP4Config("mxfp4", scale_rounding=r) for r in SCALE_ROUNDINGS["mxfp4"]]
        configs += [FP4Config("nvfp4", scale_rounding=r) for r in SCALE_ROUNDINGS["nvfp4"]]
        configs += [FP4Config("nvfp4", scale_rounding="nearest_even", global_scale=False)]
    rows = []
    for name, w in weights.items():
        w = torch.as_tensor(w).detach().float()
        first = {}
        for cfg in configs:
            q = quantize_fp4(w, cfg)
            scales = group_scales(q.scale_codes, q.global_scale, cfg)
            wg = _groups(w, cfg)
            clipped = (wg.abs() > E2M1_MAX * scales[..., None]).float().mean().item()
            err = (q.dequantize() - w).pow(2).sum() / w.pow(2).sum()
            base = first.setdefault(cfg.fmt, scales)
            rows.append({"tensor": name, "format": cfg.fmt.upper(), "scale_rounding": cfg.scale_rounding,
                         "global_scale": cfg.fmt == "nvfp4" and cfg.global_scale,
                         "rel_sq_error": float(err), "clipped_share": clipped,
                         "scale_changed_share": float((scales != base).float().mean())})
    return pd.DataFrame(rows)
