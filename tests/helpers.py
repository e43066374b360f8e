"""Small helpers shared by test modules (pytest puts this folder on sys.path)."""
import time

import psutil


def gone(pid: int, within: float = 10.0) -> bool:
    """True once ``pid`` has exited within ``within`` seconds (a zombie waiting for its reaper counts as gone)."""
    deadline = time.time() + within
    while time.time() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False


def missing(reason: str):
    """The one skip policy: a tool, package or model the test needs is missing. Under CI (``$CI`` set), where
    ``make setup`` installs everything, that is a failure; elsewhere the test skips and says why."""
    import os

    import pytest
    if os.environ.get("CI"):
        pytest.fail(f"CI installs everything the suite needs, yet: {reason}")
    pytest.skip(reason)


def require_module(name: str):
    """``import name``, or :func:`missing` (a failure under CI)."""
    import importlib
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        missing(f"{name} is not installed ({exc})")


def offline_gguf():
    """The offline course model's GGUF file, or :func:`missing` (a failure under CI)."""
    from quantedu.models import ModelError, offline_gguf_path
    try:
        return offline_gguf_path()
    except ModelError as exc:
        missing(str(exc).splitlines()[0])


def side_python(require, missing_error: type[Exception], unavailable, venv: str) -> str:
    """The python of a side environment (``require()``), or skip; on CI (``$CI`` set), where ``make setup``
    makes ``venv``, a missing one fails unless the platform has no build (``unavailable()`` says why)."""
    import os

    import pytest
    try:
        return require()
    except missing_error as exc:
        if os.environ.get("CI") and not unavailable():
            pytest.fail(f"CI runs `make setup`, which makes {venv}: {exc}")
        pytest.skip(str(exc).splitlines()[0])
