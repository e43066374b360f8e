"""Notebook 03's pictures: GPTQ's error feedback inside one block of a real layer, the knob sweep with the
verdict rule's ties, and damping against the amount of calibration."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Feedback:
    """GPTQ's first block of columns on a real layer, in units of each row's quantization step: ``error`` the
    rounding error of every column as GPTQ rounded it, ``moved`` how far the updates of the earlier columns
    had moved each weight by then, ``Hinv`` the block's part of :func:`quantedu.gptq.hessian_inverse` (row
    ``i``: where column ``i``'s error goes), ``scaled`` each column's error divided by ``Hinv[i, i]`` (what
    the update multiplies), ``differs`` the share of each column's codes that differ from rounding to nearest."""

    error: torch.Tensor
    moved: torch.Tensor
    Hinv: torch.Tensor
    scaled: torch.Tensor
    step: torch.Tensor
    differs: torch.Tensor

    def update(self, i: int) -> torch.Tensor:
        """The update column ``i``'s error makes to every column of the block, in steps (zero up to ``i``)."""
        u = -self.scaled[:, i:i + 1] * self.Hinv[i:i + 1, :] / self.step
        u[:, : i + 1] = 0
        return u


def error_feedback(W: torch.Tensor, H: torch.Tensor, config) -> Feedback:
    """Run GPTQ's steps 1 and 2 (:func:`quantedu.gptq.hessian_inverse`, :func:`quantedu.gptq.gptq_block`) on
    the first block of ``W``'s columns, the grid of each group chosen as GPTQ chooses it, and keep what the
    figure shows. ``config``: a ``GPTQConfig`` whose group size divides its block size."""
    from ...gptq import IntGrid, gptq_block, hessian_inverse
    g = config.group_size if config.group_size != -1 else W.shape[1]
    B = min(config.block_size, W.shape[1])
    if B % g and g < B:
        raise ValueError(f"the group size ({g}) must divide the block ({B}) for this figure")
    W = W.detach().float().clone()
    W[:, torch.diag(H) == 0] = 0
    grid, params = IntGrid(config.quant_config()), {}
    Hinv = hessian_inverse(H.float(), config.damp_percent)[:B, :B]
    W1 = W[:, :B]

    def quantize(i, W1):
        if i % g == 0:
            params[i // g] = grid.choose(W1[:, i:i + g])
        return grid.round(W1[:, i], params[i // g])[1]

    Q1, Err1 = gptq_block(W1, Hinv, quantize)
    step = torch.stack([params[i // g][0] for i in range(B)], 1)  # the scale of each weight's group
    at_round = Q1 + Err1 * torch.diag(Hinv)  # the value GPTQ rounded: the error is (w - q) = Err1 * Hinv[i, i]
    rtn = torch.stack([grid.round(W1[:, i], grid.choose(W1[:, (i // g) * g:(i // g + 1) * g]))[1]
                       for i in range(B)], 1)
    return Feedback((at_round - Q1) / step, (at_round - W1) / step, Hinv, Err1, step,
                    (Q1 != rtn).float().mean(0))


def plot_error_feedback(fb: Feedback, column: int = 4, rows: int = 32, cols: int = 64, title: str = ""):
    """Left: column ``column``'s rounding error (a strip) and the update it makes to the next columns (its own
    colour scale: each update is small), under row ``column`` of Hinv that shapes it. Right: every earlier
    column's updates added up: how far each weight had been moved when GPTQ rounded it."""
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(12, 4.2))
    gs = fig.add_gridspec(2, 4, width_ratios=[0.07, 1, 0.2, 1.25], height_ratios=[0.3, 1], wspace=0.08,
                          hspace=0.12)
    err = fb.error[:rows, column].numpy()[:, None]
    upd = fb.update(column)[:rows, column + 1:column + 1 + cols // 2].numpy()
    v = max(abs(err).max(), 1e-12)
    ax0 = fig.add_subplot(gs[1, 0])
    ax0.imshow(err, cmap="RdBu_r", vmin=-v, vmax=v, aspect="auto")
    ax0.set_xticks([0], [f"col {column}"], fontsize=7)
    ax0.set_ylabel("output row")
    ax1 = fig.add_subplot(gs[1, 1], sharey=ax0)
    u = max(abs(upd).max(), 1e-12)
    im = ax1.imshow(upd, cmap="RdBu_r", vmin=-u, vmax=u, aspect="auto",
                    extent=(column + 0.5, column + 0.5 + upd.shape[1], rows - 0.5, -0.5))
    ax1.set_xlabel(f"column j > {column}: the update column {column}'s error makes (in steps)", fontsize=8)
    ax1.tick_params(labelleft=False)
    top = fig.add_subplot(gs[0, 1])
    fig.colorbar(im, ax=[top, ax1], fraction=0.05, pad=0.02)
    row = (fb.Hinv[column, column + 1:column + 1 + upd.shape[1]] / fb.Hinv[column, column]).numpy()
    top.bar(np.arange(column + 1, column + 1 + upd.shape[1]), row, width=0.8, color="tab:gray")
    top.set_xlim(column + 0.5, column + 0.5 + upd.shape[1])
    top.set_title(f"column {column}'s rounding error (strip, up to {v:.2f} steps)\nis passed on along row "
                  f"{column} of Hinv (bars)", fontsize=9, loc="left")
    top.tick_params(labelbottom=False, labelsize=7)
    ax2 = fig.add_subplot(gs[:, 3])
    moved = fb.moved[:rows, :cols].numpy()
    m = max(abs(moved).max(), 1e-12)
    im = ax2.imshow(moved, cmap="RdBu_r", vmin=-m, vmax=m, aspect="auto")
    ax2.set_xlabel("column (GPTQ goes left to right)", fontsize=8)
    ax2.set_title("all updates added up: moved before rounding (steps)", fontsize=9)
    ax2.tick_params(labelleft=False)
    fig.colorbar(im, ax=ax2, fraction=0.05, pad=0.02)
    if title:
        fig.suptitle(title, fontsize=10, y=1.03)
    return fig


def plot_knobs(errors: dict[str, np.ndarray], knobs: dict[str, list[str]], rtn: dict[str, np.ndarray] | None = None,
               ax=None):
    """One bar per setting (mean held-out relative output error, %), grouped by knob; dark: the knob's best
    setting, mid: a tie with it by the rule, light: worse than it. ``rtn``: a label -> errors to draw as lines."""
    import matplotlib.pyplot as plt

    from ..layer_sweep import best_and_ties
    ax = ax or plt.subplots(figsize=(9, 3.2))[1]
    x, ticks = 0, []
    for knob, labels in knobs.items():
        best, verdicts = best_and_ties(errors, labels)
        for label in labels:
            color = "tab:blue" if label == best else ("#9cc3e6" if verdicts[label].tie else "#dddddd")
            ax.bar(x, 100 * errors[label].mean(), color=color, edgecolor="k", lw=0.5)
            ticks.append((x, label))
            x += 1
        ax.text(x - len(labels) / 2 - 0.5, 1.01, knob, ha="center", va="bottom", fontsize=8,
                transform=ax.get_xaxis_transform())
        x += 0.8
    for name, e in (rtn or {}).items():
        ax.axhline(100 * e.mean(), color="tab:red", ls="--", lw=1, label=name)
    ax.set_xticks([t for t, _ in ticks], [lbl for _, lbl in ticks], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("held-out output error (%)")
    from matplotlib.patches import Patch
    handles = [Patch(color="tab:blue", label="best of its knob"), Patch(color="#9cc3e6", label="a tie with it (rule)"),
               Patch(color="#dddddd", label="worse (rule)")] + ax.get_legend_handles_labels()[0]
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.figure.tight_layout()
    return ax


def plot_damping(errors: dict, sizes, damps, tokens_per_sample: int, minimum: int, rtn: float | None = None, ax=None):
    """Held-out relative output error against damping, one line per amount of calibration; dashed: fewer tokens
    than the budget (``minimum``), where the Hessian is singular or nearly so."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(6.5, 3.4))[1]
    for n in sizes:
        tokens = n * tokens_per_sample
        starved = tokens < minimum
        ax.plot(damps, [100 * errors[n, d].mean() for d in damps], "o" + ("--" if starved else "-"),
                label=f"{tokens:,} tokens" + (" (starved)" if starved else ""), alpha=0.6 if starved else 1)
    if rtn is not None:
        ax.axhline(100 * rtn, color="tab:red", lw=1, ls=":", label="RTN")
    ax.set(xscale="log", xlabel="damp_percent", ylabel="held-out output error (%)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return ax


__all__ = ["Feedback", "error_feedback", "plot_error_feedback", "plot_knobs", "plot_damping"]
