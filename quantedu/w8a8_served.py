"""Does vLLM compute what the course's W8A8 emulation computes? Per-token log-probabilities of the same
checkpoints through vLLM's int8 kernels and through :class:`quantedu.w8a8.W8A8Linear`, side by side.

The two cannot agree bit for bit: vLLM runs everything around the int8 matmuls in bf16 (residual stream,
norms, attention, the 16-bit lm_head), so its activations differ from an fp32 run by bf16 rounding
(relative 2^-9), and an int8 code of an activation then lands one step off now and then. Both effects are
the *same size* as the gap between a dense checkpoint run in bf16 by vLLM and in fp32 by torch, so that gap,
measured on the same windows in the same worker, is the yardstick: :func:`served_vs_emulated` reports it
next to each W8A8 checkpoint's gap, and :data:`TOLERANCE_FACTOR` is how many times the yardstick a W8A8
checkpoint may differ (the test asserts it, and that the quantization effect itself is larger).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

__all__ = ["TOLERANCE_FACTOR", "token_logprobs", "logprob_gap", "perplexity_of", "served_vs_emulated"]

TOLERANCE_FACTOR = 3.0


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


def logprob_gap(a: list[list[float]], b: list[list[float]]) -> dict:
    """Mean and largest ``|a - b|`` over all tokens, and the two perplexities' ratio ``ppl(a) / ppl(b)``."""
    d = [abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb)]
    return {"mean_abs": math.fsum(d) / len(d), "max_abs": max(d), "ppl_ratio": perplexity_of(a) / perplexity_of(b)}


def perplexity_of(logprobs: list[list[float]]) -> float:
    flat = [v for row in logprobs for v in row]
    return math.exp(-math.fsum(flat) / len(flat))


def served_vs_emulated(dense, checkpoints: dict, windows, emulation_dtypes=(torch.float32,),
                       python: str | None = None, timeout: float = 1500.0, **run_options) -> dict:
    """Serve ``dense`` (a plain checkpoint folder) and every W8A8 checkpoint of ``checkpoints`` (``{label: path}``)
    in one vLLM worker (bf16), run the same windows through torch (``dense`` in fp32, the W8A8 checkpoints read
    back with :func:`quantedu.export_w8a8.load_w8a8` in each of ``emulation_dtypes``), and compare.

    Returns ``{"yardstick": gap(dense: vLLM bf16 vs torch fp32), label: {"vllm_ppl", "emulated_ppl", "gap":
    vLLM vs the first dtype's emulation, "quantization": that emulation vs the dense fp32 model,
    "within_tolerance", "kernels", "error", "by_dtype": {dtype name: {"emulated_ppl", "gap"}}}}``;
    ``within_tolerance``: ``gap["mean_abs"] <= TOLERANCE_FACTOR * yardstick["mean_abs"]``.
    ``run_options`` go to every vLLM run (e.g. ``skip_tokenizer_init=True``, ``max_model_len=256``).
    """
    from transformers import AutoModelForCausalLM

    from .export_w8a8 import load_w8a8
    from .vllm_engine import vllm_perplexities

    runs = {label: {"model": str(path), "token_logprobs": True, **run_options}
            for label, path in {"dense": dense, **checkpoints}.items()}
    served = vllm_perplexities(runs, windows, dtype="bfloat16", timeout=timeout, python=python)
    if served["dense"].get("error"):
        raise RuntimeError(f"vLLM did not serve the dense checkpoint {dense}: {served['dense']['error'][-2000:]}")
    fp32 = token_logprobs(AutoModelForCausalLM.from_pretrained(Path(dense), dtype=torch.float32).eval(), windows)
    yardstick = logprob_gap(served["dense"]["token_logprobs"], fp32)
    out = {"yardstick": {**yardstick, "vllm_ppl": served["dense"]["ppl"], "torch_fp32_ppl": perplexity_of(fp32)}}
    for label, path in checkpoints.items():
        r = served[label]
        emulated = {dt: token_logprobs(load_w8a8(path, dt), windows) for dt in emulation_dtypes}
        first = emulated[emulation_dtypes[0]]
        row = {"emulated_ppl": perplexity_of(first), "quantization": logprob_gap(first, fp32),
               "kernels": r.get("kernels"), "error": r.get("error"), "vllm_load_s": r.get("load_s")}
        if not r.get("error"):
            gap = logprob_gap(r["token_logprobs"], first)
            row.update(vllm_ppl=r["ppl"], gap=gap,
                       within_tolerance=gap["mean_abs"] <= TOLERANCE_FACTOR * yardstick["mean_abs"],
                       by_dtype={str(dt).removeprefix("torch."): {"emulated_ppl": perplexity_of(e),
                                                                 "gap": logprob_gap(r["token_logprobs"], e)}
                                 for dt, e in emulated.items()})
        out[label] = row
    return out
