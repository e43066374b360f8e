"""Child process of ``quantedu exercises --status``: run learners' exercise cells, write one JSON line each.

    python -m quantedu.exercises._runner JOB.json RESULTS.jsonl

``JOB.json`` holds ``{"cells": [[exercise id, source], ...], "timeout": seconds}``. Every cell runs in a
fresh namespace (seeded with the exercise's stand-ins for notebook names, e.g. 07's ``table``), with its
output captured and a SIGALRM timeout; its result is appended (and flushed) as soon as it is known, so the
parent keeps what finished if a later cell kills the process.
"""
from __future__ import annotations

import contextlib
import io
import json
import linecache
import math
import os
import signal
import sys


class CellTimeout(BaseException):
    """Raised by the alarm inside a learner's cell (BaseException: an `except Exception` cannot eat it)."""


def _alarm(signum, frame):
    raise CellTimeout


def run_cell(ex_id: str, source: str, timeout: float) -> dict:
    from quantedu.exercises import REGISTRY, RESULTS

    RESULTS.pop(ex_id, None)
    ex = REGISTRY[ex_id]
    namespace = {"__name__": "__exercise__", **(ex.example_context() if ex.example_context else {})}
    filename = f"<exercise {ex_id}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)  # inspect needs it
    captured = io.StringIO()
    if hasattr(signal, "SIGALRM"):
        signal.signal(signal.SIGALRM, _alarm)
        signal.alarm(max(1, math.ceil(timeout)))
    try:
        with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
            exec(compile(source, filename, "exec"), namespace)
    except CellTimeout:
        return {"exercise": ex_id, "status": "failed", "message": f"timed out after {timeout:g} s (an endless loop?)"}
    except BaseException as exc:  # noqa: BLE001 - SystemExit and KeyboardInterrupt from learner code too
        return {"exercise": ex_id, "status": "failed", "message": f"the cell raised {type(exc).__name__}: {exc}"}
    finally:
        if hasattr(signal, "SIGALRM"):
            signal.alarm(0)
    result = RESULTS.get(ex_id)
    if result is None:
        return {"exercise": ex_id, "status": "failed", "message": f'the cell never called check("{ex_id}", ...)'}
    return result.as_dict()


def main(argv: list[str]) -> int:
    job, out = argv
    os.environ["QUANTEDU_QUIZ_TEXT"] = "1"
    spec = json.loads(open(job).read())
    from quantedu.exercises import inputs

    inputs.warm()  # parse the course model's GGUF before any cell's clock starts
    with open(out, "a") as sink:
        for ex_id, source in spec["cells"]:
            record = run_cell(ex_id, source, float(spec["timeout"]))
            sink.write(json.dumps(record) + "\n")
            sink.flush()
            os.fsync(sink.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
