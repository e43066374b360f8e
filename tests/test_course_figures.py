"""The figures of notebooks 00-02 (quantedu.course.figures): what they compute from live data is right."""
import math

import matplotlib
import pytest
import torch

from quantedu import evaluate, memory
from quantedu.course.figures import memory as memory_figures
from quantedu.course.figures import ptq, tour
from quantedu.testmodel import tiny_llama

matplotlib.use("Agg")


def test_window_perplexities_are_each_windows_own():
    model = tiny_llama()
    windows = torch.randint(0, 256, (3, 24), generator=torch.Generator().manual_seed(1))
    nll = evaluate.window_nll(model, windows, progress=False)
    got = tour.window_perplexities(evaluate.Baseline(model, windows))
    assert got == pytest.approx([math.exp(v / 23) for v in nll.tolist()], rel=1e-5)


def test_grid_of_a_one_signed_group_wastes_half_a_symmetric_grid():
    w = torch.linspace(0.01, 1.0, 64)  # all positive: absmax centres the grid on 0
    sym, asym = ptq.grid_of(w, 3, symmetric=True), ptq.grid_of(w, 3, symmetric=False)
    assert asym["used"] == 8 and sym["used"] <= 5 and asym["rel_error"] < sym["rel_error"]
    assert asym["step"] == pytest.approx(1.0 / 7)


def test_telling_groups_find_a_planted_outlier_and_a_one_signed_group():
    model = tiny_llama(varied=True)
    layer = model.model.layers[1].mlp.down_proj
    with torch.no_grad():
        layer.weight[5, 70] = 50 * layer.weight.abs().max()            # columns 64-95: the third group of 32
        layer.weight[9, :32] = layer.weight[9, :32].abs() + 0.01        # one row's first group all positive
    found = ptq.telling_groups(model, 32)
    out, skew = found["outlier"], found["skewed"]
    assert (out["layer"], out["row"], out["col"]) == ("model.layers.1.mlp.down_proj", 5, 64)
    assert (skew["layer"], skew["row"], skew["col"]) == ("model.layers.1.mlp.down_proj", 9, 0)
    assert skew["score"] == pytest.approx(float((skew["w"].max() + skew["w"].min()) / (skew["w"].max() - skew["w"].min())))
    assert found["typical"]["score"] < out["score"]
    with pytest.raises(ValueError, match="divides"):
        ptq.telling_groups(model, 7)


def test_bytes_by_part_counts_a_prefill_chunk_of_activations():
    parts = memory_figures.bytes_by_part("llama-2-7b", "int4-g128", 4096, 2, chunk=256)
    base = memory.footprint("llama-2-7b", "int4-g128", 4096, 2)
    assert parts["activations"] == memory.activation_bytes("llama-2-7b", 2, 256) > base["activations"]
    assert {k: v for k, v in parts.items() if k != "activations"} == {k: v for k, v in base.items() if k != "activations"}


def test_where_bytes_go_splits_each_bar_into_shares_of_its_total():
    rows = {"a": {"linear weights": 3.0, "KV cache": 1.0}, "b": {"linear weights": 1.0, "activations": 1.0}}
    ax = memory_figures.plot_where_bytes_go(rows)
    widths = {}
    for bar in ax.patches:
        widths.setdefault(round(bar.get_y(), 3), []).append(bar.get_width())
    assert sorted(map(sum, widths.values())) == pytest.approx([1.0, 1.0])
    assert sorted(w for ws in widths.values() for w in ws if w) == pytest.approx([0.25, 0.5, 0.5, 0.75])
