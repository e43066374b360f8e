"""The figures of notebooks 05 and 06 draw what they say they draw, and the sentences that read a sweep say what
its numbers say (quantedu.course.figures.gguf / .serving)."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from quantedu import gguf  # noqa: E402
from quantedu.course.figures import gguf as gfig  # noqa: E402
from quantedu.course.figures import serving as sfig  # noqa: E402


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def test_q4k_superblock_lays_out_the_bytes_and_puts_every_weight_on_its_sub_blocks_grid():
    w = np.random.default_rng(1).standard_normal((2, 256)).astype(np.float32) * np.linspace(0.2, 3, 256)
    block = gguf.quantize(w, "Q4_K").reshape(-1, 144)[0]
    ax, ax2 = gfig.plot_q4k_superblock(block)
    assert [t.get_text() for t in ax.texts] == [f"{b:02x}" for b in block]  # every byte, in order
    points = np.concatenate([line.get_ydata() for line in ax2.lines if line.get_marker() == "."])
    assert np.array_equal(points, gguf.dequantize(block[None], "Q4_K")[0])
    levels = [c.get_segments() for c in ax2.collections]  # 16 grid lines per sub-block
    assert len(levels) == 8 * 16
    grid = np.array([seg[0][0][1] for seg in levels]).reshape(8, 16)
    for j in range(8):
        off = np.abs(points[32 * j:32 * j + 32, None] - grid[j][None, :]).min(axis=1)
        assert (off <= 1e-6 * max(1.0, np.abs(grid[j]).max())).all(), j
    with pytest.raises(ValueError, match="144 bytes"):
        gfig.plot_q4k_superblock(block[:100])


class _Report:  # the part of a QualityReport the figure reads
    def __init__(self, mean, half):
        from quantedu.verdict import Interval
        self.kld = Interval(mean, half / 2, mean - half, mean + half, 1000, 16, 0.95)


def test_kld_vs_bits_draws_each_point_with_its_interval_and_hollow_fallbacks():
    ax = gfig.plot_kld_vs_bits([("a", 4.5, _Report(0.05, 0.01), True), ("b", 5.5, _Report(0.02, 0.004), False)])
    bars = [c for c in ax.containers]
    assert len(bars) == 2
    (line_a, caps_a, (seg_a,)), (line_b, _, _) = [(c.lines[0], c.lines[1], c.lines[2]) for c in bars]
    assert seg_a.get_segments()[0][:, 1].tolist() == pytest.approx([0.04, 0.06])
    assert line_a.get_markerfacecolor() != "white" and line_b.get_markerfacecolor() == "white"
    assert ax.get_yscale() == "log"


def _requests(server_rows):
    rows = []
    for c, ttft, latency, error in server_rows:
        rows.append({"concurrency": c, "index": len(rows), "ttft_s": ttft, "latency_s": latency, "n_tokens": 8,
                     "decode_tps": 20.0, "start_s": 0.01 * len(rows), "end_s": 0.01 * len(rows) + latency,
                     "error": error, "text": ""})
    return pd.DataFrame(rows)


def test_timeline_draws_waiting_then_decoding_and_failed_requests_in_red():
    df = _requests([(4, 0.1, 1.0, ""), (4, 0.5, 1.2, ""), (4, float("nan"), 0.3, "ConnectionError: cut"),
                    (1, 0.1, 0.5, "")])
    (ax,) = sfig.plot_timeline({"one slot": df}, 4)
    widths = [p.get_width() for p in ax.patches]
    assert widths == pytest.approx([0.1, 0.9, 0.5, 0.7, 0.3])  # two parts per answer, one red bar for the failure
    assert ax.patches[-1].get_facecolor()[:3] == pytest.approx(matplotlib.colors.to_rgb("tab:red"))
    with pytest.raises(ValueError, match="levels: \\[1, 4\\]"):
        sfig.plot_timeline({"one slot": df}, 8)


def _summary(throughputs: dict):
    frames = {}
    for name, tps in throughputs.items():
        frames[name] = pd.DataFrame({"requests": [4, 4, 16], "failed": [0, 1, 0], "ttft_p50_s": [0.05, 0.1, 0.8],
                                     "decode_tok_s": [100.0, 60.0, 20.0], "throughput_tok_s": tps,
                                     "latency_p50_s": [0.3, 0.5, 1.0], "latency_p95_s": [0.4, 0.6, 1.2]},
                                    index=pd.Index([1, 4, 16], name="concurrency"))
    return pd.concat(frames, names=["server"])


def test_scaling_says_grows_flat_or_falls_from_the_numbers():
    lines = sfig.scaling(_summary({"slots": [100.0, 250.0, 300.0], "one": [100.0, 95.0, 110.0],
                                   "busy": [100.0, 70.0, 60.0]}))
    assert lines[0].startswith("slots: throughput grows, 100 -> 300 tokens/s (x3.0, peak 300 at 16)")
    assert lines[1].startswith("one: throughput stays within the ~15% timing noise") and "peak 110 at 16" in lines[1]
    assert lines[2].startswith("busy: throughput falls") and "50 -> 800 ms" in lines[2]
    assert all("1 of 24 requests failed" in line for line in lines)
    edge = sfig.scaling(_summary({"x": [100.0, 110.0, 120.0]}))[0]  # +20%: beyond the 15% noise, growth
    assert edge.startswith("x: throughput grows")


def test_clients_figure_has_one_line_per_server_on_both_panels():
    axes = sfig.plot_clients(_summary({"a": [1.0, 2.0, 3.0], "b": [3.0, 2.0, 1.0]}))
    assert [len(ax.lines) for ax in axes] == [2, 2]
    assert axes[0].lines[1].get_ydata().tolist() == [3.0, 2.0, 1.0]
