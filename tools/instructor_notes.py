"""Write ``notebooks/INSTRUCTOR.md``: what a workshop instructor needs per notebook, all of it measured or read
from the course itself (nothing typed in here).

    python tools/instructor_notes.py            # (re)write notebooks/INSTRUCTOR.md
    python tools/instructor_notes.py --time 01  # also time notebook 01 twice (empty cache, then warm) first
    python tools/instructor_notes.py --warm DIR 01  # time notebook 01 once on the cache DIR its build filled

Per notebook: its run time on this machine from an empty cache (recorded by ``tools/build_notebooks.py
--execute`` in the notebook's metadata) and, where ``--time`` measured it, a second run on the warm cache
(``notebooks/timings.json``); what it needs installed before the room goes offline (the set-up cell's extras);
its quiz (keys: ``quantedu quiz --keys TOPIC``); its exercises, and where learners get stuck: each typical
wrong implementation of ``tests/test_exercises.py`` run through the real checker, with the diagnosis the
learner will read.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tools"), str(ROOT / "tests")]

from build_notebooks import EXTRA_MODULES, EXTRAS, OUT  # noqa: E402  (one table of what each notebook needs)

TIMINGS = OUT / "timings.json"
EXTRA_WHY = {"course": "quiz and exercise widgets (ipywidgets)", "online": "datasets (optional: the course's text is "
             "in the package)", "llama": "llama.cpp's Python bindings, and `make setup`'s llama.cpp tools",
             "reference": "llm-compressor (the reference GPTQ/AWQ)"}


def notebooks() -> list[Path]:
    return sorted(p for p in OUT.glob("[0-9][0-9]_*.ipynb"))


def title(nb) -> str:
    for cell in nb.cells:
        m = re.search(r"^#\s+(.+)$", cell.source, re.M) if cell.cell_type == "markdown" else None
        if m:
            return re.sub(r"^\d\d\s*[·:.-]\s*", "", m.group(1).strip())  # "03 · GPTQ" -> "GPTQ"
    return "(untitled)"


def _execute(path: Path, cache: str) -> float:
    """Seconds to execute ``path`` (not written back) with ``QUANTEDU_CACHE=cache``."""
    from nbclient import NotebookClient

    os.environ["QUANTEDU_CACHE"] = cache
    nb = nbformat.read(path, as_version=4)
    t0 = time.perf_counter()
    NotebookClient(nb, timeout=1800, kernel_name="python3", resources={"metadata": {"path": str(OUT)}}).execute()
    return round(time.perf_counter() - t0, 1)


def time_notebook(path: Path, warm_cache: str | None = None) -> dict:
    """Execute ``path`` twice in one new cache folder (the first run fills it, the second reads it); or, with
    ``warm_cache`` (the folder its ``build_notebooks.py --execute`` run filled), once, beside the empty-cache
    time that build recorded in the notebook's metadata."""
    if warm_cache:
        cold = nbformat.read(path, as_version=4).metadata.get("quantedu", {}).get("executed_seconds")
        seconds = [cold, _execute(path, warm_cache)]
    else:
        with tempfile.TemporaryDirectory(prefix="quantedu-timing-") as cache:
            seconds = [_execute(path, cache), _execute(path, cache)]
    return {"empty_cache_s": seconds[0], "warm_cache_s": seconds[1], "cpus": os.cpu_count(),
            "machine": platform.machine(), "measured": time.strftime("%Y-%m-%d")}


def mistakes() -> dict[str, list[tuple[str, str]]]:
    """``{exercise id: [(mistake, the checker's diagnosis)]}`` from the test suite's wrong implementations."""
    import test_exercises as t

    out: dict[str, list[tuple[str, str]]] = {}
    for ex_id, fns, fragment in t.WRONG:
        res = t.run(ex_id, *fns)
        out.setdefault(ex_id, []).append((fragment, res.message if res.status == "failed" else f"({res.status})"))
    return out


def section(path: Path, timings: dict, wrong: dict) -> str:
    from quantedu.exercises import REGISTRY

    nb = nbformat.read(path, as_version=4)
    stem, num = path.stem, path.stem[:2]
    meta = nb.metadata.get("quantedu", {})
    lines = [f"## {stem}: {title(nb)}", ""]
    cold = meta.get("executed_seconds")
    measured = timings.get(stem)
    lines.append(f"- Run time, {os.cpu_count()}-core CPU, FAST settings: "
                 + (f"{cold:.0f} s from an empty cache (build)" if cold else "not recorded")
                 + (f"; timed again: {measured['empty_cache_s']:.0f} s empty, {measured['warm_cache_s']:.0f} s warm "
                    f"({measured['measured']})" if measured else "; warm cache: not timed yet (`--time " + num + "`)"))
    extras = EXTRAS.get(num, "course,online").split(",")
    lines.append("- Install before the room goes offline: `pip install 'quantedu[" + ",".join(extras) + "]'` ("
                 + "; ".join(EXTRA_WHY.get(e, EXTRA_MODULES.get(e, e)) for e in extras) + ")")
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    for topic in dict.fromkeys(re.findall(r"Quiz\.load\(\s*[\"'](\w+)[\"']", code)):
        lines.append(f"- Quiz `{topic}`: keys with `quantedu quiz --keys {topic}`")
    ids = [i for i in REGISTRY if i.startswith(num + ".") and f"# Exercise {i}" in code]
    for ex_id in ids:
        ex = REGISTRY[ex_id]
        lines.append(f"- Exercise `{ex_id}` ({ex.title}), {len(ex.hints)} hints. Where learners get stuck:")
        for fragment, message in wrong.get(ex_id, []):
            lines.append(f"    - *{fragment}*: the checker says \u201c{message.strip()}\u201d")
    return "\n".join(lines)


def write(timings: dict, out: Path = OUT / "INSTRUCTOR.md") -> Path:
    wrong = mistakes()
    head = ("# Instructor notes\n\nGenerated by `python tools/instructor_notes.py` from the executed notebooks, the "
            "exercise registry and the test suite's typical mistakes; do not edit by hand.\n\n"
            "Before the workshop: `make setup` on each laptop while the network works (it installs everything, "
            "builds llama.cpp's tools and the offline model; nothing comes from a model hub), then `make lab` "
            "offline. Collect the learners' results with `quantedu exercises --status DIR` (DIR: a folder of "
            "their notebooks); solution notebooks with `quantedu exercises --solutions`.\n")
    text = head + "\n" + "\n\n".join(section(p, timings, wrong) for p in notebooks()) + "\n"
    _replace(out, text)
    return out


def _replace(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, replacing only a file this tool wrote (its first line says so)."""
    from quantedu.artifacts import atomic_path

    ours = not path.exists() or path.read_text().startswith(("# Instructor notes", "{"))
    if not ours:
        raise SystemExit(f"{path} was not written by this tool: move it away first")
    with atomic_path(path, overwrite=True) as tmp:
        Path(tmp).write_text(text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--time", nargs="*", default=[], metavar="NN", help="time these notebooks first (slow)")
    ap.add_argument("--warm", nargs="+", metavar=("DIR", "NN"), help="time these notebooks once on the cache DIR "
                    "their build filled (the empty-cache time is the build's)")
    args = ap.parse_args()
    timings = json.loads(TIMINGS.read_text()) if TIMINGS.exists() else {}
    warm, nums = (args.warm[0], args.warm[1:]) if args.warm else (None, args.time)
    if warm and not Path(warm).is_dir():
        raise SystemExit(f"--warm: no cache folder {warm}")
    for num in nums:
        path = next((p for p in notebooks() if p.stem.startswith(num)), None)
        if path is None:
            raise SystemExit(f"no notebook {num}_*.ipynb in {OUT}")
        timings[path.stem] = time_notebook(path, warm)
        print(path.stem, timings[path.stem], flush=True)
        _replace(TIMINGS, json.dumps(timings, indent=1, sort_keys=True) + "\n")
    print(write(timings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
