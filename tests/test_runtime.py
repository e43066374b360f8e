"""quantedu.runtime: torch's thread count for a block of code, and the wall/CPU timer."""
import time

import pytest
import torch

from quantedu import runtime


def test_torch_threads_restores_the_setting_even_after_an_error():
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError):
        with runtime.torch_threads(1):
            assert torch.get_num_threads() == 1
            raise RuntimeError
    assert torch.get_num_threads() == before
    with runtime.torch_threads(None):
        assert torch.get_num_threads() == before


def test_timed_returns_the_result_and_separates_wall_from_cpu_time():
    out, wall, cpu = runtime.timed(lambda: time.sleep(0.2) or 42)
    assert out == 42 and wall >= 0.2 and cpu < 0.1  # sleeping costs wall time, not CPU time
