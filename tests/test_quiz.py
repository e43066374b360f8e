import json

import pytest

from quantedu.course.quiz import QUIZ_DIR, Question, Quiz, placeholders


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
        quiz = Quiz.load(path.stem, values=dict.fromkeys(placeholders(path.stem), 1.0))
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
    from quantedu.course.quiz import _widgets

    quiz = Quiz([single()])
    box = _widgets(quiz)
    radio = next(c for c in box.children if type(c).__name__ == "RadioButtons")
    button = next(c for c in box.children if type(c).__name__ == "Button")
    radio.value = 1
    button.click()
    assert quiz.score == (1, 1)
    assert "Score: 1/1" in box.children[-1].value


def write_quiz(tmp_path, monkeypatch, questions):
    import quantedu.course.quiz as quiz_module
    (tmp_path / "t.json").write_text(json.dumps({"title": "T", "questions": questions}))
    monkeypatch.setattr(quiz_module, "QUIZ_DIR", tmp_path)


def test_measured_values_fill_placeholders(tmp_path, monkeypatch):
    write_quiz(tmp_path, monkeypatch, [
        {"id": "a", "kind": "single", "prompt": "AWQ {ppl:.2f} vs {other}?", "options": ["{ppl:.1f}", "b"],
         "answer": 0, "explanation": "measured {ppl:.3f}; the grid {-127, ..., 113} is text"}])
    assert placeholders("t") == ["other", "ppl"]
    q = Quiz.load("t", values={"ppl": 16.1234, "other": "GPTQ"}).questions[0]
    assert q.prompt == "AWQ 16.12 vs GPTQ?" and q.options == ["16.1", "b"]
    assert q.explanation == "measured 16.123; the grid {-127, ..., 113} is text"
    with pytest.raises(KeyError, match="missing: \\['other'\\]"):
        Quiz.load("t", values={"ppl": 1.0})
    with pytest.raises(KeyError, match="missing"):
        Quiz.load("t")


def test_questions_without_placeholders_load_without_values(tmp_path, monkeypatch):
    write_quiz(tmp_path, monkeypatch, [
        {"id": "a", "kind": "numeric", "prompt": "bits?", "answer": 4.5, "explanation": "{-127, 113} stay"},
        {"id": "b", "kind": "numeric", "prompt": "{x}?", "answer": 1, "explanation": "e"}])
    assert Quiz.load("t", ids=["a"]).questions[0].explanation == "{-127, 113} stay"
    assert placeholders("t") == ["x"]


def test_widget_output_carries_the_quiz_text():
    quiz = Quiz([single()], title="T")
    bundle = quiz.mimebundle()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert bundle["text/plain"] == quiz.text() and "== T ==" in bundle["text/plain"] and "1) 4" in bundle["text/plain"]


@pytest.mark.parametrize("topic, qid, fmt", [
    ("memory", "bpw-int4-g128", dict(bits=4, group_size=128)),
    ("gptq", "gptq-bits-per-weight", dict(bits=4, group_size=64)),
    ("final", "int4-bytes", dict(bits=4, group_size=64)),
])
def test_group_overhead_answers_use_the_one_formula(topic, qid, fmt):
    """Every bits-per-weight answer is quantedu.memory.GroupFormat.bits_per_weight (fp16 scale and a
    zero point packed at the weights' bit width per group), not a formula of its own."""
    from quantedu.memory import GroupFormat

    quiz = Quiz.load(topic, ids=[qid], values=dict.fromkeys(placeholders(topic), 1.0))
    assert quiz.questions[0].answer == GroupFormat(**fmt).bits_per_weight()


def test_kv_cache_answer_is_the_package_formula():
    from quantedu.memory import kv_cache_bytes

    quiz = Quiz.load("memory", ids=["kv-7b-4k"], values=dict.fromkeys(placeholders("memory"), 1.0))
    assert quiz.questions[0].answer == kv_cache_bytes("llama-2-7b", 4096) / 2**30
