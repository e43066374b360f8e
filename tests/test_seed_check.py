"""The comparison post's rules get verdicts from the numbers they are given, not typed-in ones."""
import math

import pandas as pd

from quantedu.course import seed_check
from quantedu.course.seed_check import FAILS, HOLDS, UNTESTED, Measured

CPU = {"gpu": False, "llama_gpu_offload": False, "machine": "x86_64"}
GPU = {"gpu": True, "llama_gpu_offload": False, "machine": "x86_64"}


def table(awq_s=30.0, gptq_s=60.0, gpu_speed=(math.nan, math.nan), q4_speed=50.0):
    rows = [
        dict(variant="FP16", format="fp16", memory_mb=270, ppl=10.0, quant_s=math.nan, cpu_tok_s=20.0,
             gpu_tok_s=math.nan, engine="vllm"),
        dict(variant="GPTQ-4bit", format="gptq", memory_mb=90, ppl=10.6, quant_s=gptq_s, cpu_tok_s=25.0,
             gpu_tok_s=gpu_speed[0], engine="vllm", label="GPTQ W4 sym g64",
             **{"ppl, text A": 10.5, "ppl, text B": 10.7}),
        dict(variant="AWQ-4bit", format="awq", memory_mb=90, ppl=10.4, quant_s=awq_s, cpu_tok_s=26.0,
             gpu_tok_s=gpu_speed[1], engine="vllm", label="AWQ W4 asym g64",
             **{"ppl, text A": 10.3, "ppl, text B": 10.5}),
        dict(variant="GGUF Q4_K_M", format="gguf", memory_mb=100, ppl=10.8, quant_s=5.0, cpu_tok_s=q4_speed,
             gpu_tok_s=math.nan, engine="llama.cpp"),
        dict(variant="GGUF Q5_K_M", format="gguf", memory_mb=110, ppl=10.5, quant_s=5.0, cpu_tok_s=45.0,
             gpu_tok_s=math.nan, engine="llama.cpp"),
    ]
    return pd.DataFrame(rows)


def verdict(m, rule):
    v = seed_check.rule_verdicts(m).set_index("rule")
    return v.loc[rule, "verdict"], v.loc[rule, "evidence"]


def test_the_five_rules_are_the_quoted_ones():
    assert list(seed_check.rules().rule) == [1, 2, 3, 4, 5]
    assert seed_check.rules().source.str.contains("shared/seed").all()


def test_vllm_rule_needs_a_gpu_run_and_follows_the_numbers():
    assert verdict(Measured(table(), here=CPU, vllm_device="cpu"), 1)[0] == UNTESTED
    fast = Measured(table(gpu_speed=(100.0, 105.0)), here=GPU, vllm_device="cuda")
    assert verdict(fast, 1)[0] == HOLDS
    slow = Measured(table(awq_s=90.0, gpu_speed=(100.0, 105.0)), here=GPU, vllm_device="cuda")
    state, evidence = verdict(slow, 1)
    assert state == FAILS and "90 s" in evidence


def test_act_order_rule_fails_where_vllm_refuses_it_and_ties_within_noise():
    ao = {"variant": "GPTQ-4bit act-order", "ppl": 10.2, "ppl, text A": 10.1, "ppl, text B": 10.3}
    refused = {seed_check.ACT_ORDER_FORMAT: {"served": False, "why": "desc_act is not supported"}}
    state, evidence = verdict(Measured(table(), act_order=ao, formats=refused, here=CPU), 2)
    assert state == FAILS and "refuses" in evidence
    served = {seed_check.ACT_ORDER_FORMAT: {"served": True, "why": ""}}
    assert verdict(Measured(table(), act_order=ao, formats=served, here=CPU), 2)[0] == HOLDS
    noisy = {**ao, "ppl, text A": 10.6, "ppl, text B": 10.0}  # lower on one half only
    state, evidence = verdict(Measured(table(), act_order=noisy, formats=served, here=CPU), 2)
    assert state == FAILS and "noise" in evidence
    assert verdict(Measured(table(), here=CPU), 2)[0] == UNTESTED


def test_cpu_rule_and_extreme_compression_follow_the_table():
    assert verdict(Measured(table(), here=CPU), 4)[0] == HOLDS
    # a vLLM row far faster than llama.cpp on the CPU: the guide picks it, the rule fails
    t = table(q4_speed=5.0)
    t.loc[t.variant == "GGUF Q5_K_M", "cpu_tok_s"] = 5.0
    assert verdict(Measured(t, here=CPU), 4)[0] == FAILS
    iq = {"variant": "GGUF IQ4_XS +imatrix", "format": "gguf", "memory_mb": 80, "ppl": 11.0}
    q2 = {"variant": "GGUF Q2_K +imatrix", "format": "gguf", "memory_mb": 60, "ppl": 20.0}
    assert verdict(Measured(table(), imatrix_rows=(iq, q2), here=CPU), 5)[0] == HOLDS  # Q2_K: +100%, too far
    q2_good = {**q2, "ppl": 11.5}
    state, evidence = verdict(Measured(table(), imatrix_rows=(iq, q2_good), here=CPU), 5)
    assert state == FAILS and "Q2_K" in evidence
    assert verdict(Measured(table(), here=CPU), 5)[0] == UNTESTED
    assert verdict(Measured(table(), here=CPU), 3)[0] == UNTESTED


def test_quiz_answers_use_the_measured_numbers():
    answers = seed_check.quiz_answers(Measured(table(awq_s=123.0), shape="smollm2-135m", here=CPU, vllm_device="cpu"))
    assert [a["question"][:3] for a in answers] == ["Why", "Wha", "GPT"]
    assert "does not hold here" in answers[0]["measured here"] and "123 s" in answers[0]["measured here"]
    assert "Q3_K_L only" in answers[1]["measured here"] and "Q4_K_M plans" in answers[1]["measured here"]
    assert "perplexity AWQ 10.40" in answers[2]["measured here"]

