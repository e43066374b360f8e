"""One shape for every benchmark result: rows timed the same way, written the same way, ratios printed.

A row is ``{"method", "group", "wall_s", "cpu_s", "ppl", "note"}``; ``wall_s`` and ``cpu_s`` come from
:func:`quantedu.runtime.timed` (wall clock and this process's CPU time: on a shared machine the wall clock mostly
measures the other jobs, the CPU time does not). A results file is ``{"meta": {...}, "rows": [...]}``
(:func:`write`), ``meta`` saying what was run (calibration, evaluation, threads, torch, date).
:func:`print_table` prints the rows with their time ratio to the reference tool of the same run.
"""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"

from quantedu.runtime import timed  # noqa: E402 - re-exported: every benchmark times its rows with it


def meta(**settings) -> dict:
    return {**settings, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "machine": platform.processor() or platform.machine(), "date": time.strftime("%Y-%m-%d %H:%M")}


def row(method: str, group, wall_s=None, cpu_s=None, ppl=None, note: str = "") -> dict:
    return {"method": method, "group": group, "wall_s": wall_s, "cpu_s": cpu_s, "ppl": ppl, "note": note}


def write(path, meta: dict, rows: list[dict]) -> Path:
    """Write (atomically, replacing an earlier results file of a benchmark) ``{"meta", "rows"}``."""
    from quantedu.artifacts import atomic_write_bytes
    return atomic_write_bytes(path, json.dumps({"meta": meta, "rows": rows}, indent=1).encode(), overwrite=True)


def print_table(rows: list[dict], reference: str) -> None:
    """Markdown table; ``x ref`` columns are wall/CPU time over ``reference``'s at the same group."""
    ref = {r["group"]: r for r in rows if r["method"] == reference and r.get("wall_s")}
    fmt = lambda v, f: "—" if v is None else format(v, f)  # noqa: E731
    print(f"\n| method | group | wall s | CPU s | wall x {reference} | CPU x {reference} | ppl | note |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        base = ref.get(r["group"])
        rw = r["wall_s"] / base["wall_s"] if base and r.get("wall_s") is not None else None
        rc = r["cpu_s"] / base["cpu_s"] if base and r.get("cpu_s") is not None and base.get("cpu_s") else None
        print(f"| {r['method']} | {r['group']} | {fmt(r['wall_s'], '.1f')} | {fmt(r['cpu_s'], '.1f')} | "
              f"{fmt(rw, '.2f')} | {fmt(rc, '.2f')} | {fmt(r['ppl'], '.3f')} | {r.get('note', '')} |")
