"""The field's metrics in quantedu.evaluate: KL divergence, same top token, delta-p, paired delta-NLL."""
import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from quantedu import evaluate


class Bigram(nn.Module):
    """Next-token logits from a fixed table: every metric computable by hand."""

    def __init__(self, table):
        super().__init__()
        self.table = nn.Parameter(torch.as_tensor(table, dtype=torch.float32))

    def forward(self, ids, **_):
        return type("Out", (), {"logits": self.table[ids]})()


class Vocab:
    def __init__(self, words):
        self.words = words

    def get_vocab(self):
        return {w: i for i, w in enumerate(self.words)}


def kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def test_a_hand_built_pair_gives_the_hand_computed_metrics():
    # token 0 -> base p = (1/4, 3/4), model q = (1/3, 2/3); token 1 -> base (1/2, 1/2), model (1/5, 4/5)
    base = Bigram([[0.0, math.log(3)], [0.0, 0.0]])
    model = Bigram([[0.0, math.log(2)], [0.0, math.log(4)]])
    windows = torch.tensor([[0, 1, 1, 0, 0]])  # predictions: 0->1, 1->1, 1->0, 0->0
    r = evaluate.Baseline(base, windows).compare(model, "q")
    p = {0: (0.25, 0.75), 1: (0.5, 0.5)}
    q = {0: (1 / 3, 2 / 3), 1: (0.2, 0.8)}
    pairs = [(0, 1), (1, 1), (1, 0), (0, 0)]
    expected_kld = [kl(p[a], q[a]) for a, _ in pairs]
    np.testing.assert_allclose(r.per_token["kld"][0], expected_kld, rtol=1e-5)
    assert r.kld.mean == pytest.approx(np.mean(expected_kld), rel=1e-5)
    # argmax after token 0: 1 for both; after token 1: the base's tie goes to the first (0), the model's is 1
    assert r.per_token["same_top"][0].tolist() == [True, False, False, True]
    assert r.same_top.mean == 0.5
    dp = [q[a][b] - p[a][b] for a, b in pairs]
    np.testing.assert_allclose(r.per_token["dp"][0], dp, rtol=1e-5)
    assert r.rms_delta_p == pytest.approx(math.sqrt(np.mean(np.square(dp))), rel=1e-5)
    nll = [-math.log(q[a][b]) for a, b in pairs]
    nll_base = [-math.log(p[a][b]) for a, b in pairs]
    assert r.ppl == pytest.approx(math.exp(np.mean(nll)), rel=1e-5)
    assert r.ppl_base == pytest.approx(math.exp(np.mean(nll_base)), rel=1e-5)
    assert r.kld_percentile(50) == pytest.approx(np.median(expected_kld), rel=1e-5)
    assert r.row()["kld_max"] == pytest.approx(max(expected_kld), rel=1e-5)


def test_a_model_against_itself_has_zero_kld_and_full_agreement(tiny_llama):
    windows = torch.randint(0, 256, (3, 64), generator=torch.Generator().manual_seed(0))
    r = evaluate.compare(tiny_llama, copy.deepcopy(tiny_llama), windows, name="copy")
    assert r.kld.mean == 0 and r.per_token["kld"].max() == 0
    assert r.same_top.mean == 1 and r.delta_p.mean == 0 and r.rms_delta_p == 0
    assert r.verdict().tie and "tie exactly" in str(r.verdict())
    # the baseline's perplexity is the course's perplexity on the same windows
    nll = evaluate.window_nll(tiny_llama, windows, progress=False)
    assert r.ppl_base == pytest.approx(math.exp(nll.sum().item() / windows[:, 1:].numel()), rel=1e-5)
    assert "same top     100.00%" in str(r)


def test_a_perturbed_model_is_measured_and_called_worse_on_enough_text(tiny_llama):
    windows = torch.randint(0, 256, (8, 128), generator=torch.Generator().manual_seed(1))
    base = evaluate.Baseline(tiny_llama, windows)
    reports = {}
    for scale in (0.02, 0.2):
        noisy = copy.deepcopy(tiny_llama)
        torch.manual_seed(2)
        with torch.no_grad():
            for p in noisy.parameters():
                p.add_(scale * p.std() * torch.randn_like(p))
        reports[scale] = base.compare(noisy, f"noise {scale}")
    small, large = reports[0.02], reports[0.2]
    assert 0 < small.kld.mean < large.kld.mean
    assert small.same_top.mean > large.same_top.mean
    assert small.kld.low <= small.kld.mean <= small.kld.high
    v = large.verdict(small, metric="kld")
    assert v.winner == "noise 0.02", v
    assert base.nbytes == 8 * 127 * 256 * 4 and base.tokens == 8 * 127


def test_the_tool_protocol_scores_the_second_half_of_each_window(tiny_llama):
    windows = torch.randint(0, 256, (2, 64), generator=torch.Generator().manual_seed(3))
    full = evaluate.Baseline(tiny_llama, windows)
    half = evaluate.Baseline(tiny_llama, windows, score_from=32)
    assert half.tokens == 2 * 31 and torch.equal(half.logprobs, full.logprobs[:, 32:])


def test_mismatched_vocabularies_are_refused_with_the_fix(tiny_llama):
    windows = torch.randint(0, 100, (2, 16))
    base = evaluate.Baseline(tiny_llama, windows, tokenizer=Vocab(["a", "b"]))
    with pytest.raises(ValueError, match="another vocabulary"):
        base.compare(tiny_llama, tokenizer=Vocab(["a", "c"]))
    from transformers import LlamaConfig, LlamaForCausalLM
    other = LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                         num_attention_heads=4, num_key_value_heads=2)).eval()
    with pytest.raises(ValueError, match="predicts over 300 tokens"):
        base.compare(other)
    with pytest.raises(ValueError, match="score_from"):
        evaluate.Baseline(tiny_llama, windows, score_from=15)


def test_reports_on_different_tokens_cannot_be_paired(tiny_llama):
    a = evaluate.compare(tiny_llama, tiny_llama, torch.randint(0, 256, (2, 32)), name="a")
    b = evaluate.compare(tiny_llama, tiny_llama, torch.randint(0, 256, (2, 32)), name="b")
    with pytest.raises(ValueError, match="same tokens"):
        a.verdict(b)
    other_base = copy.deepcopy(tiny_llama)
    with torch.no_grad():
        other_base.lm_head.weight.mul_(1.5)
    windows = torch.randint(0, 256, (2, 32))
    c = evaluate.compare(tiny_llama, tiny_llama, windows, name="c")
    d = evaluate.compare(other_base, tiny_llama, windows, name="d")  # same windows, another baseline model
    with pytest.raises(ValueError, match="same baseline"):
        c.verdict(d)
    assert c.verdict(evaluate.compare(tiny_llama, other_base, windows, name="e"), metric="kld").winner == "c"
    with pytest.raises(ValueError, match="'nll' or 'kld'"):
        a.verdict(a, metric="ppl")
