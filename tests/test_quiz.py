import json

import pytest

from quantedu.quiz import QUIZ_DIR, Question, Quiz


def single():
    return Question(prompt="2+2?", kind="single", options=["3", "4"], answer=1, explanation="arithmetic")


def test_single_choice_feedback():
    q = single()
    assert q.check(1).correct and not q.check(0).correct
    assert "arithmetic" in q.check(0).message and q.check(0).message.startswith("Not quite")


def test_multi_select_needs_exactly_the_right_set():
    q = Question(prompt="even?", kind="multi", options=["1", "2", "4"], answer=[1, 2], explanation="e")
    assert q.check([2, 1]).correct
    assert not q.check([1]).correct and not q.check([0, 1, 2]).correct and not q.check([]).correct


def test_numeric_tolerance_and_bad_input():
    q = Question(prompt="bits?", kind="numeric", answer=4.15625, tolerance=1e-3, explanation="x")
    assert q.check("4.156").correct and q.check(4.15625).correct
    assert not q.check(4.5).correct
    fb = q.check("four")
    assert not fb.correct and "number" in fb.message


@pytest.mark.parametrize("bad", [
    dict(kind="single", options=["a"], answer=3),
    dict(kind="multi", options=["a"], answer=[]),
    dict(kind="numeric", answer="x"),
    dict(kind="essay", answer=1),
    dict(kind="single", options=["a"], answer=0, explanation=""),
])
def test_malformed_questions_are_rejected(bad):
    args = dict(prompt="p", explanation="e") | bad
    with pytest.raises(ValueError):
        Question(**args)


def test_score_counts_latest_answer_per_question():
    quiz = Quiz([single(), single()])
    quiz.answer(0, 0)
    quiz.answer(0, 1)
    quiz.answer(1, 0)
    assert quiz.score == (1, 2) and quiz.score_text() == "Score: 1/2"


def test_every_quiz_file_loads_and_has_explanations():
    files = sorted(QUIZ_DIR.glob("*.json"))
    assert files, "no quiz files"
    for path in files:
        quiz = Quiz.load(path.stem)
        raw = json.loads(path.read_text())
        items = raw["questions"] if isinstance(raw, dict) else raw
        ids = [q.get("id") for q in items]
        assert len(ids) == len(set(ids)), f"duplicate ids in {path.name}"
        assert all(q.explanation for q in quiz.questions)


def test_unknown_quiz_lists_available():
    with pytest.raises(FileNotFoundError, match="warmup"):
        Quiz.load("no-such-topic")


def test_text_mode_prints_questions(capsys):
    Quiz([single()], title="T").show(text=True)
    out = capsys.readouterr().out
    assert "== T ==" in out and "1) 4" in out


def test_widgets_build_and_check_answers():
    from quantedu.quiz import _widgets

    quiz = Quiz([single()])
    box = _widgets(quiz)
    radio = next(c for c in box.children if type(c).__name__ == "RadioButtons")
    button = next(c for c in box.children if type(c).__name__ == "Button")
    radio.value = 1
    button.click()
    assert quiz.score == (1, 1)
    assert "Score: 1/1" in box.children[-1].value
