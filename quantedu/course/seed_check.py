"""The comparison post's selection guide and quiz answers, tested against what this run measured.

The post this course answers ("a popular comparison post", ``shared/seed``) ends with five selection rules
(package data ``course/data/seed_rules.csv``) and three quiz questions. :func:`rule_verdicts` gives each rule a verdict computed
from measured rows - **holds here**, **does not hold here** (with the number) or **cannot be tested here**
(with the reason) - and :func:`quiz_answers` answers the three questions with the same numbers. Nothing is
typed in: another model, machine or ``FAST`` setting can change every verdict.

The rows come from :mod:`quantedu.course.comparison` (notebook 07): the five-variant table, GPTQ in activation order
(``torch_row(..., desc_act=True)``), GGUF files quantized with an importance matrix
(``gguf_row(..., imatrix=...)``) and, where vLLM is installed, :func:`quantedu.engines.vllm_probe.served_formats`.
"""
from __future__ import annotations

import math
import platform
from dataclasses import dataclass, field

import pandas as pd

from .guide import ACCURACY, SPEED_TIE, recommend
from .seed import seed_csv

HOLDS, FAILS, UNTESTED = "holds here", "does not hold here", "cannot be tested here"
ACT_ORDER_FORMAT = "GPTQ act-order, dynamic (desc_act)"  # the vllm_probe label of a desc_act: true export


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
    """Everything the verdicts read; every field is a measurement of this run (or ``None``: not measured)."""

    table: pd.DataFrame                      # comparison.table(rows)
    act_order: dict | None = None            # comparison.torch_row("gptq", ..., desc_act=True)
    imatrix_rows: tuple = ()                 # comparison.gguf_row(mix, ..., imatrix=...) rows
    formats: dict | None = None              # vllm_probe.served_formats(...): label -> {"served", "why", ...}
    vllm_device: str | None = None           # where vLLM ran ("cpu", "cuda"); None: not installed
    shape: object = None                     # the model (anything quantedu.memory.model_shape reads)
    here: dict = field(default_factory=hardware)

    @property
    def by(self) -> pd.DataFrame:
        return self.table.set_index("variant")

    @property
    def speed(self) -> str:
        """The tokens/s column vLLM's rows filled: ``gpu_tok_s`` on a GPU, else ``cpu_tok_s``."""
        return "gpu_tok_s" if self.vllm_device == "cuda" else "cpu_tok_s"

    def increase(self, row) -> float:
        """Perplexity increase of ``row`` over the FP16 row."""
        return row["ppl"] / self.by.loc["FP16"].ppl - 1


def _pct(x: float) -> str:
    return f"{100 * x:+.1f}%"


def _lower(a, b) -> str:
    """How ``a``'s perplexity compares with ``b``'s: 'lower' only when lower on both halves of the text
    (where the rows have halves), so a difference smaller than the text's noise is not called a win."""
    halves = all(k in r and r[k] == r[k] for r in (a, b) for k in ("ppl, text A", "ppl, text B"))
    if halves and (a["ppl, text A"] < b["ppl, text A"]) != (a["ppl, text B"] < b["ppl, text B"]):
        return "within the text's noise of (its two halves disagree)"
    return "lower than" if a["ppl"] < b["ppl"] else "higher than"


def _rule_vllm_awq(m: Measured):
    g, a = m.by.loc["GPTQ-4bit"], m.by.loc["AWQ-4bit"]
    quant = f"AWQ quantized in {a.quant_s:.0f} s vs GPTQ {g.quant_s:.0f} s (same calibration, 1 thread)"
    sg, sa = g.get(m.speed, math.nan), a.get(m.speed, math.nan)
    served = "" if sg != sg or sa != sa else f"; vLLM decoded AWQ at {sa:.0f} vs GPTQ {sg:.0f} tokens/s"
    if m.vllm_device != "cuda" or sg != sg or sa != sa:
        return UNTESTED, f"no vLLM run on a GPU here. Measured on this {m.here['machine']} CPU: {quant}{served}"
    ok = a.quant_s < g.quant_s and sa >= SPEED_TIE * sg
    return (HOLDS if ok else FAILS), quant + served


def _rule_gptq_act_order(m: Measured):
    if m.act_order is None:
        return UNTESTED, "no act-order GPTQ row was measured"
    ao, g, a = m.act_order, m.by.loc["GPTQ-4bit"], m.by.loc["AWQ-4bit"]
    acc = (f"perplexity {ao['ppl']:.2f} with act-order, {_lower(ao, g)} GPTQ without it ({g.ppl:.2f}) and "
           f"{_lower(ao, a)} AWQ ({a.ppl:.2f})")
    fmt = (m.formats or {}).get(ACT_ORDER_FORMAT)
    if fmt is not None and not fmt["served"]:
        return FAILS, f"vLLM here refuses a desc_act: true checkpoint ({fmt['why']}); {acc}"
    ok = _lower(ao, g) == _lower(ao, a) == "lower than"
    if fmt is None:
        return UNTESTED, f"vLLM did not run here, so serving is untested; {acc}"
    return (HOLDS if ok else FAILS), f"vLLM serves it; {acc}"


def _rule_hybrid(m: Measured):
    h = m.here
    if not h["gpu"]:
        why = "no GPU on this machine, so there is nothing to split the layers with"
    elif not h["llama_gpu_offload"]:
        why = "a GPU is here, but this llama.cpp build cannot offload layers (a CPU build)"
    else:
        why = "this notebook measures no partial offload (llama.cpp -ngl below the layer count)"
    q4 = m.by.loc["GGUF Q4_K_M"]
    return UNTESTED, f"{why}; on the CPU alone Q4_K_M decoded at {q4.cpu_tok_s:.0f} tokens/s"


def _rule_cpu(m: Measured):
    rec = recommend(m.table, "cpu", accuracy="high")
    speeds = m.table.dropna(subset=["cpu_tok_s"]).sort_values("cpu_tok_s", ascending=False)
    ranking = ", ".join(f"{r.variant} {r.cpu_tok_s:.0f}" for r in speeds.itertuples())
    mac = "" if m.here["machine"] in ("arm64", "aarch64") else f" (an {m.here['machine']} CPU: no Apple silicon here)"
    verdict = HOLDS if rec.choice in ("GGUF Q4_K_M", "GGUF Q5_K_M") else FAILS
    return verdict, f"the guide's pick on this CPU{mac} is {rec.choice}; tokens/s (1 thread): {ranking}"


def _rule_iq4_xs(m: Measured):
    rows = [r for r in m.imatrix_rows if r["variant"].startswith("GGUF IQ4_XS")]
    if not rows:
        return UNTESTED, "no IQ4_XS file was measured"
    iq = rows[0]
    gguf = [r for _, r in m.table.iterrows() if r.format == "gguf"] + list(m.imatrix_rows)
    limit = ACCURACY["moderate"]
    ok = [r for r in gguf if m.increase(r) <= limit]
    smallest = min(gguf, key=lambda r: r["memory_mb"])
    text = (f"IQ4_XS +imatrix: {iq['memory_mb']:.1f} MB, perplexity {_pct(m.increase(iq))}; smallest file measured: "
            f"{smallest['variant']} {smallest['memory_mb']:.1f} MB ({_pct(m.increase(smallest))})")
    if not ok:
        return FAILS, text + f"; none stays within {100 * limit:.0f}% of FP16"
    best = min(ok, key=lambda r: r["memory_mb"])
    return (HOLDS if best["variant"] == iq["variant"] else FAILS), (
        text + f"; smallest within +{100 * limit:.0f}% of FP16: {best['variant']} {best['memory_mb']:.1f} MB")


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


def quiz_answers(m: Measured, awq_config=None) -> list[dict]:
    """The post's three quiz questions: what it answers (paraphrased) and what this run measured."""
    from ..awq import AWQConfig
    from ..gguf import mixes
    from ..memory import model_shape

    cfg = awq_config or AWQConfig()
    g, a = m.by.loc["GPTQ-4bit"], m.by.loc["AWQ-4bit"]
    faster = "holds here" if a.quant_s < g.quant_s else "does not hold here"
    q1 = (f"Premise {faster}: AWQ {a.quant_s:.0f} s vs GPTQ {g.quant_s:.0f} s on the same calibration set "
          f"(x{a.quant_s / g.quant_s:.2f}). GPTQ runs the calibration once per block and solves one Hessian per "
          f"layer; AWQ tries {cfg.n_grid} scales per group of layers, each a forward pass over the search samples, "
          f"then a {cfg.clip_grid}-point clipping search per layer: how that compares depends on the hardware.")
    return [
        {"question": "Why is AWQ faster to quantize than GPTQ?",
         "the post": "GPTQ's per-layer Hessian inverse and sequential updates are expensive; AWQ only scales channels",
         "measured here": q1},
        {"question": "What do K and M mean in Q4_K_M?",
         "the post": "K: a mixed method giving layers different bit widths by importance; M: medium (S/M/L)",
         "measured here": _k_and_m(m, mixes, model_shape)},
        {"question": "GPTQ or AWQ for vLLM?",
         "the post": "AWQ in most cases (much faster to make, similar speed and perplexity); GPTQ with desc_act "
                     "for the last bit of accuracy",
         "measured here": _gptq_or_awq(m)},
    ]


def _k_and_m(m: Measured, mixes, model_shape) -> str:
    if m.shape is None:
        return "not measured (no model shape given)"
    shape = model_shape(m.shape)
    infos = mixes.shape_tensor_infos(shape)

    def plan(mix):
        p = mixes.assign_types(infos, mix, shape.layers, shape.heads, shape.kv_heads)
        counts = pd.Series([p[i.name].name for i in infos if i.name.startswith("blk.") and len(i.shape) == 2])
        return counts.value_counts().to_dict(), mixes.plan_bits_per_weight(infos, p)

    (cs, bs), (cm, bm) = plan("Q4_K_S"), plan("Q4_K_M")
    large = [x for x in mixes.MIXES if x.endswith("_L")]
    return (f"K is the block format (k-quants: 256-weight super-blocks with quantized sub-block scales), not the "
            f"mix. The suffix is the mix: on this model's matrices Q4_K_S plans {cs} ({bs:.2f} bits/weight), Q4_K_M "
            f"plans {cm} ({bm:.2f}); types without _K are fallbacks for rows that are not a multiple of 256. "
            f"Mixes with an _L in llama.cpp: {', '.join(large)} only.")


def _gptq_or_awq(m: Measured) -> str:
    g, a = m.by.loc["GPTQ-4bit"], m.by.loc["AWQ-4bit"]
    sg, sa = g.get(m.speed, math.nan), a.get(m.speed, math.nan)
    where = ("no vLLM run here" if m.vllm_device is None or sg != sg
             else f"vLLM ({m.vllm_device}): AWQ {sa:.0f} vs GPTQ {sg:.0f} tokens/s")
    text = (f"{where}; quantization AWQ {a.quant_s:.0f} s vs GPTQ {g.quant_s:.0f} s; perplexity AWQ {a.ppl:.2f} "
            f"({a.get('label', '')}) is {_lower(a, g)} GPTQ {g.ppl:.2f} ({g.get('label', '')})")
    fmt = (m.formats or {}).get(ACT_ORDER_FORMAT)
    if m.act_order is not None:
        text += f"; GPTQ act-order {m.act_order['ppl']:.2f}"
        if fmt is not None:
            text += ", " + ("which vLLM serves" if fmt["served"] else "which vLLM here refuses to load")
    return text + "."


__all__ = ["HOLDS", "FAILS", "UNTESTED", "Measured", "hardware", "rules", "rule_verdicts", "quiz_answers"]
