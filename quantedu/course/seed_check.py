"""The comparison post's selection guide and quiz answers, tested against what this run measured.

The post this course answers ("a popular comparison post", ``shared/seed``) ends with five selection rules
(package data ``course/data/seed_rules.csv``) and three quiz questions. :func:`rule_verdicts` gives each rule a
verdict from measured rows (:class:`quantedu.course.comparison.Row`): **holds here**, **does not hold here**, **a
tie at this much text** (the verdict rule, :mod:`quantedu.verdict`, cannot separate what the rule compares) or
**cannot be tested here** (with the reason). Every quality comparison goes through the rule (``report.verdict``);
a claim about a K-quant type is made only where the matrices got that type, else it "cannot be tested on this
model's shapes" and the bits/weight the mix would have on a 7-8B shape are shown. :func:`quiz_answers` answers the
three questions with the same numbers. Nothing is typed in: another model, machine or ``FAST`` can change each one.
"""
from __future__ import annotations

import math
import platform
from dataclasses import dataclass, field

import pandas as pd

from .guide import SPEED_TIE, frame, recommend
from .seed import seed_csv

HOLDS, FAILS, TIE, UNTESTED = "holds here", "does not hold here", "a tie at this much text", "cannot be tested here"
REAL_SHAPE = "llama-3.1-8b"  # where a K-quant claim cannot be tested on this model's shapes: its bits on a 8B shape
ROLES = ("baseline", "f16", "q4_k_m", "q5_k_m", "bf16", "gptq", "awq", "act_order", "iq4_xs", "q2_k",  # q2_k optional
         "mxfp4", "nvfp4", "w8a8")  # notebooks 08 and 09: optional


def hardware() -> dict:
    """What decides which rules this machine can test: a CUDA GPU, llama.cpp's offload, the CPU's kind."""
    import torch
    try:
        import llama_cpp
        offload = bool(llama_cpp.llama_supports_gpu_offload())
    except ImportError:
        offload = False
    return {"gpu": torch.cuda.is_available(), "llama_gpu_offload": offload, "machine": platform.machine()}


@dataclass(frozen=True)
class Measured:
    """Everything the verdicts read: this run's rows by role (:data:`ROLES`; a missing role was not measured),
    what :func:`quantedu.course.comparison.add_vllm` returned, and the model (its shapes)."""

    rows: dict
    vllm: dict | None = None
    model: object = None
    here: dict = field(default_factory=hardware)

    def __getitem__(self, role: str):
        return self.rows.get(role)

    @property
    def vllm_hw(self) -> str | None:
        return None if not self.vllm or "missing" in self.vllm else self.vllm["hardware"]


def _pct(x: float) -> str:
    return f"{100 * x:+.1f}%"


def _short(v) -> str:
    """A verdict in a few words: who is better by how much, or a tie and the text it would take."""
    iv = v.interval
    if v.tie:
        need = "" if not math.isfinite(v.tokens_needed) else f", about {float(f'{v.tokens_needed:.2g}'):,.0f} tokens would tell"
        return f"{v.a} vs {v.b}: a tie at {iv.tokens:,} tokens{need}"
    loser = v.b if v.winner == v.a else v.a
    return f"{v.winner} better than {loser} ({abs(iv.mean):.3g} {'nats' if 'KL' in v.what else 'nats/token'} apart)"


def _times(m: Measured) -> str:
    g, a = m["gptq"], m["awq"]
    return (f"AWQ quantized in {a.quant_s:.0f} s vs GPTQ {g.quant_s:.0f} s (same {g.label.split('on ')[-1]}, same "
            f"grid and group, 1 thread)")


def _rule_vllm_awq(m: Measured):
    g, a = m["gptq"], m["awq"]
    quality = _short(a.report.verdict(g.report, metric="kld"))
    hw = m.vllm_hw
    speeds = "" if hw is None else f"; vLLM ({hw}) decoded AWQ at {a.tok_s(hw):.0f} vs GPTQ {g.tok_s(hw):.0f} tokens/s"
    if hw != "gpu":
        where = "vLLM is not installed here" if hw is None else "no GPU here (vLLM ran on the CPU)"
        return UNTESTED, f"{where}. Measured: {_times(m)}; KLD: {quality}{speeds}"
    v = a.report.verdict(g.report, metric="kld")
    ok = a.quant_s < g.quant_s and a.tok_s("gpu") >= SPEED_TIE * g.tok_s("gpu") and v.winner != g.variant
    return (HOLDS if ok else FAILS), f"{_times(m)}; KLD: {quality}{speeds}"


def _rule_gptq_act_order(m: Measured):
    ao, g, a = m["act_order"], m["gptq"], m["awq"]
    if ao is None:
        return UNTESTED, "no act-order GPTQ row was measured"
    vg, va = ao.report.verdict(g.report, metric="kld"), ao.report.verdict(a.report, metric="kld")
    acc = f"static act-order on the same grid: {_short(vg)}; against AWQ: {_short(va)}"
    served = (m.vllm or {}).get("act_order")
    if served is not None and not served["served"]:
        return FAILS, f"vLLM here refuses desc_act: true ({served['why']}); {acc}"
    if served is None:
        return UNTESTED, f"vLLM did not run here, so serving desc_act: true is untested; {acc}"
    if vg.tie or va.tie:
        return TIE, acc
    return (HOLDS if vg.winner == ao.variant and va.winner == ao.variant else FAILS), acc


def _rule_hybrid(m: Measured):
    h = m.here
    if not h["gpu"]:
        why = "no GPU on this machine, so there is nothing to split the layers with"
    elif not h["llama_gpu_offload"]:
        why = "a GPU is here, but this llama.cpp build cannot offload layers (a CPU build)"
    else:
        why = "this notebook measures no partial offload (llama.cpp -ngl below the layer count)"
    return UNTESTED, f"{why}; on the CPU alone Q4_K_M decoded at {m['q4_k_m'].tok_s('cpu'):.0f} tokens/s"


def _rule_cpu(m: Measured):
    rows = [r for r in m.rows.values() if r is not None and r.engine != "torch"]
    table = frame(rows)
    one, many = recommend(table, "cpu", "one", accuracy="moderate"), recommend(table, "cpu", "many", accuracy="moderate")
    speeds = ", ".join(f"{r.variant} {r.tok_s('cpu'):.0f}" for r in sorted(rows, key=lambda r: -r.tok_s("cpu"))
                       if r.tok_s("cpu") == r.tok_s("cpu"))
    mac = "" if m.here["machine"] in ("arm64", "aarch64") else f" (an {m.here['machine']} CPU: no Apple silicon here)"
    cov = m["q4_k_m"].coverage
    kq = f"; 'Q4_K_M' here is {cov['got']} Q4_K of {cov['matrices']} matrices ({cov['fell_back']} fell back)" if cov else ""
    verdict = HOLDS if one.choice in ("GGUF Q4_K_M", "GGUF Q5_K_M") else FAILS
    return verdict, (f"the guide's pick on this CPU{mac} for one user is {one.choice}, for many users {many.choice}; "
                     f"tokens/s, one user, 1 thread: {speeds}{kq}")


def planned_bits(mix: str, shape=REAL_SHAPE) -> float:
    """Bits per weight of the blocks' matrices of ``mix`` on a real model's shape (every row a multiple of 256)."""
    from ..gguf.mixes import type_coverage
    return type_coverage(shape, mix)["bits_per_weight"]


def _rule_iq4_xs(m: Measured):
    iq = m["iq4_xs"]
    if iq is None:
        return UNTESTED, "no IQ4_XS file was measured"
    cov = iq.coverage
    if cov["fell_back"]:
        return UNTESTED, (f"cannot be tested on this model's shapes: only {cov['got']} of {cov['matrices']} matrices "
                          f"got IQ4_XS ({cov['fell_back']} fell back: rows not a multiple of 256), so the file measures "
                          f"mostly its fallback types. On a {REAL_SHAPE} shape every matrix gets it: IQ4_XS "
                          f"{planned_bits('IQ4_XS'):.2f} bits/weight, Q2_K {planned_bits('Q2_K'):.2f}, Q4_K_M "
                          f"{planned_bits('Q4_K_M'):.2f}")
    limit = 0.25  # the guide's 'moderate' accuracy need
    gguf = [r for r in m.rows.values() if r is not None and r.format == "gguf"]
    within = [r for r in gguf if math.expm1(r.report.delta_nll.high) <= limit]
    unsure = [r for r in gguf if r not in within and math.expm1(r.report.delta_nll.low) <= limit]
    smaller_unsure = [r.variant for r in unsure if r.memory_mb < iq.memory_mb]
    text = (f"IQ4_XS +imatrix: {iq.memory_mb:.1f} MB, perplexity {_pct(math.expm1(iq.report.delta_nll.mean))}; "
            "files credibly within +25%: " + (", ".join(f"{r.variant} {r.memory_mb:.1f} MB" for r in within) or "none"))
    if smaller_unsure:
        return TIE, text + f"; smaller and undecided at this much text: {', '.join(smaller_unsure)}"
    if not within:
        return FAILS, text
    best = min(within, key=lambda r: r.memory_mb)
    return (HOLDS if best is iq else FAILS), text + f"; the smallest of them: {best.variant}"


_RULES = {1: _rule_vllm_awq, 2: _rule_gptq_act_order, 3: _rule_hybrid, 4: _rule_cpu, 5: _rule_iq4_xs}


def rules() -> pd.DataFrame:
    """The post's five rules as quoted (package data ``course/data/seed_rules.csv``)."""
    return seed_csv("seed_rules")


def rule_verdicts(m: Measured) -> pd.DataFrame:
    """One row per rule: ``situation``, ``advice`` (quoted), ``verdict`` and the measured ``evidence``."""
    out = []
    for r in rules().itertuples():
        verdict, evidence = _RULES[int(r.rule)](m)
        out.append({"rule": int(r.rule), "situation": r.situation, "advice": r.advice, "verdict": verdict,
                    "evidence": evidence})
    return pd.DataFrame(out)


def k_and_m(model, mixes=("Q4_K_S", "Q4_K_M")) -> str:
    """What K and M mean, on this model's matrices and on a real shape (only tensors that got the type)."""
    from ..gguf.mixes import type_coverage
    parts = []
    for mix in mixes:
        c = type_coverage(model, mix)
        parts.append(f"{mix}: {c['got']} of {c['matrices']} matrices get {c['type']}, {c['other_kquant']} another "
                     f"K-quant, {c['fell_back']} fall back ({c['bits_per_weight']:.2f} bits/weight); on {REAL_SHAPE} "
                     f"{planned_bits(mix):.2f}")
    return ("K is the block format (256-weight super-blocks with quantized sub-block scales); S/M/L is the mix that "
            "picks a type per tensor. " + "; ".join(parts) + ". A verdict about Q4_K itself needs the matrices that "
            "got it.")


def quiz_answers(m: Measured, awq_config=None) -> list[dict]:
    """The post's three quiz questions: what it answers (paraphrased) and what this run measured."""
    from ..awq import AWQConfig

    cfg = awq_config or AWQConfig()
    g, a = m["gptq"], m["awq"]
    ratio = a.quant_s / g.quant_s
    faster = ("holds here" if ratio < SPEED_TIE else "does not hold here" if ratio > 1 / SPEED_TIE else
              "is within timing noise here (15%)")
    q1 = (f"Premise {faster}: {_times(m)} (x{ratio:.2f}). GPTQ runs the calibration once per block and solves one "
          f"Hessian per layer; AWQ tries {cfg.n_grid} scales per group of layers, each a forward pass over the search "
          f"samples, then a {cfg.clip_grid}-point clipping search per layer: how that compares depends on the hardware.")
    return [
        {"question": "Why is AWQ faster to quantize than GPTQ?",
         "the post": "GPTQ's per-layer Hessian inverse and sequential updates are expensive; AWQ only scales channels",
         "measured here": q1},
        {"question": "What do K and M mean in Q4_K_M?",
         "the post": "K: a mixed method giving layers different bit widths by importance; M: medium (S/M/L)",
         "measured here": k_and_m(m.model) if m.model is not None else "not measured (no model given)"},
        {"question": "GPTQ or AWQ for vLLM?",
         "the post": "AWQ in most cases (much faster to make, similar speed and perplexity); GPTQ with desc_act "
                     "for the last bit of accuracy",
         "measured here": _gptq_or_awq(m)},
    ]


def _gptq_or_awq(m: Measured) -> str:
    g, a, ao = m["gptq"], m["awq"], m["act_order"]
    hw = m.vllm_hw
    where = ("vLLM is not installed here" if hw is None
             else f"vLLM ({hw}, 1 thread): AWQ {a.tok_s(hw):.0f} vs GPTQ {g.tok_s(hw):.0f} tokens/s")
    text = f"{where}; {_times(m)}; KLD: {_short(a.report.verdict(g.report, metric='kld'))}"
    served = (m.vllm or {}).get("act_order")
    if ao is not None:
        text += f"; act-order: {_short(ao.report.verdict(g.report, metric='kld'))}"
        if served is not None:
            text += ", and vLLM " + ("serves desc_act: true" if served["served"] else "here refuses desc_act: true "
                                     "(static act-order, stored as desc_act: false, is served)")
    return text + "."


__all__ = ["HOLDS", "FAILS", "TIE", "UNTESTED", "ROLES", "REAL_SHAPE", "Measured", "hardware", "rules",
           "rule_verdicts", "quiz_answers", "k_and_m", "planned_bits"]
