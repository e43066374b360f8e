"""vLLM's quantized KV cache on this machine: does ``kv_cache_dtype="fp8"`` load, and what does it cost?

vLLM stores the KV cache in the model dtype by default (``"auto"``); ``"fp8"`` (= ``"fp8_e4m3"``) or
``"fp8_e5m2"`` halve it. Whether a backend takes it is a property of the build and the device, so
:func:`probe_fp8_kv` measures it instead of assuming: one vLLM worker process loads the same checkpoint
twice, with the default cache and with the fp8 cache, and for each reports perplexity over the same
windows and a greedy continuation; a refusal is reported with vLLM's own reason.

The windows are evaluated with chunked prefill in slices of ``chunk`` tokens: every slice after the
first attends to keys and values *read back from the cache*, so the fp8 rounding of the cache is in the
measured log-probabilities (a single prefill could attend to the fresh, unrounded K/V). The greedy
continuation is decoded token by token, reading the cache at every step.

``quantedu doctor`` shows :func:`describe` (the probe on a tiny random Llama, cached per vLLM version);
the notebook calls :func:`probe_fp8_kv` on the course model.
"""
from __future__ import annotations

import math
import tempfile
from pathlib import Path

import torch

from .. import artifacts

__all__ = ["KV_DTYPES", "probe_fp8_kv", "describe", "doctor_row"]

KV_DTYPES = ("fp8", "fp8_e4m3", "fp8_e5m2")
_VERSION = 1


def _tiny_checkpoint(folder: Path) -> tuple[Path, torch.Tensor]:
    from ..testmodel import tiny_llama
    from .vllm_probe import PROBE_MODEL

    model = tiny_llama(**PROBE_MODEL)
    path = folder / "tiny"
    model.save_pretrained(path)
    windows = torch.randint(0, model.config.vocab_size, (2, 128), generator=torch.Generator().manual_seed(1))
    return path, windows


def probe_fp8_kv(model=None, windows=None, kv_cache_dtype: str = "fp8", chunk: int = 32, greedy_tokens: int = 16,
                 dtype: str = "bfloat16", python: str | None = None, timeout: float = 600.0) -> dict:
    """Load ``model`` (a checkpoint folder; None: a tiny random Llama) in vLLM with the default and the
    ``kv_cache_dtype`` cache, and compare. ``windows``: token ids ``(n, seq_len)`` (None: random ids).

    Returns ``{"kv_cache_dtype", "served": bool, "why": vLLM's reason when refused, "ppl_auto",
    "ppl_kv", "ppl_ratio", "mean_abs_logprob_diff", "greedy_auto", "greedy_kv", "greedy_same"}``.
    """
    from .vllm import reason, vllm_perplexities

    if kv_cache_dtype not in KV_DTYPES:
        raise ValueError(f"kv_cache_dtype must be one of {', '.join(KV_DTYPES)} (vLLM's quantized KV caches), "
                         f"got {kv_cache_dtype!r}")
    with tempfile.TemporaryDirectory(prefix="quantedu-kv-") as tmp:
        tiny = model is None
        if tiny:
            model, random_windows = _tiny_checkpoint(Path(tmp))
            windows = random_windows if windows is None else windows
        if windows is None:
            raise ValueError("give windows=<token ids (n, seq_len)> for a real model "
                             "(e.g. quantedu.evaluate.evaluation_windows(tokenizer, text, 4, 512))")
        windows = torch.as_tensor(windows)
        common = {"model": str(model), "max_model_len": max(256, int(windows.shape[1]) + greedy_tokens),
                  "max_num_batched_tokens": chunk, "per_token": True, "skip_tokenizer_init": tiny,
                  "greedy_prompt": windows[0, : min(32, windows.shape[1])].tolist(), "greedy_tokens": greedy_tokens}
        runs = {"auto": dict(common), kv_cache_dtype: {**common, "kv_cache_dtype": kv_cache_dtype}}
        res = vllm_perplexities(runs, windows, dtype=dtype, python=python, timeout=timeout)
    auto, kv = res["auto"], res[kv_cache_dtype]
    out = {"kv_cache_dtype": kv_cache_dtype, "model": "tiny random Llama" if tiny else str(model),
           "chunk": chunk, "ppl_auto": auto.get("ppl"), "greedy_auto": auto.get("greedy_ids")}
    if auto.get("error"):
        raise RuntimeError(f"vLLM did not serve the model even with the default KV cache: {reason(auto['error'])}")
    if kv.get("error"):
        return {**out, "served": False, "why": reason(kv["error"]), "error": kv["error"]}
    diffs = [abs(a - b) for wa, wb in zip(auto["token_logprobs"], kv["token_logprobs"]) for a, b in zip(wa, wb)]
    return {**out, "served": True, "why": "", "ppl_kv": kv["ppl"], "ppl_ratio": kv["ppl"] / auto["ppl"],
            "mean_abs_logprob_diff": math.fsum(diffs) / len(diffs), "max_abs_logprob_diff": max(diffs),
            "greedy_kv": kv.get("greedy_ids"), "greedy_same": kv.get("greedy_ids") == auto.get("greedy_ids")}


def describe(python: str | None = None) -> dict:
    """:func:`probe_fp8_kv` on the tiny model, cached per vLLM interpreter and version (for ``quantedu doctor``)."""
    from .vllm import probe, require_python

    python = python or require_python()
    info = probe(python)
    key = artifacts.cache_key("vllm-fp8-kv", python, info.get("vllm"), info.get("device"), _VERSION)
    return artifacts.cached_json("vllm", key, lambda: probe_fp8_kv(python=python))


def doctor_row(python: str | None = None) -> dict:
    """:func:`describe` as one row of ``quantedu doctor``'s engine table (``engine``, ``usable``, ``why``, ``install``)."""
    from .vllm import INSTALL, VLLMError

    row = {"engine": "vLLM fp8 KV cache (--kv-cache-dtype fp8)", "usable": False, "install": INSTALL}
    try:
        res = describe(python)
    except VLLMError as exc:
        return {**row, "why": str(exc).splitlines()[0]}
    if not res["served"]:
        return {**row, "why": f"vLLM refuses it here: {res['why']}"}
    same = "same" if res["greedy_same"] else "different"
    return {**row, "usable": True,
            "why": (f"served: perplexity x{res['ppl_ratio']:.4f} of the bf16 cache on a tiny model, mean |d log p| "
                    f"{res['mean_abs_logprob_diff']:.4f}, {same} greedy tokens")}
