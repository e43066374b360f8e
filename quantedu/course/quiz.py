"""Quizzes that ask before they tell: single, multi-select and numeric questions, scored on first answers.

A quiz renders unanswered. A wrong answer gets feedback on that mistake (why that option is not right,
or what a numeric slip usually was) without naming the right answer; a right answer, or an explicit
reveal, shows the explanation. The score counts each question's FIRST answer: trying every option earns
feedback, not points. ``Quiz.show`` draws ipywidgets in a Jupyter kernel (the quiz's text as the plain-text
form) and prints the text elsewhere, or whenever ``QUANTEDU_QUIZ_TEXT=1`` (nbval runs). Instructors read
the keys with ``quantedu quiz --keys NAME`` (or ``all``), never from a notebook.

Questions live in ``quantedu/course/quizzes/<topic>.json``: ``{"title": ..., "questions": [...]}`` with::

    {"id": "awq-fold", "kind": "single" | "multi", "prompt": "...",
     "options": [{"text": "...", "why_not": "what is wrong with it, without naming the answer"},
                 {"text": "...", "correct": true}, ...],
     "explanation": "shown after a right answer or a reveal"}
    {"id": "q4k-bits", "kind": "numeric", "prompt": "...", "answer": 4.5, "tolerance": 0.001,
     "hint": "how to get there (shown after a wrong number)",
     "mistakes": [{"value": 4.0, "why": "the slip that gives this number"}], "explanation": "..."}

Numbers a notebook measured go into the text at run time, never typed into the JSON: any text may hold
``{name}`` or ``{name:.2f}``, filled from ``Quiz.load(topic, values={"name": ...})`` (a missing value is a
``KeyError`` that lists it; other braces, ``{-127, ..., 113}``, are text). That each key is right is
checked by tests/test_quiz.py against the package's own computations, not in the notebooks.

In code (where widgets do not show): ``quiz.answer(0, 2)`` answers Q1 with option 2 (an option is its
index, that index as a string, or its text); ``quiz.reveal(0)`` shows Q1's answer and explanation.
"""
from __future__ import annotations

import json
import math
import operator
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .widgets import in_kernel, quiz_widget

KINDS = ("single", "multi", "numeric")
QUIZ_DIR = Path(__file__).parent / "quizzes"
_FIELD = re.compile(r"\{([A-Za-z_]\w*)(?::([^{}]*))?\}")  # {name} or {name:.2f}; other braces are text
_NOT_TEXT = ("id", "kind")
RETRY = "Try again, or reveal the answer."


def _map_text(obj, fn):
    """``obj`` with ``fn`` applied to every string in it (but ids and kinds)."""
    if isinstance(obj, str):
        return fn(obj)
    if isinstance(obj, list):
        return [_map_text(o, fn) for o in obj]
    if isinstance(obj, dict):
        return {k: v if k in _NOT_TEXT else _map_text(v, fn) for k, v in obj.items()}
    return obj


def _names(item: dict) -> set[str]:
    found: set[str] = set()
    _map_text(item, lambda t: found.update(m[1] for m in _FIELD.finditer(t)))
    return found


def _fill(item: dict, values: dict) -> dict:
    return _map_text(item, lambda t: _FIELD.sub(lambda m: format(values[m[1]], m[2] or ""), t))


def topics() -> list[str]:
    return sorted(p.stem for p in QUIZ_DIR.glob("*.json"))


def _read(topic: str) -> tuple[str, list[dict]]:
    path = QUIZ_DIR / f"{topic}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no quiz named {topic!r}; available: {', '.join(topics())}")
    raw = json.loads(path.read_text())
    return raw.get("title", topic), raw["questions"]


def placeholders(topic: str) -> list[str]:
    """The run-time values quiz ``topic`` needs (its ``{name}`` fields), sorted."""
    return sorted(set().union(*(_names(q) for q in _read(topic)[1])))


@dataclass(frozen=True)
class Feedback:
    correct: bool
    message: str
    valid: bool = True  # False: the response named no option / was not a number (not scored)

    def _repr_pretty_(self, p, cycle):  # what a notebook cell shows for quiz.answer(...)
        p.text(self.message)


@dataclass
class Question:
    prompt: str
    kind: str
    answer: Any
    explanation: str
    options: list[str] = field(default_factory=list)
    tolerance: float = 1e-3
    id: str = ""
    why_not: list[str] = field(default_factory=list)  # per option: why it is wrong ("" for right ones)
    hint: str = ""  # numeric: shown after a wrong number
    mistakes: list[dict] = field(default_factory=list)  # numeric: [{"value": v, "why": "..."}]

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
        if self.why_not:
            keyed = self.keyed()
            if len(self.why_not) != len(self.options):
                raise ValueError(f"{where}: give one why_not per option ({len(self.options)}), got {len(self.why_not)}")
            bare = [i for i, w in enumerate(self.why_not) if i not in keyed and not w]
            if bare:
                raise ValueError(f"{where}: options {bare} are wrong but say nothing about why: add a \"why_not\"")

    def keyed(self) -> list[int]:
        """The indices of the right options (single and multi)."""
        return [self.answer] if self.kind == "single" else list(self.answer) if self.kind == "multi" else []

    def check(self, response) -> Feedback:
        """Feedback for a response: an option index (single), indices (multi) or a number (numeric).

        Right: the explanation. Wrong: why that response is wrong, never which one is right. A response
        that names no option, or is not a number where one is expected, gets ``Feedback(valid=False)``
        saying what is accepted (and is not scored).
        """
        if self.kind == "numeric":
            try:
                value = float(response)
            except (TypeError, ValueError):
                return Feedback(False, f"Please enter a number (got {response!r}).", valid=False)
            if not math.isfinite(value):
                return Feedback(False, f"Please enter a finite number (got {response!r}).", valid=False)
            if self._close(value, self.answer):
                return Feedback(True, f"Correct! {self.explanation}")
            why = next((m["why"] for m in self.mistakes if self._close(value, m["value"])),
                       self.hint or "Check your arithmetic one step at a time.")
            return Feedback(False, f"Not quite. {why} {RETRY}")
        picked = self._picked(response)
        indices = []
        for item in picked:
            index, problem = self._option(item)
            if problem:
                return Feedback(False, problem, valid=False)
            indices.append(index)
        if sorted(set(indices)) == sorted(self.keyed()) and (self.kind == "multi" or len(indices) == 1):
            return Feedback(True, f"Correct! {self.explanation}")
        return Feedback(False, f"Not quite. {self._why_wrong(indices)} {RETRY}")

    def _close(self, value: float, target: float) -> bool:
        return math.isclose(value, float(target), rel_tol=self.tolerance, abs_tol=1e-12)

    def _picked(self, response) -> list:
        if self.kind == "single" or response is not None and (
                isinstance(response, (str, bytes)) or not hasattr(response, "__iter__")):
            return [response]  # one option given on its own
        return [] if response is None else list(response)

    def _why_wrong(self, indices: list[int]) -> str:
        """Why the picked options are wrong, without naming a right one."""
        def reason(i: int) -> str:
            return self.why_not[i] if self.why_not and self.why_not[i] else "That one is not right."

        if self.kind == "single":
            return reason(indices[0])
        wrong = [i for i in dict.fromkeys(indices) if i not in self.keyed()]
        missed = len(set(self.keyed()) - set(indices))
        parts = [f"\u201c{_short(self.options[i])}\u201d: {reason(i)}" for i in wrong]
        if missed:
            parts.append(f"{missed} true statement{'s are' if missed > 1 else ' is'} not ticked.")
        return " ".join(parts) or "Tick every statement you think is true."

    def _option(self, item) -> tuple[int | None, str]:
        """(option index, "") for an index, a numeric string or an option's text; else (None, why)."""
        valid = f"answer with an option number 0..{len(self.options) - 1} (or the option's text)"
        if item is None:
            return None, f"Pick an option first: {valid}."
        if isinstance(item, str):
            text = item.strip()
            by_text = [i for i, opt in enumerate(self.options) if opt.strip().casefold() == text.casefold()]
            number = int(text) if re.fullmatch(r"[+-]?\d+", text) else None
            if number is not None and 0 <= number < len(self.options):
                if by_text and by_text != [number]:
                    return None, (f"{item!r} is ambiguous: option {number} by number, but also the text of "
                                  f"option {by_text[0]}; answer with the number as a number.")
                return number, ""
            if by_text:
                return by_text[0], ""
            item = item if number is None else number
        if isinstance(item, float) and item.is_integer():
            item = int(item)
        index = operator.index(item) if hasattr(item, "__index__") and not isinstance(item, bool) else None
        if index is None or not 0 <= index < len(self.options):
            return None, f"No such option: {item if index is None else index!r}; {valid}."
        return index, ""

    def key_text(self) -> str:
        """The right answer in words (for a reveal and for instructors)."""
        if self.kind == "numeric":
            return f"{self.answer:g} (within {self.tolerance:.2%})"
        return "; ".join(f"{i}) {self.options[i]}" for i in self.keyed())

    def text(self, number: int | None = None) -> str:
        head = f"Q{number}. " if number is not None else ""
        lines = [head + self.prompt]
        if self.kind == "multi":
            lines[0] += "  (select all that apply)"
        elif self.kind == "numeric":
            lines[0] += "  (a number)"
        lines += [f"   {i}) {opt}" for i, opt in enumerate(self.options)]
        return "\n".join(lines)


def _short(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 1].rsplit(" ", 1)[0] + "\u2026"


def _question(item: dict) -> Question:
    """A question of a quiz file: options given as ``{"text", "correct" | "why_not"}`` objects."""
    item = dict(item)
    options = item.get("options") or []
    if options and isinstance(options[0], dict):
        keyed = [i for i, o in enumerate(options) if o.get("correct")]
        if item.get("kind") == "single" and len(keyed) != 1:
            raise ValueError(f"question {item.get('id')!r}: mark exactly one option \"correct\": true, "
                             f"not {len(keyed)}")
        item["options"] = [o["text"] for o in options]
        item["why_not"] = [o.get("why_not", "") for o in options]
        item["answer"] = keyed[0] if item.get("kind") == "single" else keyed
    return Question(**item)


class Quiz:
    """A list of questions; the score counts each question's first answer."""

    def __init__(self, questions: list[Question], title: str = "Quiz"):
        if not questions:
            raise ValueError("a quiz needs at least one question")
        self.questions = list(questions)
        self.title = title
        self.results: dict[int, bool] = {}  # question index -> was its FIRST answer right

    @classmethod
    def load(cls, topic: str, ids: list[str] | None = None, values: dict | None = None) -> "Quiz":
        """Questions of ``quantedu/course/quizzes/<topic>.json`` (optionally only those ``ids``, in order), their
        ``{name}`` fields filled from ``values`` (what the notebook measured; see :func:`placeholders`)."""
        title, items = _read(topic)
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
        return cls([_question(_fill(q, values)) for q in items], title=title)

    def answer(self, index: int, response) -> Feedback:
        """Check ``response`` to question ``index`` (0 for Q1; negative counts from the end). The first
        valid answer to a question is its score; a response that names no option is not scored."""
        index = self._index(index)
        fb = self.questions[index].check(response)
        if not fb.valid:
            return fb
        if fb.correct and self.results.get(index) is False:
            return Feedback(True, fb.message + " (The score keeps your first answer to this question.)")
        self.results.setdefault(index, fb.correct)
        return fb

    def reveal(self, index: int) -> Feedback:
        """The answer and explanation of question ``index``; unanswered, it counts as missed."""
        index = self._index(index)
        self.results.setdefault(index, False)
        q = self.questions[index]
        return Feedback(False, f"Answer: {q.key_text()}. {q.explanation}")

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
        return sum(self.results.values()), len(self.questions)

    def score_text(self) -> str:
        right, total = self.score
        return f"Score: {right}/{total}"

    def text(self) -> str:
        """The whole quiz as plain text (what a terminal, or a viewer without widgets, shows)."""
        lines = [f"== {self.title} =="] + [q.text(i + 1) + "\n" for i, q in enumerate(self.questions)]
        lines.append("Answer in code: quiz.answer(0, 2) answers Q1 with option 2 (Q1 is index 0); a list such as\n"
                     "[0, 2] answers a select-all question. Your first answer to each question is your score;\n"
                     "quiz.reveal(0) shows Q1's answer and explanation.")
        return "\n".join(lines)

    def show(self, text: bool | None = None):
        """Draw the quiz: widgets in a Jupyter kernel, text elsewhere (or with ``QUANTEDU_QUIZ_TEXT=1``).

        The widget output carries the quiz text as its plain-text form, so a notebook executed without
        a widget front end (nbclient, nbval) or opened where widgets do not render still shows the
        questions, not a widget's repr. The widget is kept as ``self.widget``.
        """
        if text is None:
            text = os.environ.get("QUANTEDU_QUIZ_TEXT") == "1" or not in_kernel()
        if text:
            print(self.text())
            return
        from IPython.display import display

        self.widget = quiz_widget(self)
        display(self.mimebundle(), raw=True)

    def mimebundle(self) -> dict:
        """The widget's display data with the quiz text as its ``text/plain`` fallback."""
        if getattr(self, "widget", None) is None:
            self.widget = quiz_widget(self)
        bundle = dict(self.widget._repr_mimebundle_())
        bundle["text/plain"] = self.text()
        return bundle


def keys_text(topic: str) -> str:
    """Instructors: every question of quiz ``topic`` with its key (``{name}`` fields: measured in the notebook)."""
    title, items = _read(topic)
    lines = [f"== {topic}: {title} =="]
    for n, item in enumerate(items, 1):
        q = _question(item)
        lines.append(f"Q{n} [{q.id}] {_short(q.prompt, 90)}\n    key: {q.key_text()}")
    return "\n".join(lines)


def main(args) -> int:
    """``quantedu quiz``: list the quizzes; ``--keys NAME`` (or ``all``) prints their answer keys."""
    if args.keys is None:
        for topic in topics():
            title, items = _read(topic)
            print(f"{topic:10} {len(items):2} questions  {title}")
        print("Instructors: quantedu quiz --keys NAME (or all) prints the answer keys.")
        return 0
    chosen = topics() if args.keys == "all" else [args.keys]
    try:
        print("\n\n".join(keys_text(t) for t in chosen))
    except FileNotFoundError as exc:
        print(exc, file=sys.stderr)
        return 2
    return 0
