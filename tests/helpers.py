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
