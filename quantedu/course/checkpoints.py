"""Quantized checkpoints that several notebooks use, made once and shared through the artifact cache.

``quantize(session, config, n_samples, seq_len)`` runs the course's own GPTQ or AWQ (chosen by the config's
type) on ``session.calibration(n_samples, seq_len)`` with ``session.quant_threads`` torch threads, times it
(:func:`quantedu.runtime.timed`), and writes the result as a compressed-tensors ``pack-quantized`` checkpoint in
fp16 (what llm-compressor writes and vLLM serves) into the cache (:func:`quantedu.artifacts.cached_dir`). The key is
the model, its dtype, the config, the calibration and the fingerprint of the code that made it, so notebook 07's
GPTQ/AWQ rows, the same settings in notebooks 03 and 04, and CI's second pass of any of them run the algorithm
once. :meth:`Checkpoint.model` reads the checkpoint back with the package's own reader
(:func:`quantedu.export.load_quantized_model`): the exact weights an engine serves, whoever made them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import artifacts

__all__ = ["Checkpoint", "quantize", "smoothquant_w8a8", "method_of"]


@dataclass(frozen=True)
class Checkpoint:
    """A quantized checkpoint in the cache and how it was made."""

    path: Path           # the checkpoint folder (vLLM serves it; load_quantized_model reads it)
    method: str          # "gptq", "awq" or "w8a8"
    label: str           # the config's label, e.g. "GPTQ W4 asym g64"
    calibration: str     # "12 x 256 tokens"
    tokens: int          # calibration tokens
    wall_s: float        # quantization time when it was made (wall clock)
    cpu_s: float         # ... and this process's CPU time (the wall clock also counts other jobs)
    threads: int | None  # torch threads it ran with (None: torch's default)

    def model(self, dtype: torch.dtype = torch.float32):
        """The checkpoint read back from its file: a plain transformers model with the weights dequantized
        (GPTQ, AWQ), or with :class:`~quantedu.w8a8.W8A8Linear` layers, the emulation of vLLM's int8 kernels (W8A8)."""
        if self.method == "w8a8":
            from ..export.w8a8 import load_w8a8
            return load_w8a8(self.path, dtype)
        from ..export import load_quantized_model
        return load_quantized_model(self.path, dtype)


def method_of(config) -> str:
    """``"gptq"`` or ``"awq"`` from the config's type (the algorithm that reads it)."""
    from ..awq import AWQConfig
    from ..gptq import GPTQConfig
    if isinstance(config, GPTQConfig):
        return "gptq"
    if isinstance(config, AWQConfig):
        return "awq"
    raise TypeError(f"config must be a quantedu.gptq.GPTQConfig or quantedu.awq.AWQConfig, got {type(config).__name__}")


def _code(method: str) -> str:
    import importlib

    from .. import calibration, primitives
    from ..export import packing, write
    return artifacts.code_fingerprint(importlib.import_module(f"quantedu.{method}"), calibration, primitives,
                                      packing, write, quantize)


LAYOUTS = ("compressed-tensors", "gptq", "awq")  # what save_compressed_tensors / save_gptq / save_awq write


def quantize(session, config, n_samples: int, seq_len: int, seed: int = 0,
             layout: str = "compressed-tensors") -> Checkpoint:
    """The session model quantized with ``config`` (GPTQ or AWQ) on ``n_samples x seq_len`` calibration tokens
    of the session's corpus: a :class:`Checkpoint` in the cache (made here on the first call, read afterwards).

    ``layout``: ``"compressed-tensors"`` (llm-compressor's, default), or the older ``"gptq"`` (v1: ``qweight``,
    ``qzeros``, ``scales``, ``g_idx``) / ``"awq"`` (AutoAWQ GEMM) layouts that ``vllm serve --quantization
    gptq|awq`` loads (``"awq"`` only for an AWQ config).

    The session model is not changed (the algorithm runs on a copy). The calibration budget rule applies as
    everywhere (:func:`quantedu.calibration.warn_if_starved`): too few tokens warn, or fail under
    ``QUANTEDU_STRICT_CALIBRATION`` unless inside :func:`quantedu.calibration.inconclusive`."""
    import copy

    from ..runtime import timed, torch_threads

    method = method_of(config)
    if layout not in LAYOUTS or (layout == "awq") != (method == "awq") and layout != "compressed-tensors":
        raise ValueError(f"layout must be one of {LAYOUTS} ('gptq' for a GPTQ config, 'awq' for an AWQ config), "
                         f"got {layout!r} for {method}")
    model_id = str(getattr(session.model, "name_or_path", "") or session.model_name)
    threads = session.quant_threads
    key = artifacts.cache_key("ckpt", method, model_id, session.dtype_name, repr(config), n_samples, seq_len, seed,
                              session.corpus.name, threads, layout, _code(method))
    batches = session.calibration(n_samples, seq_len, seed=seed)

    def build(tmp: Path) -> None:
        from ..export import save_awq, save_compressed_tensors, save_gptq
        save = {"compressed-tensors": save_compressed_tensors, "gptq": save_gptq, "awq": save_awq}[layout]
        model = copy.deepcopy(session.model)
        if method == "gptq":
            from ..gptq import gptq_quantize_model
            run = lambda: gptq_quantize_model(model, batches, config, progress=False)  # noqa: E731
        else:
            from ..awq import awq_quantize_model
            run = lambda: awq_quantize_model(model, batches, config, progress=False)  # noqa: E731
        with torch_threads(threads):
            layers, wall, cpu = timed(run)
        save(model.to(torch.float16), layers, config, tmp / "model", tokenizer=session.tokenizer)
        (tmp / "run.json").write_text(json.dumps({"wall_s": wall, "cpu_s": cpu}))

    folder = artifacts.cached_dir("checkpoints", key, build, meta={"model": model_id, "config": config.label()})
    run = json.loads((folder / "run.json").read_text())
    return Checkpoint(folder / "model", method, config.label(), f"{n_samples} x {seq_len} tokens",
                      batches.numel(), run["wall_s"], run["cpu_s"], threads)


def smoothquant_w8a8(session, alpha: float, n_samples: int, seq_len: int, seed: int = 0) -> Checkpoint:
    """The session model with SmoothQuant (``alpha``, :func:`quantedu.smoothquant.smooth_model`) and W8A8 (int8
    per-channel weights, dynamic per-token int8 activations: :func:`quantedu.w8a8.quantize_model_w8a8`),
    calibrated on ``n_samples x seq_len`` tokens, timed, and written as the compressed-tensors INT8 checkpoint
    vLLM serves with its int8 kernels (:func:`quantedu.export.w8a8.save_w8a8`): notebook 09's method, cached
    like :func:`quantize`. The session model is not changed."""
    import copy

    from .. import smoothquant, w8a8
    from ..export import w8a8 as export_w8a8
    from ..runtime import timed, torch_threads

    alpha = smoothquant.check_alpha(alpha)
    model_id = str(getattr(session.model, "name_or_path", "") or session.model_name)
    threads = session.quant_threads
    key = artifacts.cache_key("ckpt-w8a8", model_id, session.dtype_name, alpha, n_samples, seq_len, seed,
                              session.corpus.name, threads,
                              artifacts.code_fingerprint(smoothquant, w8a8, export_w8a8, smoothquant_w8a8))
    batches = session.calibration(n_samples, seq_len, seed=seed)
    label = f"SmoothQuant W8A8 (alpha {alpha:g})"

    def build(tmp: Path) -> None:
        model = copy.deepcopy(session.model).float()

        def run():
            smoothquant.smooth_model(model, batches, alpha)
            w8a8.quantize_model_w8a8(model, "dynamic")

        with torch_threads(threads):
            _, wall, cpu = timed(run)
        export_w8a8.save_w8a8(model, tmp / "model", session.tokenizer)
        (tmp / "run.json").write_text(json.dumps({"wall_s": wall, "cpu_s": cpu}))

    folder = artifacts.cached_dir("checkpoints", key, build, meta={"model": model_id, "config": label})
    run = json.loads((folder / "run.json").read_text())
    return Checkpoint(folder / "model", "w8a8", label, f"{n_samples} x {seq_len} tokens", batches.numel(),
                      run["wall_s"], run["cpu_s"], threads)
