"""The one rule for calling a winner: "A is better than B" only when the paired interval excludes zero.

Two models scored on the same tokens give one difference per token (``nll_A - nll_B``, or the two
KL divergences from a baseline). Those differences need not be independent: neighbouring tokens share
context, so one hard passage moves many of them together, and a standard error that treats tokens
as independent draws is too small (llama-perplexity's ``+/-`` is of that kind). Here the tokens of
each window are cut into contiguous **blocks** of about ``block`` tokens (never straddling two
windows), and the standard error of the mean is the cluster-robust one with blocks as clusters
(for equal blocks: the standard deviation of the block means over ``sqrt(n_blocks)``, the classic
batch-means estimate); the interval uses Student's t with ``n_blocks - 1`` degrees of freedom.
Blocks of 64 tokens outlast the correlation measured on the course model (benchmarks/bench_metrics.py:
per-token delta-NLL is nearly uncorrelated, per-token KLD correlates 0.2 at lag 1, 0.05 at lag 16, 0 at
lag 64) and still give dozens of blocks on a few windows (32 on 4 x 512); ``block=None`` makes each
window one block (the most conservative choice, few degrees of freedom). tests/test_verdict.py checks
the coverage on correlated synthetic data.

When the interval contains zero the verdict is a tie *at this much text*, and the sentence says how
many tokens would separate the two if the mean difference stayed what it is: the standard error
shrinks as ``1/sqrt(tokens)``, so ``tokens * (1.96 * se / |mean|)^2`` tokens make the interval's
half-width as small as the difference.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from statistics import NormalDist

import numpy as np

BLOCK = 64
CONFIDENCE = 0.95

__all__ = ["BLOCK", "CONFIDENCE", "Interval", "Verdict", "paired_interval", "t_quantile", "verdict"]


@lru_cache(maxsize=256)
def t_quantile(p: float, df: float) -> float:
    """Quantile ``p`` of Student's t with ``df`` degrees of freedom (no SciPy: the density, integrated
    with Simpson's rule, and bisection; 1e-6 accurate, which is plenty for an interval)."""
    if not 0.5 <= p < 1 or not df > 0:
        raise ValueError(f"t_quantile needs 0.5 <= p < 1 and df > 0, got p={p}, df={df}")
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def cdf(t: float) -> float:  # P(T <= t) for t >= 0
        x = np.linspace(0.0, t, 4001)
        f = np.exp(log_c - (df + 1) / 2 * np.log1p(x * x / df))
        return 0.5 + (x[1] - x[0]) / 3 * (f[0] + f[-1] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum())

    lo, hi = 0.0, 1.0
    while cdf(hi) < p:  # heavy tails (df = 1: t_0.975 = 12.7)
        lo, hi = hi, hi * 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


def _as_windows(values) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2 or x.size == 0:
        raise ValueError("expected per-token values shaped (n_tokens,) or (n_windows, tokens_per_window), "
                         f"got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("per-token values contain NaN or inf: a model produced non-finite logits")
    return x


def _blocks(x: np.ndarray, block: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Sums and sizes of contiguous blocks of about ``block`` tokens inside each window."""
    if block is None:
        return x.sum(axis=1), np.full(x.shape[0], x.shape[1])
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise ValueError(f"block must be a positive number of tokens or None (one block per window), got {block!r}")
    parts = [p for row in x for p in np.array_split(row, max(1, round(x.shape[1] / block)))]
    return np.array([p.sum() for p in parts]), np.array([p.size for p in parts])


@dataclass(frozen=True)
class Interval:
    """Mean of per-token values with its standard error and a two-sided interval (see the module doc)."""

    mean: float
    se: float
    low: float
    high: float
    tokens: int
    blocks: int
    confidence: float

    def tokens_to_separate(self) -> float:
        """Tokens at which the interval would just exclude zero if the mean stayed the same
        (``inf`` when the mean is 0, ``nan`` when there is no variance estimate)."""
        if self.mean == 0:
            return math.inf
        if not math.isfinite(self.se):
            return math.nan
        z = NormalDist().inv_cdf((1 + self.confidence) / 2)  # a large-sample extrapolation: z, not t
        return self.tokens * (z * self.se / abs(self.mean)) ** 2

    def __str__(self) -> str:
        return f"{self.mean:+.4g} ({self.confidence:.0%} interval {self.low:+.4g} to {self.high:+.4g})"


def paired_interval(values, block: int | None = BLOCK, confidence: float = CONFIDENCE) -> Interval:
    """Interval for the mean of per-token values (e.g. paired differences), blocks as clusters."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), e.g. 0.95; got {confidence!r}")
    x = _as_windows(values)
    sums, sizes = _blocks(x, block)
    n, k = int(sizes.sum()), len(sums)
    mean = float(sums.sum() / n)
    if k < 2:
        return Interval(mean, math.nan, -math.inf, math.inf, n, k, confidence)
    # cluster-robust variance of the mean: sum_j (S_j - n_j * mean)^2 / n^2, times k / (k - 1)
    se = float(np.sqrt(((sums - sizes * mean) ** 2).sum() * k / (k - 1)) / n)
    half = t_quantile((1 + confidence) / 2, k - 1) * se
    return Interval(mean, se, mean - half, mean + half, n, k, confidence)


@dataclass(frozen=True)
class Verdict:
    """The rule applied to one pair: ``winner`` is ``a``, ``b`` or None (a tie at this much text)."""

    a: str
    b: str
    what: str
    interval: Interval       # of metric(a) - metric(b) per token; lower is better
    winner: str | None
    tokens_needed: float     # tokens that would separate a tie (see Interval.tokens_to_separate)
    sentence: str

    @property
    def tie(self) -> bool:
        return self.winner is None

    def __str__(self) -> str:  # printed: wrapped to a readable width (``sentence`` stays one line)
        import textwrap
        return textwrap.fill(self.sentence, 110, subsequent_indent="    ", break_long_words=False)


def _fmt(v: float, as_ppl: bool, largest: float = 0.0) -> str:
    """A perplexity ratio in percent, or a metric's difference to 3 significant digits of ``largest`` (the
    largest magnitude in the sentence, so its numbers share one precision; scientific below 0.01)."""
    if as_ppl:  # a ratio of 10 or more (or 1/10 or less) reads as a factor: x14.0, not +1300.77%
        return f"{math.expm1(v):+.2%}" if abs(v) < math.log(10) else f"x{math.exp(v):.3g}"
    largest = max(abs(largest), abs(v))
    if largest < 0.01:
        return f"{v:+.2e}"
    return f"{v:+.{max(0, 2 - math.floor(math.log10(largest)))}f}"


def _two_digits(n: float) -> int:
    """An estimate to two significant digits (7,556 -> 7,600): it is an extrapolation, not a count."""
    n = math.ceil(n)
    return int(float(f"{n:.2g}")) if n >= 100 else n


def verdict(diff, a: str = "A", b: str = "B", what: str = "negative log-likelihood per token",
            block: int | None = BLOCK, confidence: float = CONFIDENCE, as_perplexity: bool | None = None) -> Verdict:
    """Apply the rule to per-token differences ``metric(a) - metric(b)`` of a metric where lower is better
    (NLL, KL divergence from a baseline), shaped ``(n_windows, tokens)`` or flat, paired on the same tokens.

    ``as_perplexity`` (default: when ``what`` mentions the log-likelihood) states the NLL difference as a
    perplexity ratio, ``exp(difference) - 1``."""
    iv = paired_interval(diff, block, confidence)
    as_ppl = ("log-likelihood" in what) if as_perplexity is None else as_perplexity
    need = iv.tokens_to_separate()
    called = iv.high < 0 or iv.low > 0
    # the difference is stated as (loser - winner) for a verdict, so it reads as a positive gap; (a - b) for a tie
    x, y, sign = (b, a, -1) if called and iv.high < 0 else (a, b, 1)
    mean, (low, high) = sign * iv.mean, sorted((sign * iv.low, sign * iv.high))
    largest = max(abs(mean), abs(low), abs(high)) if math.isfinite(low) and math.isfinite(high) else abs(mean)
    gap = (f"{x}'s perplexity is {_fmt(mean, True)} against {y}'s" if as_ppl else
           f"{x}'s {what} minus {y}'s is {_fmt(mean, False, largest)}")
    span = (f"{iv.confidence:.0%} interval {_fmt(low, as_ppl, largest)} to {_fmt(high, as_ppl, largest)}, "
            f"{iv.tokens:,} tokens")
    if called:
        winner = y
        sentence = f"{y} is better than {x}: {gap} ({span})."
    elif iv.mean == 0 and iv.se == 0:
        winner, sentence = None, f"{a} and {b} tie exactly: identical {what} on all {iv.tokens:,} tokens."
    elif math.isnan(need):
        winner, sentence = None, (f"{a} and {b} cannot be told apart: {gap}, but {iv.tokens:,} tokens in "
                                  f"{iv.blocks} block give no estimate of the noise; score more text.")
    else:
        winner = None
        sentence = (f"{a} and {b} are a tie at this much text: {gap} ({span}), an interval that contains zero. "
                    f"About {_two_digits(need):,} tokens would separate them if the difference stayed this size.")
    return Verdict(a, b, what, iv, winner, need, sentence)
