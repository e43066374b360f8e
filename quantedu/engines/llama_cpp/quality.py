"""llama.cpp's own predictions held against the course's, on the same tokens.

* :func:`report` - a GGUF file run by llama.cpp (through llama-cpp-python: every position's logits) on the
  windows of a :class:`quantedu.evaluate.Baseline`: a :class:`~quantedu.evaluate.QualityReport` (perplexity, KL
  divergence, same top token, with intervals), paired token by token with every other report on that baseline,
  so the verdict rule (:mod:`quantedu.verdict`) compares a llama.cpp file with a torch model or another file.
  :func:`measure` adds the file's size and decode speed: one row of a table of GGUF files.
* :func:`kld_tolerance` - how far ``llama-perplexity --kl-divergence`` and the package's KL divergence may differ
  on the same tokens, token by token, given how the tool stores its baseline (16 bits per log-probability)
  and how far two float32 engines disagree (tests/test_kl_divergence_tool.py, notebook 05).
* :func:`course_bytes` - a file written by a llama.cpp tool against :mod:`quantedu.gguf`: for each quantized
  type in it, its smallest tensor quantized again from the same input by the course's quantizers, byte for byte.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

EPS = 2e-4  # nats of float32 disagreement allowed between torch and llama.cpp (twice the most measured here)


def _logprobs_of(llm, score_from: int):
    import torch

    def logprobs_of(row):
        llm.reset()
        llm.eval(row.tolist())
        logits = torch.from_numpy(np.array(llm.scores[score_from:len(row) - 1], dtype=np.float32))
        return torch.log_softmax(logits, dim=-1)
    return logprobs_of


def report(model_gguf, baseline, name: str, n_threads: int = 1):
    """``model_gguf`` run by llama.cpp on ``baseline``'s windows (no BOS added: the same token ids), scored
    against it: a :class:`~quantedu.evaluate.QualityReport`. ``n_threads``: llama.cpp's threads (1 on a shared
    2-core machine, see :mod:`.bindings`)."""
    return measure(model_gguf, {"": baseline}, name, n_threads, n_tokens=0).reports[""]


@dataclass
class FileMeasurement:
    """One GGUF file in llama.cpp: its quality on each window set, decode speed and size."""

    name: str
    reports: dict            # purpose -> QualityReport
    tokens_per_s: float      # decode, n_threads threads (nan when not measured): the median of speed_runs
    sizes: dict              # quantedu.gguf.io.bits_summary: file_MiB, bits_per_weight, linear_bits_per_weight, ...
    speed_runs: list = field(default_factory=list)  # every timing (``repeats`` of them)


def measure(model_gguf, baselines: dict, name: str, n_threads: int = 1, n_tokens: int = 32,
            repeats: int = 1) -> FileMeasurement:
    """Load ``model_gguf`` once and score it against every baseline of ``baselines`` (``{purpose: Baseline}``,
    e.g. the session's "eval" and "heldout"), then time ``n_tokens`` of greedy decoding (0: no timing),
    ``repeats`` times: the speed is their median, and every run is kept (their spread is the timing noise)."""
    from ...gguf.io import bits_summary
    from . import bindings
    if not baselines:
        raise ValueError("give at least one Baseline to score the file against, e.g. {'eval': session.baseline()}")
    seq_len = max(b.windows.shape[1] for b in baselines.values())
    llm = bindings.load(model_gguf, n_ctx=seq_len, n_threads=n_threads, logits_all=True)
    try:
        width = llm.n_vocab()
        for b in baselines.values():
            if b.vocab_size != width:
                raise ValueError(f"{Path(model_gguf).name} predicts over {width} tokens, the baseline over "
                                 f"{b.vocab_size}: another vocabulary. Compare a GGUF file of the baseline's model.")
        reports = {p: b.score(_logprobs_of(llm, b.score_from), name) for p, b in baselines.items()}
        runs = [bindings.tokens_per_second(llm, n_tokens=n_tokens) for _ in range(repeats if n_tokens else 0)]
    finally:
        llm.close()
    return FileMeasurement(name, reports, float(np.median(runs)) if runs else float("nan"), bits_summary(model_gguf),
                           runs)


def kld_tolerance(stored, base_logprobs: np.ndarray, logprobs: np.ndarray, eps: float = EPS) -> np.ndarray:
    """Per-token bound ``b_t`` on ``|KLD_tool - KLD_package|`` for the tokens of a ``--kl-divergence-base`` file
    (``stored``, :func:`~quantedu.engines.llama_cpp.read_kl_divergence_base`) when the package scores the same
    positions with ``base_logprobs`` and ``logprobs`` (``(n_chunks, positions, vocab)`` float arrays).

    The tool stores each baseline log-probability as a 16-bit code times a step ``s_t`` (at most ``s_t / 2`` off)
    and the two engines disagree by up to ``eps`` nats, so a token's KLD moves by at most
    ``(s_t/2 + eps) (1 + sum_v p_v |ln p_v - ln q_v|) + eps``, plus the terms the tool drops (``p < e^-16``,
    computed exactly). The mean KLDs agree within the mean of these bounds; a percentile within their maximum."""
    lp, lq, s = np.asarray(base_logprobs), np.asarray(logprobs), stored.step
    if lp.shape != lq.shape or lp.shape != stored.log_probs.shape:
        raise ValueError(f"shapes differ: stored {stored.log_probs.shape}, baseline {lp.shape}, model {lq.shape}; "
                         "score the positions the file stores (Baseline(..., score_from=stored.first))")
    weighted = np.exp(lp) * np.abs(lp - lq)
    spread = weighted.sum(-1)
    dropped = (weighted * (stored.log_probs <= -16)).sum(-1)
    return (s / 2 + eps) * (1 + spread) * (1 + 1e-3) + eps + dropped


def _float_rows(source: dict, header: dict, name: str) -> np.ndarray:
    kind, raw = source[name]
    dtype = {"F16": np.float16, "F32": np.float32}.get(kind)
    if dtype is None:
        raise ValueError(f"{name} is {kind} in the source file: give the float (F16/F32) file the tool read")
    return np.asarray(raw).view(dtype).astype(np.float32).reshape(-1, header[name]["shape"][0])


def course_bytes(tool_file, source_file, imatrix: dict | None = None):
    """For each quantized type in ``tool_file`` (written by ``llama-quantize`` from the float ``source_file``):
    its smallest tensor quantized again by :func:`quantedu.gguf.quantize` from the same weights (with the
    ``imatrix`` values the tool used, e.g. :func:`~quantedu.engines.llama_cpp.read_imatrix` of its file).
    A DataFrame: type, tensors of that type, the tensor checked, whether it had imatrix values, equal bytes."""
    import pandas as pd

    from ... import gguf
    from .files import read_header, tensor_bytes
    tool, source = tensor_bytes(tool_file), tensor_bytes(source_file)
    header = {t["name"]: t for t in read_header(source_file)[1]}
    rows = []
    for qtype in sorted({t for t, _ in tool.values()} & set(gguf.TYPES)):
        names = [n for n, (t, _) in tool.items() if t == qtype]
        name = min(names, key=lambda n: tool[n][1].size)
        im = None if imatrix is None else imatrix.get(name)
        ours = gguf.quantize(_float_rows(source, header, name), qtype, im)
        rows.append({"type": qtype, "tensors": len(names), "checked": name, "imatrix": im is not None,
                     "identical": bool(np.array_equal(ours.reshape(-1), tool[name][1]))})
    return pd.DataFrame(rows, columns=["type", "tensors", "checked", "imatrix", "identical"])


__all__ = ["EPS", "FileMeasurement", "course_bytes", "kld_tolerance", "measure", "report"]
