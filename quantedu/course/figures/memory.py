"""Notebook 01's figure: where a model's bytes go (weights, KV cache, activations), for the loaded model
and real 7-70B shapes (:mod:`quantedu.memory`)."""
from __future__ import annotations

from ... import memory

COLORS = {"linear weights": "tab:blue", "embeddings + head + norms": "tab:cyan", "KV cache": "tab:orange",
          "activations": "tab:red"}


def bytes_by_part(source, spec, context: int, batch: int = 1, chunk: int = 512, kv_bits: int = 16,
                  embed_spec="fp16") -> dict:
    """:func:`quantedu.memory.footprint` of serving ``batch`` sequences of ``context`` tokens, with the
    activations of the largest step: a prefill chunk of ``chunk`` prompt tokens in one pass (llama.cpp's
    default batch is 512), not a one-token decode step. ``embed_spec``: the embeddings' and norms' format."""
    parts = memory.footprint(source, spec, context, batch, kv_bits=kv_bits, embed_spec=embed_spec)
    parts["activations"] = memory.activation_bytes(source, batch, chunk)
    return parts


def plot_where_bytes_go(rows: dict, ax=None, title: str = "where a model's bytes go"):
    """``rows``: label -> component -> bytes. One horizontal bar per row, split into each component's share
    of that row's total (so a 135M and a 70B model sit side by side), the total written at its end."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(9, 0.45 * len(rows) + 1.4))[1]
    labels = list(rows)[::-1]  # the first row on top
    left = [0.0] * len(labels)
    for part, color in COLORS.items():
        shares = [rows[lab].get(part, 0.0) / sum(rows[lab].values()) for lab in labels]
        ax.barh(labels, shares, left=left, color=color, label=part)
        left = [a + b for a, b in zip(left, shares)]
    for y, lab in enumerate(labels):
        total = sum(rows[lab].values())
        ax.annotate(f"{total / memory.GIB:,.3g} GiB", (1.01, y), va="center", fontsize=8, annotation_clip=False)
    ax.set_xlim(0, 1)
    ax.set(xlabel="share of the memory", title=title)
    ax.tick_params(axis="y", labelsize=8)
    ax.legend(fontsize=8, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.12 - 0.6 / len(rows)))
    return ax
