"""Notebook 07's exercise: pick a format for a stated budget from the measured comparison table.

Checked against :func:`quantedu.course.guide.recommend` (its ``choice``), on hand-made tables that put each rule
on the edge (a budget equal to a row's size, speeds 14% and 16% apart, a format no CPU kernel runs) and on
the notebook's own measured table. The diagnoses read the guide's candidate table to say which rule the
learner's pick breaks.
"""
from __future__ import annotations

import math

import pandas as pd

from ..course import comparison, guide
from ..course.guide import ACCURACY, ENGINES, SPEED_TIE
from .core import Exercise, case, register

NAN = math.nan


# --- reference solution (learner style) -------------------------------------------------------------


def pick_format(table, hardware, memory_budget_mb, accuracy):
    runnable = set().union(*(kernels.get(hardware, set()) for kernels in ENGINES.values()))
    fp16 = table.loc[table.format == "fp16", "ppl"]
    base = fp16.iloc[0] if len(fp16) else table.ppl.min()
    ok = table[table.format.isin(runnable) & (table.memory_mb <= memory_budget_mb)
               & (table.ppl / base - 1 <= ACCURACY[accuracy])]
    if ok.empty:
        return None
    speed = ok[f"{hardware}_tok_s"]
    fast = speed >= SPEED_TIE * speed.max() if speed.notna().any() else speed.isna()   # within 15%: a tie
    ok = ok.assign(fast=fast).sort_values(["fast", "ppl", "memory_mb"], ascending=[False, True, True])
    return ok.variant.iloc[0]


# --- tables -----------------------------------------------------------------------------------------


def example_table(**changes) -> pd.DataFrame:
    """A table shaped like notebook 07's (numbers of the kind it measures on a laptop CPU)."""
    rows = [
        {"variant": "FP16", "format": "fp16", "memory_mb": 270.0, "ppl": 12.7, "quant_s": NAN, "cpu_tok_s": 20.0},
        {"variant": "GPTQ-4bit", "format": "gptq", "memory_mb": 118.0, "ppl": 14.3, "quant_s": 60.0, "cpu_tok_s": NAN},
        {"variant": "AWQ-4bit", "format": "awq", "memory_mb": 120.0, "ppl": 13.9, "quant_s": 90.0, "cpu_tok_s": NAN},
        {"variant": "GGUF Q4_K_M", "format": "gguf", "memory_mb": 105.0, "ppl": 13.4, "quant_s": 7.0,
         "cpu_tok_s": 28.0},
        {"variant": "GGUF Q5_K_M", "format": "gguf", "memory_mb": 112.0, "ppl": 14.0, "quant_s": 6.0,
         "cpu_tok_s": 30.0},
        # A format no engine of quantedu.course.guide.ENGINES runs (ExLlamaV2's): its speed is another engine's
        # claim, so a choice that skips the hardware filter picks it.
        {"variant": "EXL2-4bit", "format": "exl2", "memory_mb": 100.0, "ppl": 13.2, "quant_s": NAN,
         "cpu_tok_s": 45.0},
    ]
    for r in rows:
        r.update(changes.get(r["variant"], {}))
    return comparison.table(rows)


SCENARIOS = [  # (label, table changes, hardware, budget MB, accuracy)
    ("CPU, no limits", {}, "cpu", math.inf, "any"),
    ("CPU, 28 vs 30 tokens/s (a tie: the lower perplexity wins)", {}, "cpu", math.inf, "moderate"),
    ("CPU, Q5_K_M clearly faster (60 tokens/s)", {"GGUF Q5_K_M": {"cpu_tok_s": 60.0}}, "cpu", math.inf, "any"),
    ("CPU, budget 105 MB = the size of Q4_K_M", {}, "cpu", 105.0, "any"),
    ("CPU, budget 104 MB: nothing fits", {}, "cpu", 104.0, "any"),
    ("CPU, 'highest' accuracy (+2%): only FP16", {}, "cpu", math.inf, "highest"),
    ("CPU, 'high' accuracy, Q4_K_M at +9.4%", {"GGUF Q4_K_M": {"ppl": 13.9}}, "cpu", math.inf, "high"),
    ("CPU, 'high' accuracy: only AWQ (+9.4%) is accurate enough, and no CPU kernel runs it",
     {"GGUF Q4_K_M": {"ppl": 14.5}, "GGUF Q5_K_M": {"ppl": 14.6}}, "cpu", 200.0, "high"),
    ("GPU, nothing measured on the GPU, 125 MB", {}, "gpu", 125.0, "moderate"),
    ("GPU, GPTQ measured at 500 tokens/s", {"GPTQ-4bit": {"gpu_tok_s": 500.0}}, "gpu", 125.0, "moderate"),
]


def _explain(table, hardware, budget, accuracy, got, rec) -> str:
    """Which rule the learner's pick breaks, from the guide's candidate table."""
    cand = rec.candidates
    if rec.choice is not None:
        best = cand[cand.variant == rec.choice].iloc[0]
        fits = (f"{rec.choice} fits ({best.memory_mb:g} MB <= budget {budget:g} MB, +{100 * best.ppl_increase:.1f}% "
                f"perplexity <= +{100 * ACCURACY[accuracy]:.0f}% for '{accuracy}', a kernel on {hardware})")
    if got is None:
        return f"{fits}: return it, not None."
    rows = table[table.variant == got]
    if rows.empty:
        return f"{got!r} is not a variant of the table."
    r = rows.iloc[0]
    if cand is None or cand.empty or got not in set(cand.variant):
        return (f"{got} ({r.format}) has no kernel on {hardware} (quantedu.course.guide.ENGINES): a dequantize-then-"
                f"matmul fallback is not a way to serve it.")
    c = cand[cand.variant == got].iloc[0]
    if r.memory_mb > budget:
        return f"{got} needs {r.memory_mb:g} MB, over the budget of {budget:g} MB (memory_mb <= budget)."
    if c.ppl_increase > ACCURACY[accuracy]:
        return (f"{got} is +{100 * c.ppl_increase:.1f}% perplexity over FP16; '{accuracy}' accepts "
                f"+{100 * ACCURACY[accuracy]:.0f}% (compare ppl / ppl_fp16 - 1).")
    if rec.choice is None:
        return f"nothing fits here ({'; '.join(rec.reasons)}): return None."
    speeds = cand.groupby("variant").tok_s.max()
    s_got, s_best = speeds.get(got, NAN), speeds.get(rec.choice, NAN)
    if s_best == s_best and (s_got != s_got or s_got < SPEED_TIE * s_best):
        why = f"it is faster ({s_best:g} vs {s_got:g} tokens/s measured), and measured speed ranks first"
    elif s_got == s_got and s_best == s_best and s_best < s_got:
        why = (f"{got} ({s_got:g} tokens/s) and {rec.choice} ({s_best:g}) are within 15%: a tie, and then the "
               f"lower perplexity wins ({best.ppl:g} vs {c.ppl:g})")
    else:
        why = "among equally fast variants the lower perplexity wins, then the smaller one"
    return f"{fits} and ranks first: {why}."


def _scenario_case(label, make_table, hardware, budget, accuracy):
    @case(f"{label} [{hardware}, budget {budget:g} MB, accuracy '{accuracy}']")
    def run(fn):
        table = make_table()
        rec = guide.recommend(table, hardware, budget, accuracy)
        got = fn(table.copy(), hardware, budget, accuracy)
        if got is not None and not isinstance(got, str):
            return f"return a variant name (a str, e.g. 'GGUF Q4_K_M') or None, not {type(got).__name__}"
        if got == rec.choice:
            return None
        return f"expected {rec.choice!r}, got {got!r}. " + _explain(table, hardware, budget, accuracy, got, rec)
    return run


def _cases(context):
    cases = [_scenario_case(label, lambda ch=ch: example_table(**ch), hw, budget, acc)
             for label, ch, hw, budget, acc in SCENARIOS]
    table = context.get("table")
    if table is not None:
        fp16 = table.loc[table.format == "fp16", "memory_mb"]
        mem = float(fp16.iloc[0]) if len(fp16) else float(table.memory_mb.max())
        for hw, budget, acc in (("cpu", math.inf, "high"), ("cpu", 0.6 * mem, "moderate"),
                                ("gpu", 0.6 * mem, "moderate"), ("cpu", 10.0, "any")):
            cases.append(_scenario_case("this notebook's measured table", lambda: table.copy(), hw, budget, acc))
    return cases


register(Exercise(
    id="07.pick_format",
    title="pick a format for a budget from the measured table",
    statement="""\
Write `pick_format(table, hardware, memory_budget_mb, accuracy)`: the variant to use, or `None` when nothing fits.
Keep the rows whose format some engine runs on `hardware` (`quantedu.course.guide.ENGINES`), that fit the budget
(`memory_mb <= memory_budget_mb`) and whose perplexity increase over the FP16 row, `ppl / ppl_fp16 - 1`, is at most
`quantedu.course.guide.ACCURACY[accuracy]`. Rank what is left by measured speed (`cpu_tok_s` / `gpu_tok_s`; speeds within
15% of the fastest are a tie, unmeasured ones rank last), then lower perplexity, then smaller memory.""",
    reference="`quantedu.course.guide.recommend(...).choice`",
    imports="from quantedu.exercises import check, hint\nfrom quantedu.course.guide import ACCURACY, ENGINES, "
            "SPEED_TIE",
    stubs=('''\
def pick_format(table, hardware, memory_budget_mb, accuracy):
    """The variant (a str) that fits and ranks first, or None."""
    ...  # YOUR CODE
''',),
    solution=(pick_format,),
    cases=_cases,
    context=("table",),
    example_context=lambda: {"table": example_table()},
    hints=(
        "Runnable formats on this hardware: set().union(*(k.get(hardware, set()) for k in ENGINES.values())).",
        "Filters: table.format.isin(runnable), table.memory_mb <= budget, table.ppl / ppl_fp16 - 1 <= "
        "ACCURACY[accuracy]. Return None when nothing is left.",
        "fast = speed >= SPEED_TIE * speed.max() (all True when nothing was measured); sort by fast (True "
        "first), then ppl, then memory_mb, and take the first variant.",
    ),
))
