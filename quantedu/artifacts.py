"""The course's artifact cache, and the one way the package writes a file or folder anywhere.

Cache entries (converted models, calibration sets, quantized results) are keyed by model + method +
config, so a later notebook reuses what an earlier one built while every notebook can still build
what it needs on its own (Colab users open any notebook directly). The cache lives in the user cache
dir (``platformdirs``), or wherever ``QUANTEDU_CACHE`` points.

Three rules hold for every write, in the cache or anywhere a learner points an export:

* **Atomic.** Data goes to a temporary sibling first and is renamed into place, so an interrupted
  kernel never leaves a half-written target. A temporary left by a killed process (its pid is gone)
  is removed the next time anything is written beside it.
* **Never delete what the package did not create.** A target that already exists is replaced only
  when it is the package's own: a folder carrying :data:`OWNER_MARKER` whose contents are exactly the
  files the package wrote there, a file the package wrote (recorded in the cache's ledger, same size
  and modification time), or anything inside the cache. Anything else is refused with
  :class:`TargetExistsError` saying what to do; ``overwrite=True`` replaces a *file* on request, never
  a foreign folder.
* **One builder per entry.** Two kernels building the same cache entry (two notebooks opened together)
  take a lock; the second waits, then reuses what the first built.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import platformdirs

from .runtime import pid_alive

ENV_VAR = "QUANTEDU_CACHE"
OWNER_MARKER = ".quantedu-owned"  # in every folder the package writes: the list of files it put there
_MARKER = ".complete"  # a cache entry is complete only when this exists
KIND_MARKER = ".quantedu-cache"  # in every folder of cache entries (``cache/<kind>/``)
_LEDGER = "written-files.json"  # files the package wrote outside folders it owns: path -> [size, mtime_ns]
_TMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp$")


class TargetExistsError(FileExistsError):
    """A write would replace something the package did not create; the message says what to do."""


class CacheError(OSError):
    """The cache folder cannot be created or written; the message says how to choose another."""


def cache_dir() -> Path:
    """Root of the cache (created on first use)."""
    root = os.environ.get(ENV_VAR) or platformdirs.user_cache_dir("quantedu")
    path = Path(root).expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CacheError(f"cannot create the quantedu cache at {path} ({exc.strerror or exc}); point "
                         f"{ENV_VAR} at a writable folder, e.g. export {ENV_VAR}=$HOME/quantedu-cache") from exc
    return path


def cache_key(*parts: Any) -> str:
    """A readable, filesystem-safe key: the leading parts plus a short hash of everything."""
    text = json.dumps(parts, sort_keys=True, default=str)
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    head = "-".join(str(p) for p in parts[:2] if isinstance(p, (str, int)))
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in head)[:60]
    return f"{safe}-{digest}" if safe else digest


def code_fingerprint(*objects) -> str:
    """A short hash of the source code of ``objects`` (modules, functions, classes) and the package
    version: put it in a cache key so a result computed by older code is never served as current."""
    import inspect
    from importlib.metadata import PackageNotFoundError, version
    h = hashlib.sha256()
    try:
        h.update(version("quantedu").encode())
    except PackageNotFoundError:
        pass
    for obj in objects:
        try:
            h.update(inspect.getsource(obj).encode())
        except (OSError, TypeError):
            h.update(repr(obj).encode())
    return h.hexdigest()[:12]


# ---------------------------------------------------------------------------------------------------
# Ownership: what the package may replace
# ---------------------------------------------------------------------------------------------------
def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def _in_cache(path: Path) -> bool:
    """Whether ``path`` lies in one of the cache's entry folders (``cache/<kind>/...``, marked)."""
    root = Path(os.environ.get(ENV_VAR) or platformdirs.user_cache_dir("quantedu")).expanduser().resolve()
    try:
        rel = path.resolve().relative_to(root)
    except ValueError:
        return False
    return len(rel.parts) >= 2 and (root / rel.parts[0] / KIND_MARKER).is_file()


def _files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir()}


def mark_owned(folder: Path) -> None:
    """Record every file now in ``folder`` as written by the package (call just before publishing)."""
    files = sorted(_files_under(folder) - {OWNER_MARKER})
    (folder / OWNER_MARKER).write_text(json.dumps({"written_by": "quantedu", "files": files}, indent=1))


def owned_folder(folder: Path) -> bool:
    """Whether ``folder`` holds only what the package wrote there (its marker lists every file)."""
    try:
        listed = set(json.loads((folder / OWNER_MARKER).read_text())["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return _files_under(folder) <= listed | {OWNER_MARKER}


def _ledger_path() -> Path:
    return cache_dir() / _LEDGER


def _stat_key(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _read_ledger() -> dict:
    try:
        return json.loads(_ledger_path().read_text())
    except (OSError, ValueError):
        return {}


def _record_file(path: Path) -> None:
    """Remember that the package wrote ``path`` (outside the cache), so it may replace it later."""
    try:
        with file_lock(_ledger_path().with_suffix(".lock")):
            ledger = _read_ledger()
            ledger = {p: v for p, v in ledger.items() if Path(p).is_file()}  # forget files that are gone
            ledger[str(path.resolve())] = _stat_key(path)
            _replace_bytes(_ledger_path(), json.dumps(ledger, indent=0).encode())
    except OSError:
        pass  # no writable cache: the file is written, it just cannot be replaced later without overwrite=True


def owned_file(path: Path) -> bool:
    """Whether the package wrote ``path`` and nobody changed it since."""
    if _in_cache(path):
        return True
    try:
        return _read_ledger().get(str(path.resolve())) == _stat_key(path)
    except OSError:
        return False


def check_target(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Refuse, before any work is done, a target the package may not replace. Returns it resolved."""
    path = Path(path).expanduser().resolve()
    if path == Path(path.anchor) or path == Path.home().resolve() or path == Path.cwd().resolve():
        raise TargetExistsError(f"{path} is a folder you work in, not a place to write an export: "
                                "give a new path inside it, e.g. 'exports/my-model'")
    if not os.path.lexists(path):
        return path
    if path.is_dir() and not path.is_symlink():
        if _in_cache(path) or owned_folder(path):
            return path
        what = ", ".join(sorted(p.name for p in path.iterdir())[:5]) or "nothing, but it is not the package's"
        raise TargetExistsError(f"{path} is an existing folder that quantedu did not write (it holds: {what}). "
                                "Nothing was changed. Choose a new path, or move that folder away yourself; "
                                "quantedu never deletes a folder it did not create, even with overwrite=True.")
    if overwrite or owned_file(path):
        return path
    raise TargetExistsError(f"{path} already exists and quantedu did not write it; nothing was changed. "
                            "Choose another name, or pass overwrite=True to replace this file.")


# ---------------------------------------------------------------------------------------------------
# Atomic writes
# ---------------------------------------------------------------------------------------------------
def remove_stale_temporaries(folder: Path, name: str | None = None) -> list[Path]:
    """Delete temporaries this package left in ``folder`` when its process was killed (pid gone)."""
    removed = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for p in entries:
        m = _TMP.match(p.name)
        if not m or (name is not None and m["name"] != name) or (int(m["pid"]) == os.getpid() or pid_alive(int(m["pid"]))):
            continue
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def _temporary(path: Path) -> Path:
    return path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"


def _replace_bytes(path: Path, data: bytes) -> None:
    tmp = _temporary(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes, overwrite: bool = False) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder, then rename."""
    with atomic_path(path, overwrite=overwrite) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


@contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = False):
    """Yield a temporary path to write a file (or a folder) into; rename it to ``path`` on success.

    The target is checked before and after the work (:func:`check_target`): only the package's own
    file or folder is replaced. A folder written here gets :data:`OWNER_MARKER`, a file outside the
    cache is recorded in the ledger, so the next write to the same place may replace it. On any error,
    KeyboardInterrupt included, the temporary is removed and ``path`` is untouched.
    """
    path = check_target(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent, path.name)
    tmp = _temporary(path)
    try:
        yield tmp
        if not os.path.lexists(tmp):
            raise FileNotFoundError(f"nothing was written to the temporary {tmp} for {path}")
        check_target(path, overwrite)  # unchanged while we worked?
        if tmp.is_dir():
            if not (tmp / OWNER_MARKER).exists():
                mark_owned(tmp)
            if path.is_dir() and not path.is_symlink():
                # Ours (checked): move it aside, put the new one in place, then delete the old one.
                old = _temporary(path)
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                if os.path.lexists(path):
                    path.unlink()  # a file we may replace (checked) where a folder now goes
                os.replace(tmp, path)
        else:
            os.replace(tmp, path)
            if not _in_cache(path):
                _record_file(path)
    finally:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        elif os.path.lexists(tmp):
            tmp.unlink()


# ---------------------------------------------------------------------------------------------------
# Cache entries
# ---------------------------------------------------------------------------------------------------
@contextmanager
def file_lock(path: Path):
    """An exclusive advisory lock on ``path`` (waits for another process that holds it)."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock; concurrent first builds there are not protected
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _check_name(part: str, what: str) -> str:
    if not isinstance(part, str) or not part or part in (".", "..") or "/" in part or "\\" in part or "\0" in part:
        raise ValueError(f"{what} must be a plain name inside the cache (no '/', '..' or absolute path), got {part!r}")
    return part


def kind_dir(kind: str) -> Path:
    """The folder of one kind of cache entry (created and marked as the cache's on first use)."""
    folder = cache_dir() / _check_name(kind, "kind")
    folder.mkdir(exist_ok=True)
    if not (folder / KIND_MARKER).exists():
        (folder / KIND_MARKER).write_text("quantedu cache entries: safe to delete with quantedu.artifacts.clear()\n")
    return folder


def entry_dir(kind: str, key: str) -> Path:
    return kind_dir(kind) / _check_name(key, "key")


def is_complete(path: Path) -> bool:
    return (path / _MARKER).is_file()


def cached_dir(kind: str, key: str, build: Callable[[Path], None], meta: dict | None = None) -> Path:
    """Return the cache directory ``kind/key``, building it with ``build(tmp_dir)`` if missing/corrupt.

    ``build`` writes into the temporary directory it is given; the directory becomes visible only
    once ``build`` returns and the completion marker is written. Concurrent callers wait for the
    first one's build and reuse it.
    """
    path = entry_dir(kind, key)
    if is_complete(path):
        return path
    with file_lock(path.parent / f".{key}.lock"):
        if is_complete(path):  # another process built it while we waited
            return path
        with atomic_path(path) as tmp:
            tmp.mkdir(parents=True)
            build(tmp)
            (tmp / _MARKER).write_text(json.dumps(meta or {}, default=str))
            mark_owned(tmp)
    return path


def cached_json(kind: str, key: str, compute: Callable[[], Any]) -> Any:
    """JSON-serialisable result of ``compute()``, cached under ``kind/key.json``.

    An unreadable entry (truncated, hand-edited) is recomputed rather than trusted.
    """
    path = kind_dir(kind) / f"{_check_name(key, 'key')}.json"

    def read():
        try:
            return True, json.loads(path.read_text())["value"]
        except (OSError, ValueError, KeyError, TypeError):
            return False, None

    ok, value = read()
    if ok:
        return value
    with file_lock(path.parent / f".{key}.lock"):
        ok, value = read()
        if ok:
            return value
        value = compute()
        atomic_write_bytes(path, json.dumps({"value": value}, default=float).encode())
    return value


def clear(kind: str | None = None) -> list[Path]:
    """Delete the whole cache, or one kind of entry; returns what was removed.

    Only the cache's own folders are touched: ``kind`` is a plain name inside the cache root, never a
    path, and clearing everything removes the kinds the package made, not whatever else sits in a
    folder that ``QUANTEDU_CACHE`` points at.
    """
    root = cache_dir()
    if kind is not None:
        targets = [root / _check_name(kind, "kind")]
        if targets[0].exists() and not (targets[0] / KIND_MARKER).is_file():
            raise ValueError(f"{targets[0]} is not a folder of cache entries (no {KIND_MARKER}); not deleting it")
    else:
        targets = [p for p in root.iterdir() if p.is_dir() and not p.is_symlink() and (p / KIND_MARKER).is_file()]
        targets += [root / _LEDGER] if (root / _LEDGER).exists() else []
    removed = []
    for t in targets:
        if not _inside(t, root) or t.resolve() == root:
            raise ValueError(f"refusing to delete {t}: outside the cache root {root}")
        if t.is_dir() and not t.is_symlink():
            shutil.rmtree(t, ignore_errors=True)
        elif t.exists():
            t.unlink()
        else:
            continue
        removed.append(t)
    return removed

