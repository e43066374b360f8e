"""Measuring a model: perplexity, generation speed, memory (tables and plots: :mod:`quantedu.course.views`).

Perplexity uses the standard non-overlapping-window definition (as in the GPTQ and AWQ papers'
wikitext2 evaluation): tokenize the evaluation text without special tokens, cut the first
``n_windows * seq_len`` tokens into ``n_windows`` disjoint windows, score every token of a window
given only the earlier tokens of that window, and report ``exp(mean negative log-likelihood)`` over
all ``n_windows * (seq_len - 1)`` predicted tokens. No window sees another's context, so the
number is deterministic and comparable across methods evaluated on the same windows.
"""
from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .data import Corpus, check_windows, tokenize


def _text(text: str | Corpus) -> str:
    return text.evaluation if isinstance(text, Corpus) else text


def model_device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def window_nll(model, windows: torch.Tensor, progress: bool = True, desc: str = "perplexity") -> torch.Tensor:
    """Summed negative log-likelihood of each window, shape ``(n_windows,)``."""
    device = model_device(model)
    out = []
    for row in tqdm(windows, desc=desc, disable=not progress, leave=False):
        ids = row.unsqueeze(0).to(device)
        logits = model(ids, use_cache=False).logits.float()
        out.append(F.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="sum").cpu())
    return torch.stack(out)


def evaluation_windows(tokenizer, text: str | Corpus, n_windows: int, seq_len: int) -> torch.Tensor:
    n_windows, seq_len = check_windows(n_windows, seq_len, "n_windows", "evaluation_windows")
    ids = tokenize(tokenizer, _text(text))
    need = n_windows * seq_len
    if len(ids) < need:
        raise ValueError(
            f"the evaluation text has {len(ids)} tokens; {n_windows} windows of {seq_len} need {need}. "
            "Use fewer or shorter windows."
        )
    return ids[:need].reshape(n_windows, seq_len)


def perplexity(
    model, tokenizer, text: str | Corpus, n_windows: int = 8, seq_len: int = 512, progress: bool = True
) -> float:
    """Perplexity over ``n_windows`` disjoint windows of ``seq_len`` tokens (see module docstring)."""
    windows = evaluation_windows(tokenizer, text, n_windows, seq_len)
    nll = window_nll(model, windows, progress=progress)
    return math.exp(nll.sum().item() / (n_windows * (seq_len - 1)))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def generation_speed(
    model, tokenizer, prompt: str = "Explain what quantization does to a neural network.",
    new_tokens: int = 32, repeats: int = 1,
) -> dict:
    """Prefill and decode throughput of greedy generation with the KV cache.

    Prefill: one forward pass over the prompt. Decode: ``new_tokens`` generated one at a time;
    its rate excludes the prefill (time of N tokens minus time of 1 token, over N - 1).
    """
    device = model_device(model)
    ids = tokenizer(prompt, return_tensors="pt").input_ids.to(device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def timed_generate(n: int) -> float:
        _sync(device)
        t0 = time.perf_counter()
        model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=pad)
        _sync(device)
        return time.perf_counter() - t0

    timed_generate(2)  # warm-up: first call allocates caches and picks kernels
    prefill, full = [], []
    for _ in range(repeats):
        prefill.append(timed_generate(1))
        full.append(timed_generate(new_tokens))
    t_prefill, t_full = min(prefill), min(full)
    return {
        "prompt_tokens": ids.shape[1],
        "new_tokens": new_tokens,
        "prefill_tokens_per_s": ids.shape[1] / t_prefill,
        "decode_tokens_per_s": (new_tokens - 1) / max(t_full - t_prefill, 1e-9),
        "device": str(device),
        "threads": torch.get_num_threads(),
    }


def memory_footprint(model) -> dict:
    """Bytes of weights as stored (:func:`quantedu.memory.measured_tensor_bytes`: each storage once, so
    tied weights count once; buffers included), plus the peak CUDA allocation on a GPU."""
    from .memory import measured_tensor_bytes
    measured = measured_tensor_bytes(model)
    total = measured["parameters"] + measured["buffers"]
    out = {"weight_bytes": total, "weight_MiB": total / 2**20}
    device = model_device(model)
    if device.type == "cuda":
        out["cuda_max_allocated_MiB"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out
