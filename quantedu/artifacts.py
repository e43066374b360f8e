"""The course's artifact cache: converted models, calibration sets and quantized results.

Entries are keyed by model + method + config so a later notebook reuses what an earlier one built,
while every notebook can still build what it needs on its own (Colab users open any notebook
directly). Every write is atomic: data goes to a temporary sibling first and is renamed into place,
so an interrupted kernel never leaves a half-written entry. A directory entry is complete only when
its ``.complete`` marker exists; anything else is treated as corrupt and rebuilt.

The cache lives in the user cache dir (``platformdirs``), or wherever ``QUANTEDU_CACHE`` points.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import platformdirs

ENV_VAR = "QUANTEDU_CACHE"
_MARKER = ".complete"


def cache_dir() -> Path:
    """Root of the cache (created on first use)."""
    root = os.environ.get(ENV_VAR) or platformdirs.user_cache_dir("quantedu")
    path = Path(root).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_key(*parts: Any) -> str:
    """A readable, filesystem-safe key: the leading parts plus a short hash of everything."""
    text = json.dumps(parts, sort_keys=True, default=str)
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    head = "-".join(str(p) for p in parts[:2] if isinstance(p, (str, int)))
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in head)[:60]
    return f"{safe}-{digest}" if safe else digest


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path to write a file (or directory) into; rename it to ``path`` on success.

    On any error, KeyboardInterrupt included, the temporary is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def entry_dir(kind: str, key: str) -> Path:
    return cache_dir() / kind / key


def is_complete(path: Path) -> bool:
    return (path / _MARKER).is_file()


def cached_dir(kind: str, key: str, build: Callable[[Path], None], meta: dict | None = None) -> Path:
    """Return the cache directory ``kind/key``, building it with ``build(tmp_dir)`` if missing/corrupt.

    ``build`` writes into the temporary directory it is given; the directory becomes visible only
    once ``build`` returns and the completion marker is written.
    """
    path = entry_dir(kind, key)
    if is_complete(path):
        return path
    if path.exists():
        shutil.rmtree(path)  # an entry without its marker was interrupted: rebuild it
    with atomic_path(path) as tmp:
        tmp.mkdir(parents=True)
        build(tmp)
        (tmp / _MARKER).write_text(json.dumps(meta or {}, default=str))
    return path


def cached_json(kind: str, key: str, compute: Callable[[], Any]) -> Any:
    """JSON-serialisable result of ``compute()``, cached under ``kind/key.json``.

    An unreadable entry (truncated, hand-edited) is recomputed rather than trusted.
    """
    path = cache_dir() / kind / f"{key}.json"
    if path.is_file():
        try:
            return json.loads(path.read_text())["value"]
        except (ValueError, KeyError):
            path.unlink()
    value = compute()
    atomic_write_bytes(path, json.dumps({"value": value}, default=float).encode())
    return value


def clear(kind: str | None = None) -> None:
    """Delete the whole cache, or one kind of entry."""
    target = cache_dir() / kind if kind else cache_dir()
    shutil.rmtree(target, ignore_errors=True)
