"""Bad-input matrix for calibration and evaluation windows (issue 10): empty batches, empty lists,
zero-length windows and ids from another tokenizer are refused at the entry point with a ValueError
saying what shape is expected, instead of an IndexError / StopIteration / ZeroDivisionError (or a
silently different result) deep inside."""
import pytest
import torch

from quantedu import calibration, data
from quantedu.course import session as course


class CharTokenizer:
    """One token per character (ids < 128): enough for windows without a real tokenizer."""

    def __call__(self, text, **_):
        return {"input_ids": [ord(c) % 128 for c in text]}


CORPUS = data.Corpus("toy", "calibration text. " * 40, "evaluation text, held out. " * 40)


def ids(n, seq, seed=0):
    return torch.randint(0, 256, (n, seq), generator=torch.Generator().manual_seed(seed))


def never(*_a):
    raise AssertionError("process_block ran on empty calibration data")


# --------------------------------------------------------------------------- calibration.py entry

@pytest.mark.parametrize("shape", [(0, 16), (3, 0), (0, 0)])
def test_empty_batch_tensor_is_refused_with_the_expected_shape(tiny_llama, shape):
    empty = torch.zeros(shape, dtype=torch.long)
    with pytest.raises(ValueError, match=r"n_samples >= 1 and seq_len >= 1.*got shape"):
        calibration.capture_block_inputs(tiny_llama, empty)
    with pytest.raises(ValueError, match="n_samples, seq_len"):
        calibration.sequential_blocks(tiny_llama, empty, never)


@pytest.mark.parametrize("empty", [[], ()])
def test_empty_list_of_batches_is_refused(tiny_llama, empty):
    with pytest.raises(ValueError, match="empty list.*calibration_batches"):
        calibration.capture_block_inputs(tiny_llama, empty)
    with pytest.raises(ValueError, match="empty list"):
        calibration.sequential_blocks(tiny_llama, empty, never)


def test_one_dimensional_ids_good_before(tiny_llama):
    with pytest.raises(ValueError, match=r"n_samples, seq_len"):
        calibration.capture_block_inputs(tiny_llama, ids(1, 8)[0])


def test_one_dimensional_ids_hint_unsqueeze(tiny_llama):
    with pytest.raises(ValueError, match=r"unsqueeze\(0\)"):
        calibration.capture_block_inputs(tiny_llama, ids(1, 8)[0])


def test_float_ids_are_refused(tiny_llama):
    with pytest.raises(ValueError, match="integer token ids.*float32"):
        calibration.capture_block_inputs(tiny_llama, torch.rand(2, 8))


def test_ids_from_a_bigger_vocabulary_are_refused(tiny_llama):
    bad = ids(2, 8)
    bad[1, 3] = 300  # the tiny model's vocabulary is 0..255
    with pytest.raises(ValueError, match=r"0\.\.255.*another model's tokenizer"):
        calibration.capture_block_inputs(tiny_llama, bad)


def test_list_of_equal_rows_is_stacked(tiny_llama):
    batch = ids(3, 8)
    as_tensor, kw = calibration.capture_block_inputs(tiny_llama, batch)
    as_rows, _ = calibration.capture_block_inputs(tiny_llama, list(batch))
    as_lists, _ = calibration.capture_block_inputs(tiny_llama, batch.tolist())
    as_2d_rows, _ = calibration.capture_block_inputs(tiny_llama, [batch[:1], batch[1:]])
    for other in (as_rows, as_lists, as_2d_rows):
        assert len(other) == 3 and all(torch.equal(a, b) for a, b in zip(as_tensor, other))


def test_rows_of_different_lengths_are_refused(tiny_llama):
    with pytest.raises(ValueError, match="equal length"):
        calibration.capture_block_inputs(tiny_llama, [ids(1, 8)[0], ids(1, 5)[0]])


def test_not_a_tensor_is_a_type_error(tiny_llama):
    with pytest.raises(TypeError, match="n_samples, seq_len"):
        calibration.capture_block_inputs(tiny_llama, "some text")


def test_one_token_rows_good_before(tiny_llama):
    inputs, _ = calibration.capture_block_inputs(tiny_llama, ids(2, 1))
    assert [x.shape for x in inputs] == [(1, 1, 64), (1, 1, 64)]


def test_sequential_blocks_visits_every_block_good_before(tiny_llama):
    import copy

    seen = []
    calibration.sequential_blocks(copy.deepcopy(tiny_llama), ids(2, 8), lambda i, b, x, kw: seen.append(len(x)))
    assert seen == [2, 2]


# ------------------------------------------------------------------------------------ data.py entry

@pytest.mark.parametrize("n_samples, seq_len", [(0, 16), (4, 0), (4, 1), (-1, 16)])
def test_calibration_batches_empty_shapes_good_before(n_samples, seq_len):
    with pytest.raises(ValueError, match="n_samples >= 1 and seq_len >= 2"):
        data.calibration_batches(CharTokenizer(), n_samples, seq_len, corpus=CORPUS)


@pytest.mark.parametrize("n_samples, seq_len", [(2.5, 16), ("4", 16), (4, 8.0), (True, 16)])
def test_calibration_batches_needs_whole_numbers(n_samples, seq_len):
    with pytest.raises(TypeError, match="must be a whole number"):
        data.calibration_batches(CharTokenizer(), n_samples, seq_len, corpus=CORPUS)


def test_calibration_batches_message_names_the_shape_and_values():
    with pytest.raises(ValueError, match=r"\(n_samples, seq_len\) tensor.*got n_samples=0, seq_len=16"):
        data.calibration_batches(CharTokenizer(), 0, 16, corpus=CORPUS)


def test_calibration_batches_numpy_ints_good():
    import numpy as np

    assert data.calibration_batches(CharTokenizer(), np.int64(2), np.int32(8), corpus=CORPUS).shape == (2, 8)


def test_empty_calibration_text_good_before():
    with pytest.raises(ValueError, match="0 tokens, fewer than seq_len"):
        data.calibration_batches(CharTokenizer(), 1, 8, corpus=data.Corpus("empty", "", ""))


def test_check_windows():
    assert data.check_windows(2, 8) == (2, 8)
    with pytest.raises(ValueError, match="n_windows >= 1 and seq_len >= 2"):
        data.check_windows(0, 8)


# ---------------------------------------------------------------------------------- course.Session

@pytest.fixture
def session(tiny_llama):
    return course.Session(tiny_llama, CharTokenizer(), CORPUS, "tiny", n_windows=2, seq_len=16)


def test_session_calibration_empty_good_before(session):
    with pytest.raises(ValueError, match="n_samples >= 1"):
        session.calibration(0, 16)
    with pytest.raises(ValueError, match="seq_len >= 2"):
        session.calibration(4, 0)
    assert session.calibration(3, 8).shape == (3, 8)


@pytest.mark.parametrize("kwargs", [dict(n_windows=0), dict(seq_len=0), dict(seq_len=1)])
def test_session_perplexity_refuses_empty_windows(session, kwargs):
    # n_windows=0 used to mean "the session's default" silently; seq_len=1 divided by zero
    with pytest.raises(ValueError, match="n_windows >= 1 and seq_len >= 2"):
        session.perplexity(**kwargs)


def test_session_perplexity_good_before(session):
    import math

    default = session.perplexity()
    assert math.isfinite(default) and default > 1
    assert session.perplexity(n_windows=1, seq_len=8) != default


@pytest.mark.parametrize("kwargs", [dict(n_windows=0), dict(seq_len=1)])
def test_session_with_empty_windows_is_refused_when_made(tiny_llama, kwargs):
    with pytest.raises(ValueError, match="Session makes a"):
        course.Session(tiny_llama, CharTokenizer(), CORPUS, "tiny", **kwargs)


@pytest.mark.parametrize("n_windows, seq_len", [(0, 64), (2, 1), (2, 0)])
def test_evaluation_windows_refuse_empty_windows(n_windows, seq_len):
    from quantedu.evaluate import evaluation_windows

    class Tok:
        def __call__(self, text, **kw):
            return {"input_ids": [list(range(len(text.split())))]}

    with pytest.raises(ValueError, match="n_windows >= 1 and seq_len >= 2"):
        evaluation_windows(Tok(), "a " * 1000, n_windows, seq_len)
