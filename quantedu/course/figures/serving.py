"""Notebook 06's pictures and the sentences that read them: throughput and time to first token against concurrent
clients, one line per server (:func:`plot_clients`); one concurrency level's requests on a timeline, waiting and
prefill then decoding (:func:`plot_timeline`); and what a sweep measured, in words (:func:`scaling`)."""
from __future__ import annotations

import math

# a throughput ratio beyond these is growth or decline; between, inside the ~15% timing noise of a shared machine
# (quantedu.course.guide.SPEED_TIE, the margin every speed comparison of the course uses)
FALLS = 0.85
GROWS = 1 / FALLS


def plot_clients(summary, axes=None):
    """``summary``: per-server :func:`quantedu.engines.load.by_concurrency` frames concatenated with a
    ``server`` index level (``pd.concat({name: frame}, names=["server"])``). Left, total throughput; right,
    median time to first token; both against the number of concurrent clients (log scale)."""
    import matplotlib.pyplot as plt

    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    levels = sorted(set(summary.index.get_level_values("concurrency")))
    for name, g in summary.groupby(level="server", sort=False):
        g = g.droplevel("server")
        axes[0].plot(g.index, g.throughput_tok_s, "o-", label=name)
        axes[1].plot(g.index, g.ttft_p50_s, "o-", label=name)
    for ax, title, unit in zip(axes, ("total throughput (all clients)", "time to first token (median)"),
                               ("tokens/s", "seconds")):
        ax.set(title=title, xlabel="concurrent clients", ylabel=unit, xscale="log")
        ax.set_xticks(levels)
        ax.set_xticklabels(levels)
        ax.grid(alpha=0.3)
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=8)
    return axes


def plot_timeline(requests: dict, concurrency: int, axes=None):
    """One panel per server (``requests``: name -> the per-request frame of :func:`quantedu.engines.load.sweep`):
    each request of the level with ``concurrency`` clients as a bar from its send, light while it waits for its
    first token (queue + prefill), dark while its tokens stream; failed requests in red."""
    import matplotlib.pyplot as plt

    if axes is None:
        _, axes = plt.subplots(1, len(requests), figsize=(6 * len(requests), 2.8), sharex=True, squeeze=False)
        axes = axes[0]
    for ax, (name, df) in zip(axes, requests.items()):
        level = df[df.concurrency == concurrency].sort_values("start_s")
        if level.empty:
            raise ValueError(f"{name}: no requests at {concurrency} clients; levels: {sorted(set(df.concurrency))}")
        t0 = level.start_s.min()
        for i, r in enumerate(level.itertuples()):
            start, first = r.start_s - t0, r.ttft_s if not math.isnan(r.ttft_s) else r.latency_s
            if r.error:
                ax.barh(i, r.latency_s, left=start, color="tab:red")
                continue
            ax.barh(i, first, left=start, color="#c6dbef")
            ax.barh(i, r.latency_s - first, left=start + first, color="tab:blue")
        ax.set(title=f"{name}: {len(level)} requests, {concurrency} clients", xlabel="seconds since the first send",
               yticks=[], ylabel="request")
        ax.invert_yaxis()
    from matplotlib.patches import Patch
    axes[-1].legend(handles=[Patch(color="#c6dbef", label="waiting + prefill (TTFT)"),
                             Patch(color="tab:blue", label="decoding")], fontsize=8, loc="lower right")
    return axes


def scaling(summary) -> list[str]:
    """One sentence per server of a :func:`plot_clients` summary: throughput, time to first token and one request's
    decode speed from the fewest to the most clients, and whether throughput grew (ratio >= ``GROWS``), fell
    (<= ``FALLS``) or stayed inside the timing noise; failed requests counted."""
    out = []
    for name, g in summary.groupby(level="server", sort=False):
        g = g.droplevel("server")
        lo, hi = g.index.min(), g.index.max()
        ratio = g.throughput_tok_s[hi] / g.throughput_tok_s[lo]
        trend = "grows" if ratio >= GROWS else "falls" if ratio <= FALLS else "stays within the ~15% timing noise"
        peak = g.throughput_tok_s.idxmax()
        failed = int(g.failed.sum())
        out.append(f"{name}: throughput {trend}, {g.throughput_tok_s[lo]:.0f} -> {g.throughput_tok_s[hi]:.0f} tokens/s "
                   f"(x{ratio:.1f}, peak {g.throughput_tok_s[peak]:.0f} at {peak}) from {lo} to {hi} clients; "
                   f"time to first token {1e3 * g.ttft_p50_s[lo]:.0f} -> {1e3 * g.ttft_p50_s[hi]:.0f} ms; one "
                   f"request decodes {g.decode_tok_s[lo]:.0f} -> {g.decode_tok_s[hi]:.0f} tokens/s; "
                   f"{failed} of {int(g.requests.sum())} requests failed")
    return out


__all__ = ["GROWS", "FALLS", "plot_clients", "plot_timeline", "scaling"]
