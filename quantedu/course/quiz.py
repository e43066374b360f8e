"""Quiz widgets: multiple-choice, multi-select and numeric questions with feedback and a score.

The checking logic is plain Python (``Question.check``), unit-tested without a browser. ``Quiz.show``
draws ipywidgets inside a Jupyter kernel, with the quiz's text as the output's plain-text form (what a
viewer without widgets shows), and prints that text elsewhere (plain terminals, or whenever
``QUANTEDU_QUIZ_TEXT=1``, which the test suite sets for nbval runs).

Questions live in one place: ``quantedu/quizzes/<topic>.json``, a list of objects::

    {"id": "awq-speed", "kind": "single" | "multi" | "numeric", "prompt": "...",
     "options": ["...", ...],            # single / multi
     "answer": 1 | [0, 2] | 4.156,       # option index, indices, or number
     "tolerance": 0.01,                  # numeric only: relative tolerance (default 1e-3)
     "explanation": "..."}

Numbers a notebook measured go into the text at run time, never typed into the JSON: a prompt, an
option or an explanation may hold ``{name}`` or ``{name:.2f}`` (a Python identifier, optionally a
format spec), filled from ``Quiz.load(topic, values={"name": ...})``. Loading a quiz without a value
it names is a ``KeyError`` that lists what is missing; other braces (``{-127, ..., 113}``) are text.

Answering in code: ``quiz.answer(i, response)`` with ``i`` 0 for Q1 (an index past the end is an
IndexError). An option is its index, the index as a string (``"2"``) or its text; a response that
names no option gets feedback saying which are valid and is not scored, so a score never exceeds
the number of questions.
"""
from __future__ import annotations

import json
import math
import operator
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KINDS = ("single", "multi", "numeric")
QUIZ_DIR = Path(__file__).parent / "quizzes"
_FIELD = re.compile(r"\{([A-Za-z_]\w*)(?::([^{}]*))?\}")  # {name} or {name:.2f}; other braces are text
_TEXT_FIELDS = ("prompt", "explanation")


def _names(item: dict) -> set[str]:
    texts = [item.get(k, "") for k in _TEXT_FIELDS] + list(item.get("options", []))
    return {m[1] for t in texts for m in _FIELD.finditer(t)}


def _fill(item: dict, values: dict) -> dict:
    def sub(text: str) -> str:
        return _FIELD.sub(lambda m: format(values[m[1]], m[2] or ""), text)
    out = {k: sub(v) if k in _TEXT_FIELDS else v for k, v in item.items()}
    if "options" in item:
        out["options"] = [sub(o) for o in item["options"]]
    return out


def _read(topic: str) -> tuple[dict | list, list[dict]]:
    path = QUIZ_DIR / f"{topic}.json"
    if not path.is_file():
        names = sorted(p.stem for p in QUIZ_DIR.glob("*.json"))
        raise FileNotFoundError(f"no quiz named {topic!r}; available: {', '.join(names)}")
    raw = json.loads(path.read_text())
    return raw, raw["questions"] if isinstance(raw, dict) else raw


def placeholders(topic: str) -> list[str]:
    """The run-time values quiz ``topic`` needs (its ``{name}`` fields), sorted."""
    return sorted(set().union(*(_names(q) for q in _read(topic)[1])))


@dataclass(frozen=True)
class Feedback:
    correct: bool
    message: str
    valid: bool = True  # False: the response named no option / was not a number (not scored)


@dataclass
class Question:
    prompt: str
    kind: str
    answer: Any
    explanation: str
    options: list[str] = field(default_factory=list)
    tolerance: float = 1e-3
    id: str = ""

    def __post_init__(self):
        where = f"question {self.id or self.prompt[:40]!r}"
        if self.kind not in KINDS:
            raise ValueError(f"{where}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "single":
            if not isinstance(self.answer, int) or not 0 <= self.answer < len(self.options):
                raise ValueError(f"{where}: answer must index one of its {len(self.options)} options")
        elif self.kind == "multi":
            if not self.answer or any(not 0 <= a < len(self.options) for a in self.answer):
                raise ValueError(f"{where}: answer must be a non-empty list of option indices")
        elif not isinstance(self.answer, (int, float)):
            raise ValueError(f"{where}: a numeric question needs a number as its answer")
        if not self.explanation:
            raise ValueError(f"{where}: every question needs an explanation")

    def check(self, response) -> Feedback:
        """Feedback for a response: an option index (single), indices (multi) or a number (numeric).

        An option may also be given as its index in a string (``"2"``) or as its exact text
        (case-insensitive). A response that names no option, or is not a number where one is
        expected, gets ``Feedback(valid=False)`` saying what is accepted (and is not scored).
        """
        if self.kind == "numeric":
            try:
                value = float(response)
            except (TypeError, ValueError):
                return Feedback(False, f"Please enter a number (got {response!r}).", valid=False)
            if not math.isfinite(value):
                return Feedback(False, f"Please enter a finite number (got {response!r}).", valid=False)
            correct = math.isclose(value, float(self.answer), rel_tol=self.tolerance, abs_tol=1e-12)
        else:
            if self.kind == "single":
                picked = [response]
            elif response is None:
                picked = []
            elif isinstance(response, (str, bytes)) or not hasattr(response, "__iter__"):
                picked = [response]  # one option given on its own
            else:
                picked = list(response)
            indices = []
            for item in picked:
                index, problem = self._option(item)
                if problem:
                    return Feedback(False, problem, valid=False)
                indices.append(index)
            correct = indices[0] == self.answer if self.kind == "single" else set(indices) == set(self.answer)
        verdict = "Correct!" if correct else "Not quite."
        return Feedback(correct, f"{verdict} {self.explanation}")

    def _option(self, item) -> tuple[int | None, str]:
        """(option index, "") for an index, a numeric string or an option's text; else (None, why)."""
        valid = f"answer with an option index 0..{len(self.options) - 1} (or the option's text)"
        if item is None:
            return None, f"Pick an option first: {valid}."
        if isinstance(item, str):
            text = item.strip()
            by_text = [i for i, opt in enumerate(self.options) if opt.strip().casefold() == text.casefold()]
            try:
                number = int(text)
            except ValueError:
                number = None
            if number is not None and 0 <= number < len(self.options):
                if by_text and by_text != [number]:
                    return None, (f"{item!r} is ambiguous: option {number} by index, but also the text of "
                                  f"option {by_text[0]}; answer with the index as a number.")
                return number, ""
            if by_text:
                return by_text[0], ""
            if number is None:
                return None, f"No such option: {item!r}; {valid}."
            item = number
        if isinstance(item, bool) or not isinstance(item, (int, float)) and not hasattr(item, "__index__"):
            return None, f"No such option: {item!r}; {valid}."
        if isinstance(item, float):
            if not item.is_integer():
                return None, f"No such option: {item!r}; {valid}."
            item = int(item)
        index = operator.index(item)
        if not 0 <= index < len(self.options):
            return None, f"No such option: {index}; {valid}."
        return index, ""

    def text(self, number: int | None = None) -> str:
        head = f"Q{number}. " if number is not None else ""
        lines = [head + self.prompt]
        if self.kind == "multi":
            lines[0] += "  (select all that apply)"
        lines += [f"   {i}) {opt}" for i, opt in enumerate(self.options)]
        return "\n".join(lines)


class Quiz:
    """A list of questions with a running score."""

    def __init__(self, questions: list[Question], title: str = "Quiz"):
        if not questions:
            raise ValueError("a quiz needs at least one question")
        self.questions = list(questions)
        self.title = title
        self.results: dict[int, bool] = {}

    @classmethod
    def load(cls, topic: str, ids: list[str] | None = None, values: dict | None = None) -> "Quiz":
        """Questions of ``quantedu/quizzes/<topic>.json`` (optionally only those ``ids``, in order), their
        ``{name}`` fields filled from ``values`` (what the notebook measured; see :func:`placeholders`)."""
        raw, items = _read(topic)
        if ids is not None:
            by_id = {q.get("id"): q for q in items}
            missing = [i for i in ids if i not in by_id]
            if missing:
                raise KeyError(f"quiz {topic!r} has no questions {missing}")
            items = [by_id[i] for i in ids]
        values = dict(values or {})
        needed = set().union(*(_names(q) for q in items))
        if needed - values.keys():
            raise KeyError(f"quiz {topic!r} shows measured numbers: pass them as Quiz.load({topic!r}, values={{...}}); "
                           f"missing: {sorted(needed - values.keys())}")
        questions = [Question(**_fill(q, values)) for q in items]
        title = raw.get("title", topic) if isinstance(raw, dict) else topic
        return cls(questions, title=title)

    def answer(self, index: int, response) -> Feedback:
        """Check ``response`` to question ``index`` (0 for Q1; negative counts from the end) and record
        it in the score. A response that names no option is answered with how to fix it, not scored."""
        index = self._index(index)
        fb = self.questions[index].check(response)
        if fb.valid:
            self.results[index] = fb.correct
        return fb

    def _index(self, index) -> int:
        n = len(self.questions)
        where = f"this quiz has {n} question{'s' * (n != 1)}: index 0..{n - 1} (Q1 is index 0, Q{n} is {n - 1})"
        if isinstance(index, bool) or not hasattr(index, "__index__"):
            raise TypeError(f"question index must be an int, got {index!r}; {where}")
        index = operator.index(index)
        if not -n <= index < n:
            raise IndexError(f"no question {index}: {where}")
        return index % n  # -1 and n - 1 are the same question: one score entry

    @property
    def score(self) -> tuple[int, int]:
        return sum(bool(self.results.get(i)) for i in range(len(self.questions))), len(self.questions)

    def score_text(self) -> str:
        right, total = self.score
        return f"Score: {right}/{total}"

    def text(self) -> str:
        """The whole quiz as plain text (what a terminal, or a viewer without widgets, shows)."""
        lines = [f"== {self.title} =="] + [q.text(i + 1) + "\n" for i, q in enumerate(self.questions)]
        lines.append("Answer in code: quiz.answer(question_index, response) -> feedback  (Q1 is index 0)")
        return "\n".join(lines)

    def show(self, text: bool | None = None):
        """Draw the quiz: widgets in a Jupyter kernel, text elsewhere (or with ``QUANTEDU_QUIZ_TEXT=1``).

        The widget output carries the quiz text as its plain-text form, so a notebook executed without
        a widget front end (nbclient, nbval) or opened where widgets do not render still shows the
        questions, not a widget's repr. The widget is kept as ``self.widget``.
        """
        if text is None:
            text = os.environ.get("QUANTEDU_QUIZ_TEXT") == "1" or not _in_kernel()
        if text:
            print(self.text())
            return
        from IPython.display import display

        self.widget = _widgets(self)
        display(self.mimebundle(), raw=True)

    def mimebundle(self) -> dict:
        """The widget's display data with the quiz text as its ``text/plain`` fallback."""
        if getattr(self, "widget", None) is None:
            self.widget = _widgets(self)
        bundle = dict(self.widget._repr_mimebundle_())
        bundle["text/plain"] = self.text()
        return bundle


def _in_kernel() -> bool:
    try:
        from IPython import get_ipython

        shell = get_ipython()
    except ImportError:
        return False
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def _widgets(quiz: Quiz):
    import ipywidgets as w

    score = w.HTML(f"<b>{quiz.score_text()}</b>")
    rows = [w.HTML(f"<h3>{quiz.title}</h3>")]
    for i, q in enumerate(quiz.questions):
        if q.kind == "single":
            picker = w.RadioButtons(options=[(opt, k) for k, opt in enumerate(q.options)],
                                    value=None, layout=w.Layout(width="auto"))
            read = lambda picker=picker: picker.value  # noqa: E731
            inputs = [picker]
        elif q.kind == "multi":
            boxes = [w.Checkbox(description=opt, indent=False, layout=w.Layout(width="auto"))
                     for opt in q.options]
            read = lambda boxes=boxes: [k for k, b in enumerate(boxes) if b.value]  # noqa: E731
            inputs = boxes
        else:
            field_ = w.Text(placeholder="a number")
            read = lambda field_=field_: field_.value  # noqa: E731
            inputs = [field_]
        out = w.HTML()
        button = w.Button(description="Check", button_style="primary")

        def on_click(_b, i=i, read=read, out=out):
            fb = quiz.answer(i, read())
            color = "green" if fb.correct else "#b00"
            out.value = f"<span style='color:{color}'>{fb.message}</span>"
            score.value = f"<b>{quiz.score_text()}</b>"

        button.on_click(on_click)
        rows += [w.HTML(f"<b>Q{i + 1}.</b> {q.prompt}"), *inputs, button, out]
    return w.VBox(rows + [score])
