"""Notebook 04's pictures: a real layer's per-channel activation magnitudes with AWQ's salient channels marked
(beside the weights' own magnitudes), and the scale search's loss against alpha."""
from __future__ import annotations

import torch


def plot_channel_magnitudes(x_mean: torch.Tensor, w_mean: torch.Tensor, frac: float = 0.01, title: str = ""):
    """Top: mean |activation| per input channel, the top ``frac`` marked (AWQ's salient channels). Bottom:
    mean |weight| of the same input channels, its own top ``frac`` marked: two different sets of channels."""
    import matplotlib.pyplot as plt

    k = max(1, int(frac * x_mean.numel()))
    by_x, by_w = x_mean.topk(k).indices, w_mean.topk(k).indices
    fig, (a, b) = plt.subplots(2, 1, figsize=(10, 4.2), sharex=True)
    ch = torch.arange(x_mean.numel())
    for ax, v, top, other, what in ((a, x_mean, by_x, by_w, "mean |activation|"), (b, w_mean, by_w, by_x, "mean |weight|")):
        ax.bar(ch, v, width=1.0, color="#bbbbbb")
        ax.scatter(top, v[top], color="tab:red", s=18, zorder=3, label=f"top {frac:.0%} by this measure")
        ax.scatter(other, v[other], facecolors="none", edgecolors="tab:blue", s=30, zorder=3,
                   label=f"top {frac:.0%} by the other measure")
        ax.set_ylabel(what)
        ax.legend(fontsize=7, loc="upper right")
    b.set_xlabel("input channel")
    if title:
        a.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_scale_search(alphas, curves: dict, ax=None, title: str = ""):
    """The scale search: output error against alpha (``s = s_x ** alpha``), one curve per label (e.g. all the
    calibration tokens vs one sequence), each minimum marked; alpha = 0 is plain round-to-nearest."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(6.5, 3.2))[1]
    for label, losses in curves.items():
        rel = [x / losses[0] for x in losses]
        line = ax.plot(alphas, rel, "o-", label=label)[0]
        best = min(range(len(rel)), key=rel.__getitem__)
        ax.plot([alphas[best]], [rel[best]], "*", ms=14, color=line.get_color())
    ax.axhline(1.0, color="k", lw=0.6, ls=":")
    ax.set(xlabel="alpha   (s = s_x ** alpha; 0 = round to nearest)", ylabel="output error / RTN's", title=title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return ax


__all__ = ["plot_channel_magnitudes", "plot_scale_search"]
