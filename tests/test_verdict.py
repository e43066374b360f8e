"""The verdict rule (quantedu.verdict): honest intervals on correlated per-token differences."""
import math
import re

import numpy as np
import pytest

from quantedu import verdict as V


def ar1(rng, n_windows, length, rho, reps=1):
    """Per-token noise with lag-1 correlation ``rho`` inside each window (unit marginal variance)."""
    e = rng.standard_normal((reps, n_windows, length))
    x = np.empty_like(e)
    x[..., 0] = e[..., 0]
    for t in range(1, length):
        x[..., t] = rho * x[..., t - 1] + math.sqrt(1 - rho * rho) * e[..., t]
    return x


@pytest.mark.parametrize("df,expected", [(1, 12.706), (2, 4.303), (3, 3.182), (10, 2.228), (30, 2.042)])
def test_t_quantiles_match_the_printed_table(df, expected):
    assert V.t_quantile(0.975, df) == pytest.approx(expected, abs=2e-3)


def test_interval_coverage_is_right_on_correlated_tokens_and_the_naive_one_is_not():
    """4 windows x 511 tokens with lag-1 correlation 0.6 (a variance 4x what independence assumes):
    the block interval covers the true mean 95% of the time (+/- 3 binomial sd over 1000 trials); the
    independent-token one far less."""
    x = ar1(np.random.default_rng(1), 4, 511, 0.6, reps=1000)

    def coverage(block):
        return np.mean([iv.low <= 0 <= iv.high for iv in (V.paired_interval(r, block) for r in x)])

    assert 0.93 <= coverage(V.BLOCK) <= 0.97, coverage(V.BLOCK)
    assert 0.93 <= coverage(None) <= 0.97  # one block per window: 3 degrees of freedom, wide, still right
    assert coverage(1) < 0.8  # tokens treated as independent


def test_equal_blocks_give_the_batch_means_standard_error():
    x = np.random.default_rng(2).standard_normal((2, 128))
    iv = V.paired_interval(x, block=32)
    means = x.reshape(8, 32).mean(axis=1)
    assert iv.blocks == 8 and iv.tokens == 256
    assert iv.mean == pytest.approx(x.mean())
    assert iv.se == pytest.approx(means.std(ddof=1) / math.sqrt(8))
    assert iv.high - iv.mean == pytest.approx(V.t_quantile(0.975, 7) * iv.se)


def test_a_known_difference_is_called_at_enough_text_and_a_tie_at_too_little():
    rng = np.random.default_rng(3)
    true = 0.05  # A's NLL is 0.05 nats/token worse than B's; per-token noise sd ~1, correlated
    small = true + ar1(rng, 1, 256, 0.5)[0]
    large = true + ar1(rng, 16, 2048, 0.5)[0]
    tie = V.verdict(small, "A", "B")
    assert tie.tie and "tie at this much text" in str(tie) and tie.interval.low < 0 < tie.interval.high
    # the text it asks for is what separates them at this difference and this noise: the same tokens
    # repeated (same mean, standard error shrinking as 1/sqrt(tokens)) flip to a verdict just there
    k = tie.tokens_needed / small.size
    assert k > 1
    assert V.verdict(np.tile(small, (math.floor(0.8 * k), 1)), "A", "B").tie
    assert V.verdict(np.tile(small, (math.ceil(1.2 * k), 1)), "A", "B").winner == "B"
    called = V.verdict(large, "A", "B")
    assert called.winner == "B" and str(called).startswith("B is better than A")
    assert called.interval.low <= true <= called.interval.high
    assert V.verdict(-large, "A", "B").winner == "A"


def test_the_interval_narrows_as_text_grows():
    x = ar1(np.random.default_rng(4), 32, 512, 0.5)[0]
    widths = [V.paired_interval(x[:n]).high - V.paired_interval(x[:n]).low for n in (2, 8, 32)]
    assert widths[0] > widths[1] > widths[2]
    assert widths[0] / widths[2] == pytest.approx(4, rel=0.35)  # 1/sqrt(tokens)


def test_identical_models_tie_exactly_and_one_block_cannot_be_judged():
    same = V.verdict(np.zeros((4, 100)), "Q8_0", "Q8_0 again", what="KL divergence")
    assert same.tie and "tie exactly" in str(same)
    lone = V.verdict(np.full((1, 40), 0.1) + np.linspace(0, 0.01, 40), block=None)
    assert lone.tie and "no estimate of the noise" in lone.sentence
    assert all(len(line) <= 110 for line in str(lone).splitlines()) and " ".join(str(lone).split()) == lone.sentence


def test_bad_input_says_what_is_expected():
    with pytest.raises(ValueError, match="n_windows"):
        V.paired_interval(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="NaN"):
        V.paired_interval([0.1, float("nan")])
    with pytest.raises(ValueError, match="block"):
        V.paired_interval(np.zeros((2, 8)), block=0)
    with pytest.raises(ValueError, match="confidence"):
        V.paired_interval(np.zeros((2, 8)), confidence=95)


def test_small_differences_are_stated_to_three_digits_not_to_seven():
    rng = np.random.default_rng(3)
    for mean, shown in ((3e-4, "e-04"), (0.013, "+0.01"), (0.5, "+0.5")):
        sentence = V.verdict(rng.normal(mean, 2 * mean, 4096), "A", "B", what="KL divergence").sentence
        numbers = re.findall(r"[+-]\d+\.\d+(?:e-\d+)?", sentence)
        assert len(numbers) == 3 and shown in sentence, sentence
        assert all(len(n.split("e")[0].split(".")[1]) <= 4 for n in numbers), sentence
