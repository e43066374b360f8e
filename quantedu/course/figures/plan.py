"""Figures and the small form of notebook 10 (from the laptop to the cluster): serving plans drawn from
:func:`quantedu.plan.plan`."""
from __future__ import annotations

import matplotlib.pyplot as plt

from ...memory import GIB

PARTS = {"weights": "#4C72B0", "KV cache": "#DD8452", "activations": "#55A868"}


def label(p) -> str:
    return f"{p.model.rsplit('-', 1)[-1].upper()} {p.scheme.name.split('-')[0]}\n{p.gpus} x {p.gpu_memory_gib:g} GiB"


def plot_plans(plans, ax=None):
    """Memory of the most loaded GPU of each plan, stacked by weights / KV cache / activations, against the
    GPU's usable memory (a black tick); a plan that does not fit says why (weights, or KV cache)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(11, 4))
    for i, p in enumerate(plans):
        bottom = 0.0
        for part, color in PARTS.items():
            v = p.per_gpu[part] / GIB
            ax.bar(i, v, bottom=bottom, color=color, label=part if i == 0 else None, width=0.6)
            bottom += v
        ax.hlines(p.budget / GIB, i - 0.4, i + 0.4, color="black", lw=2, label="usable per GPU" if i == 0 else None)
        if not p.fits:
            why = "weights" if p.per_gpu["weights"] + p.per_gpu["activations"] > p.budget else "KV cache"
            ax.annotate(f"does not fit:\n{why}", (i, bottom), xytext=(0, 4), textcoords="offset points",
                        ha="center", va="bottom", color="firebrick", fontsize=8)
    ax.set_xticks(range(len(plans)), [label(p) for p in plans], fontsize=8)
    ax.set_ylabel("GiB on the most loaded GPU")
    ax.set_ylim(0, 1.18 * max(max(p.total, p.budget) for p in plans) / GIB)
    ax.legend(fontsize=8, loc="upper left")
    return ax


def sequences_that_fit(p) -> int:
    """Whole sequences of ``p.context`` tokens whose KV cache fits beside the weights and activations."""
    free = p.budget - p.per_gpu["weights"] - p.per_gpu["activations"]
    return max(0, int(free // (p.kv_per_token * p.context)))


def plot_sequences_per_tp(rows, ax=None):
    """``rows``: {scheme: [plan at TP 1, 2, 4, ...]}: how many sequences of the plans' context fit, per TP size."""
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.6))
    for scheme, plans in rows.items():
        ax.plot([p.gpus for p in plans], [sequences_that_fit(p) for p in plans], "o-", label=scheme)
    first = next(iter(rows.values()))[0]
    ax.set_xscale("log", base=2)
    ax.set_ylim(bottom=0)
    ax.set_xticks([p.gpus for p in next(iter(rows.values()))], [str(p.gpus) for p in next(iter(rows.values()))])
    ax.set_xlabel(f"GPUs of {first.gpu_memory_gib:g} GiB (--tensor-parallel-size)")
    ax.set_ylabel(f"sequences of {first.context} tokens that fit")
    ax.legend(fontsize=8)
    return ax


def plan_form(run, **defaults):
    """A small form (ipywidgets) that calls ``run(model=..., scheme=..., gpus=..., gpu_memory_gb=..., context=...,
    batch=...)`` each time a value changes; ``defaults`` are its starting values (what runs headless)."""
    import ipywidgets as w
    from IPython.display import display

    controls = {
        "model": w.Dropdown(options=["llama-3.1-8b", "llama-3.1-70b", "llama-2-13b", "smollm2-135m"]),
        "scheme": w.Dropdown(options=["bf16", "fp8", "w8a8", "w4a16", "w4a16-g64", "nvfp4a16", "Q4_K_M", "Q8_0"]),
        "gpus": w.Dropdown(options=[1, 2, 3, 4, 8]),
        "gpu_memory_gb": w.Dropdown(options=[16, 24, 40, 48, 80, 141], description="GiB/GPU"),
        "context": w.Dropdown(options=[2048, 4096, 8192, 32768, 131072]),
        "batch": w.Dropdown(options=[1, 4, 8, 32]),
    }
    for name, c in controls.items():
        c.value = defaults[name]
        c.description = c.description or name
        c.layout = w.Layout(width="230px")
    out = w.Output()

    def update(_=None):
        out.clear_output(wait=True)
        with out:
            run(**{k: c.value for k, c in controls.items()})

    for c in controls.values():
        c.observe(update, names="value")
    display(w.VBox([w.HBox(list(controls.values())[:3]), w.HBox(list(controls.values())[3:]), out]))
    update()
