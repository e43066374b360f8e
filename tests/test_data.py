import torch
from pydoc_data.topics import topics

from quantedu import data


def test_pydoc_split_is_disjoint_and_complete():
    corpus = data.load_corpus("pydoc")
    in_eval = {k for k in topics if data._goes_to_evaluation(k)}
    assert 0.15 < len(in_eval) / len(topics) < 0.45
    for key, text in topics.items():
        if len(text) < 200:
            continue  # tiny topics can repeat as substrings of others
        side = corpus.evaluation if key in in_eval else corpus.calibration
        other = corpus.calibration if key in in_eval else corpus.evaluation
        assert text in side and text not in other


def test_split_is_deterministic():
    data.load_corpus.cache_clear()
    a = data.load_corpus("pydoc")
    data.load_corpus.cache_clear()
    assert data.load_corpus("pydoc") == a


def test_unknown_corpus_lists_choices():
    import pytest

    with pytest.raises(ValueError, match="pydoc"):
        data.load_corpus("c4")


class CharTokenizer:
    """One token per character: enough to test windowing without a real tokenizer."""

    def __call__(self, text, **_):
        return {"input_ids": [ord(c) % 256 for c in text]}


def test_calibration_batches_are_seeded_windows_of_calibration_text():
    tok = CharTokenizer()
    corpus = data.Corpus("toy", "abcdefghij" * 50, "zzzz")
    a = data.calibration_batches(tok, 4, 16, seed=1, corpus=corpus)
    b = data.calibration_batches(tok, 4, 16, seed=1, corpus=corpus)
    c = data.calibration_batches(tok, 4, 16, seed=2, corpus=corpus)
    assert a.shape == (4, 16) and torch.equal(a, b) and not torch.equal(a, c)
    text = "".join(chr(i) for i in a[0].tolist())
    assert text in corpus.calibration


def test_calibration_needs_enough_text():
    import pytest

    with pytest.raises(ValueError, match="fewer than seq_len"):
        data.calibration_batches(CharTokenizer(), 1, 64, corpus=data.Corpus("toy", "short", ""))
