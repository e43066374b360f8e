"""Notebook 07's "what differs, and why": every sentence is computed from the rows it is given
(quantedu.course.findings; synthetic rows, tests/fake_rows.py, and the tiny Llama's shapes: milliseconds)."""
from fake_rows import rows

from quantedu.course import findings
from quantedu.course.seed_check import Measured

CPU = {"gpu": False, "llama_gpu_offload": False, "machine": "x86_64"}
VLLM_CPU = {"vllm": "0.x", "device": "cpu", "hardware": "cpu", "act_order": {"served": True, "why": ""}}


def test_the_sentences_carry_the_measured_numbers(tiny_llama):
    r = rows()
    r["bf16"].kernel, r["gptq"].kernel = "vLLM dense", "vLLM CPUWNA16LinearKernel"
    r["gptq"].served = {"ok": True, "ppl_ratio": 0.004}
    r["awq"].served = {"ok": False, "ppl_ratio": 0.03}
    lines = findings.differences(Measured(r, VLLM_CPU, tiny_llama, here=CPU), True, 0.01)
    text = "\n".join(lines)
    assert len(lines) == 6
    assert "Q4_K_M at 40 tokens/s and F16 at 20 (x2.00)" in text
    assert "8 requests served together: BF16 100, GPTQ W4 asym g64 80, AWQ W4 asym g64 82 (llama-server Q4_K_M: 90)" in text
    assert "Q4_K to 60 of 210 block matrices" in text and "cannot be tested on this model's shapes" in text
    assert "GPTQ 60 s and AWQ 90 s" in text
    assert "GPTQ W4 asym g64 +0.40%, AWQ W4 asym g64 +3.00%" in text and "outside it: AWQ W4 asym g64" in text
    # the KLD comparison goes through the rule: AWQ's 0.03 against GPTQ's 0.06 on 1,024 tokens is called
    assert "AWQ W4 asym g64" in findings.calibration(Measured(r, VLLM_CPU, tiny_llama, here=CPU)).split("KL divergence:")[1]


def test_without_vllm_the_rows_say_which_engine_ran(tiny_llama):
    m = Measured(rows(), None, tiny_llama, here=CPU)
    assert "vLLM is not installed here: its rows have no speed" in findings.speed(m)
    assert "vLLM did not run here" in findings.served(list(m.rows.values()), 0.01)
