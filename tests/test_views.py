"""quantedu.course.views: the tables and figures notebooks show."""
from quantedu.course import views


def test_results_table_and_plots():
    df = views.results_table([{"m": "a", "ppl": 2.0, "bits": 4}, {"m": "b", "ppl": 1.0, "bits": 8}], sort_by="ppl")
    assert list(df["m"]) == ["b", "a"]
    ax = views.plot_bars(df, "m", "ppl", reference=1.5)
    assert len(ax.patches) == 2
    ax = views.plot_tradeoff(df, "bits", "ppl", "m")
    assert len(ax.texts) == 2
