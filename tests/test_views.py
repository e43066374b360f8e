"""quantedu.course.views: the tables and figures notebooks show."""
from quantedu.course import views


def test_results_table_and_plots():
    df = views.results_table([{"m": "a", "ppl": 2.0, "bits": 4}, {"m": "b", "ppl": 1.0, "bits": 8}], sort_by="ppl")
    assert list(df["m"]) == ["b", "a"]
    ax = views.plot_bars(df, "m", "ppl", reference=1.5)
    assert len(ax.patches) == 2
    ax = views.plot_tradeoff(df, "bits", "ppl", "m")
    assert len(ax.texts) == 2


def test_numbers_are_rounded_to_their_noise():
    assert views.decimals_for(0.015) == 3 and views.decimals_for(0.4) == 1 and views.decimals_for(3.0) == 0
    assert views.plus_minus(0.32512, 0.0151) == "0.325 ± 0.015"
    assert views.plus_minus(0.97234, 0.0031, 100, "%") == "97.2% ± 0.3%"
    # a small KL divergence keeps its two significant digits of noise without a run of zeros
    assert views.plus_minus(0.003341, 0.000131) == "3.34e-3 ± 0.13e-3"


def test_quality_table_and_kld_figure(tiny_llama):
    import copy

    import torch

    from quantedu.evaluate import Baseline
    from quantedu.rtn import quantize_model_rtn
    from quantedu.primitives import QuantConfig

    windows = torch.randint(0, 256, (4, 129), generator=torch.Generator().manual_seed(0))
    base = Baseline(tiny_llama, windows)
    q = copy.deepcopy(tiny_llama)
    quantize_model_rtn(q, QuantConfig(2, 32), progress=False)
    reports = [base.compare(tiny_llama, "itself"), base.compare(q, "RTN W2")]
    table = views.quality_table(reports)
    assert list(table.index) == ["itself", "RTN W2"]
    assert table.loc["itself", "mean KLD"].startswith("0.0") and table.loc["itself", "verdict"] == "tie"
    assert table.loc["RTN W2", "verdict"] in ("worse", "tie") and "%" in table.loc["RTN W2", "vs baseline"]
    ax = views.plot_kld(reports[1:])
    assert len(ax.lines) == 1


def test_a_perplexity_ten_times_the_baseline_reads_as_a_factor():
    """02's W2 rows once read "+19892639%": from 10x up the change is a factor, to 3 significant digits."""
    import math
    from types import SimpleNamespace as NS

    def report(name, ratio, low, high):
        iv = NS(mean=math.log(ratio), low=math.log(low), high=math.log(high))
        return NS(name=name, ppl=20 * ratio, delta_nll=iv, kld=NS(mean=0.5, se=0.01), same_top=NS(mean=0.5, se=0.01),
                  verdict=lambda: NS(tie=False, winner="base"))

    table = views.quality_table([report("W4", 1.05, 1.04, 1.06), report("W2", 198927.4, 150123.0, 260456.0)],
                                verdicts=False)
    assert table.loc["W4", "vs baseline"].startswith("+5.") and "%" in table.loc["W4", "vs baseline"]
    assert table.loc["W2", "vs baseline"] == "x199,000 [x150,000, x260,000]"
    assert views._factor(12.34) == "12.3"
