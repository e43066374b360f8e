"""Notebook 07's exercise: pick a format for a stated need from the measured comparison table.

Checked against :func:`quantedu.course.guide.recommend` (its ``choice``), on hand-made tables that put each rule
on the edge (a budget equal to a row's size, speeds 7% and 20% apart, a mean inside the accuracy need whose
interval is not, a row measured with one user only, a GPU nothing was measured on) and on the notebook's own
measured table. The diagnoses read the guide's candidate table to say which rule the learner's pick breaks.
"""
from __future__ import annotations

import math

import pandas as pd

from ..course import guide
from ..course.guide import ACCURACY, SPEED_TIE, USERS
from .core import Exercise, case, register

NAN = math.nan


# --- reference solution (learner style) -------------------------------------------------------------


def pick_format(table, hardware, users, memory_budget_mb, accuracy):
    speed = table[f"{hardware}_tok_s_{USERS[users]}"]
    ok = table[speed.notna() & (table.memory_mb <= memory_budget_mb)
               & (table.ppl_increase_high <= ACCURACY[accuracy])]
    if ok.empty:
        return None
    fast = speed[ok.index] >= SPEED_TIE * speed[ok.index].max()   # within 15% of the fastest: a tie
    return ok[fast].sort_values("memory_mb").variant.iloc[0]


# --- tables -----------------------------------------------------------------------------------------

_COLUMNS = ("variant", "format", "engine", "memory_mb", "ppl_increase", "ppl_increase_high", "kld", "kld_se",
            "same_top", "cpu_tok_s_1", "cpu_tok_s_8", "gpu_tok_s_1", "gpu_tok_s_8")
_ROWS = [  # numbers of the kind notebook 07 measures on a laptop CPU (speeds: 1 thread)
    ("fp32 (baseline)", "fp16", "torch", 540.0, 0.0, 0.0, 0.0, 0.0, 1.0, NAN, NAN, NAN, NAN),
    ("FP16", "fp16", "llama.cpp", 270.0, 0.0002, 0.001, 1e-5, 1e-6, 0.999, 20.0, NAN, NAN, NAN),
    ("BF16", "fp16", "vLLM", 270.0, 0.003, 0.006, 0.002, 0.0002, 0.98, 15.0, 90.0, NAN, NAN),
    ("GPTQ W4 asym g64", "gptq", "vLLM", 118.0, 0.12, 0.15, 0.08, 0.004, 0.88, 12.0, 80.0, NAN, NAN),
    ("AWQ W4 asym g64", "awq", "vLLM", 120.0, 0.08, 0.095, 0.06, 0.003, 0.90, 11.0, 75.0, NAN, NAN),
    ("GGUF Q4_K_M", "gguf", "llama.cpp", 105.0, 0.06, 0.08, 0.05, 0.003, 0.91, 28.0, NAN, NAN, NAN),
    ("GGUF Q5_K_M", "gguf", "llama.cpp", 112.0, 0.05, 0.07, 0.04, 0.003, 0.92, 30.0, NAN, NAN, NAN),
]


def example_table(**changes) -> pd.DataFrame:
    """A table shaped like notebook 07's (``guide.frame(rows)``); ``changes``: ``{variant: {column: value}}``."""
    rows = [dict(zip(_COLUMNS, r)) for r in _ROWS]
    for r in rows:
        r.update(changes.get(r["variant"], {}))
    return pd.DataFrame(rows)


SCENARIOS = [  # (label, table changes, hardware, users, budget MB, accuracy)
    ("CPU, one user, no limits: 28 vs 30 tokens/s is a tie, the smaller file wins", {}, "cpu", "one", math.inf, "any"),
    ("CPU, one user, Q5_K_M clearly faster (60 tokens/s)", {"GGUF Q5_K_M": {"cpu_tok_s_1": 60.0}}, "cpu", "one",
     math.inf, "any"),
    ("CPU, one user, budget 105 MB = the size of Q4_K_M", {}, "cpu", "one", 105.0, "any"),
    ("CPU, one user, budget 104 MB: nothing fits", {}, "cpu", "one", 104.0, "any"),
    ("CPU, 'highest' accuracy (+2%): only the 16-bit rows", {}, "cpu", "one", math.inf, "highest"),
    ("CPU, 'high' accuracy (+10%): Q4_K_M's mean is +9%, its interval reaches +12%",
     {"GGUF Q4_K_M": {"ppl_increase": 0.09, "ppl_increase_high": 0.12},
      "GGUF Q5_K_M": {"ppl_increase": 0.095, "ppl_increase_high": 0.13}}, "cpu", "one", 200.0, "high"),
    ("CPU, many users: only the vLLM rows were measured with 8 requests at once", {}, "cpu", "many", math.inf,
     "moderate"),
    ("CPU, many users, budget 119 MB: GPTQ fits, and llama.cpp's rows were measured with one user only", {},
     "cpu", "many", 119.0, "moderate"),
    ("GPU, one user: nothing was measured on a GPU", {}, "gpu", "one", 125.0, "moderate"),
    ("GPU, many users: GPTQ measured at 500 tokens/s", {"GPTQ W4 asym g64": {"gpu_tok_s_8": 500.0}}, "gpu", "many",
     125.0, "moderate"),
]


def _explain(table, hardware, users, budget, accuracy, got, rec) -> str:
    """Which rule the learner's pick breaks, from the guide's candidate table."""
    col, limit = guide.speed_column(hardware, users), ACCURACY[accuracy]
    if got is None:
        best = table[table.variant == rec.choice].iloc[0]
        return (f"{rec.choice} fits ({best.memory_mb:g} MB <= budget {budget:g} MB; its perplexity change is at most "
                f"{100 * best.ppl_increase_high:+.1f}%, within '{accuracy}' = +{100 * limit:.0f}%; measured at "
                f"{best[col]:g} tokens/s): return it, not None.")
    rows = table[table.variant == got]
    if rows.empty:
        return f"{got!r} is not a variant of the table."
    r = rows.iloc[0]
    if r[col] != r[col]:
        other = "one" if users == "many" else "many"
        measured_other = r[guide.speed_column(hardware, other)] == r[guide.speed_column(hardware, other)]
        return (f"{got} was not measured on the {hardware.upper()} with {USERS[users]} request(s) at once ({col} is "
                "NaN): the guide recommends only what it measured"
                + (f" (it was measured with {other} user(s): that is another question)" if measured_other else "")
                + ". " + (f"Expected {rec.choice}." if rec.choice else "Return None."))
    if r.memory_mb > budget:
        return f"{got} needs {r.memory_mb:g} MB, over the budget of {budget:g} MB (memory_mb <= budget)."
    if r.ppl_increase_high > limit:
        return (f"{got}'s perplexity change is {100 * r.ppl_increase:+.1f}% on average, but its 95% interval reaches "
                f"{100 * r.ppl_increase_high:+.1f}%, past '{accuracy}' = +{100 * limit:.0f}%: only a row whose interval "
                "stays within the need is credibly accurate enough (compare ppl_increase_high).")
    if rec.choice is None:
        return f"nothing fits here ({'; '.join(rec.reasons)}): return None."
    best = table[table.variant == rec.choice].iloc[0]
    if best[col] > r[col] / SPEED_TIE or r[col] < SPEED_TIE * best[col]:
        return (f"{rec.choice} is faster ({best[col]:g} vs {r[col]:g} tokens/s measured, more than 15% apart) and "
                "measured speed ranks first.")
    return (f"{got} ({r[col]:g} tokens/s) and {rec.choice} ({best[col]:g}) are within 15% of the fastest: a tie, "
            f"and then the smaller one wins ({best.memory_mb:g} vs {r.memory_mb:g} MB).")


def _scenario_case(label, make_table, hardware, users, budget, accuracy):
    @case(f"{label} [{hardware}, {users} user(s), budget {budget:g} MB, accuracy '{accuracy}']")
    def run(fn):
        table = make_table()
        rec = guide.recommend(table, hardware, users, budget, accuracy)
        got = fn(table.copy(), hardware, users, budget, accuracy)
        if got is not None and not isinstance(got, str):
            return f"return a variant name (a str, e.g. 'GGUF Q4_K_M') or None, not {type(got).__name__}"
        if got == rec.choice:
            return None
        return f"expected {rec.choice!r}, got {got!r}. " + _explain(table, hardware, users, budget, accuracy, got, rec)
    return run


def _cases(context):
    cases = [_scenario_case(label, lambda ch=ch: example_table(**ch), hw, users, budget, acc)
             for label, ch, hw, users, budget, acc in SCENARIOS]
    table = context.get("table")
    if table is not None:
        dense = table.loc[table.engine != "torch", "memory_mb"].max()
        for hw, users, budget, acc in (("cpu", "one", math.inf, "moderate"), ("cpu", "many", math.inf, "moderate"),
                                       ("cpu", "one", 0.5 * dense, "high"), ("gpu", "many", math.inf, "moderate")):
            cases.append(_scenario_case("this notebook's measured table", lambda: table.copy(), hw, users, budget, acc))
    return cases


register(Exercise(
    id="07.pick_format",
    title="pick a format for a need, from what was measured",
    statement="""\
Write `pick_format(table, hardware, users, memory_budget_mb, accuracy)`: the variant to use, or `None` when nothing
fits. `table` is `guide.frame(rows)`; `hardware` is `"cpu"` or `"gpu"`, `users` is `"one"` or `"many"`. Keep the rows
**measured** on that hardware with that many users (`{hardware}_tok_s_{USERS[users]}` is not NaN), that fit the budget
(`memory_mb <= memory_budget_mb`) and whose perplexity change is *credibly* within the need: the upper end of its 95%
interval, `ppl_increase_high <= ACCURACY[accuracy]`. Among them, speeds within 15% of the fastest are a tie
(`SPEED_TIE`); of those, pick the smallest.""",
    reference="`quantedu.course.guide.recommend(...).choice`",
    imports="from quantedu.exercises import check, hint\nfrom quantedu.course.guide import ACCURACY, SPEED_TIE, USERS",
    stubs=('''\
def pick_format(table, hardware, users, memory_budget_mb, accuracy):
    """The variant (a str) that fits and ranks first, or None."""
    ...  # YOUR CODE
''',),
    solution=(pick_format,),
    cases=_cases,
    context=("table",),
    example_context=lambda: {"table": example_table()},
    hints=(
        "The speed column: table[f\"{hardware}_tok_s_{USERS[users]}\"]; a NaN there means not measured: drop it.",
        "Filters: speed.notna(), table.memory_mb <= budget, table.ppl_increase_high <= ACCURACY[accuracy] (the "
        "interval's upper end, not the mean). Return None when nothing is left.",
        "fast = speed >= SPEED_TIE * speed.max() over the rows left; among the fast ones take the smallest memory_mb.",
    ),
))
