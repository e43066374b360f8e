"""The comparison post's rules get verdicts from measured rows through the verdict rule, not from typed-in numbers
(synthetic rows sharing one baseline, tests/fake_rows.py: milliseconds; the K-quant rules plan a real shape)."""
import pytest
from fake_rows import coverage, report, rows

from quantedu.course import seed_check
from quantedu.course.seed_check import FAILS, HOLDS, TIE, UNTESTED, Measured

CPU = {"gpu": False, "llama_gpu_offload": False, "machine": "x86_64"}
GPU = {"gpu": True, "llama_gpu_offload": True, "machine": "x86_64"}
VLLM_CPU = {"vllm": "0.x", "device": "cpu", "hardware": "cpu", "act_order": {"served": True, "why": ""}}


def verdict(m, rule):
    v = seed_check.rule_verdicts(m).set_index("rule")
    return v.loc[rule, "verdict"], v.loc[rule, "evidence"]


def test_the_five_rules_are_the_quoted_ones():
    assert list(seed_check.rules().rule) == [1, 2, 3, 4, 5]
    assert seed_check.rules().source.str.contains("shared/seed").all()


def test_the_vllm_rule_needs_a_gpu_and_follows_the_measured_times_and_kld():
    state, evidence = verdict(Measured(rows(), VLLM_CPU, here=CPU), 1)
    assert state == UNTESTED and "no GPU here" in evidence and "AWQ quantized in 90 s vs GPTQ 60 s" in evidence
    assert verdict(Measured(rows(), None, here=CPU), 1)[1].startswith("vLLM is not installed here")
    gpu = {**VLLM_CPU, "device": "cuda", "hardware": "gpu"}
    on_gpu = {"gptq": {"speed": {"gpu": {"1": 100.0}}}, "awq": {"speed": {"gpu": {"1": 104.0}}}}
    # AWQ took longer to make (90 vs 60 s): the rule's "much faster to make" does not hold
    assert verdict(Measured(rows(**on_gpu), gpu, here=GPU), 1)[0] == FAILS
    quick = {**on_gpu, "awq": {**on_gpu["awq"], "quant_s": 20.0}}
    assert verdict(Measured(rows(**quick), gpu, here=GPU), 1)[0] == HOLDS


def test_act_order_is_judged_by_the_rule_and_by_what_vllm_serves():
    # act-order's KLD (0.059) against GPTQ's (0.06) on 1,024 tokens: inside the noise
    state, evidence = verdict(Measured(rows(), VLLM_CPU, here=CPU), 2)
    assert state == TIE and "a tie at 1,024 tokens" in evidence
    refused = {**VLLM_CPU, "act_order": {"served": False, "why": "desc_act is not supported"}}
    state, evidence = verdict(Measured(rows(), refused, here=CPU), 2)
    assert state == FAILS and "refuses desc_act" in evidence
    assert verdict(Measured(rows(), None, here=CPU), 2)[0] == UNTESTED
    best = rows()
    best["act_order"].report = report("GPTQ W4 asym g64 act-order", 0.005, seed=9)  # far below GPTQ and AWQ
    state, evidence = verdict(Measured(best, VLLM_CPU, here=CPU), 2)
    assert state == HOLDS and "GPTQ W4 asym g64 act-order better than GPTQ W4 asym g64" in evidence


def test_the_cpu_rule_follows_the_guides_pick():
    state, evidence = verdict(Measured(rows(), VLLM_CPU, here=CPU), 4)
    # IQ4_XS wins the tie on size: a GGUF file, but not the Q4_K_M/Q5_K_M the rule names
    assert state == FAILS and "for one user is GGUF IQ4_XS +imatrix" in evidence and "60 Q4_K of 210" in evidence
    no_iq = rows(iq4_xs={"speed": {"cpu": {"1": 5.0}}})
    assert verdict(Measured(no_iq, VLLM_CPU, here=CPU), 4)[0] == HOLDS
    assert verdict(Measured(rows(), VLLM_CPU, here=CPU), 3)[0] == UNTESTED


def test_iq4_xs_is_tested_only_where_the_matrices_got_it():
    state, evidence = verdict(Measured(rows(), VLLM_CPU, here=CPU), 5)
    assert state == UNTESTED and "cannot be tested on this model's shapes" in evidence and "bits/weight" in evidence
    got = {"coverage": coverage(210, 0, "IQ4_XS")}
    state, evidence = verdict(Measured(rows(iq4_xs=got), VLLM_CPU, here=CPU), 5)
    # IQ4_XS (95 MB, about +9%) is the smallest file credibly within +25%; Q2_K (70 MB) is far outside
    assert state == HOLDS and "the smallest of them: GGUF IQ4_XS +imatrix" in evidence


def test_quiz_answers_use_the_measured_numbers(tiny_llama):
    answers = seed_check.quiz_answers(Measured(rows(gptq={"quant_s": 123.0}), VLLM_CPU, tiny_llama, here=CPU))
    assert [a["question"][:3] for a in answers] == ["Why", "Wha", "GPT"]
    assert "Premise holds here" in answers[0]["measured here"] and "GPTQ 123 s" in answers[0]["measured here"]
    assert "Q4_K_M:" in answers[1]["measured here"] and "fall back" in answers[1]["measured here"]
    assert "AWQ W4 asym g64 better than GPTQ W4 asym g64" in answers[2]["measured here"]

