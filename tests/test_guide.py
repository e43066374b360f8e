"""quantedu.course.guide.recommend on measured rows, and comparison.table's cells (synthetic rows: milliseconds)."""
import math

import pandas as pd
import pytest
from fake_rows import rows

from quantedu.course import comparison, guide


def _table(**over):
    return guide.frame([r for r in rows(**over).values() if r.engine != "torch"])


def test_frame_reads_quality_and_speeds_from_the_rows():
    t = _table().set_index("variant")
    assert t.loc["GGUF Q4_K_M", "cpu_tok_s_1"] == 40.0 and t.loc["GGUF Q4_K_M", "cpu_tok_s_8"] == 90.0
    assert math.isnan(t.loc["GGUF Q5_K_M", "cpu_tok_s_8"]) and math.isnan(t.loc["GGUF Q4_K_M", "gpu_tok_s_1"])
    # the upper end of the interval is above the mean: the guide filters on it
    assert (t.ppl_increase_high > t.ppl_increase).all()
    assert t.loc["AWQ W4 asym g64", "kld"] < t.loc["GPTQ W4 asym g64", "kld"]


def test_the_fastest_measured_row_wins_and_a_tie_goes_to_the_smaller():
    # one user on the CPU: Q2_K (45 tokens/s) is fastest, but its perplexity is far outside 'moderate'; Q4_K_M (40),
    # Q5_K_M (38) and IQ4_XS (35) are within 15% of each other: the smallest of the tie wins
    rec = guide.recommend(_table(), "cpu", "one", accuracy="moderate")
    assert rec.choice == "GGUF IQ4_XS +imatrix" and rec.engine == "llama.cpp"
    assert "a tie within 15% with GGUF Q4_K_M, GGUF Q5_K_M" in str(rec)
    faster = _table(q5_k_m={"speed": {"cpu": {"1": 80.0}}})
    assert guide.recommend(faster, "cpu", "one", accuracy="moderate").choice == "GGUF Q5_K_M"


def test_many_users_only_counts_rows_measured_with_many_users():
    # 8 requests at once: BF16 100 and Q4_K_M 90 tokens/s are a tie, the smaller file wins
    rec = guide.recommend(_table(), "cpu", "many", accuracy="moderate")
    assert rec.choice == "GGUF Q4_K_M" and "BF16" in str(rec)
    small = guide.recommend(_table(), "cpu", "many", memory_budget_mb=100, accuracy="moderate")
    # IQ4_XS fits 100 MB but was never measured with 8 requests: no recommendation, and the reason says so
    assert small.choice is None and "none was measured" in str(small)


def test_accuracy_is_a_credible_bound_not_the_mean():
    t = _table()
    assert guide.recommend(t, "cpu", accuracy="highest").choice == "FP16"  # +2%: the nearly lossless rows only
    only = t[t.variant == "GGUF Q4_K_M"].assign(ppl_increase=0.05, ppl_increase_high=0.12)
    rec = guide.recommend(only, "cpu", accuracy="high")  # 'high' accepts +10%: the mean fits, the interval does not
    assert rec.choice is None and "at most +12.0%" in str(rec)
    assert guide.recommend(only.assign(ppl_increase_high=0.09), "cpu", accuracy="high").choice == "GGUF Q4_K_M"


def test_nothing_measured_on_a_gpu_recommends_nothing_and_points_to_the_planner():
    rec = guide.recommend(_table(), "gpu", "many", accuracy="moderate")
    assert rec.choice is None and "recommends only what it measured" in str(rec) and "quantedu plan" in str(rec)


def test_bad_arguments_are_explained():
    t = _table()
    with pytest.raises(ValueError, match="accuracy"):
        guide.recommend(t, "cpu", accuracy="perfect")
    with pytest.raises(ValueError, match="hardware"):
        guide.recommend(t, "tpu")
    with pytest.raises(ValueError, match="engine"):
        guide.recommend(t, "cpu", engine="ollama")
    with pytest.raises(ValueError, match="users"):
        guide.recommend(t, "cpu", users="3")
    with pytest.raises(ValueError, match="columns"):
        guide.recommend(pd.DataFrame({"variant": ["x"]}), "cpu")


def test_table_marks_speeds_that_no_engine_measured():
    r = rows()
    shown = comparison.table(list(r.values()))
    assert shown.loc["GGUF Q5_K_M", "tok/s, 8 users"] == "not measured"
    assert shown.loc["GGUF Q4_K_M", "tok/s, 1 user"] == "40"
    assert shown.loc["fp32 (baseline)", "tok/s, 1 user"] == "-"
    r["gptq"].speed = {}
    assert comparison.table(list(r.values())).loc["GPTQ W4 asym g64", "tok/s, 1 user"] == comparison.NA
    r["q4_k_m"].speed["cpu"]["1_runs"] = [38.0, 40.0, 44.5]  # repeated timings: median and range
    shown = comparison.table(list(r.values()))
    assert shown.loc["GGUF Q4_K_M", "tok/s, 1 user"] == "40 (38-44)"
    assert r["q4_k_m"].tok_s_range("cpu") == (38.0, 44.5) and r["q5_k_m"].tok_s_range("cpu") is None


def test_without_vllm_its_rows_keep_torch_quality_and_say_which_engine_ran(monkeypatch):
    """A machine without .venv-vllm (Colab CPU, the conda route): add_vllm says why, every checkpoint row keeps its
    torch quality with no speed, and the guide and table never credit vLLM with a measurement."""
    from quantedu.engines import vllm

    def no_vllm():
        raise vllm.MissingVLLMError("vLLM is not available: no vLLM environment was found")
    monkeypatch.setattr(vllm, "require_python", no_vllm)
    r = rows()
    for role in ("bf16", "gptq", "awq", "act_order"):
        r[role].speed, r[role].checkpoint = {}, f"/nonexistent/{role}"
    info = comparison.add_vllm(list(r.values()), session=None)
    assert info == {"missing": "vLLM is not available: no vLLM environment was found"}
    assert all("vLLM not installed here" in r[k].note and not r[k].kernel for k in ("bf16", "gptq", "awq"))
    shown = comparison.table(list(r.values()))
    assert shown.loc["GPTQ W4 asym g64", "tok/s, 1 user"] == comparison.NA
    assert shown.loc["GPTQ W4 asym g64", "engine"] == "torch only: vLLM did not run"
    assert shown.loc["GGUF Q4_K_M", "engine"] == "llama.cpp"
    rec = guide.recommend(guide.frame([x for x in r.values() if x.engine != "torch"]), "cpu", "one", accuracy="any")
    assert rec.engine == "llama.cpp"


def test_tiny_klds_are_shown_in_powers_of_ten_and_the_rest_as_the_views_round_them():
    r = rows()
    shown = comparison.table([r["baseline"], r["f16"], r["q4_k_m"]])
    k = r["f16"].report.kld
    assert shown.loc["FP16", "mean KLD"] == f"{k.mean:.1e} ± {k.se:.0e}" and "e-0" in shown.loc["FP16", "mean KLD"]
    assert "e" not in shown.loc["GGUF Q4_K_M", "mean KLD"]  # 0.08 ± 0.003: decimals, as quality_table writes them
