"""The instructor side: solution notebooks, and which exercises a folder of learners' notebooks passes.

* ``quantedu exercises --solutions [--out DIR]`` copies ``notebooks/*.ipynb`` into ``notebooks/solutions/``
  (or ``DIR``) with every exercise cell's stub replaced by the reference solution. It only ever overwrites
  files it wrote itself (listed in the folder's :data:`MARK` file) and refuses a folder it did not create.
* ``quantedu exercises --status DIR`` finds the exercise cells of every notebook under ``DIR`` (hidden folders
  such as ``.ipynb_checkpoints`` and solution folders left out), runs each learner's cell in a child process
  (:mod:`quantedu.exercises._runner`: learner code can hang or crash, so it never runs in the instructor's
  process), each cell in a fresh namespace with a timeout, and prints one line per notebook and exercise:
  passed / failed (the first message) / not attempted.

Exercise cells are found by their first line, ``# Exercise <id>`` (:data:`quantedu.exercises.core.MARKER`).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from .core import MARKER, REGISTRY

MARK = ".quantedu-solutions"  # lists the files `--solutions` wrote into its folder
GUARD = "conftest.py"  # keeps pytest (nbval over notebooks/) from running the solution notebooks
GUARD_TEXT = ('"""Written by `quantedu exercises --solutions`: the solution notebooks are not part of the test '
              'suite."""\ncollect_ignore_glob = ["*.ipynb"]\n')


class SolutionsError(RuntimeError):
    """The target folder holds files this command did not write."""


def exercise_id(source: str) -> str | None:
    """The exercise a code cell holds, from its first line ``# Exercise <id>`` (None for other cells)."""
    m = MARKER.match(source.lstrip())
    return m.group(1) if m and m.group(1) in REGISTRY else None


def exercise_cells(nb) -> list[tuple[int, str, str]]:
    """``(cell index, exercise id, source)`` of the exercise cells of an nbformat notebook."""
    out = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and (ex := exercise_id(cell.source)):
            out.append((i, ex, cell.source))
    return out


def percent_cells(exercise) -> str:
    """The exercise's two cells (statement, stub) in the percent format of ``notebooks/src``."""
    md = "\n".join(f"# {line}" if line else "#" for line in exercise.markdown().splitlines())
    return f"# %% [markdown]\n{md}\n\n# %%\n{exercise.cell()}\n"


def course_notebooks(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).glob("[0-9][0-9]_*.ipynb") if ".fresh-" not in p.name)


def default_notebooks() -> Path:
    """``./notebooks`` if it exists, else the course checkout's ``notebooks/`` next to the package."""
    here = Path.cwd() / "notebooks"
    return here if here.is_dir() else Path(__file__).resolve().parents[2] / "notebooks"


# --- solution notebooks ------------------------------------------------------------------------------


def write_solutions(notebooks: Path, out: Path | None = None) -> list[Path]:
    """Write each course notebook with its exercise stubs replaced by the reference solutions."""
    import nbformat

    notebooks = Path(notebooks)
    out = Path(out) if out is not None else notebooks / "solutions"
    mark = out / MARK
    ours = set(json.loads(mark.read_text())) if mark.is_file() else set()
    if out.exists() and not mark.is_file() and any(out.iterdir()):
        raise SolutionsError(f"{out} exists and was not written by `quantedu exercises --solutions`; "
                             f"not touching it. Pass --out with a new folder.")
    sources = course_notebooks(notebooks)
    if not sources:
        raise SolutionsError(f"no course notebooks (NN_*.ipynb) in {notebooks}")
    names = [p.name for p in sources] + [GUARD]
    foreign = [n for n in names if (out / n).exists() and n not in ours]
    if foreign:
        raise SolutionsError(f"{out} holds {', '.join(foreign)}, which `quantedu exercises --solutions` did not "
                             f"write; not overwriting. Pass --out with a new folder.")
    out.mkdir(parents=True, exist_ok=True)
    mark.write_text(json.dumps(sorted(ours | set(names)), indent=1))
    written = []
    for src in sources:
        nb = nbformat.read(src, as_version=4)
        for index, ex_id, _ in exercise_cells(nb):
            cell = nb.cells[index]
            cell.source = REGISTRY[ex_id].cell(solution=True)
            cell.outputs, cell.execution_count = [], None
        nb.metadata.setdefault("quantedu", {})["solutions"] = True
        target = out / src.name
        nbformat.write(nb, target)
        written.append(target)
    (out / GUARD).write_text(GUARD_TEXT)
    return written


# --- running learners' cells -------------------------------------------------------------------------


def run_cells(cells: list[tuple[str, str]], timeout: float = 120.0) -> list[dict]:
    """Run ``(exercise id, cell source)`` pairs in child processes, each cell in a fresh namespace.

    One child runs the cells one after another (importing torch once); if it dies or hangs on a cell, that
    cell is reported and a new child takes the rest. Returns one result dict per cell, in order.
    """
    results: list[dict] = []
    pending = list(cells)
    env = {k: v for k, v in os.environ.items() if k != "QUANTEDU_EXERCISE_SOLUTIONS"}  # grade the learner
    env.update(QUANTEDU_QUIZ_TEXT="1", MPLBACKEND="Agg")
    while pending:
        with tempfile.TemporaryDirectory(prefix="quantedu-status-") as tmp:
            job, out = Path(tmp) / "cells.json", Path(tmp) / "results.jsonl"
            job.write_text(json.dumps({"cells": pending, "timeout": timeout}))
            try:
                subprocess.run([sys.executable, "-m", "quantedu.exercises._runner", str(job), str(out)],
                               cwd=tmp, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, timeout=timeout * len(pending) + 60)
                why = "the cell crashed the Python process"
            except subprocess.TimeoutExpired:
                why = f"timed out after {timeout:g} s (an endless loop?)"
            done = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
        results += done
        pending = pending[len(done):]
        if pending:
            results.append({"exercise": pending[0][0], "status": "failed", "message": why})
            pending = pending[1:]
    return results


def status(folder: Path, timeout: float = 120.0) -> list[dict]:
    """One row per (notebook, exercise cell) found under ``folder``: ``notebook, exercise, status, message``."""
    import nbformat

    folder = Path(folder)
    rows, cells = [], []
    for path in sorted(folder.rglob("*.ipynb")):
        inner = path.relative_to(folder).parts[:-1]
        if any(part.startswith(".") for part in inner) or any(
                (folder.joinpath(*inner[:k + 1]) / MARK).is_file() for k in range(len(inner))):
            continue  # checkpoints, backups, and solution folders this command wrote
        name = str(path.relative_to(folder).with_suffix(""))
        try:
            nb = nbformat.read(path, as_version=4)
        except Exception as exc:  # noqa: BLE001 - a broken file is a row, not the end of the report
            rows.append({"notebook": name, "exercise": "-", "status": "unreadable",
                         "message": f"{type(exc).__name__}: {exc}"})
            continue
        for _, ex, src in exercise_cells(nb):
            rows.append({"notebook": name, "exercise": ex})
            cells.append((ex, src))
    results = iter(run_cells(cells, timeout))  # one child process for all of them (unless one crashes)
    for row in rows:
        if "status" not in row:
            res = next(results)
            row.update(status=res["status"], message=res.get("message", ""))
    return rows


def format_status(rows: list[dict], width: int = 110) -> str:
    if not rows:
        return "no exercise cells found"
    nw = max(len("notebook"), *(len(r["notebook"]) for r in rows))
    ew = max(len("exercise"), *(len(r["exercise"]) for r in rows))
    lines = [f"{'notebook':<{nw}}  {'exercise':<{ew}}  result", f"{'-' * nw}  {'-' * ew}  {'-' * 6}"]
    for r in rows:
        result = r["status"] if r["status"] != "failed" else f"failed: {r['message']}"
        room = max(20, width - nw - ew - 4)
        lines.append(f"{r['notebook']:<{nw}}  {r['exercise']:<{ew}}  "
                     f"{result if len(result) <= room else result[:room - 3] + '...'}")
    counts = {s: sum(r["status"] == s for r in rows) for s in ("passed", "failed", "not attempted")}
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items()))
    return "\n".join(lines)


# --- the command ------------------------------------------------------------------------------------


def main(args) -> int:
    """``quantedu exercises`` (the options are declared in :mod:`quantedu.cli`)."""
    if args.solutions:
        try:
            written = write_solutions(Path(args.notebooks) if args.notebooks else default_notebooks(),
                                      Path(args.out) if args.out else None)
        except SolutionsError as exc:
            print(exc, file=sys.stderr)
            return 2
        for path in written:
            print(f"wrote {path}")
        return 0
    if args.status is not None:
        folder = Path(args.status)
        if not folder.is_dir():
            print(f"{folder} is not a folder", file=sys.stderr)
            return 2
        print(format_status(status(folder, args.timeout)))
        return 0
    for ex in sorted(REGISTRY.values(), key=lambda e: e.id):
        print(f"{ex.id:18s} {ex.title}")
    print("\n--solutions writes solution notebooks; --status DIR grades a folder of learners' notebooks.")
    return 0
