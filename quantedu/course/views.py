"""What the notebooks draw and tabulate: result tables, bar charts, trade-off scatters, and the memory math's
pictures (:mod:`quantedu.memory`: a stacked-bar breakdown and a calculator widget)."""
from __future__ import annotations

from typing import Iterable

from ..memory import GIB, GroupFormat, footprint


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
    """Interactive memory calculator (ipywidgets): a model of a real published shape (:data:`quantedu.memory.
    PRESETS`), its linear layers at the chosen bits and group size, its KV cache at the chosen width."""
    import ipywidgets as W
    import matplotlib.pyplot as plt
    from IPython.display import display

    from ..memory import PRESETS, model_shape

    model = W.Dropdown(options=sorted(PRESETS, key=lambda n: model_shape(n).n_params()), value="llama-2-7b",
                       description="model")
    bits = W.Dropdown(options=[16, 8, 6, 5, 4, 3, 2], value=4, description="bits")
    group = W.Dropdown(options=[("per-channel", 0), ("32", 32), ("64", 64), ("128", 128)], value=128,
                       description="group")
    context = W.IntSlider(value=8192, min=512, max=131072, step=512, description="context")
    batch = W.IntSlider(value=1, min=1, max=64, description="batch")
    kv_bits = W.Dropdown(options=[16, 8, 4], value=16, description="KV bits")
    out = W.Output()

    def draw(*_):
        shape = model_shape(model.value)
        spec = "fp16" if bits.value == 16 else GroupFormat(bits.value, group.value or None)
        fp = footprint(shape, spec, context.value, batch.value, kv_bits=kv_bits.value)
        with out:
            out.clear_output(wait=True)
            plot_breakdown({shape.name: fp}, title=f"{shape.name}: {sum(fp.values()) / GIB:.2f} GiB")
            plt.show()

    for w in (model, bits, group, context, batch, kv_bits):
        w.observe(draw, names="value")
    draw()
    display(W.VBox([W.HBox([model, bits, group]), W.HBox([context, batch, kv_bits]), out]))


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


# --- quality against the baseline: numbers rounded to what their noise allows -----------------------


def decimals_for(se: float) -> int:
    """Decimal places that show an estimate with standard error ``se`` honestly: the se to one significant
    digit (two when it starts with 1), the estimate to the same place."""
    import math
    if not se or not math.isfinite(se) or se <= 0:
        return 3
    first = math.floor(math.log10(se))
    digits = 2 if se / 10 ** first < 2 else 1
    return max(0, digits - 1 - first)


def plus_minus(mean: float, se: float, scale: float = 1.0, unit: str = "") -> str:
    """``"0.325 ± 0.015"``, rounded by :func:`decimals_for` (``scale=100, unit="%"`` for fractions)."""
    d = decimals_for(se * scale)
    if d > 4:  # 0.00334 ± 0.00013 reads as 3.34e-3 ± 0.13e-3: one exponent, the digits the noise allows
        k = d - 2
        return f"{mean * scale * 10 ** k:.2f}e-{k}{unit} ± {se * scale * 10 ** k:.2f}e-{k}{unit}"
    return f"{mean * scale:.{d}f}{unit} ± {se * scale:.{d}f}{unit}"


def _factor(x: float) -> str:
    """A perplexity ratio of 10 or more, to 3 significant digits: ``12.3``, ``199,000``."""
    return f"{x:.3g}" if x < 1000 else f"{float(f'{x:.3g}'):,.0f}"


def quality_table(reports, verdicts: bool = True):
    """One row per :class:`~quantedu.evaluate.QualityReport`: perplexity, its change over the baseline on the
    same windows with the 95% interval, mean KLD, same top token, and the verdict of the one rule
    (:mod:`quantedu.verdict`) against the baseline. Every number is rounded to what its noise allows."""
    import math

    import pandas as pd

    rows = []
    for r in reports:
        d, kld, top = r.delta_nll, r.kld, r.same_top
        half = (math.expm1(d.high) - math.expm1(d.low)) / 2 / 1.96 * 100  # the interval as a se, in percent
        dp = decimals_for(half)
        vs = (f"{100 * math.expm1(d.mean):+.{dp}f}% [{100 * math.expm1(d.low):+.{dp}f}, {100 * math.expm1(d.high):+.{dp}f}]"
              if d.mean < math.log(10) else  # +19892639% reads better as a factor: x198927 [...]
              f"x{_factor(math.exp(d.mean))} [x{_factor(math.exp(d.low))}, x{_factor(math.exp(d.high))}]")
        ppl = round(r.ppl, max(2, dp)) if r.ppl < 100 else float(f"{r.ppl:.3g}")  # 51278.45 -> 51300
        row = {"model": r.name, "perplexity": ppl, "vs baseline": vs,
               "mean KLD": plus_minus(kld.mean, kld.se), "same top token": plus_minus(top.mean, top.se, 100, "%")}
        if verdicts:
            v = r.verdict()
            row["verdict"] = "tie" if v.tie else ("better" if v.winner == r.name else "worse")
        rows.append(row)
    return pd.DataFrame(rows).set_index("model")


def plot_kld(reports, ax=None, title: str = "per-token KL divergence from the baseline"):
    """The distribution of per-token KLD of each report (an empirical CDF on a log axis): where the mean
    comes from, and how heavy the tail of badly damaged tokens is."""
    import matplotlib.pyplot as plt
    import numpy as np

    ax = ax or plt.subplots(figsize=(7, 3.6))[1]
    for r in reports:
        x = np.sort(np.clip(r.per_token["kld"].ravel(), 1e-6, None))
        ax.plot(x, np.arange(1, x.size + 1) / x.size, label=f"{r.name} (mean {r.kld.mean:.3g})")
    ax.set_xscale("log")
    ax.set(xlabel="KL divergence of one token's prediction (nats)", ylabel="fraction of tokens", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return ax
