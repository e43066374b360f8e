"""Which of the course's export formats vLLM serves on this machine: measured, not assumed.

:func:`served_formats` writes a tiny random Llama (2 layers, hidden 128) in every layout
:mod:`quantedu.export` has, asks vLLM (in one worker process) to load each and score a few windows, and
compares with our own reader's dequantized model in torch. A format counts as served when vLLM loads it
and its perplexity agrees within ``TOLERANCE``. The answer is cached per vLLM interpreter and version
(``quantedu doctor`` pays ~1 minute once).
"""
from __future__ import annotations

import copy
import math
import tempfile
from pathlib import Path

import torch

from .. import artifacts
from ..testmodel import tiny_llama

# relative perplexity difference, vLLM bf16 vs torch fp32 on the same stored weights. On this tiny model bf16
# costs < 0.5% while a zero point off by one (GPTQ v1 read as v2) moves perplexity by ~4%.
TOLERANCE = 0.01
_VERSION = 1
# the probe's model (:func:`quantedu.testmodel.tiny_llama` with this): groups of 64 and 128 divide every layer
PROBE_MODEL = dict(vocab_size=512, hidden_size=128, intermediate_size=256, num_attention_heads=2,
                   num_key_value_heads=1, initializer_range=0.1)


def format_exports(folder: Path) -> dict[str, dict]:
    """Tiny exports in every course layout: ``{label: {"model": path, "torch_ppl": ..., ...}}`` + windows."""
    from .. import export
    from ..evaluate import window_nll
    from ..gptq import GPTQConfig, gptq_quantize_model
    from ..primitives import QuantConfig
    from ..rtn import rtn_layers

    base = tiny_llama(**PROBE_MODEL)
    gen = torch.Generator().manual_seed(1)
    windows = torch.randint(0, 512, (2, 128), generator=gen)
    calib = torch.randint(0, 512, (4, 64), generator=gen)
    sym, asym = QuantConfig(4, 64, symmetric=True), QuantConfig(4, 64, symmetric=False)
    rs, ra = rtn_layers(base, sym), rtn_layers(base, asym)
    dynamic = GPTQConfig(4, 64, sym=True, desc_act=True)
    static = GPTQConfig(4, 64, sym=True, desc_act=True, static_groups=True)
    gd, gs = copy.deepcopy(base), copy.deepcopy(base)
    ld = gptq_quantize_model(gd, calib, dynamic, progress=False, device="cpu")
    ls = gptq_quantize_model(gs, calib, static, progress=False, device="cpu")
    plan = {
        "GPTQ v1 sym": lambda p: export.save_gptq(base, rs, sym, p),
        "GPTQ v2 sym": lambda p: export.save_gptq(base, rs, sym, p, checkpoint_format="gptq_v2"),
        "GPTQ v2 asym": lambda p: export.save_gptq(base, ra, asym, p, checkpoint_format="gptq_v2"),
        "GPTQ act-order, static groups": lambda p: export.save_gptq(gs, ls, static, p),
        "GPTQ act-order, dynamic (desc_act)": lambda p: export.save_gptq(gd, ld, dynamic, p),
        "compressed-tensors sym": lambda p: export.save_compressed_tensors(base, rs, sym, p),
        "compressed-tensors asym": lambda p: export.save_compressed_tensors(base, ra, asym, p),
        "compressed-tensors static act-order": lambda p: export.save_compressed_tensors(gs, ls, static, p),
        "AWQ GEMM": lambda p: export.save_awq(base, ra, asym, p),
    }
    out = {}
    for i, (label, save) in enumerate(plan.items()):
        path = save(folder / f"f{i}")
        nll = window_nll(export.load_quantized_model(path), windows, progress=False).sum().item()
        out[label] = {"model": str(path), "torch_ppl": math.exp(nll / windows[:, 1:].numel()),
                      "skip_tokenizer_init": True, "max_model_len": 256}
    return out, windows


def measure(python: str | None = None) -> dict[str, dict]:
    """Load every tiny export in vLLM: ``{label: {"served", "kernel", "vllm_ppl", "torch_ppl", "why"}}``."""
    from .vllm import reason, vllm_perplexities

    with tempfile.TemporaryDirectory(prefix="quantedu-formats-") as tmp:
        specs, windows = format_exports(Path(tmp))
        runs = {k: {kk: vv for kk, vv in v.items() if kk != "torch_ppl"} for k, v in specs.items()}
        results = vllm_perplexities(runs, windows, python=python)
    table = {}
    for label, spec in specs.items():
        r = results.get(label, {"error": "no result"})
        row = {"torch_ppl": spec["torch_ppl"], "vllm_ppl": r.get("ppl"), "kernel": ", ".join(r.get("kernels") or {})}
        if r.get("error"):
            row.update(served=False, why=reason(r["error"]))
        else:
            rel = abs(r["ppl"] / spec["torch_ppl"] - 1)
            row.update(served=rel <= TOLERANCE,
                       why="" if rel <= TOLERANCE else f"loads, but perplexity differs by {100 * rel:.1f}%")
        table[label] = row
    return table


def _key(python: str, info: dict) -> str:
    return artifacts.cache_key("vllm-formats", python, info.get("vllm"), info.get("device"), _VERSION)


def served_formats(python: str, info: dict) -> dict[str, dict]:
    """:func:`measure`, cached per interpreter and vLLM version."""
    return artifacts.cached_json("vllm", _key(python, info), lambda: measure(python))


def status(measure_formats: bool = True) -> dict:
    """vLLM here, for ``quantedu doctor``: interpreter, version, device, and the export formats it serves
    (measured, cached); or ``usable: False`` with why and how to install it."""
    from .vllm import INSTALL, VLLMError, probe, require_python

    try:
        python = require_python()
        info = probe(python)
    except VLLMError as exc:
        return {"usable": False, "why": str(exc).splitlines()[0], "install": INSTALL}
    info["usable"] = True
    if measure_formats:
        info["formats"] = served_formats(python, info)
    return info


def is_cached() -> bool:
    """Whether some vLLM interpreter's formats were measured already (``quantedu doctor`` ran)."""
    try:
        return any(artifacts.kind_dir("vllm").glob("*.json"))
    except OSError:
        return False


__all__ = ["TOLERANCE", "format_exports", "measure", "served_formats", "status", "is_cached"]
