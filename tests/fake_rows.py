"""Measured rows of notebook 07's table (quantedu.course.comparison.Row) from synthetic per-token metrics, for the
guide, seed-rule and findings tests: every row shares one baseline (the same ``nll_base`` tokens), so the verdict
rule pairs them token by token, as it pairs real reports. Milliseconds; no model."""
import math

import numpy as np

from quantedu.course.comparison import Row
from quantedu.evaluate import QualityReport

SHAPE = (4, 256)  # windows x scored tokens: 1,024 tokens, 16 blocks of 64


def report(name: str, kld: float, dnll: float = None, seed: int = 0, purpose: str = "eval") -> QualityReport:
    """A report whose per-token KLD has mean ``kld`` and whose NLL is the baseline's plus about ``dnll``
    (default ``kld``: a model's extra NLL is of the order of its KLD), with token-level noise."""
    base = np.random.default_rng(123)
    nll_base = base.gamma(2.0, 1.5, SHAPE)
    rng = np.random.default_rng(seed)
    k = rng.exponential(kld, SHAPE) if kld else np.zeros(SHAPE)
    dnll = kld if dnll is None else dnll
    nll = nll_base + dnll + (rng.normal(0, 2 * math.sqrt(kld), SHAPE) if kld else 0)
    same = rng.random(SHAPE) > min(0.9, 5 * kld)
    per_token = {"kld": k, "same_top": same, "nll": nll, "nll_base": nll_base, "dp": np.exp(-nll) - np.exp(-nll_base)}
    return QualityReport(name, purpose, SHAPE[1] + 1, 0, ("fake-baseline", purpose), 0.0, per_token)


def coverage(got: int, fell_back: int, type_: str = "Q4_K") -> dict:
    return {"type": type_, "matrices": got + fell_back, "got": got, "other_kquant": 0, "fell_back": fell_back,
            "bits_per_weight": 4.8, "types": {type_: got}}


def row(variant, fmt, engine, kld, mb, cpu=None, cpu_many=None, quant_s=math.nan, seed=0, **kw) -> Row:
    speed = kw.pop("speed", {})
    if cpu is not None and not speed:
        speed["cpu"] = {"1": cpu, **({"8": cpu_many} if cpu_many is not None else {})}
    return Row(variant, fmt, engine, report(variant, kld, seed=seed), mb, quant_s, speed, **kw)


def rows(**over) -> dict:
    """The notebook's roles with plausible CPU numbers; ``over={role: {field: value}}`` changes one."""
    spec = {
        "baseline": ("fp32 (baseline)", "fp16", "torch", 0.0, 538.0, None, None),
        "f16": ("FP16", "fp16", "llama.cpp", 0.0005, 270.0, 20.0, None),
        "q4_k_m": ("GGUF Q4_K_M", "gguf", "llama.cpp", 0.08, 105.0, 40.0, 90.0),
        "q5_k_m": ("GGUF Q5_K_M", "gguf", "llama.cpp", 0.079, 112.0, 38.0, None),
        "iq4_xs": ("GGUF IQ4_XS +imatrix", "gguf", "llama.cpp", 0.09, 95.0, 35.0, None),
        "q2_k": ("GGUF Q2_K +imatrix", "gguf", "llama.cpp", 0.9, 70.0, 45.0, None),
        "bf16": ("BF16", "fp16", "vLLM", 0.001, 270.0, 15.0, 100.0),
        "gptq": ("GPTQ W4 asym g64", "gptq", "vLLM", 0.06, 120.0, 12.0, 80.0),
        "awq": ("AWQ W4 asym g64", "awq", "vLLM", 0.03, 120.0, 12.5, 82.0),
        "act_order": ("GPTQ W4 asym g64 act-order", "gptq", "vLLM", 0.059, 120.0, 12.0, 80.0),
    }
    out = {}
    for i, (role, (variant, fmt, engine, kld, mb, cpu, many)) in enumerate(spec.items()):
        extra = {"quant_s": {"gptq": 60.0, "awq": 90.0, "act_order": 65.0}.get(role, math.nan),
                 "label": "calibrated on 12 x 256 tokens" if fmt in ("gptq", "awq") else ""}
        if fmt == "gguf":
            extra["coverage"] = coverage(60, 150)  # 576-wide rows: most matrices fall back
        extra.update(over.get(role, {}))
        out[role] = row(variant, fmt, engine, kld, mb, cpu, many, seed=i + 1, **extra)
    return out
