import pytest
import torch

from quantedu import course
from quantedu.data import calibration_batches, load_corpus
from quantedu.evaluate import perplexity


def test_session_helpers_use_the_session_windows_and_corpus(course_model):
    model, tokenizer = course_model
    session = course.Session(model, tokenizer, load_corpus("pydoc"), "smollm2-135m", n_windows=1, seq_len=32)
    expected = perplexity(model, tokenizer, session.corpus, n_windows=1, seq_len=32, progress=False)
    assert session.perplexity() == expected
    assert session.perplexity(n_windows=2) != expected  # an override really changes the windows
    assert torch.equal(session.calibration(2, 16, seed=3), calibration_batches(tokenizer, 2, 16, seed=3))


def test_course_map_lists_every_lesson_in_order(tmp_path):
    (tmp_path / "00_setup_and_tour.ipynb").write_text("{}")
    df = course.course_map(tmp_path)
    assert list(df["notebook"]) == sorted(df["notebook"])
    assert df["present"].tolist() == [True] + [False] * (len(df) - 1)


def test_parameter_reads_the_environment(monkeypatch):
    from quantedu.course import fast_default, parameter
    monkeypatch.delenv("QUANTEDU_MODEL", raising=False)
    assert parameter("MODEL", "auto") == "auto"
    monkeypatch.setenv("QUANTEDU_MODEL", "/models/x")
    assert parameter("MODEL", "auto") == "/models/x"
    monkeypatch.setenv("QUANTEDU_FAST", "no")
    assert fast_default() is False
    monkeypatch.setenv("QUANTEDU_FAST", "maybe")
    with pytest.raises(ValueError, match="1/true/yes"):
        fast_default()


def test_scored_halves_and_claims(tiny_llama, capsys):
    import torch
    from quantedu.course import Session
    from quantedu.data import Corpus

    class Tok:
        def __call__(self, text, **kw):
            return {"input_ids": [i % 256 for i in range(len(text.split()))]}

    corpus = Corpus("toy", "w " * 2000, "w " * 2000)
    s = Session(tiny_llama, Tok(), corpus, "tiny", n_windows=4, seq_len=32)
    r = s.scored(method="fp")
    assert r["method"] == "fp" and min(r["ppl, text A"], r["ppl, text B"]) <= r["ppl"] <= max(r["ppl, text A"], r["ppl, text B"])
    assert s.better({"ppl, text A": 1, "ppl, text B": 1}, r) != s.better(r, r)
    assert "text A = windows 1-2" in s.halves
    assert s.real_model and s.dtype == torch.float32
    with pytest.raises(AssertionError, match="GPTQ beats RTN"):
        s.claim(False, "GPTQ beats RTN")
