"""The exercise machinery: registry, grading, "not attempted" detection, hints, text and widget panels.

An :class:`Exercise` is a statement, the stub a notebook shows, a reference solution (learner-style code,
shown in the instructor's solution notebooks), and a list of :class:`Case` inputs. Each case runs the
learner's function(s) and compares the result with **the package's own code** (``quantedu.primitives``,
``quantedu.gptq``, the bit-exact ``quantedu.gguf`` quantizers, ...), returning ``None`` when they agree
or a sentence that says which element differs, expected vs got, and the likely cause when it recognises
the mistake. :func:`grade` runs the cases and stops at the first difference; :func:`check` grades and
shows the result (a small ipywidgets panel in Jupyter, printed text elsewhere or whenever
``QUANTEDU_QUIZ_TEXT=1``, as :mod:`quantedu.course.quiz` does).

A stub that was not filled in (its body is only ``...``, ``pass``, a docstring or ``raise
NotImplementedError``) is reported as *not attempted yet*, never as an error, so the committed notebooks
run top to bottom under nbval. With ``QUANTEDU_EXERCISE_SOLUTIONS=1`` the reference solution stands in
for an unfilled stub (and the output says so): CI uses it to run every exercise cell in its notebook's
context.

Every exercise cell of a notebook starts with the line ``# Exercise <id>`` (:data:`MARKER`), which is
how :mod:`quantedu.exercises.notebooks` finds them.
"""
from __future__ import annotations

import ast
import dis
import inspect
import math
import os
import re
import sys
import textwrap
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from ..course.widgets import WIDGET_STYLE, in_kernel, inline_html  # the style quizzes share

SOLUTIONS_ENV = "QUANTEDU_EXERCISE_SOLUTIONS"
TEXT_ENV = "QUANTEDU_QUIZ_TEXT"
MARKER = re.compile(r"^# Exercise (\d\d\.[a-z0-9_]+)\b")
PASSED, FAILED, NOT_ATTEMPTED = "passed", "failed", "not attempted"
_PACKAGE_DIR = str(Path(__file__).resolve().parents[1])


class Skip(Exception):
    """An input that cannot be built on this machine (e.g. the offline course model is missing)."""


@dataclass(frozen=True)
class Case:
    """One input: ``run(*learner_functions)`` returns ``None`` when the learner agrees with the package."""

    label: str
    run: Callable[..., str | None]


@dataclass(frozen=True)
class Exercise:
    """One exercise of one notebook. ``id`` is ``"<notebook>.<name>"``, e.g. ``"02.asym_quantize"``."""

    id: str
    title: str
    statement: str  # markdown, shown above the stub cell
    reference: str  # what the checker compares with, e.g. "quantedu.primitives.quantize"
    imports: str  # the stub cell's import lines
    stubs: tuple[str, ...]  # source of each function/class the learner writes, in check() order
    solution: tuple[Callable, ...]  # reference solutions, same names and order as the stubs
    cases: Callable[[dict], list[Case]]  # context (names passed to check) -> inputs
    hints: tuple[str, ...]
    context: tuple[str, ...] = ()  # notebook names passed on to check(), e.g. ("table",)
    example_context: Callable[[], dict] | None = None  # stand-ins for them (CI, instructor runs)

    def __post_init__(self):
        if not MARKER.match(f"# Exercise {self.id}"):
            raise ValueError(f"exercise id {self.id!r} must look like '02.asym_quantize'")
        if len(self.stubs) != len(self.solution) or not self.stubs:
            raise ValueError(f"{self.id}: one stub per solution function, at least one")
        if not self.hints:
            raise ValueError(f"{self.id}: give at least one hint")

    @property
    def notebook(self) -> str:
        return self.id[:2]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(fn.__name__ for fn in self.solution)

    def call(self) -> str:
        extra = "".join(f", {c}={c}" for c in self.context)
        return f'check("{self.id}", {", ".join(self.names)}{extra})'

    def cell(self, solution: bool = False) -> str:
        """The exercise's code cell: marker, imports, stubs (or the solution's source), the check call."""
        head = (f"# Exercise {self.id}: {self.title}\n"
                f"# Fill in the code marked YOUR CODE, then run the cell. hint(\"{self.id}\") gives a hint.")
        if solution:
            bodies = [textwrap.dedent(inspect.getsource(fn)).strip() for fn in self.solution]
        else:
            bodies = [textwrap.dedent(s).strip() for s in self.stubs]
        return "\n\n\n".join([head + "\n" + self.imports.strip(), *bodies, self.call()])

    def markdown(self) -> str:
        """The statement cell shown above the code cell."""
        return (f"### Exercise {self.id}: {self.title}\n{self.statement.strip()}\n\n"
                f"*Checked against* {self.reference}.\n`hint(\"{self.id}\")` reveals the hints one at a time.")


@dataclass(frozen=True)
class Result:
    exercise: str
    status: str  # PASSED, FAILED or NOT_ATTEMPTED
    message: str
    checked: int = 0  # inputs on which the learner agreed with the package
    skipped: tuple[str, ...] = ()  # inputs that could not be built here, with the reason
    note: str = ""  # e.g. that the reference solution stood in for a stub

    @property
    def passed(self) -> bool:
        return self.status == PASSED

    def text(self) -> str:
        head = {PASSED: "PASSED", FAILED: "FAILED", NOT_ATTEMPTED: "not attempted yet"}[self.status]
        lines = [f"Exercise {self.exercise}: {head}. {self.message}"]
        lines += [f"  skipped: {s}" for s in self.skipped]
        if self.note:
            lines.append(f"  note: {self.note}")
        if self.status != PASSED:
            ex = REGISTRY.get(self.exercise)
            hints, read = (ex.hints, _hints_shown.get(ex.id, 0)) if ex else ((), 0)
            lines += [f"  Hint {k + 1}/{len(hints)}: {h}" for k, h in enumerate(hints[:read])]
            if read < len(hints):
                lines.append(f'  Stuck? hint("{self.exercise}") shows {"another" if read else "a"} hint '
                             f"({len(hints)} in all).")
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return asdict(self)


REGISTRY: dict[str, Exercise] = {}
RESULTS: dict[str, Result] = {}  # the last result of each exercise in this process
_hints_shown: dict[str, int] = {}


def register(exercise: Exercise) -> Exercise:
    if exercise.id in REGISTRY:
        raise ValueError(f"exercise {exercise.id} is registered twice")
    REGISTRY[exercise.id] = exercise
    return exercise


def get(exercise_id: str) -> Exercise:
    if exercise_id not in REGISTRY:
        raise KeyError(f"no exercise {exercise_id!r}; there are: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[exercise_id]


# --- "not attempted yet" ----------------------------------------------------------------------------


_SKIP_OPS = {"RESUME", "NOP", "CACHE", "PRECALL", "PUSH_NULL", "KW_NAMES", "COPY_FREE_VARS", "MAKE_CELL"}


def _trivial_bytecode(code) -> bool:
    """Without source (code exec'd from a string): the body returns None or raises NotImplementedError."""
    ops = [(i.opname, i.argval) for i in dis.get_instructions(code) if i.opname not in _SKIP_OPS]
    if ops in ([("LOAD_CONST", None), ("RETURN_VALUE", None)], [("RETURN_CONST", None)]):
        return True
    return len(ops) >= 2 and ops[0][0] == "LOAD_GLOBAL" and ops[0][1] == "NotImplementedError" \
        and ops[-1][0] == "RAISE_VARARGS"


def _trivial_statement(node: ast.stmt) -> bool:
    if isinstance(node, ast.Pass):
        return True
    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
        return node.value.value is Ellipsis or isinstance(node.value.value, str)
    if isinstance(node, ast.Raise) and node.exc is not None:
        exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
        return isinstance(exc, ast.Name) and exc.id == "NotImplementedError"
    return False


def _trivial_function(fn) -> bool:
    code = getattr(fn, "__code__", None)
    if code is None:
        return False
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
        body = tree.body[0].body
    except (OSError, TypeError, SyntaxError, IndexError, AttributeError):
        return _trivial_bytecode(code)
    return all(_trivial_statement(s) for s in body)


def is_stub(obj) -> bool:
    """True for a function (or a class whose methods all are) whose body is only ``...``/``pass``/a
    docstring/``raise NotImplementedError``: the learner has not written it yet."""
    if isinstance(obj, type):
        methods = [getattr(v, "__func__", v) for k, v in vars(obj).items()
                   if not k.startswith("__") and inspect.isfunction(getattr(v, "__func__", v))]
        return bool(methods) and all(_trivial_function(m) for m in methods)
    return _trivial_function(getattr(obj, "__func__", obj))


# --- grading ----------------------------------------------------------------------------------------


def _learner_line(exc: BaseException) -> str:
    """Where in the learner's code an exception came from: the deepest frame outside quantedu and Python."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not f.filename.startswith((_PACKAGE_DIR, sys.prefix, sys.base_prefix))]
    if not frames:
        return ""
    f = frames[-1]
    line = f" `{f.line.strip()}`" if f.line else ""
    return f" (at line {f.lineno} of your code:{line})"


def _one_thread():
    from ..runtime import torch_threads

    return torch_threads(1)


def grade(exercise_id: str, *functions, **context) -> Result:
    """Run ``functions`` on every input of the exercise; the first difference from the package is the result."""
    ex = get(exercise_id)
    if len(functions) != len(ex.solution):
        raise TypeError(f'check("{ex.id}", ...) takes {len(ex.solution)} function(s) after the id: '
                        f"{', '.join(ex.names)}; got {len(functions)}")
    missing = [c for c in ex.context if c not in context]
    if missing:
        raise TypeError(f'check("{ex.id}", ...) needs {", ".join(f"{c}=..." for c in missing)}')
    stubs = [name for name, fn in zip(ex.names, functions) if is_stub(fn)]
    note = ""
    if stubs and os.environ.get(SOLUTIONS_ENV) == "1":
        functions = tuple(sol if is_stub(fn) else fn for fn, sol in zip(functions, ex.solution))
        note = f"the reference solution stood in for {', '.join(stubs)} ({SOLUTIONS_ENV}=1)"
    elif stubs:
        verb = "is still a stub" if len(stubs) == 1 else "are still stubs"
        return Result(ex.id, NOT_ATTEMPTED, f"{' and '.join(stubs)} {verb}: write the code, then run the cell again.")
    checked, skipped = 0, []
    for case in ex.cases(context):
        try:
            with _one_thread():  # small inputs: a thread pool only costs, and collapses on a busy machine
                problem = case.run(*functions)
        except Skip as why:
            skipped.append(f"{case.label}: {why}")
            continue
        except NotImplementedError:
            return Result(ex.id, NOT_ATTEMPTED, "your code raised NotImplementedError: finish it, then run the cell "
                                                "again.", checked, tuple(skipped), note)
        except Exception as exc:  # noqa: BLE001 - the learner's code may raise anything: say what and where
            problem = f"your code raised {type(exc).__name__}: {exc}{_learner_line(exc)}"
        if problem:
            return Result(ex.id, FAILED, f"input {case.label}: {problem}", checked, tuple(skipped), note)
        checked += 1
    return Result(ex.id, PASSED, f"all {checked} inputs agree with {ex.reference}.", checked, tuple(skipped), note)


def check(exercise_id: str, *functions, **context) -> None:
    """Grade the learner's ``functions`` and show the result (panel in Jupyter, text elsewhere)."""
    result = grade(exercise_id, *functions, **context)
    RESULTS[exercise_id] = result
    show(result)


def hint(exercise_id: str) -> str:
    """Print (and return) the next hint of an exercise; each call reveals one more."""
    ex = get(exercise_id)
    n = _hints_shown.get(ex.id, 0)
    if n >= len(ex.hints):
        text = f"No more hints for {ex.id}: that was the last of {len(ex.hints)}."
    else:
        _hints_shown[ex.id] = n + 1
        text = f"Hint {n + 1}/{len(ex.hints)} for {ex.id}: {ex.hints[n]}"
    print(text)
    return text


# --- showing a result -------------------------------------------------------------------------------


def show(result: Result, text: bool | None = None) -> None:
    if text is None:
        text = os.environ.get(TEXT_ENV) == "1" or not in_kernel()
    if text:
        print(result.text())
        return
    from IPython.display import display

    display(panel(result))


def panel(result: Result):
    """pass/fail, the message and a hint button, as ipywidgets. The hints live in the kernel
    (:func:`hint` and the button share the count), so a panel drawn again shows those already read."""
    import ipywidgets as w

    color = {PASSED: "green", FAILED: "#b00", NOT_ATTEMPTED: "#555"}[result.status]
    icon = {PASSED: "&#10004;", FAILED: "&#10008;", NOT_ATTEMPTED: "&#8230;"}[result.status]
    extra = "".join(f"<br><small>{inline_html(s)}</small>" for s in (*result.skipped, result.note) if s)
    head = w.HTML(f"{WIDGET_STYLE}<b style='color:{color}'>{icon} Exercise {result.exercise}: {result.status}</b><br>"
                  f"{inline_html(result.message)}{extra}")
    rows = [head]
    if result.status != PASSED:
        ex = get(result.exercise)
        shown, button = w.HTML(), w.Button(layout=w.Layout(width="auto"))

        def render():
            n, total = _hints_shown.get(ex.id, 0), len(ex.hints)
            shown.value = "".join(f"<p><b>Hint {k + 1}.</b> {inline_html(h)}</p>"
                                  for k, h in enumerate(ex.hints[:n]))
            button.description = f"Show hint {n + 1} of {total}" if n < total else f"All {total} hints shown"
            button.disabled = n >= total

        def on_click(_b):
            _hints_shown[ex.id] = min(_hints_shown.get(ex.id, 0) + 1, len(ex.hints))
            render()

        render()
        button.on_click(on_click)
        rows += [button, shown]
    box = w.VBox(rows)
    box.add_class("quantedu-widget")
    return box


# --- comparing in plain words ------------------------------------------------------------------------


def as_array(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def fmt(v) -> str:
    v = v.item() if hasattr(v, "item") else v
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)) or (isinstance(v, float) and math.isfinite(v) and v == int(v) and abs(v) < 1e6):
        return str(int(v))
    return f"{v:.6g}"


def where(index: tuple[int, ...], names: tuple[str, ...] | None = None) -> str:
    names = names or (("element",) if len(index) == 1 else ("row", "column", "item")[: len(index)])
    return ", ".join(f"{n} {i}" for n, i in zip(names, index))


def first_difference(expected, got, what: str = "value", names: tuple[str, ...] | None = None,
                     rtol: float = 0.0, atol: float = 0.0) -> str | None:
    """``None`` if ``got`` equals ``expected`` (within tolerances), else where and how they first differ."""
    exp = as_array(expected)
    try:
        val = as_array(got)
    except Exception:  # noqa: BLE001
        return f"expected an array of shape {exp.shape}, got {type(got).__name__}"
    if val.dtype == object:
        return f"expected numbers of shape {exp.shape}, got {type(got).__name__} holding {val.dtype} values"
    if val.shape != exp.shape:
        return f"shape of the {what}s: expected {exp.shape}, got {val.shape}"
    e, g = exp.astype(np.float64), val.astype(np.float64)
    bad = ~np.isclose(g, e, rtol=rtol, atol=atol, equal_nan=True)
    if not bad.any():
        return None
    idx = tuple(int(i) for i in np.argwhere(bad)[0])
    count = f" ({int(bad.sum())} of {bad.size} differ)" if bad.size > 1 else ""
    at = f" at {where(idx, names)}" if exp.ndim else ""
    return f"{what}{at}: expected {fmt(exp[idx])}, got {fmt(val[idx])}{count}"


def likely_cause(value, candidates: Iterable[tuple[str, object]], rtol: float = 1e-9, atol: float = 0.0) -> str:
    """The first cause whose predicted value equals ``value`` (``" Likely cause: ..."``), else ``""``."""
    try:
        v = as_array(value).astype(np.float64)
    except Exception:  # noqa: BLE001
        return ""
    for cause, predicted in candidates:
        p = as_array(predicted).astype(np.float64)
        if p.shape == v.shape and np.allclose(v, p, rtol=rtol, atol=atol, equal_nan=True):
            return f" Likely cause: {cause}"
    return ""


def case(label: str):
    """Decorator: ``@case("hand-made: ...")`` turns a checking function into a :class:`Case`."""
    return lambda run: Case(label, run)


__all__ = ["Case", "Exercise", "Result", "Skip", "REGISTRY", "RESULTS", "check", "grade", "hint", "is_stub",
           "register", "get", "show", "panel", "first_difference", "likely_cause", "case", "MARKER", "SOLUTIONS_ENV",
           "PASSED", "FAILED", "NOT_ATTEMPTED"]
