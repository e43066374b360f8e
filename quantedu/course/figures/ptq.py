"""Notebook 02's figures: a group of real weights on its grid (symmetric, asymmetric, and what one outlier
does to it), and the RTN sweep of bits x group size with the noise of each point."""
from __future__ import annotations

import math

import torch
from torch import nn

from ...primitives import QuantConfig, choose_qparams, quantize


def telling_groups(model, group_size: int = 64, skip=("lm_head",)) -> dict:
    """Three real groups of ``group_size`` weights of ``model``'s linear layers, each as ``{"layer", "row",
    "col", "score", "w"}``: the most **skewed** (``|max + min| / (max - min)``, 1 = all of one sign), the one
    whose largest weight stands farthest out (the **outlier**: max |w| / std of the group) and a **typical**
    one (the median of that ratio). Layers whose rows do not split into whole groups are left out."""
    found = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and name.split(".")[-1] not in skip and m.in_features % group_size == 0:
            g = m.weight.detach().float().reshape(m.out_features, -1, group_size)
            hi, lo = g.amax(-1), g.amin(-1)
            found.append((name, g, {"outlier": g.abs().amax(-1) / g.std(-1).clamp_min(1e-12),
                                    "skewed": (hi + lo).abs() / (hi - lo).clamp_min(1e-12)}))
    if not found:
        raise ValueError(f"no linear layer has rows that split into groups of {group_size}: choose a group size "
                         "that divides the layers' input widths")

    def nearest(key: str, target: float) -> dict:
        best = None
        for name, g, scores in found:
            gap = (scores[key] - target).abs().flatten()
            i = int(gap.argmin())
            if best is None or gap[i] < best[0]:
                best = (float(gap[i]), name, g, scores[key], *divmod(i, g.shape[1]))
        _, name, g, score, row, col = best
        return {"layer": name, "row": row, "col": col * group_size, "score": float(score[row, col]), "w": g[row, col]}

    every = {k: torch.cat([s[k].flatten() for _, _, s in found]) for k in ("outlier", "skewed")}
    return {"skewed": nearest("skewed", float(every["skewed"].max())),
            "outlier": nearest("outlier", float(every["outlier"].max())),
            "typical": nearest("outlier", float(every["outlier"].median()))}


def grid_of(w: torch.Tensor, bits: int, symmetric: bool) -> dict:
    """One group ``w`` on its ``bits``-bit grid (the package's choose_qparams/quantize, one group): the
    levels, the codes, how many levels the weights use, and the relative squared error."""
    cfg = QuantConfig(bits, w.numel(), symmetric=symmetric)
    s, z = choose_qparams(w[None], cfg)
    q = quantize(w[None], s, z, cfg)[0]
    levels = s[0, 0] * (torch.arange(2**bits) - z[0, 0])
    deq = levels[q.long()]
    return {"levels": levels, "codes": q, "used": int(q.unique().numel()), "step": float(s[0, 0]),
            "rel_error": float(((deq - w) ** 2).sum() / (w**2).sum())}


def plot_group_grids(rows: list, bits: int, axes=None):
    """``rows``: (title, group weights, symmetric) per panel. Each weight as a dot, each grid level as a line,
    the levels that no weight uses dashed: a symmetric grid wastes the side a group does not reach, and one
    outlier stretches the grid so the other weights share a few levels."""
    import matplotlib.pyplot as plt

    if axes is None:
        axes = plt.subplots(len(rows), 1, figsize=(9, 1.25 * len(rows) + 0.6), sharex=False)[1]
    for ax, (title, w, symmetric) in zip(axes, rows):
        g = grid_of(w, bits, symmetric)
        used = set(g["codes"].long().tolist())
        for k, v in enumerate(g["levels"].tolist()):
            ax.axvline(v, color="tab:red" if k in used else "lightgray", lw=1.2, ls="-" if k in used else "--")
        jitter = torch.linspace(-0.3, 0.3, w.numel())[torch.randperm(w.numel(), generator=torch.Generator().manual_seed(0))]
        ax.scatter(w.numpy(), jitter.numpy(), s=8, color="k", zorder=3)
        ax.set_yticks([])
        ax.set_ylim(-0.6, 0.6)
        ax.set_title(f"{title}: {g['used']} of {2**bits} levels used; step {g['step']:.3g}, the median |w| "
                     f"{w.abs().median():.3g}", fontsize=9, loc="left")
    axes[-1].set_xlabel("weight value (red: grid levels in use; dashed: levels no weight uses)")
    plt.tight_layout()
    return axes


def _group_label(group) -> str:
    return "per-channel" if group == "channel" else f"groups of {group}"


def plot_rtn_sweep(sweep, axes=None):
    """``sweep``: rows with ``bits/weight``, ``group`` and a ``report`` (:class:`~quantedu.evaluate.QualityReport`).
    Left: perplexity over the baseline with its 95% interval (log scale; 1 = the baseline); right: mean KL
    divergence with its 95% interval. One line per group size."""
    import matplotlib.pyplot as plt

    axes = axes if axes is not None else plt.subplots(1, 2, figsize=(11, 3.8))[1]
    for group, df in sweep.groupby("group", sort=False):
        x = df["bits/weight"].to_numpy()
        d = [r.delta_nll for r in df["report"]]
        ratio = [math.exp(i.mean) for i in d]
        axes[0].errorbar(x, ratio, yerr=[[r - math.exp(i.low) for r, i in zip(ratio, d)],
                                         [math.exp(i.high) - r for r, i in zip(ratio, d)]],
                         marker="o", capsize=3, label=_group_label(group))
        k = [r.kld for r in df["report"]]
        axes[1].errorbar(x, [i.mean for i in k], yerr=[[min(i.mean - i.low, 0.999 * i.mean) for i in k],
                                                       [i.high - i.mean for i in k]],
                         marker="o", capsize=3, label=_group_label(group))
    axes[0].axhline(1, color="k", ls="--", lw=1, label="the baseline")
    axes[0].set(yscale="log", xlabel="bits per weight (scales and zero points included)",
                ylabel="perplexity / baseline", title="RTN: perplexity, 95% interval")
    axes[1].set(yscale="log", xlabel="bits per weight (scales and zero points included)",
                ylabel="mean KLD from the baseline (nats)", title="RTN: KL divergence, 95% interval")
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    return axes


def plot_in_and_out_of_domain(by_windows: dict, ax=None):
    """``by_windows``: window set -> reports of the same models (e.g. {"eval": [...], "heldout": [...]}).
    Grouped bars of each model's perplexity over its baseline on each set, with the 95% intervals: whether a
    method trained or calibrated on one kind of text keeps its gain on another."""
    import textwrap

    import matplotlib.pyplot as plt
    import numpy as np

    ax = ax or plt.subplots(figsize=(7, 3.6))[1]
    sets = list(by_windows)
    names = [r.name for r in by_windows[sets[0]]]
    width = 0.8 / len(sets)
    for k, purpose in enumerate(sets):
        d = [r.delta_nll for r in by_windows[purpose]]
        mid = np.array([100 * math.expm1(i.mean) for i in d])
        err = [mid - [100 * math.expm1(i.low) for i in d], [100 * math.expm1(i.high) for i in d] - mid]
        ax.bar(np.arange(len(names)) + (k - (len(sets) - 1) / 2) * width, mid, width, yerr=err, capsize=3,
               label=f"{purpose} windows")
    ax.set_xticks(range(len(names)), [textwrap.fill(n, 22) for n in names], fontsize=8)
    ax.set(ylabel="perplexity over baseline (%)", title="the same models on two kinds of text (95% intervals)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return ax
