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


def side_python(require, missing: type[Exception], unavailable, venv: str) -> str:
    """The python of a side environment (``require()``), or skip; on CI (``$CI`` set), where ``make setup``
    makes ``venv``, a missing one fails unless the platform has no build (``unavailable()`` says why)."""
    import os

    import pytest
    try:
        return require()
    except missing as exc:
        if os.environ.get("CI") and not unavailable():
            pytest.fail(f"CI runs `make setup`, which makes {venv}: {exc}")
        pytest.skip(str(exc).splitlines()[0])


def missing_tool(why: str) -> None:
    """A tool `make setup` installs is missing: FAIL on CI (``$CI`` set), where its absence is a broken set-up,
    SKIP with ``why`` elsewhere."""
    import os

    import pytest
    if os.environ.get("CI"):
        pytest.fail(f"CI runs `make setup`, which installs it: {why}")
    pytest.skip(why)
