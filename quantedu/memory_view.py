"""Pictures of the memory math (:mod:`quantedu.memory`): a stacked-bar breakdown and a calculator widget."""
from __future__ import annotations

from .memory import GIB, GroupFormat, footprint, llama_like


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

