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


def test_generation_speed_decodes_greedily_with_the_cache_and_restores_threads(tiny_llama):
    prompt = torch.arange(3, 40)[None]
    before = torch.get_num_threads()
    out = evaluate.generation_speed(tiny_llama, prompt, new_tokens=6, threads=1, repeats=2)
    assert torch.get_num_threads() == before and out["threads"] == 1
    # the timed decode loop is real greedy decoding: the same tokens as transformers' generate
    ref = tiny_llama.generate(prompt, max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0)
    assert out["generated"] == ref[0, prompt.shape[1]:].tolist()
    assert out["prompt_tokens"] == 37 and out["decode_ms_per_token"] == pytest.approx(1000 / out["decode_tokens_per_s"])


def test_forward_rates_time_one_pass_per_size(tiny_llama):
    rates = evaluate.forward_rates(tiny_llama, torch.arange(64), sizes=(1, 16, 64), repeats=1)
    assert [r["tokens"] for r in rates] == [1, 16, 64]
    assert all(r["tokens_per_s"] == pytest.approx(r["tokens"] / r["seconds"]) for r in rates)


@pytest.mark.parametrize("bad", [torch.zeros(2, 8, dtype=torch.long), torch.zeros(1, 0, dtype=torch.long),
                                 torch.zeros(1, 8)])
def test_speed_refuses_what_is_not_one_prompt(tiny_llama, bad):
    with pytest.raises(ValueError, match="one prompt"):
        evaluate.generation_speed(tiny_llama, bad)


def test_speed_refuses_sizes_beyond_the_prompt(tiny_llama):
    with pytest.raises(ValueError, match="between 1 and the 8 tokens"):
        evaluate.forward_rates(tiny_llama, torch.arange(8), sizes=(4, 16))


def test_baseline_perplexity_is_the_models_own(tiny_llama):
    windows = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(0))
    nll = evaluate.window_nll(tiny_llama, windows, progress=False)
    assert evaluate.Baseline(tiny_llama, windows).ppl == pytest.approx(math.exp(nll.sum().item() / (2 * 31)), rel=1e-5)