"""The lifecycle of a server subprocess that speaks the OpenAI HTTP API: start, readiness wait, guaranteed stop.

Every engine builds on :class:`Server`: :mod:`quantedu.engines.llama_cpp.server` (llama.cpp's C++
``llama-server`` and llama-cpp-python's Python server) and :mod:`quantedu.engines.vllm` (its own
interpreter, its KV-cache size, its refusals). :mod:`quantedu.engines.load` is the client that measures them.

Every server is bound to 127.0.0.1 only and is always stopped:

* :class:`Server` is a context manager; ``__exit__`` runs on errors and on ``KeyboardInterrupt``
  (a notebook cell interrupted mid-request), and an interrupt during the readiness wait kills the
  half-started process too.
* the server runs in its own session / process group (so a notebook interrupt, which signals the
  kernel's group, does not hit it) and :meth:`Server.stop` kills the whole group: SIGTERM, then SIGKILL.
* an ``atexit`` hook stops every server this Python process started (kernel restart / shutdown).
* on Linux the child also gets ``PR_SET_PDEATHSIG``: if the kernel itself is killed (SIGKILL, when
  atexit cannot run), the kernel sends the server a signal as it dies. (The signal fires when the
  *thread* that started the server ends, so start servers from the main thread, as notebook cells do.)

Logs go to a file (:attr:`Server.log_path`); errors quote its tail. A log the server made itself (the
default) is deleted when the server stops or fails to start, so nothing piles up in /tmp; its last lines
stay readable through :meth:`Server.log_tail`. A ``log_path`` you pass is yours and is kept.
"""
from __future__ import annotations

import atexit
import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from . import procs
from .procs import HOST, port_in_use



class ServerError(RuntimeError):
    """A server could not be started or stopped; the message says what to do."""


class PortInUseError(ServerError):
    pass


class MissingPackageError(ServerError):
    pass


# what a server's log says when its port is taken (uvicorn / vLLM; llama-server)
_BIND_FAILED = ("address already in use", "couldn't bind")


class ServerExitedError(ServerError):
    """The server process exited before it was ready (a refused model, a bad flag): its log says why."""


# ----------------------------------------------------------------------------------------- ports

def _check_port(port: int) -> None:
    if not 1 <= int(port) <= 65535:
        raise ServerError(f"port must be in 1..65535, got {port}")
    if port_in_use(port):
        raise PortInUseError(f"port {port} on {HOST} is already in use (another server, or one not yet "
                             f"stopped). Stop it, or leave port=None to pick a free port.")


# ---------------------------------------------------------------------------------------- server

_LIVE: set["Server"] = set()
_LIVE_LOCK = threading.Lock()


class Server:
    """A server subprocess with its command, port, log file and OpenAI base URL.

    Use :func:`quantedu.engines.llama_cpp.start_llama_server`, :func:`quantedu.engines.vllm.start_vllm`, or ``Server(cmd, port).start()``.
    """

    def __init__(self, cmd: list[str], port: int, name: str = "server", log_path=None,
                 health_path: str = "/v1/models", env: dict | None = None, death_signal=signal.SIGKILL):
        self.cmd, self.port, self.name = list(cmd), int(port), name
        self.health_path = health_path
        self.env = env
        self.death_signal = death_signal
        self._own_log = log_path is None  # made (at start) and deleted (at stop) by the server
        self.log_path: Path | None = None if log_path is None else Path(log_path)
        self._last_log = ""
        self.proc: subprocess.Popen | None = None
        self.startup_s: float | None = None
        self._stopped = False

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n_lines: int = 20) -> str:
        """The log's last lines (after stop, those kept from the deleted temporary log)."""
        if self.log_path is None:
            return "\n".join(self._last_log.splitlines()[-n_lines:])
        return procs.tail(self.log_path, n_lines)

    def _log_note(self) -> str:
        where = "its log, deleted when it stops" if self._own_log else f"log {self.log_path}"
        return f"Last lines of {where}:\n{self.log_tail()}"

    def _drop_log(self) -> None:
        if self._own_log and self.log_path is not None:
            self._last_log = self.log_tail(200)
            self.log_path.unlink(missing_ok=True)
            self.log_path = None

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.base_url + self.health_path, timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def start(self, timeout: float = 60.0) -> "Server":
        """Launch the process and wait until ``health_path`` answers 200, or raise with the log's tail."""
        if self.running:
            return self
        _check_port(self.port)
        self._stopped = False
        t0 = time.perf_counter()
        self.proc = None  # a stopped process of an earlier start is not ours to signal any more
        try:
            self.log_path = procs.new_log(self.name, self.port) if self._own_log else self.log_path
            log = open(self.log_path, "ab")
        except OSError as exc:
            self._drop_log()
            raise ServerError(f"cannot write the log of {self.name} ({exc}); pass another log_path") from exc
        try:
            with log:
                self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                             start_new_session=True, env=self.env,
                                             preexec_fn=procs.set_pdeathsig(self.death_signal))
        except BaseException as exc:  # nothing (left) running: leave no log behind
            self.stop() if self.proc is not None else self._drop_log()
            if isinstance(exc, OSError):
                raise ServerError(f"could not run {self.cmd[0]!r} for {self.name}: {exc}") from exc
            raise
        with _LIVE_LOCK:
            _LIVE.add(self)
        try:
            while not self._ready():
                if self.proc.poll() is not None:
                    tail = self.log_tail()
                    bind_failed = any(m in tail.lower() for m in _BIND_FAILED)
                    kind = PortInUseError if bind_failed else ServerExitedError
                    raise kind(f"{self.name} exited with code {self.proc.returncode} before it was ready. "
                               f"{self._log_note()}")
                if time.perf_counter() - t0 > timeout:
                    raise ServerError(f"{self.name} was not ready after {timeout:.0f} s (raise timeout=?). "
                                      f"{self._log_note()}")
                time.sleep(0.1)
            time.sleep(0.2)
            if self.proc.poll() is not None:  # what answered was another process on the same port
                raise PortInUseError(f"port {self.port} was taken by another process while {self.name} started; "
                                     f"leave port=None to pick a free port. {self._log_note()}")
        except BaseException:  # errors, timeouts and KeyboardInterrupt during the wait: no orphan
            self.stop()
            raise
        self.startup_s = time.perf_counter() - t0
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server's whole process group: SIGTERM, then SIGKILL after ``timeout`` seconds."""
        proc = self.proc
        if proc is not None and not self._stopped:
            self._stopped = True
            pgid = proc.pid  # start_new_session=True: the server leads its own process group
            for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
                if proc.poll() is not None:
                    break
                try:
                    os.killpg(pgid, sig)
                except (ProcessLookupError, PermissionError):
                    break
                try:
                    proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
            try:  # workers of the group may outlive the leader (vLLM): finish the group off
                os.killpg(pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        with _LIVE_LOCK:
            _LIVE.discard(self)
        self._drop_log()

    def __enter__(self) -> "Server":
        return self.start() if not self.running else self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<{self.name} {state} at {self.base_url} pid={self.pid} log={self.log_path}>"


def stop_all() -> None:
    """Stop every server this process started (registered with ``atexit``)."""
    with _LIVE_LOCK:
        servers = list(_LIVE)
    for s in servers:
        s.stop(timeout=3.0)


atexit.register(stop_all)


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def running_servers() -> list["Server"]:
    """The servers this process started and has not stopped yet."""
    with _LIVE_LOCK:
        return [s for s in _LIVE if s.running]


def models(server_or_url) -> list[str]:
    """The model ids the server reports at ``/v1/models``."""
    url = server_or_url.base_url if isinstance(server_or_url, Server) else str(server_or_url).rstrip("/")
    with urllib.request.urlopen(url + "/v1/models", timeout=10) as r:
        return [m["id"] for m in json.load(r)["data"]]


__all__ = ["Server", "ServerError", "PortInUseError", "MissingPackageError", "ServerExitedError", "stop_all", "running_servers", "models",
           "cuda_available"]
