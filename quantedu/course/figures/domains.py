"""In-domain vs out-of-domain (notebooks 03 and 04): each quantized model's cost on the text like its
calibration's ("eval": Python's help pages) and on another source ("heldout": the standard library's code)."""
from __future__ import annotations

import math

import numpy as np


def plot_domains(runs, purposes=("eval", "heldout"), labels=("help pages (like the calibration)",
                                                            "stdlib code (another source)")):
    """Two panels, one bar pair per run: perplexity over the baseline on the same windows (%, with its 95%
    interval) and mean KL divergence (± its standard error), in-domain beside out-of-domain."""
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.4))
    x = np.arange(len(runs))
    width = 0.38
    for k, (purpose, label) in enumerate(zip(purposes, labels)):
        reps = [r.report(purpose) for r in runs]
        d = [r.delta_nll for r in reps]
        mid = [100 * math.expm1(i.mean) for i in d]
        err = [[m - 100 * math.expm1(i.low) for m, i in zip(mid, d)], [100 * math.expm1(i.high) - m for m, i in zip(mid, d)]]
        a.bar(x + (k - 0.5) * width, mid, width, yerr=err, capsize=3, label=label)
        b.bar(x + (k - 0.5) * width, [r.kld.mean for r in reps], width, yerr=[r.kld.se for r in reps], capsize=3,
              label=label)
    for ax, what in ((a, "perplexity over the baseline (%)"), (b, "mean KL divergence (nats/token)")):
        ax.set_xticks(x, [r.name for r in runs], fontsize=8)
        ax.set_ylabel(what)
        ax.grid(axis="y", alpha=0.3)
    a.legend(fontsize=7)
    fig.tight_layout()
    return fig


__all__ = ["plot_domains"]
