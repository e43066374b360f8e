"""How code runs on this machine: torch's CPU thread count for a block of code, a wall/CPU timer, and
whether a process is alive (the cache and the servers both clean up after dead processes).

Below the algorithms (GPTQ sets one thread for its column loop) and the measuring code alike, so neither
depends on the other for them.
"""
from __future__ import annotations

import os
import time
from contextlib import contextmanager

import torch


@contextmanager
def torch_threads(n: int | None):
    """Run a block with ``n`` torch CPU threads (None: unchanged), restoring the setting afterwards."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def timed(fn):
    """``(fn(), wall seconds, CPU seconds)``: on a shared machine the wall clock mostly measures the other
    jobs, this process's CPU time does not."""
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (ours or another user's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: someone else's live process
        return True
    return True


__all__ = ["torch_threads", "timed", "pid_alive"]
