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
