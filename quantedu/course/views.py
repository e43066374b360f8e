"""What the notebooks draw and tabulate: result tables, bar charts, trade-off scatters, and the memory math's
pictures (:mod:`quantedu.memory`: a stacked-bar breakdown and a calculator widget)."""
from __future__ import annotations

from typing import Iterable

from ..memory import GIB, GroupFormat, footprint, llama_like


def plot_breakdown(rows: dict, ax=None, unit: float = GIB, title: str = ""):
    """Stacked bars: ``rows`` maps a bar label to a component -> bytes dict (from :func:`footprint`)."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(7, 3.5))[1]
    labels = list(rows)
    components = list(next(iter(rows.values())))
    bottom = [0.0] * len(labels)
    for comp in components:
        vals = [rows[l][comp] / unit for l in labels]
        ax.bar(labels, vals, bottom=bottom, label=comp)
        bottom = [b + v for b, v in zip(bottom, vals)]
    for x, total in enumerate(bottom):
        ax.annotate(f"{total:.2f}", (x, total), ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("GiB" if unit == GIB else f"x {unit:g} bytes")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return ax


def calculator():
    """Interactive memory calculator (ipywidgets): a Llama-shaped model of N parameters."""
    import ipywidgets as W
    import matplotlib.pyplot as plt
    from IPython.display import display

    params = W.FloatLogSlider(value=7e9, base=10, min=8, max=11.2, description="parameters")
    bits = W.Dropdown(options=[16, 8, 6, 5, 4, 3, 2], value=4, description="bits")
    group = W.Dropdown(options=[("per-channel", 0), ("32", 32), ("64", 64), ("128", 128)], value=128,
                       description="group")
    context = W.IntSlider(value=8192, min=512, max=131072, step=512, description="context")
    batch = W.IntSlider(value=1, min=1, max=64, description="batch")
    gqa = W.Dropdown(options=[1, 4, 8], value=1, description="heads/kv head")
    out = W.Output()

    def draw(*_):
        shape = llama_like(params.value, gqa.value)
        spec = "fp16" if bits.value == 16 else GroupFormat(bits.value, group.value or None)
        fp = footprint(shape, spec, context.value, batch.value)
        with out:
            out.clear_output(wait=True)
            plot_breakdown({shape.name: fp}, title=f"{shape.name}: {sum(fp.values()) / GIB:.2f} GiB")
            plt.show()

    for w in (params, bits, group, context, batch, gqa):
        w.observe(draw, names="value")
    draw()
    display(W.VBox([W.HBox([params, bits, group]), W.HBox([context, batch, gqa]), out]))


def results_table(records: Iterable[dict], index: str | None = None, sort_by: str | None = None):
    """A pandas DataFrame of result records (one dict per method/config), optionally indexed/sorted."""
    import pandas as pd

    df = pd.DataFrame(list(records))
    if sort_by is not None:
        df = df.sort_values(sort_by)
    if index is not None:
        df = df.set_index(index)
    return df


def plot_bars(df, x: str, y: str, title: str = "", log: bool = False, ax=None, reference: float | None = None):
    """Bar chart of ``df[y]`` per ``df[x]``; ``reference`` draws a dashed baseline (e.g. fp32 ppl)."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(7, 3.2))[1]
    ax.bar(df[x].astype(str), df[y], color="tab:blue")
    if reference is not None:
        ax.axhline(reference, color="k", ls="--", lw=1, label=f"baseline {reference:.2f}")
        ax.legend()
    ax.set_ylabel(y)
    ax.set_title(title)
    if log:
        ax.set_yscale("log")
    ax.tick_params(axis="x", rotation=30)
    return ax


def plot_tradeoff(df, x: str, y: str, label: str, title: str = "", log_y: bool = False, ax=None):
    """Scatter of a size/quality trade-off (e.g. bits per weight vs perplexity), each point labelled."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(6, 4))[1]
    ax.scatter(df[x], df[y])
    for _, row in df.iterrows():
        ax.annotate(str(row[label]), (row[x], row[y]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(title)
    if log_y:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    return ax
