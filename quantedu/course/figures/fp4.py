"""Figures of notebook 08 (FP8 and FP4): weights against the E2M1 and INT4 levels, error against bits per weight,
and the scale-rounding choices."""
from __future__ import annotations

import numpy as np
import torch


def group_normalized(w: torch.Tensor, group: int = 32) -> np.ndarray:
    """Every weight divided by the largest magnitude of its group of ``group`` consecutive weights of a row: the
    number a 4-bit grid whose top level sits on the group's largest weight must represent (in [-1, 1])."""
    g = w.detach().float().reshape(w.shape[0], -1, group)
    amax = g.abs().amax(-1, keepdim=True)
    return (g / torch.where(amax > 0, amax, torch.ones_like(amax))).reshape(-1).numpy()


def plot_levels(x: np.ndarray, levels: dict, ax=None, title: str = ""):
    """Histogram of ``|x|`` (group-normalized weights) with the positive levels of each grid (``{label: values in
    [0, 1]}``) drawn as ticks under it."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(8, 3.2))[1]
    ax.hist(np.abs(x), bins=120, range=(0, 1), density=True, color="0.75", label="|w| / group max")
    top = ax.get_ylim()[1]
    for k, (label, v) in enumerate(levels.items()):
        y = -top * (0.08 + 0.1 * k)
        ax.plot(v, np.full(len(v), y), "|", markersize=12, markeredgewidth=2, label=label)
    ax.set_ylim(-top * (0.1 + 0.1 * len(levels)), top)
    ax.set(xlabel="|weight| / largest |weight| of its group of 32", ylabel="density", title=title)
    ax.legend(fontsize=8, loc="upper right")
    return ax


def plot_error_vs_bits(df, ax=None, title: str = "same tensors, every grid by round-to-nearest"):
    """One point per (tensor, grid) of a table with ``grid``, ``bits_per_weight``, ``rel_sq_error``: the error
    each grid pays for its bits (log scale)."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(7, 3.4))[1]
    for grid, part in df.groupby("grid", sort=False):
        ax.plot(part["bits_per_weight"], part["rel_sq_error"], "o", alpha=0.7, label=grid)
    ax.set_yscale("log")
    ax.set(xlabel="bits per weight (codes + scales)", ylabel="|W - Q(W)|² / |W|²", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return ax


def plot_scale_rounding(df, ax=None):
    """Bars of the mean relative squared error of each (format, scale rounding) of
    :func:`quantedu.microscaling.scale_rounding_effect`, annotated with the share of weights clipped to +-6."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(8, 3.2))[1]
    agg = df.groupby(["format", "scale_rounding", "global_scale"], sort=False)[["rel_sq_error", "clipped_share"]].mean()
    labels = [f"{f}\n{r}{'' if f == 'MXFP4' or g else ' (no g)'}" for f, r, g in agg.index]
    bars = ax.bar(range(len(agg)), agg["rel_sq_error"], color=["C0" if f == "MXFP4" else "C1" for f, _, _ in agg.index])
    for b, c in zip(bars, agg["clipped_share"]):
        ax.annotate(f"{100 * c:.2f}% clip", (b.get_x() + b.get_width() / 2, b.get_height()), ha="center",
                    va="bottom", fontsize=7)
    ax.set_xticks(range(len(agg)), labels, fontsize=8)
    ax.set(ylabel="mean |W - Q(W)|² / |W|²", title="the scale's rounding rule, same weights")
    return ax
