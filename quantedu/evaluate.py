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
from dataclasses import dataclass

import numpy as np
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


# --- the field's metrics: a quantized model against its baseline on the same tokens -----------------
# (KL divergence, same top token, delta-p, paired delta-NLL: what `llama-perplexity --kl-divergence`
# prints, computed in torch. Intervals and the verdict rule: quantedu.verdict.)
def _vocabulary_digest(tokenizer) -> str | None:
    if tokenizer is None:
        return None
    import hashlib
    items = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(repr(items).encode()).hexdigest()[:16]


@torch.no_grad()
def _window_logprobs(model, row: torch.Tensor, score_from: int) -> torch.Tensor:
    """log-softmax of the predictions for positions ``score_from .. len-2`` of one window, float32."""
    logits = model(row.unsqueeze(0).to(model_device(model)), use_cache=False).logits[0, score_from:-1]
    return F.log_softmax(logits.float(), dim=-1).cpu()


def token_metrics(base_logprobs: torch.Tensor, logprobs: torch.Tensor, targets: torch.Tensor) -> dict:
    """Per-token metrics of one window from two ``(tokens, vocab)`` log-probability tables and the
    ``(tokens,)`` correct next tokens: ``kld`` = KL(base || model) = sum_v p_base (log p_base - log p_model),
    ``same_top`` (the two argmaxes agree), ``nll`` and ``nll_base`` of the correct token, and ``dp`` =
    p_model(correct) - p_base(correct). Float64 numpy arrays (booleans for ``same_top``)."""
    if base_logprobs.shape != logprobs.shape:
        raise ValueError(f"the two models' predictions differ in shape: {tuple(base_logprobs.shape)} vs "
                         f"{tuple(logprobs.shape)}; a vocabulary of another width means another tokenizer")
    lb, lq = base_logprobs.double(), logprobs.double()
    kld = (lb.exp() * (lb - lq)).sum(-1)
    idx = targets.long().unsqueeze(-1)
    nll_b, nll_q = -lb.gather(-1, idx)[:, 0], -lq.gather(-1, idx)[:, 0]
    return {"kld": kld.numpy(), "same_top": (lb.argmax(-1) == lq.argmax(-1)).numpy(), "nll": nll_q.numpy(),
            "nll_base": nll_b.numpy(), "dp": (torch.exp(-nll_q) - torch.exp(-nll_b)).numpy()}


class Baseline:
    """The baseline model's next-token log-probabilities on fixed token windows, computed once and kept in
    memory (float32), so that many quantized models can be compared against it (:meth:`compare`).

    ``windows``: ``(n_windows, seq_len)`` token ids (:func:`evaluation_windows`). Every position from
    ``score_from`` on predicts the next token: ``score_from=0`` scores all ``seq_len - 1`` of them (the
    course's perplexity), ``seq_len // 2`` only the second half (llama-perplexity's protocol, where every
    scored token has at least half a window of context). ``tokenizer``: its vocabulary is recorded, and a
    model compared with another tokenizer is refused. Memory: ``n_windows * (seq_len - 1 - score_from) *
    vocab * 4`` bytes (:attr:`nbytes`; 4 x 512 windows of a 49,152-token vocabulary: 402 MB).
    """

    def __init__(self, model, windows: torch.Tensor, tokenizer=None, score_from: int = 0, name: str = "baseline",
                 progress: bool = False):
        from .calibration import check_batches
        self.windows = check_batches(windows).cpu()
        n, seq_len = check_windows(*self.windows.shape, what="Baseline")
        if isinstance(score_from, bool) or not isinstance(score_from, int) or not 0 <= score_from <= seq_len - 2:
            raise ValueError(f"score_from must be a position in 0..{seq_len - 2} (seq_len - 2), got {score_from!r}")
        self.score_from, self.name, self.vocabulary = score_from, name, _vocabulary_digest(tokenizer)
        self.targets = self.windows[:, score_from + 1:]
        self.logprobs = torch.stack([_window_logprobs(model, row, score_from)
                                     for row in tqdm(self.windows, desc=name, disable=not progress, leave=False)])
        self.vocab_size = self.logprobs.shape[-1]
        import hashlib  # what pairs two reports: these windows, scored from here, by this baseline model
        digest = hashlib.sha256(self.windows.numpy().tobytes() + self.logprobs[:, :4].numpy().tobytes())
        self.id = (name, score_from, digest.hexdigest()[:16])

    @property
    def nbytes(self) -> int:
        return self.logprobs.element_size() * self.logprobs.nelement()

    @property
    def tokens(self) -> int:
        return self.targets.numel()

    def _check(self, model, tokenizer) -> None:
        digest = _vocabulary_digest(tokenizer)
        if digest is not None and self.vocabulary is not None and digest != self.vocabulary:
            raise ValueError("this model's tokenizer has another vocabulary than the baseline's: the same windows "
                             "mean different text to the two models, so KL divergence and perplexity cannot be "
                             "compared. Compare quantized versions of the same model (same tokenizer).")
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        width = getattr(head, "out_features", None)  # checked before the forward passes, not after
        if width is not None and width != self.vocab_size:
            raise ValueError(f"the model predicts over {width} tokens, the baseline over {self.vocab_size}: another "
                             "vocabulary, so the two cannot be compared token by token. Use a quantized version "
                             "of the baseline's model.")

    def compare(self, model, name: str = "quantized", tokenizer=None, progress: bool = False) -> "QualityReport":
        """Score ``model`` on the baseline's windows: a :class:`QualityReport` (one forward pass per window)."""
        self._check(model, tokenizer)
        return self.score(lambda row: _window_logprobs(model, row, self.score_from), name, progress)

    def score(self, logprobs_of, name: str = "quantized", progress: bool = False) -> "QualityReport":
        """A :class:`QualityReport` from any engine: ``logprobs_of(window)`` returns the ``(positions, vocab)``
        log-probabilities of the predictions from ``score_from`` on for one ``(seq_len,)`` window of token ids
        (llama.cpp's: :func:`quantedu.engines.llama_cpp.quality.report`)."""
        t0 = time.perf_counter()
        rows = [token_metrics(base, logprobs_of(row), target)
                for base, row, target in tqdm(list(zip(self.logprobs, self.windows, self.targets)), desc=name,
                                              disable=not progress, leave=False)]
        per_token = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
        return QualityReport(name, self.name, self.windows.shape[1], self.score_from, self.id,
                             time.perf_counter() - t0, per_token)


def compare(base_model, model, windows: torch.Tensor, tokenizer=None, name: str = "quantized",
            score_from: int = 0) -> "QualityReport":
    """One quantized model against its baseline on ``windows`` (see :class:`Baseline`, which to keep when
    comparing several models: the baseline's pass then runs once)."""
    return Baseline(base_model, windows, tokenizer, score_from).compare(model, name, tokenizer)


@dataclass(frozen=True, eq=False)
class QualityReport:
    """What llama.cpp's ``--kl-divergence`` mode reports, for one model against its baseline, with honest
    intervals (:mod:`quantedu.verdict`: blocks of ~64 tokens, so ``+/-`` is wider than llama-perplexity's,
    which treats tokens as independent). ``per_token``: ``(n_windows, scored tokens)`` arrays ``kld``,
    ``same_top``, ``nll``, ``nll_base``, ``dp`` (for figures and for :meth:`verdict` between two models)."""

    name: str
    baseline: str
    seq_len: int
    score_from: int
    baseline_id: tuple       # Baseline.id: reports with the same one are paired token by token
    seconds: float
    per_token: dict

    def _iv(self, key: str):
        from .verdict import paired_interval
        return paired_interval(self.per_token[key].astype(np.float64))

    @property
    def tokens(self) -> int:
        return self.per_token["kld"].size

    @property
    def ppl(self) -> float:
        return math.exp(self.per_token["nll"].mean())

    @property
    def ppl_base(self) -> float:
        return math.exp(self.per_token["nll_base"].mean())

    @property
    def kld(self):
        """Mean KL divergence (base || model) per token, an :class:`~quantedu.verdict.Interval`."""
        return self._iv("kld")

    def kld_percentile(self, q: float) -> float:
        """KLD percentile (``q`` in 0..100; linear interpolation, as llama-perplexity's)."""
        return float(np.percentile(self.per_token["kld"], q))

    @property
    def same_top(self):
        """Fraction of tokens whose most likely next token is the baseline's ("Same top p")."""
        return self._iv("same_top")

    @property
    def delta_p(self):
        """Mean change in the probability of the correct token (model - baseline)."""
        return self._iv("dp")

    @property
    def rms_delta_p(self) -> float:
        return float(np.sqrt((self.per_token["dp"] ** 2).mean()))

    @property
    def delta_nll(self):
        """Paired NLL difference per token (model - baseline): log of the perplexity ratio."""
        return self.verdict().interval

    def verdict(self, other: "QualityReport | None" = None, metric: str = "nll"):
        """The rule (:func:`quantedu.verdict.verdict`) for this model against the baseline (``other=None``:
        NLL only) or against another model compared on the same baseline and windows (``metric``: "nll"
        or "kld", paired token by token)."""
        from .verdict import verdict
        if metric not in ("nll", "kld"):
            raise ValueError(f"metric must be 'nll' or 'kld', got {metric!r}")
        if other is None:
            if metric != "nll":
                raise ValueError("against the baseline only 'nll' has a difference (the baseline's KLD is 0)")
            return verdict(self.per_token["nll"] - self.per_token["nll_base"], self.name, self.baseline)
        if not isinstance(other, QualityReport):
            raise TypeError(f"compare with another QualityReport, got {type(other).__name__}")
        if other.baseline_id != self.baseline_id:
            raise ValueError(f"{self.name!r} and {other.name!r} were not scored on the same tokens against the same "
                             "baseline: compare both with one Baseline(...).compare(...)")
        what = "negative log-likelihood per token" if metric == "nll" else "KL divergence from the baseline"
        return verdict(self.per_token[metric] - other.per_token[metric], self.name, other.name, what)

    def row(self) -> dict:
        """One table row (for :func:`results_table`)."""
        kld, top, dp, d = self.kld, self.same_top, self.delta_p, self.delta_nll
        return {"model": self.name, "ppl": self.ppl, "ppl_base": self.ppl_base,
                "ppl_change_%": 100 * math.expm1(d.mean), "ppl_change_low_%": 100 * math.expm1(d.low),
                "ppl_change_high_%": 100 * math.expm1(d.high), "kld": kld.mean, "kld_se": kld.se,
                "kld_median": self.kld_percentile(50), "kld_p99": self.kld_percentile(99),
                "kld_max": float(self.per_token["kld"].max()), "same_top_%": 100 * top.mean,
                "same_top_se_%": 100 * top.se, "delta_p_%": 100 * dp.mean, "delta_p_se_%": 100 * dp.se,
                "rms_delta_p_%": 100 * self.rms_delta_p, "tokens": self.tokens}

    def __str__(self) -> str:
        r = self.row()
        n, m = self.per_token["kld"].shape
        return "\n".join([
            f"{self.name} vs {self.baseline}: {self.tokens:,} tokens ({n} windows x {m} scored)",
            f"  perplexity   {r['ppl_base']:.3f} -> {r['ppl']:.3f} ({r['ppl_change_%']:+.2f}%, 95% interval "
            f"{r['ppl_change_low_%']:+.2f}% to {r['ppl_change_high_%']:+.2f}%)",
            f"  mean KLD     {r['kld']:.5f} +/- {r['kld_se']:.5f}   median {r['kld_median']:.5f}   "
            f"99% {r['kld_p99']:.4f}   max {r['kld_max']:.4f}",
            f"  same top     {r['same_top_%']:.2f}% +/- {r['same_top_se_%']:.2f}%",
            f"  delta-p      {r['delta_p_%']:+.3f}% +/- {r['delta_p_se_%']:.3f}%   RMS {r['rms_delta_p_%']:.3f}%",
            f"  verdict      {self.verdict()}",
        ])
