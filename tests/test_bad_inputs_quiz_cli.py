"""Bad-input matrix for the quizzes and the ``quantedu`` command (issue 10).

Quiz: a score can never exceed the number of questions; an option may be given as its index, a numeric
string or its text; a response that names no option says so (with the valid range) and is not scored.
CLI: ``prepare --models`` without ``--online`` refuses instead of silently fetching nothing; an
unwritable cache is a line in ``doctor``'s report and a clear refusal from ``prepare``.
"""
import numpy as np
import pytest

from quantedu import cli, models
from quantedu.engines import doctor
from quantedu.course.quiz import Question, Quiz


def single(answer=1, options=("3", "4")):
    return Question(prompt="2+2?", kind="single", options=list(options), answer=answer, explanation="arithmetic")


def multi():
    return Question(prompt="even?", kind="multi", options=["one", "two", "four"], answer=[1, 2], explanation="e")


def numeric():
    return Question(prompt="bits?", kind="numeric", answer=4.15625, tolerance=1e-3, explanation="x")


# ------------------------------------------------------------------------------------ quiz scores

def test_answering_past_the_end_is_an_index_error_with_the_range():
    quiz = Quiz([single(), single()])
    with pytest.raises(IndexError, match=r"no question 2: .*index 0\.\.1"):
        quiz.answer(2, 1)
    with pytest.raises(IndexError, match="no question -3"):
        quiz.answer(-3, 1)
    assert quiz.score == (0, 2)


def test_negative_index_is_the_same_question_so_the_score_cannot_exceed_the_total():
    quiz = Quiz([single(), single()])
    quiz.answer(0, 1)
    quiz.answer(1, 1)
    quiz.answer(-1, 1)  # Q2 again, not a third question
    quiz.answer(-2, 1)
    assert quiz.score == (2, 2) and quiz.score_text() == "Score: 2/2"
    quiz.answer(-1, 0)  # the first answer to Q2 is its score: a later wrong one changes nothing
    assert quiz.score == (2, 2)


@pytest.mark.parametrize("bad", [True, "0", 1.0, None])
def test_question_index_must_be_an_int(bad):
    with pytest.raises(TypeError, match="question index must be an int"):
        Quiz([single(), single()]).answer(bad, 1)


def test_numpy_question_index_good_before():
    quiz = Quiz([single(), single()])
    quiz.answer(np.int64(1), 1)
    assert quiz.score == (1, 2)


# ------------------------------------------------------------------------------- option responses

@pytest.mark.parametrize("response", ["1", " 1 ", "4", "4 ", np.int64(1), 1.0])
def test_single_answer_as_numeric_string_text_or_number(response):
    assert single().check(response).correct


def test_option_text_is_case_insensitive():
    q = single(answer=0, options=["Round to nearest", "GPTQ"])
    assert q.check("round to nearest").correct and not q.check("gptq").correct
    assert q.check("GPTQ").valid


def test_wrong_option_good_before():
    fb = single().check(0)
    assert not fb.correct and fb.message.startswith("Not quite")


@pytest.mark.parametrize("bad", [5, -1, "7", 1.5, "five", True, [1]])
def test_no_such_option_says_so_with_the_range(bad):
    fb = single().check(bad)
    assert not fb.correct and not fb.valid
    assert fb.message.startswith("No such option") and "0..1" in fb.message


def test_no_selection_asks_to_pick_one():
    fb = single().check(None)  # the widget's radio buttons before any click
    assert not fb.valid and "Pick an option" in fb.message


def test_numeral_that_is_both_an_index_and_another_options_text_is_ambiguous():
    q = single(answer=0, options=["1", "2", "4"])
    fb = q.check("1")  # option 1 by index, but the text of option 0
    assert not fb.valid and "ambiguous" in fb.message
    assert q.check(0).correct and q.check("4").valid  # "4" is no index here: it is option 2's text


def test_invalid_responses_are_not_scored():
    quiz = Quiz([single(), numeric()])
    quiz.answer(0, 1)
    fb = quiz.answer(0, 9)
    assert "No such option" in fb.message
    assert quiz.score == (1, 2)  # the earlier right answer stands
    quiz.answer(1, "four")
    assert quiz.score == (1, 2) and 1 not in quiz.results


@pytest.mark.parametrize("response, correct", [([2, 1], True), ([1], False), ([], False), (None, False)])
def test_multi_select_indices_good_before(response, correct):
    assert multi().check(response).correct is correct


@pytest.mark.parametrize("response", [["1", "2"], ["two", "FOUR"], [np.int64(2), "1"], (2, 1, 1)])
def test_multi_select_accepts_strings_and_texts(response):
    fb = multi().check(response)
    assert fb.valid and fb.correct


def test_multi_select_with_one_bare_option():
    q = Question(prompt="p", kind="multi", options=["a", "b"], answer=[1], explanation="e")
    assert q.check(1).correct and q.check("b").correct


def test_multi_select_with_an_option_out_of_range():
    fb = multi().check([1, 9])
    assert not fb.valid and "No such option: 9" in fb.message and "0..2" in fb.message


@pytest.mark.parametrize("bad", ["nan", float("inf"), "-inf"])
def test_numeric_needs_a_finite_number(bad):
    fb = numeric().check(bad)
    assert not fb.valid and "finite number" in fb.message


def test_numeric_good_before():
    assert numeric().check(" 4.156 ").correct and not numeric().check("4.5").correct
    assert "Please enter a number" in numeric().check("four").message


def test_text_mode_says_q1_is_index_0(capsys):
    Quiz([single()]).show(text=True)
    assert "Q1 is index 0" in capsys.readouterr().out


# -------------------------------------------------------------------------------------- prepare

@pytest.fixture
def no_conversion(monkeypatch, tmp_path):
    """prepare without converting the real model: the offline checkpoint is a stub folder."""
    monkeypatch.setenv("QUANTEDU_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(models, "offline_gguf_path", lambda: tmp_path / "fake.gguf")
    monkeypatch.setattr(models, "offline_checkpoint", lambda: tmp_path / "ckpt")
    fetched = []
    import huggingface_hub

    def fake_download(repo, **_):
        if "missing" in repo:
            raise huggingface_hub.errors.RepositoryNotFoundError(f"404 for {repo}")
        fetched.append(repo)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    from quantedu import data
    real_load = data.load_corpus
    monkeypatch.setattr(data, "load_corpus", lambda name="pydoc": None if name == "wikitext2" else real_load(name))
    return fetched


def test_prepare_models_without_online_refuses_and_says_add_online(no_conversion, capsys):
    assert cli.main(["prepare", "--models", "org/a", "org/b"]) == 2
    err = capsys.readouterr().err
    assert "needs --online" in err and "quantedu prepare --online --models org/a org/b" in err
    assert no_conversion == []


def test_prepare_models_with_no_ids_is_refused(no_conversion, monkeypatch, capsys):
    monkeypatch.setattr(models, "hub_reachable", lambda: (True, "test"))
    assert cli.main(["prepare", "--online", "--models"]) == 2
    assert "at least one hub id" in capsys.readouterr().err and no_conversion == []


def test_prepare_online_downloads_the_models_good_before(no_conversion, monkeypatch, capsys):
    monkeypatch.setattr(models, "hub_reachable", lambda: (True, "test"))
    assert cli.main(["prepare", "--online", "--models", "org/a", "org/b"]) == 0
    assert no_conversion == ["org/a", "org/b"]


def test_prepare_online_reports_a_failed_download_and_goes_on(no_conversion, monkeypatch, capsys):
    monkeypatch.setattr(models, "hub_reachable", lambda: (True, "test"))
    assert cli.main(["prepare", "--online", "--models", "org/missing", "org/b"]) == 1
    err = capsys.readouterr().err
    assert "could not download 'org/missing'" in err and "not cached: org/missing" in err
    assert no_conversion == ["org/b"]


def test_prepare_online_without_network_good_before(no_conversion, capsys):
    assert cli.main(["prepare", "--online"]) == 1  # HF_HUB_OFFLINE=1
    assert "skipping hub downloads" in capsys.readouterr().err


@pytest.fixture
def unwritable_cache(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("QUANTEDU_CACHE", str(blocker / "cache"))  # fails for root too
    return blocker / "cache"


def test_prepare_with_unwritable_cache_exits_nonzero_naming_the_variable(unwritable_cache, capsys):
    assert cli.main(["prepare"]) == 2
    err = capsys.readouterr().err
    assert "QUANTEDU_CACHE" in err and str(unwritable_cache) in err


def test_doctor_with_unwritable_cache_reports_it_and_everything_else(unwritable_cache, capsys):
    assert cli.main(["doctor"]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.strip().startswith("cache_dir:"))
    assert "UNUSABLE" in line and "QUANTEDU_CACHE" in line and str(unwritable_cache) in line
    assert "torch" in out and "offline_model" in out and "Optional engines" in out and "llama.cpp" in out


def test_writable_cache_is_reported_as_its_path_good_before(tmp_path, monkeypatch):
    monkeypatch.setenv("QUANTEDU_CACHE", str(tmp_path / "cache"))
    assert doctor.report()["cache_dir"] == str((tmp_path / "cache").resolve())


def test_cache_status(tmp_path, monkeypatch):
    monkeypatch.setenv("QUANTEDU_CACHE", str(tmp_path / "cache"))
    assert doctor.cache_status() == (str((tmp_path / "cache").resolve()), None)
    monkeypatch.setenv("QUANTEDU_CACHE", str(tmp_path))  # exists: still writable
    assert doctor.cache_status()[1] is None
