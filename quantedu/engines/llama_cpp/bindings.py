"""llama.cpp as the real tool, through llama-cpp-python: run GGUF files and quantize with llama.cpp's own code.

* :func:`load` - ``llama_cpp.Llama`` with an explicit thread count. Default 1 thread: on a 2-core
  machine shared with other work, 2 threads were measured to collapse to ~1 token/s while 1 thread
  kept 30-80 tokens/s.
* :func:`greedy` - deterministic generation (temperature 0, no repeat penalty).
* :func:`perplexity` - from llama.cpp's own logits over fixed windows (no BOS, like the course's
  transformers evaluation), so numbers compare with ``quantedu.evaluate.perplexity``.
* :func:`tokens_per_second` - decode speed.
* :func:`quantize_file` - ``llama_model_quantize`` (what the ``llama-quantize`` CLI calls), with a mix name
  (or ``F16``) and optionally our importance matrix (``llama_model_imatrix_data`` array, NULL-terminated).
* :func:`measure_file` / :func:`quantize_and_measure` - the one way the course measures a GGUF file:
  size and bits per weight, perplexity and decode speed (and the quantizer's time).
* :func:`gguf_file` - the course model as a cached GGUF of any type, made by llama.cpp's quantizer.

With a CUDA build of llama-cpp-python, ``n_gpu_layers=-1`` offloads every layer to the GPU.
"""
from __future__ import annotations

import ctypes
import math
import time
from pathlib import Path

import numpy as np

from .ggml import INSTALL_HINT
from ...gguf.mixes import FTYPE


def _llama_cpp():
    try:
        import llama_cpp
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    return llama_cpp


def load(path, n_ctx: int = 512, n_threads: int = 1, n_gpu_layers: int = 0, logits_all: bool = False,
         verbose: bool = False):
    """Open a GGUF file in llama.cpp. ``logits_all=True`` keeps every position's logits (perplexity)."""
    from ...gguf.io import open_gguf
    open_gguf(path)  # clear error for a truncated/corrupt file instead of a crash inside llama.cpp
    llama_cpp = _llama_cpp()
    return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=n_threads, n_threads_batch=n_threads,
                           n_batch=n_ctx, n_gpu_layers=n_gpu_layers, logits_all=logits_all, verbose=verbose,
                           seed=0)


def greedy(llm, prompt: str, max_tokens: int = 32) -> str:
    """Greedy continuation of ``prompt`` (no sampling, no repeat penalty)."""
    out = llm.create_completion(prompt, max_tokens=max_tokens, temperature=0.0, top_k=1, top_p=1.0,
                                repeat_penalty=1.0)
    return out["choices"][0]["text"]


def tokenize(llm, text: str) -> list[int]:
    return llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)


def perplexity(llm, text: str, n_windows: int = 8, seq_len: int = 512) -> float:
    """exp(mean NLL of next-token predictions) over the first ``n_windows`` windows of ``seq_len`` tokens.

    ``llm`` must have been loaded with ``logits_all=True`` and ``n_ctx >= seq_len``.
    """
    ids = tokenize(llm, text)
    if len(ids) < n_windows * seq_len:
        raise ValueError(f"text has {len(ids)} tokens, need {n_windows * seq_len}")
    nll, count = 0.0, 0
    for k in range(n_windows):
        window = ids[k * seq_len:(k + 1) * seq_len]
        llm.reset()
        llm.eval(window)
        logits = np.asarray(llm.scores[:seq_len], dtype=np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        targets = np.asarray(window[1:])
        nll -= logp[np.arange(seq_len - 1), targets].sum()
        count += seq_len - 1
    return math.exp(nll / count)


def tokens_per_second(llm, prompt: str = "The capital of France is", n_tokens: int = 64) -> float:
    """Decode speed: generated tokens / wall time of the generation (prompt processing excluded)."""
    llm.reset()
    ids = tokenize(llm, prompt)
    llm.eval(ids)
    t0 = time.perf_counter()
    tok = int(np.argmax(llm.scores[len(ids) - 1]))
    for _ in range(n_tokens):
        llm.eval([tok])
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    return n_tokens / (time.perf_counter() - t0)


def quantize_file(src, dst, mix: str, imatrix: dict[str, np.ndarray] | None = None, nthread: int = 1,
                  verbose: bool = False) -> Path:
    """llama.cpp's quantizer: ``llama_model_quantize(src, dst, params)`` with ``params.ftype`` = ``mix``.

    ``imatrix``: ``{gguf tensor name: mean squared input per column}`` (see :mod:`quantedu.gguf.imatrix`).
    Re-quantizing an already quantized ``src`` is allowed (llama.cpp dequantizes it to F32 first).
    Written to a temporary file and renamed into place.
    """
    from quantedu.artifacts import atomic_path
    llama_cpp = _llama_cpp()
    mix = mix.upper()
    ftypes = {**FTYPE, "F16": 1}  # LLAMA_FTYPE_MOSTLY_F16: a plain conversion, through the same call
    if mix not in ftypes:
        raise ValueError(f"unknown mix {mix!r}; known: {', '.join(ftypes)}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftypes[mix]
    params.nthread = nthread
    params.allow_requantize = True
    keep = []
    if imatrix:
        entries = (llama_cpp.llama_model_imatrix_data * (len(imatrix) + 1))()
        for i, (name, values) in enumerate(imatrix.items()):
            arr = np.ascontiguousarray(values, dtype=np.float32)
            keep.append((name.encode(), arr))
            entries[i].name = keep[-1][0]
            entries[i].data = arr.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            entries[i].size = arr.size
        entries[len(imatrix)].name = None  # NULL terminator
        params.imatrix = ctypes.cast(entries, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
    dst = Path(dst)
    import llama_cpp._logger as default_log
    if not verbose:  # llama.cpp logs one "falling back" warning per tensor otherwise
        llama_cpp.llama_log_set(_quiet_callback(), ctypes.c_void_p(0))
    try:
        with atomic_path(dst) as tmp:
            rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
            if rc != 0:
                raise RuntimeError(f"llama_model_quantize({src} -> {mix}) failed with code {rc}")
    finally:
        llama_cpp.llama_log_set(default_log.llama_log_callback, ctypes.c_void_p(0))
    return dst


_QUIET = []


def _quiet_callback():
    """A llama.cpp log callback that drops everything (kept alive in a module global)."""
    if not _QUIET:
        _QUIET.append(_llama_cpp().llama_log_callback(lambda level, text, user_data: None))
    return _QUIET[0]


def measure_file(path, text: str, n_windows: int = 8, seq_len: int = 512, n_threads: int = 1,
                 n_tokens: int = 32) -> dict:
    """Perplexity, decode tokens/s and size of one GGUF file in llama.cpp (one row of a results table)."""
    from ...gguf.io import bits_summary
    sizes = bits_summary(path)
    llm = load(path, n_ctx=seq_len, n_threads=n_threads, logits_all=True)
    try:
        ppl = perplexity(llm, text, n_windows=n_windows, seq_len=seq_len)
        tps = tokens_per_second(llm, n_tokens=n_tokens)
    finally:
        llm.close()
    return {**sizes, "perplexity": ppl, "tokens_per_s": tps}


def quantize_and_measure(src, mix: str, text: str, n_windows: int = 8, seq_len: int = 512, n_threads: int = 1,
                         imatrix: dict[str, np.ndarray] | None = None, n_tokens: int = 32) -> dict:
    """:func:`quantize_file` ``src`` to ``mix`` (timed: ``quantize_s``), then :func:`measure_file`; the
    file is deleted afterwards (the numbers are what a results table keeps)."""
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{mix}.gguf"
        t0 = time.perf_counter()
        quantize_file(src, path, mix, imatrix, nthread=n_threads)
        seconds = time.perf_counter() - t0
        return {**measure_file(path, text, n_windows, seq_len, n_threads=n_threads, n_tokens=n_tokens),
                "quantize_s": seconds}


def gguf_file(mix: str = "Q4_1") -> Path:
    """The course model as a GGUF file of type ``mix``: the shipped Q4_1 file, or llama.cpp's requantization.

    ``mix`` is a ``llama-quantize`` type (``Q4_K_M``, ``Q5_K_M``, ``Q8_0``, ...) or ``F16``. Files are made
    by llama.cpp's own quantizer (:func:`quantize_file`) from the shipped file and cached
    (:func:`quantedu.artifacts.cached_dir`), so a second call is instant.
    """
    from quantedu import artifacts
    from quantedu.models import offline_gguf_path

    src = offline_gguf_path()
    mix = mix.upper()
    if mix == "Q4_1":
        return src
    key = artifacts.cache_key("smollm2-135m", mix, src.stat().st_size)
    name = f"SmolLM2-135M-Instruct.{mix}.gguf"
    return artifacts.cached_dir("gguf-llama", key, lambda tmp: quantize_file(src, tmp / name, mix),
                                meta={"source": str(src), "mix": mix}) / name
