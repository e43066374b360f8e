"""Issue 22: what a self-paced learner reads in the committed notebooks.

* quiet: no warning, banner, progress bar, build log, traceback or machine path in a stored output; no table
  printed to more digits than any measurement here supports; no cell printing a wall of text;
* pictures: every lesson carries at least two figures drawn from its own data;
* predict, then see: no exercise's solution appears in a cell above the exercise (stored quiz outputs that
  reveal nothing: tests/test_quiz.py).
"""
from __future__ import annotations

import inspect
import re
import textwrap

import nbformat
import pytest
from test_notebook_sources import ROOT, SOURCES

NOTEBOOKS = [ROOT / "notebooks" / f"{s.stem}.ipynb" for s in SOURCES]
MAX_LINES_PER_CELL = 40  # a screenful: more is a table a figure would show better, or a log
NOISE = [
    (re.compile(r"\bwarn(ing)?s?\b[:(]|UserWarning|FutureWarning|DeprecationWarning", re.I), "a warning"),
    (re.compile(r"Traceback \(most recent call last\)"), "a traceback"),
    (re.compile(r"gaierror|Name or service not known|Temporary failure in name resolution"), "a network banner"),
    (re.compile(r"\d+%\|[█▉▊▋▌▍▎▏ #]*\||\d+(\.\d+)?(it|s)/s\]"), "a progress bar"),
    (re.compile(r"(/root/|/home/\w+|/tmp/|\.venv|site-packages|\\Users\\)"), "a path of this machine"),
    (re.compile(r"^(llama_|ggml_|load_tensors|llm_load|print_info|main: )", re.M), "llama.cpp's log"),
    (re.compile(r"\[\s*\d+%\]\s+(Building|Linking)|cmake|-- Configuring", re.I), "a build log"),
]
# 23.080212: more significant digits after the point than any noise allows (0.00145 +/- 0.00006 is rounded:
# the zeros after the point only place it)
UNROUNDED = re.compile(r"(?<![\w.])\d+\.0*[1-9]\d{4,}(?![\de])")


def _outputs(nb):
    """(cell index, kind, text) of every stored output of a code cell."""
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        for out in cell.get("outputs", []):
            if out.output_type == "stream":
                yield i, out.name, out.text
            elif out.output_type in ("execute_result", "display_data"):
                data = out.get("data", {})
                yield i, "data", data.get("text/plain", "") + "\n" + data.get("text/html", "")
            elif out.output_type == "error":
                yield i, "error", "\n".join(out.get("traceback", []))


@pytest.fixture(scope="module", params=NOTEBOOKS, ids=lambda p: p.stem)
def notebook(request):
    return request.param.stem, nbformat.read(request.param, as_version=4)


def test_outputs_are_quiet(notebook):
    name, nb = notebook
    problems = []
    for i, kind, text in _outputs(nb):
        if kind in ("stderr", "error"):
            problems.append(f"cell {i}: {kind} output: {text.strip()[:120]!r}")
            continue
        for pattern, what in NOISE:
            m = pattern.search(text)
            if m:
                problems.append(f"cell {i}: {what}: {text[max(0, m.start() - 60):m.end() + 60]!r}")
    assert not problems, f"{name}:\n" + "\n".join(problems)


def test_numbers_are_rounded(notebook):
    name, nb = notebook
    found = [(i, m.group(0)) for i, kind, text in _outputs(nb) if kind != "error"
             for m in UNROUNDED.finditer(text.split("<style")[0])]
    assert not found, f"{name}: numbers shown to more digits than the measurement supports: {found[:8]}"


def test_no_wall_of_output(notebook):
    name, nb = notebook
    long = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            lines = sum(text.count("\n") for _, kind, text in _outputs(nbformat.v4.new_notebook(cells=[cell]))
                        if kind == "stdout")
            if lines > MAX_LINES_PER_CELL:
                long.append((i, lines))
    assert not long, f"{name}: cells printing more than {MAX_LINES_PER_CELL} lines: {long}"


def test_at_least_two_figures(notebook):
    name, nb = notebook
    figures = sum(1 for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                  if "image/png" in o.get("data", {}) or "image/svg+xml" in o.get("data", {}))
    assert figures >= 2, f"{name} draws {figures} figure(s); every lesson shows its ideas in at least two"


def _solution_lines(exercise) -> list[str]:
    """The non-trivial lines of an exercise's reference solution (what would give it away)."""
    lines = []
    for fn in exercise.solution:
        body = textwrap.dedent(inspect.getsource(fn)).splitlines()[1:]  # the def line is the stub's too
        for line in body:
            code = line.split("#")[0].strip()
            if len(code) > 25 and not code.startswith(("return", '"""', "'''")):
                lines.append(re.sub(r"\s+", "", code))
    return lines


def test_no_solution_shown_above_its_exercise():
    from quantedu.exercises import REGISTRY
    from quantedu.exercises.notebooks import exercise_id

    leaks = []
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        seen = []
        for cell in nb.cells:
            ex_id = exercise_id(cell.source) if cell.cell_type == "code" else None
            if ex_id:
                lines = _solution_lines(REGISTRY[ex_id])
                above = re.sub(r"\s+", "", "\n".join(seen))
                shown = [ln for ln in lines if ln in above]
                if lines and len(shown) >= max(2, len(lines) // 3):
                    leaks.append(f"{path.stem}: {ex_id}: {len(shown)} of {len(lines)} solution lines sit above it, "
                                 f"e.g. {shown[0]!r}")
            seen.append(cell.source)
    assert not leaks, "\n".join(leaks)
