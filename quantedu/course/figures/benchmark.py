"""Notebook 07's figures: quality per byte with error bars, speed with a real kernel, where the verdicts come from.

Each function draws measured :class:`quantedu.course.comparison.Row` objects (or verdicts) on the axes it is given
(or new ones) and returns them; the notebook states the takeaway under the figure.
"""
from __future__ import annotations

import math

import numpy as np

ENGINE_STYLE = {"llama.cpp": ("o", "tab:blue"), "vLLM": ("s", "tab:orange"), "torch": ("D", "tab:gray")}
Z95 = 1.96


def plot_size_vs_kld(rows, ax=None, title: str = "quality per byte: mean KL divergence from the baseline"):
    """Weights (MB) against mean KLD (log axis) with 95% error bars, one marker shape per engine; where a row has a
    held-out report, a hollow marker shows its KLD on the other text (same file, other source)."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(7.5, 4))[1]
    shown = set()
    rows = sorted((r for r in rows if r.engine != "torch"), key=lambda r: r.memory_mb)  # the baseline: KLD 0
    for i, r in enumerate(rows):
        marker, color = ENGINE_STYLE.get(r.engine, ("x", "k"))
        k = r.report.kld
        ax.errorbar(r.memory_mb, k.mean, yerr=[[min(Z95 * k.se, 0.9 * k.mean)], [Z95 * k.se]], fmt=marker,
                    color=color, capsize=3, label=None if r.engine in shown else r.engine)
        shown.add(r.engine)
        # neighbours in size get labels at staggered heights, so that a cluster of 4-bit files stays readable
        ax.annotate(r.variant, (r.memory_mb, k.mean), textcoords="offset points", xytext=(7, 6 - 10 * (i % 3)),
                    fontsize=7, va="center")
        if r.heldout is not None:
            h = r.heldout.kld.mean
            ax.plot([r.memory_mb, r.memory_mb], [k.mean, h], color=color, lw=0.8, alpha=0.6)
            ax.scatter([r.memory_mb], [h], marker=marker, facecolors="none", edgecolors=color,
                       label=None if "held-out" in shown else "same row, held-out text (code)")
            shown.add("held-out")
    ax.set_yscale("log")
    ax.set(xlabel="weights the engine loads (MB)", ylabel="mean KLD per token (nats, log)", title=title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return ax


def plot_speed(rows, hardware: str = "cpu", clients=(1, 8), ax=None):
    """Tokens/s measured with each engine's own kernel (1 thread): one request (the median of its repeated timings,
    their range as an error bar), and ``clients[-1]`` served together; rows with no kernel measured here are listed
    as n/a."""
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.engine != "torch"]
    ax = ax or plt.subplots(figsize=(7.5, 0.45 * len(rows) + 1.2))[1]
    y = np.arange(len(rows))
    h = 0.8 / len(clients)
    for j, k in enumerate(clients):
        vals = [r.tok_s(hardware, k) for r in rows]
        colors = [ENGINE_STYLE.get(r.engine, ("x", "k"))[1] for r in rows]
        spans = [r.tok_s_range(hardware, k) for r in rows]  # repeated timings: their range as an error bar
        xerr = np.array([[v - sp[0], sp[1] - v] if sp else [0, 0] for v, sp in zip(vals, spans)]).T
        ax.barh(y + (j - (len(clients) - 1) / 2) * h, np.nan_to_num(vals), height=h, color=colors,
                alpha=1.0 if k == 1 else 0.5, label=f"{k} request{'s' * (k > 1)} at once",
                xerr=np.nan_to_num(xerr) if any(spans) else None, error_kw={"lw": 0.8, "capsize": 2})
        for yy, v in zip(y, vals):
            if v != v:
                ax.annotate("n/a" if k == 1 else "not measured", (0, yy + (j - (len(clients) - 1) / 2) * h),
                            xytext=(3, 0), textcoords="offset points", va="center", fontsize=7, color="gray")
    from ..comparison import ran
    ax.set_yticks(y, [f"{r.variant} ({ran(r)})" for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set(xlabel=f"tokens/s on this {hardware.upper()} (1 thread per engine)", title="speed with a real kernel")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3, axis="x")
    return ax


def plot_verdicts(rows, pairs, axes=None):
    """Where the verdicts come from. Left: each row's perplexity change over the baseline with its 95% interval (the
    table's verdict column: an interval that crosses 0 is a tie). Right: the paired KLD difference of each compared
    pair (``pairs``: ``[(a_row, b_row), ...]``, difference a - b) with its interval: left of 0, ``a`` is better."""
    import matplotlib.pyplot as plt

    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(11, 0.42 * max(len(rows), len(pairs)) + 1.6))
    left, right = axes
    rows = [r for r in rows if r.engine != "torch"]
    for i, r in enumerate(rows):
        d = r.report.delta_nll
        lo, mid, hi = (100 * math.expm1(x) for x in (d.low, d.mean, d.high))
        left.plot([lo, hi], [i, i], color="tab:gray" if lo <= 0 <= hi else "tab:red", lw=3)
        left.plot(mid, i, "k|", ms=10)
    left.axvline(0, color="k", lw=0.8)
    left.set_yticks(range(len(rows)), [r.variant for r in rows], fontsize=8)
    left.invert_yaxis()
    left.set(xlabel="perplexity over the baseline (%), 95% interval", title="each row against the baseline")
    for i, (a, b) in enumerate(pairs):
        v = a.report.verdict(b.report, metric="kld")
        iv = v.interval
        color = "tab:gray" if v.tie else ("tab:green" if v.winner == a.variant else "tab:red")
        right.plot([iv.low, iv.high], [i, i], color=color, lw=3)
        right.plot(iv.mean, i, "k|", ms=10)
        right.annotate("tie" if v.tie else f"{v.winner} better", (iv.high, i), xytext=(4, 0),
                       textcoords="offset points", va="center", fontsize=7)
    right.axvline(0, color="k", lw=0.8)
    right.set_yticks(range(len(pairs)), [f"{a.variant} - {b.variant}" for a, b in pairs], fontsize=8)
    right.invert_yaxis()
    right.set(xlabel="paired difference of KLD per token (nats), 95% interval", title="pairs the rules compare")
    for ax in axes:
        ax.grid(alpha=0.3, axis="x")
    return axes


__all__ = ["plot_size_vs_kld", "plot_speed", "plot_verdicts"]
