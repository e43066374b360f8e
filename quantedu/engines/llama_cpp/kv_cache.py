"""llama.cpp's KV cache: its types (``-ctk`` / ``-ctv``) and the bytes each needs, predicted from the model's shape,
the flags, the cache's size as llama.cpp reports it, and perplexity with a quantized cache (llama-perplexity)."""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .locate import ToolError
from .tools import perplexity

# What llama.cpp's `--cache-type-k/-v` accept (common/arg.cpp's kv_cache_types, the pinned version) and the
# storage format of each: f32/f16/bf16 store every value; the others store ggml blocks of 32 values.
KV_CACHE_TYPES = {"f32": "fp32", "f16": "fp16", "bf16": "bf16", "q8_0": "Q8_0", "q4_0": "Q4_0", "q4_1": "Q4_1",
                  "iq4_nl": "IQ4_NL", "q5_0": "Q5_0", "q5_1": "Q5_1"}


def kv_cache_type(name: str) -> str:
    """``name`` as llama.cpp spells a KV cache type (``"Q8_0"`` -> ``"q8_0"``), or a ValueError listing them."""
    key = str(name).strip().lower()
    if key not in KV_CACHE_TYPES:
        raise ValueError(f"llama.cpp has no KV cache type {name!r}: -ctk/-ctv take {', '.join(KV_CACHE_TYPES)} "
                         "(the K-quants such as q4_K are weight formats only: their 256-value blocks are wider "
                         "than a head's row)")
    return key


def kv_cache_type_bytes(source, context: int, k_type: str = "f16", v_type: str | None = None) -> dict:
    """Bytes of llama.cpp's KV cache for ``context`` tokens, K stored as ``k_type`` and V as ``v_type``
    (default: the same), predicted from the model's shape alone.

    Each layer holds a K and a V tensor of ``context`` rows of ``kv_heads * head_dim`` values, and a row is
    stored in the type's blocks (``q8_0``: 34 bytes per 32 values, ``q4_0``: 18, ...), so
    ``K = layers * context * row_bytes(k_type)``; :func:`quantedu.memory.kv_bytes_per_token` is the f16 case. ``context`` is
    llama.cpp's KV size, its ``-c`` (printed as "N cells"; parallel sequences share it).
    Returns ``{"K": bytes, "V": bytes, "total": bytes, "k_type": ..., "v_type": ...}``.
    """
    k_type = kv_cache_type(k_type)
    v_type = k_type if v_type is None else kv_cache_type(v_type)
    if isinstance(context, bool) or not isinstance(context, int) or context < 1:
        raise ValueError(f"context must be a positive number of tokens (llama.cpp's -c), got {context!r}")
    from ...memory import model_shape, weight_format

    s = model_shape(source)
    width = s.kv_heads * s.head_dim
    k = s.layers * weight_format(KV_CACHE_TYPES[k_type]).tensor_bytes(context, width)
    v = s.layers * weight_format(KV_CACHE_TYPES[v_type]).tensor_bytes(context, width)
    return {"K": int(k), "V": int(v), "total": int(k + v), "k_type": k_type, "v_type": v_type}


_KV_SIZE = re.compile(r"llama_kv_cache: size = +([0-9.]+) MiB \( *(\d+) cells, +(\d+) layers, +(\d+)/(\d+) seqs\), "
                      r"K \((\w+)\): +([0-9.]+) MiB, V \((\w+)\): +([0-9.]+) MiB")
_KV_ROT = re.compile(r"llama_kv_cache: attn_rot_([kv]) = (\d)")
_PASS = re.compile(r"perplexity: ([0-9.]+) seconds per pass")
KV_LOG_FLAGS = ("-lv", "4")  # llama.cpp logs its KV cache (size, rotation) only at verbosity 4 and above
ROTATION_ENV = "LLAMA_ATTN_ROT_DISABLE"  # =1: no Hadamard rotation of a quantized K/V cache


def kv_cache_flags(k_type: str = "f16", v_type: str | None = None) -> list[str]:
    """``-ctk K -ctv V`` for any llama.cpp program (llama-perplexity, llama-server, llama-cli), plus
    ``-fa on`` when V is quantized: llama.cpp stores a quantized V only for flash attention (its plain
    attention reads V transposed, which block types cannot be). Checked against the types llama.cpp has
    (:data:`KV_CACHE_TYPES`): a ValueError lists them. Pass the result as ``extra=``
    (with :data:`KV_LOG_FLAGS` to get the cache's size in the log, :func:`parse_kv_cache`)."""
    k = kv_cache_type(k_type)
    v = k if v_type is None else kv_cache_type(v_type)
    flags = ["-ctk", k, "-ctv", v]
    if v not in ("f32", "f16", "bf16"):
        flags += ["-fa", "on"]
    return flags


@dataclass
class KVCacheReport:
    """The KV cache as llama.cpp reports it when it creates a context (MiB with two decimals), and whether it
    rotates a quantized K / V cache (this llama.cpp applies a Hadamard rotation to quantized caches by default)."""

    cells: int
    layers: int
    seqs: int
    k_type: str
    v_type: str
    k_mib: float
    v_mib: float
    total_mib: float
    rotate_k: bool | None = None
    rotate_v: bool | None = None

    @staticmethod
    def mib(n_bytes: int) -> float:
        """``n_bytes`` as llama.cpp prints it: ``(float)bytes / (1024.0f * 1024.0f)`` with ``%.2f``."""
        return float(f"{np.float32(n_bytes) / np.float32(1024 * 1024):.2f}")


def parse_kv_cache(output: str) -> KVCacheReport:
    """The ``llama_kv_cache: size = ...`` line (and ``attn_rot_k/v``) of a llama.cpp program's log, which it
    prints at verbosity 4 (:data:`KV_LOG_FLAGS`); the last one if several."""
    found = _KV_SIZE.findall(output)
    if not found:
        raise ToolError("no 'llama_kv_cache: size = ...' line in the output: run the program with "
                        f"{' '.join(KV_LOG_FLAGS)} (llama.cpp logs its KV cache at verbosity 4)")
    total, cells, layers, seqs, _streams, k_type, k, v_type, v = found[-1]
    rot = dict(_KV_ROT.findall(output))
    return KVCacheReport(int(cells), int(layers), int(seqs), k_type, v_type, float(k), float(v), float(total),
                         rot["k"] == "1" if "k" in rot else None, rot["v"] == "1" if "v" in rot else None)


def kv_cache_perplexity(model_gguf, text_file, k_type: str = "f16", v_type: str | None = None, ctx: int = 4096,
                        chunks: int = 1, n_threads: int = 1, rotation: bool = True, extra=(),
                        timeout: float = 900.0) -> dict:
    """``llama-perplexity ... -c CTX -ctk K -ctv V [-fa on]``: the KV memory llama.cpp allocates for that
    context and cache type, its perplexity (second half of each chunk scored, see :func:`perplexity`) and its
    speed (context tokens per second of the first pass). ``rotation=False`` sets :data:`ROTATION_ENV`, turning
    off llama.cpp's Hadamard rotation of a quantized cache. Returns ``{"kv": KVCacheReport, "ppl", "stderr",
    "tokens_per_s", "run"}``. The flags come from :func:`kv_cache_flags`; other wrappers take them as ``extra``."""
    flags = kv_cache_flags(k_type, v_type)
    res = perplexity(model_gguf, text_file, ctx=ctx, chunks=chunks, n_threads=n_threads,
                     extra=[*flags, *KV_LOG_FLAGS, *extra], timeout=timeout,
                     env=None if rotation else {ROTATION_ENV: "1"})
    per_pass = _PASS.search(res.run.output)
    return {"kv": parse_kv_cache(res.run.output), "ppl": res.ppl, "stderr": res.stderr,
            "tokens_per_s": ctx / float(per_pass[1]) if per_pass else None, "run": res.run}


def kv_cache_kld(model_gguf, text_file, base_file, cases, shape_source, ctx: int = 1024, chunks: int = 2,
                 n_threads: int = 1, timeout: float = 900.0) -> list[dict]:
    """Each KV cache type of ``cases`` (``[(k_type, v_type), ...]``) against llama.cpp's own f16 cache on the same
    tokens: one ``--kl-divergence-base`` run with the f16 cache (written to ``base_file``), then one
    ``--kl-divergence`` run per case with ``-ctk/-ctv``. Per case (JSON-ready): the bytes the formula predicts
    for ``shape_source`` (:func:`kv_cache_type_bytes`) and the MiB llama.cpp reports, KLD and same-top with
    llama-perplexity's ``+/-``, perplexity, whether the cache was rotated, and tokens per second of the first pass
    (prompt processing at ``ctx`` tokens). ``--kl-divergence`` prints no timing, so each case is also timed by one
    plain ``llama-perplexity`` chunk with its cache (:func:`kv_cache_perplexity`)."""
    from .tools import kl_divergence, kl_divergence_base

    def row(k, v, out, quality=None):
        kv, pred = parse_kv_cache(out), kv_cache_type_bytes(shape_source, ctx, k, v)
        per_pass = _PASS.search(out)
        r = {"K": kv.k_type, "V": kv.v_type, "cells": kv.cells, "predicted_bytes": pred["total"],
             "predicted_MiB": KVCacheReport.mib(pred["total"]), "reported_MiB": kv.total_mib,
             "equal": (KVCacheReport.mib(pred["K"]), KVCacheReport.mib(pred["V"]), KVCacheReport.mib(pred["total"]))
             == (kv.k_mib, kv.v_mib, kv.total_mib), "rotated": bool(kv.rotate_k or kv.rotate_v),
             "tokens_per_s": ctx / float(per_pass[1]) if per_pass else None}
        if quality is not None:
            r.update(kld=quality.kld, kld_se=quality.kld_se, same_top=quality.same_top,
                     same_top_se=quality.same_top_se, ppl=quality.ppl, ppl_base=quality.ppl_base)
        return r

    base = kl_divergence_base(model_gguf, text_file, base_file, ctx=ctx, chunks=chunks, n_threads=n_threads,
                              extra=[*kv_cache_flags("f16"), *KV_LOG_FLAGS], timeout=timeout)
    rows = [row("f16", "f16", base.output)]
    for k, v in cases:
        q = kl_divergence(model_gguf, base_file, n_threads=n_threads, timeout=timeout,
                          extra=[*kv_cache_flags(k, v), *KV_LOG_FLAGS])
        rows.append(row(k, v if v is not None else k, q.run.output, q))
        rows[-1]["tokens_per_s"] = kv_cache_perplexity(model_gguf, text_file, k, v, ctx=ctx, chunks=1,
                                                       n_threads=n_threads, timeout=timeout)["tokens_per_s"]
    return rows
