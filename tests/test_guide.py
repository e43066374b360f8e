"""quantedu.course.guide.recommend and quantedu.course.comparison's table helpers (no model, no server: milliseconds)."""
import math

import pandas as pd
import pytest

from quantedu.course import comparison, guide

NAN = math.nan


def _table(**over):
    rows = [
        {"variant": "FP16", "format": "fp16", "memory_mb": 270.0, "ppl": 12.7, "quant_s": NAN, "cpu_tok_s": 20.0},
        {"variant": "GGUF Q5_K_M", "format": "gguf", "memory_mb": 112.0, "ppl": 14.0, "quant_s": 6.0,
         "cpu_tok_s": 30.0},
        {"variant": "AWQ-4bit", "format": "awq", "memory_mb": 120.0, "ppl": 13.9, "quant_s": 90.0, "cpu_tok_s": NAN},
        {"variant": "GGUF Q4_K_M", "format": "gguf", "memory_mb": 105.0, "ppl": 13.4, "quant_s": 7.0,
         "cpu_tok_s": 28.0},
        {"variant": "GPTQ-4bit", "format": "gptq", "memory_mb": 118.0, "ppl": 14.3, "quant_s": 60.0, "cpu_tok_s": NAN},
    ]
    for r in rows:
        r.update(over.get(r["variant"], {}))
    return comparison.table(rows)


def test_table_orders_rows_and_marks_missing_speeds():
    t = _table()
    assert list(t.variant) == list(comparison.VARIANTS)
    shown = comparison.display_table(t)
    assert shown.loc["GPTQ-4bit", "cpu_tok_s"] == "n/a on this hardware"
    assert shown.loc["GPTQ-4bit", "gpu_tok_s"] == "n/a on this hardware"
    assert shown.loc["FP16", "quant_s"] == "-"
    assert shown.loc["GGUF Q4_K_M", "cpu_tok_s"] == "28.0"


def test_cpu_only_offers_formats_with_a_cpu_kernel_and_ranks_by_measured_speed():
    rec = guide.recommend(_table(), "cpu", accuracy="any")
    assert set(rec.candidates[rec.candidates.engine == "llama.cpp"].format) <= {"gguf", "fp16"}
    assert set(rec.candidates[rec.candidates.engine == "vllm"].format) == {"gptq", "awq", "fp16"}  # vLLM's CPU backend
    # 28 vs 30 tokens/s is a tie (within 15%): the lower perplexity wins
    assert rec.choice == "GGUF Q4_K_M" and rec.engine == "llama.cpp"
    # make Q5_K_M clearly faster: the choice follows the measurement
    rec = guide.recommend(_table(**{"GGUF Q5_K_M": {"cpu_tok_s": 60.0}}), "cpu", accuracy="any")
    assert rec.choice == "GGUF Q5_K_M"


def test_accuracy_and_memory_filters():
    t = _table()
    # +2% over 12.7 rules out every quantized row; FP16 is too big for 200 MB
    rec = guide.recommend(t, "cpu", memory_budget_mb=200, accuracy="highest")
    assert rec.choice is None and any("budget" in r for r in rec.reasons)
    rec = guide.recommend(t, "cpu", memory_budget_mb=math.inf, accuracy="highest")
    assert rec.choice == "FP16"
    rec = guide.recommend(t, "cpu", memory_budget_mb=110, accuracy="moderate")
    assert rec.choice == "GGUF Q4_K_M"  # the only one under 110 MB
    assert "110 MB" in str(rec)


def test_gpu_prefers_measured_speed_then_accuracy_and_marks_experimental_gguf():
    t = _table()
    rec = guide.recommend(t, "gpu", memory_budget_mb=125, accuracy="moderate", engine="vllm")
    # nothing measured on GPU: lowest perplexity among non-experimental fits (AWQ 13.9 < GPTQ 14.3)
    assert rec.choice == "AWQ-4bit" and rec.engine == "vllm"
    t2 = _table(**{"GPTQ-4bit": {"gpu_tok_s": 500.0}})
    assert guide.recommend(t2, "gpu", 125, "moderate", "vllm").choice == "GPTQ-4bit"
    # only GGUF fits 106 MB: vLLM may serve it on a GPU, with the plugin note
    rec = guide.recommend(t, "gpu", 106, "moderate", "vllm")
    assert rec.choice == "GGUF Q4_K_M" and any("plugin" in r for r in rec.reasons)


def test_bad_arguments_are_explained():
    t = _table()
    with pytest.raises(ValueError, match="accuracy"):
        guide.recommend(t, "cpu", accuracy="perfect")
    with pytest.raises(ValueError, match="hardware"):
        guide.recommend(t, "tpu")
    with pytest.raises(ValueError, match="engine"):
        guide.recommend(t, "cpu", engine="ollama")
    with pytest.raises(ValueError, match="columns"):
        guide.recommend(pd.DataFrame({"variant": ["x"]}), "cpu")
    rec = guide.recommend(t[t.format == "gguf"], "cpu", engine="vllm")  # vLLM's GGUF plugin needs CUDA
    assert rec.choice is None and "vllm" in rec.reasons[0]


def test_speed_is_credited_only_to_the_engine_that_measured_it():
    t = _table(**{v: {"engine": "llama.cpp"} for v in ("FP16", "GGUF Q4_K_M", "GGUF Q5_K_M")})
    rec = guide.recommend(t, "cpu", accuracy="highest")  # only FP16 fits: via llama.cpp or transformers
    cand = rec.candidates[rec.candidates.variant == "FP16"].set_index("engine")
    assert cand.loc["llama.cpp", "tok_s"] == 20.0 and math.isnan(cand.loc["transformers", "tok_s"])
    assert rec.engine == "llama.cpp"
