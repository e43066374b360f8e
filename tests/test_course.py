import pytest
import torch

from quantedu.course import session as course
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


def test_session_claims_raise_on_a_real_model(tiny_llama, capsys):
    import torch
    from quantedu.course import Session
    from quantedu.data import Corpus

    class Tok:
        def __call__(self, text, **kw):
            return {"input_ids": [i % 256 for i in range(len(text.split()))]}

    corpus = Corpus("toy", "w " * 2000, "w " * 2000)
    s = Session(tiny_llama, Tok(), corpus, "tiny", n_windows=4, seq_len=32)
    assert not hasattr(s, "better") and not hasattr(s, "halves")  # verdicts come from quantedu.verdict only
    assert s.real_model and s.dtype == torch.float32
    from quantedu.course.session import ClaimError
    with pytest.raises(ClaimError, match="GPTQ beats RTN"):
        s.claim(False, "GPTQ beats RTN")


def test_gguf_source_is_the_session_model_written_once(tmp_cache):
    """Any model but the shipped file gets its own exact (F32) GGUF, so llama.cpp's rows measure the same model."""
    import numpy as np
    from gguf import GGUFReader
    from quantedu.course import Session
    from quantedu.data import Corpus
    from quantedu.models import load_model, offline_gguf_path
    from quantedu.testmodel import test_model_path

    model, tok = load_model(str(test_model_path()), device="cpu", verbose=False)
    s = Session(model, tok, Corpus("toy", "w " * 2000, "w " * 2000), "test", n_windows=2, seq_len=32)
    assert not s.is_offline_file
    path = s.gguf_source()
    stamp = path.stat().st_mtime_ns
    assert s.gguf_source() == path and path.stat().st_mtime_ns == stamp  # cached, not rewritten
    t = next(t for t in GGUFReader(path).tensors if t.name == "blk.0.ffn_down.weight")
    w = model.model.layers[0].mlp.down_proj.weight.detach().float().numpy()
    assert t.tensor_type.name == "F32" and np.array_equal(np.asarray(t.data).reshape(w.shape), w)
    s.model_name = "smollm2-135m"
    assert s.is_offline_file and s.gguf_source() == offline_gguf_path()


def test_named_window_sets_and_one_baseline_per_purpose(tiny_llama):
    from quantedu.course import Session
    from quantedu.course.session import WINDOWS
    from quantedu.data import Corpus

    class Tok:
        def __call__(self, text, **kw):
            return {"input_ids": [hash(w) % 256 for w in text.split()]}

        def get_vocab(self):
            return {str(i): i for i in range(256)}

    corpus = Corpus("pydoc", "a b " * 3000, "c d e " * 3000)
    s = Session(tiny_llama, Tok(), corpus, "tiny")
    assert tuple(s.windows("eval").shape) == WINDOWS["eval"][1:]
    assert s.baseline("eval") is s.baseline("eval")  # computed once per purpose
    report = s.report(tiny_llama, "itself")
    assert report.kld.mean < 1e-9 and report.same_top.mean == 1.0
    with pytest.raises(ValueError, match="no window set"):
        s.windows("test")
