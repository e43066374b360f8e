import math

import pytest
import torch
from torch import nn

from quantedu import evaluate
from quantedu.data import Corpus


class CharTokenizer:
    def __call__(self, text, **_):
        return {"input_ids": [ord(c) - ord("a") for c in text]}


class BigramModel(nn.Module):
    """Next-token distribution given by a fixed table of logits: perplexity computable by hand."""

    def __init__(self, table):
        super().__init__()
        self.table = nn.Parameter(table)

    def forward(self, ids, **_):
        return type("Out", (), {"logits": self.table[ids]})()


def test_uniform_model_has_perplexity_equal_to_vocab_size():
    model = BigramModel(torch.zeros(4, 4))
    ppl = evaluate.perplexity(model, CharTokenizer(), "abcdabcdabcd", n_windows=3, seq_len=4, progress=False)
    assert ppl == pytest.approx(4.0, rel=1e-6)


def test_perplexity_equals_hand_computation():
    table = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0], [1.0, 1.0, 3.0]])
    text = "abcab" + "cbacc"
    model = BigramModel(table)
    ppl = evaluate.perplexity(model, CharTokenizer(), Corpus("toy", "", text), n_windows=2, seq_len=5, progress=False)
    ids = [ord(c) - 97 for c in text]
    nll = 0.0
    for w in (ids[:5], ids[5:]):  # disjoint windows: the first token of each is never predicted
        for prev, nxt in zip(w, w[1:]):
            row = table[prev].tolist()
            nll -= row[nxt] - math.log(sum(math.exp(v) for v in row))
    assert ppl == pytest.approx(math.exp(nll / 8), rel=1e-6)


def test_too_short_text_is_a_clear_error():
    with pytest.raises(ValueError, match="fewer or shorter windows"):
        evaluate.perplexity(BigramModel(torch.zeros(4, 4)), CharTokenizer(), "abc", n_windows=2, seq_len=4)


def test_memory_footprint_counts_tied_weights_once(tiny_llama):
    n = sum(p.numel() for p in tiny_llama.parameters())  # parameters() already de-duplicates ties
    fp = evaluate.memory_footprint(tiny_llama)
    buffers = sum(b.untyped_storage().nbytes() for b in tiny_llama.buffers())
    assert fp["weight_bytes"] == n * 4 + buffers


def test_generation_speed_reports_both_phases(tiny_llama):
    class Tok:
        pad_token_id = 0
        eos_token_id = 0

        def __call__(self, text, return_tensors=None):
            return type("B", (), {"input_ids": torch.tensor([[1, 2, 3, 4]])})()

    out = evaluate.generation_speed(tiny_llama, Tok(), new_tokens=4)
    assert out["prompt_tokens"] == 4 and out["prefill_tokens_per_s"] > 0 and out["decode_tokens_per_s"] > 0
