"""Notebook 05's pictures: a Q4_K super-block's 144 bytes laid out from a real block, and size against quality
(bits per weight vs KL divergence from the baseline, with the 95% interval of each mean)."""
from __future__ import annotations

import numpy as np

from ...gguf import dequantize, layout
from ...gguf.kquants import get_scale_min_k4

_FIELD_COLOURS = {"d": "0.15", "dmin": "0.35", "scales": "0.6"}  # greys: the codes take the colours


def _sub_block_colour(j: int):
    import matplotlib.pyplot as plt
    return plt.get_cmap("tab10")(j % 10)


def plot_q4k_superblock(block, axes=None):
    """One Q4_K super-block (``(144,)`` uint8, e.g. ``gguf.quantize(w, "Q4_K")[0]``): left, its bytes in rows
    of 16, coloured by field (``d``, ``dmin``, the 12 bytes of 6-bit scales and mins, then the 128 bytes of
    4-bit codes, each byte split in two: its low nibble is a code of sub-block 2j, its high nibble one of
    sub-block 2j+1, coloured as those sub-blocks); right, the 256 weights it decodes to, each sub-block on its
    own 16-level grid ``d*sc[j]*q - dmin*m[j]`` (grey lines)."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch, Rectangle

    block = np.asarray(block, dtype=np.uint8).reshape(-1)
    if block.size != layout("Q4_K").type_size:
        raise ValueError(f"a Q4_K super-block is {layout('Q4_K').type_size} bytes; got {block.size}. "
                         "Pass one row of gguf.quantize(w, 'Q4_K').reshape(-1, 144).")
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(14, 4.6), gridspec_kw={"width_ratios": [1, 1]})
    ax, ax2 = axes
    for i, byte in enumerate(block):
        r, c = divmod(i, 16)
        if i < 16:
            field = "d" if i < 2 else "dmin" if i < 4 else "scales"
            ax.add_patch(Rectangle((c, -r - 1), 1, 1, facecolor=_FIELD_COLOURS[field], edgecolor="white"))
        else:  # 32 bytes per pair of sub-blocks: low nibbles sub-block 2j, high nibbles 2j+1
            j = (i - 16) // 32
            for half, sub in ((0, 2 * j), (0.5, 2 * j + 1)):
                ax.add_patch(Rectangle((c + half, -r - 1), 0.5, 1, facecolor=_sub_block_colour(sub), alpha=0.45,
                                       edgecolor="none"))
            ax.add_patch(Rectangle((c, -r - 1), 1, 1, fill=False, edgecolor="white"))
        ax.text(c + 0.5, -r - 0.5, f"{byte:02x}", ha="center", va="center", fontsize=7, family="monospace",
                color="white" if i < 16 else "black")
    d, dmin = np.frombuffer(block[:4].tobytes(), np.float16).astype(np.float32)
    sc, mn = ([int(v) for v in a[0]] for a in get_scale_min_k4(block[None, 4:16]))
    ax.set(xlim=(0, 16), ylim=(-9, 0), xticks=[], yticks=[], aspect="equal",
           title="its 144 bytes (hex), 16 per row")
    ax.set_xlabel(f"d = {d:.2e}, dmin = {dmin:.2e}; 6-bit scales {sc}, mins {mn}", fontsize=8)
    ax.legend(handles=[Patch(color=_FIELD_COLOURS["d"], label="d (fp16)"),
                       Patch(color=_FIELD_COLOURS["dmin"], label="dmin (fp16)"),
                       Patch(color=_FIELD_COLOURS["scales"], label="8 scales + 8 mins"),
                       Patch(facecolor="white", edgecolor="0.5", label="codes: low | high nibble")],
              loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=4, fontsize=7, frameon=False)
    w = dequantize(block[None], "Q4_K")[0]
    for j in range(8):
        x = np.arange(32 * j, 32 * j + 32)
        for q in range(16):  # the sub-block's grid: its 16 possible values
            ax2.hlines(d * sc[j] * q - dmin * mn[j], x[0], x[-1], color="0.85", lw=0.6)
        ax2.plot(x, w[x], ".", ms=4, color=_sub_block_colour(j))
    ax2.set(xlabel="weight index in the super-block (8 sub-blocks of 32)", ylabel="decoded weight",
            title="the 256 weights, each sub-block on its own 16 levels (grey)")
    ax2.set_xticks(np.arange(0, 257, 32))
    return axes


def plot_kld_vs_bits(points, ax=None, title: str = "", label_offset=(4, 4)):
    """Size against quality: ``points`` are ``(label, bits per weight, QualityReport, solid)``; each mean KLD is
    drawn with its 95% interval. ``solid=False`` (a hollow marker) flags a point whose type most of the
    matrices did not get (they fell back to another)."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(6, 4))[1]
    for label, bits, report, solid in points:
        k = report.kld
        ax.errorbar(bits, k.mean, yerr=[[k.mean - max(k.low, 1e-9)], [k.high - k.mean]], fmt="o", capsize=3,
                    color="tab:blue", mfc="tab:blue" if solid else "white")
        ax.annotate(label, (bits, k.mean), textcoords="offset points", xytext=label_offset, fontsize=8)
    ax.set(xlabel="bits per weight (the matrices)", ylabel="mean KL divergence from the baseline (nats)",
           yscale="log", title=title)
    ax.grid(alpha=0.3, which="both")
    return ax


__all__ = ["plot_q4k_superblock", "plot_kld_vs_bits"]
