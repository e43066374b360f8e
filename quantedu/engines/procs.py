"""Process and socket helpers behind :mod:`quantedu.engines.server`: port checks, the parent-death signal,
and server log files that do not outlive their server.

Port checks bind the way the servers do. uvicorn (llama-cpp-python's server) and vLLM bind with
``SO_REUSEADDR``, so a port whose last connections still sit in ``TIME_WAIT`` (a server stopped a
moment ago) is free for them; a check that binds without it would call that port "in use" for a
minute. A port with a live listener is refused either way.
"""
from __future__ import annotations

import os
import re
import socket
import sys
import tempfile
from pathlib import Path

from ..runtime import pid_alive

HOST = "127.0.0.1"


def _probe(host: str) -> socket.socket:
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    if sys.platform == "win32":  # there SO_REUSEADDR would let us bind over a live listener
        s.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_EXCLUSIVEADDRUSE", socket.SO_REUSEADDR), 1)
    else:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    return s


def port_in_use(port: int, host: str = HOST) -> bool:
    """Whether something listens on (or holds) ``host:port``; a port in ``TIME_WAIT`` counts as free."""
    with _probe(host) as s:
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def free_port(host: str = HOST) -> int:
    """A port the OS reports free right now (the kernel picks it: bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def set_pdeathsig(sig: int):
    """preexec_fn: ask Linux to send ``sig`` to the child when its parent dies."""
    def preexec():
        try:
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, sig, 0, 0, 0)  # PR_SET_PDEATHSIG
        except Exception:  # noqa: BLE001 - not Linux: atexit + stop() still apply
            pass
    return preexec if sys.platform.startswith("linux") else None


_LOG = re.compile(r"^quantedu-.*-p(?P<pid>\d+)-[^-]+\.log$")


def new_log(name: str, port: int) -> Path:
    """An empty temporary log file for a server (the server deletes it when it stops).

    Its name carries this process's pid; logs of processes that died without stopping their servers
    (a kernel killed with SIGKILL) are removed here, so they do not pile up either.
    """
    folder = Path(tempfile.gettempdir())
    for old in folder.glob("quantedu-*-p*-*.log"):
        match = _LOG.match(old.name)
        if match and int(match["pid"]) != os.getpid() and not pid_alive(int(match["pid"])):
            old.unlink(missing_ok=True)
    safe = "".join(c if c.isalnum() or c in "_." else "_" for c in name)[:60]
    fd, path = tempfile.mkstemp(prefix=f"quantedu-{safe}-{port}-p{os.getpid()}-", suffix=".log", dir=folder)
    os.close(fd)
    return Path(path)


def tail(path: Path | None, n_lines: int = 20) -> str:
    """The last ``n_lines`` of a text file ("" when it cannot be read)."""
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except (OSError, TypeError):
        return ""
    return "\n".join(lines[-n_lines:])


def venv_python(venv: str, env_var: str, roots, missing: type[Exception], install: str) -> str | None:
    """The python of the side environment ``venv`` (``.venv-vllm``, ``.venv-seed``): ``$env_var`` if set (it
    must be an executable, else ``missing`` says what to do), else ``<root>/<venv>/bin/python`` for the first of
    ``roots`` that has one, else None."""
    chosen = os.environ.get(env_var)
    if chosen:
        if not (Path(chosen).is_file() and os.access(chosen, os.X_OK)):
            raise missing(f"{env_var}={chosen} is not an executable Python interpreter. Point it at the python of "
                          f"that environment, or unset it and run:\n    {install}")
        return chosen
    for folder in roots:
        candidate = Path(folder) / venv / "bin" / "python"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def venv_unavailable(venv: str, roots) -> str | None:
    """Why the make target of ``venv`` installed nothing on this platform (its ``UNAVAILABLE`` note), or None."""
    for folder in roots:
        note = Path(folder) / venv / "UNAVAILABLE"
        if note.is_file():
            return note.read_text().strip()
    return None
