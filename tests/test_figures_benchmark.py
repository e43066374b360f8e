"""Notebook 07's figures draw what the rows measured (quantedu.course.figures.benchmark; synthetic rows, Agg)."""
import matplotlib

matplotlib.use("Agg")

from fake_rows import rows  # noqa: E402

from quantedu.course.figures import benchmark  # noqa: E402


def test_verdict_bars_are_the_rules_intervals():
    r = rows()
    pairs = [(r["awq"], r["gptq"]), (r["act_order"], r["gptq"])]
    _, right = benchmark.plot_verdicts(list(r.values()), pairs)
    bars = [line for line in right.lines if len(line.get_xdata()) == 2 and line.get_linewidth() == 3]
    for (a, b), bar in zip(pairs, bars):
        v = a.report.verdict(b.report, metric="kld")
        assert tuple(bar.get_xdata()) == (v.interval.low, v.interval.high)
        assert bar.get_color() == ("tab:gray" if v.tie else "tab:green")
    assert [t.get_text() for t in right.texts] == ["AWQ W4 asym g64 better", "tie"]


def test_size_and_speed_figures_leave_out_the_baseline_and_name_the_engine_that_ran():
    r = rows()
    r["gptq"].kernel = "vLLM CPUWNA16LinearKernel"
    ax = benchmark.plot_size_vs_kld(list(r.values()))
    assert "fp32 (baseline)" not in [t.get_text() for t in ax.texts]  # KLD 0 has no place on a log axis
    labels = [t.get_text() for t in benchmark.plot_speed(list(r.values())).get_yticklabels()]
    assert "GPTQ W4 asym g64 (vLLM)" in labels and "AWQ W4 asym g64 (torch only: vLLM did not run)" in labels
    assert len(labels) == len(r) - 1
