"""Notebook 00's figures: a baseline belongs to its windows; an interval narrows as text grows; why one
forward pass over many tokens (prefill) runs at far more tokens/s than one token at a time (decode)."""
from __future__ import annotations

import math

import numpy as np


def window_perplexities(baseline) -> np.ndarray:
    """Perplexity of each window of a :class:`~quantedu.evaluate.Baseline` (its scored positions)."""
    nll = -baseline.logprobs.gather(-1, baseline.targets.long().unsqueeze(-1))[..., 0].double()
    return np.exp(nll.mean(dim=1).numpy())


def plot_baselines(entries: dict, ax=None, title: str = "one model, several baselines"):
    """``entries``: label -> (perplexity of the set, per-window perplexities): a bar per set, its windows as
    dots (how much one passage differs from another), the set's number on top."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(8, 3.4))[1]
    for x, (label, (ppl, windows)) in enumerate(entries.items()):
        ax.bar(x, ppl, color="tab:blue", alpha=0.35)
        ax.scatter(np.full(len(windows), x) + np.linspace(-0.15, 0.15, len(windows)), windows, s=14, color="k",
                   zorder=3, label="one window" if x == 0 else None)
        ax.annotate(f"{ppl:.2f}", (x, 0), ha="center", va="bottom", fontsize=9, xytext=(0, 3),
                    textcoords="offset points", fontweight="bold")
    ax.set_xticks(range(len(entries)), list(entries), fontsize=8)
    ax.set(ylabel="baseline perplexity", title=title)
    ax.legend(fontsize=8)
    return ax


def plot_interval_vs_text(reports, axes=None):
    """For each report (a panel each: their scales differ), perplexity over the baseline (%) with its 95%
    interval, scored on the first 1, 2, ... windows: the interval narrows as the text grows (about as
    1/sqrt(tokens)); where it still holds zero the rule says "a tie at this much text"."""
    import matplotlib.pyplot as plt

    from ...verdict import paired_interval

    if axes is None:
        axes = plt.subplots(1, len(reports), figsize=(5 * len(reports), 3.3), squeeze=False)[1][0]
    for ax, r in zip(axes, reports):
        diff = r.per_token["nll"] - r.per_token["nll_base"]
        ivs = [paired_interval(diff[:n]) for n in range(1, diff.shape[0] + 1)]
        xs = [iv.tokens for iv in ivs]
        mid = [100 * math.expm1(iv.mean) for iv in ivs]
        ax.errorbar(xs, mid, yerr=[[m - 100 * math.expm1(iv.low) for m, iv in zip(mid, ivs)],
                                   [100 * math.expm1(iv.high) - m for m, iv in zip(mid, ivs)]],
                    marker="o", capsize=4, color="tab:blue")
        ax.axhline(0, color="k", lw=1, ls="--", label="the baseline")
        ax.set_xscale("log")
        ax.set_xticks(xs, [f"{x:,}" for x in xs], fontsize=8)
        ax.minorticks_off()
        ax.set(xlabel="tokens scored (the first 1, 2, ... windows)", ylabel="perplexity over baseline (%)",
               title=f"{r.name}: the 95% interval")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    plt.tight_layout()
    return axes


def plot_forward_rates(rates: list[dict], speed: dict, weight_bytes: float, ax=None):
    """Tokens/s of one forward pass against the tokens it processes (:func:`quantedu.evaluate.forward_rates`),
    with the measured prefill and decode marked, and the rate at which reading every weight once per pass
    would cap a pass of one token (``weight_bytes`` at the decode's measured bandwidth)."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(7, 3.6))[1]
    n = [r["tokens"] for r in rates]
    ax.plot(n, [r["tokens_per_s"] for r in rates], marker="o", label="one forward pass over n tokens")
    ax.scatter([speed["prompt_tokens"]], [speed["prefill_tokens_per_s"]], s=90, marker="*", color="tab:green",
               zorder=3, label=f"prefill ({speed['prompt_tokens']} tokens, one pass)")
    ax.scatter([1], [speed["decode_tokens_per_s"]], s=90, marker="*", color="tab:red", zorder=3,
               label="decode (one token per pass, KV cache)")
    per_pass = 1 / speed["decode_tokens_per_s"]  # seconds of one pass, mostly spent reading the weights
    ax.plot(n, [k / per_pass for k in n], ls=":", color="gray",
            label=f"if every pass cost what one token's does (reading {weight_bytes / 2**20:,.0f} MiB of weights)")
    ax.set(xscale="log", yscale="log", xlabel="tokens processed by one forward pass",
           ylabel="tokens per second", title=f"{speed['threads']} thread(s): weights are read once per pass")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return ax
