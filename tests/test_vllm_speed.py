"""The vLLM worker's decode-speed protocol and the host's thread binding (notebook 07's vLLM rows), checked with
a stand-in engine whose time per token is known: no vLLM needed, a fraction of a second."""
import time
from types import SimpleNamespace

import pytest

from quantedu.engines import _vllm_worker as worker
from quantedu.engines import vllm

FIRST, STEP = 0.02, 0.002  # seconds: a request's first token (prompt included), then each further token


class FakeLLM:
    """Generates ``max_tokens`` for every prompt at once: first token after FIRST, then STEP per token, batched
    requests sharing each step (what continuous batching does on an idle machine)."""

    def __init__(self):
        self.calls = []

    def generate(self, prompts, params, use_tqdm=True):
        assert use_tqdm is False and params.temperature == 0.0 and params.ignore_eos
        self.calls.append((len(prompts), params.max_tokens))
        time.sleep(FIRST + STEP * (params.max_tokens - 1))


def test_decode_speed_excludes_the_first_token_and_counts_every_request():
    llm = FakeLLM()
    speed = worker._speed(llm, lambda **kw: SimpleNamespace(**kw), {"prompt": [1, 2], "max_tokens": 32,
                                                                  "clients": [1, 8]})
    assert llm.calls[0] == (1, 4)  # the warm-up
    assert speed["1"] == pytest.approx(1 / STEP, rel=0.35)  # (n - 1) tokens over the time after the first
    total = 8 * 32 / (FIRST + STEP * 31)
    assert speed["8"] == pytest.approx(total, rel=0.35) and speed["8"] > 4 * 32 / (FIRST + STEP * 31)


def test_cpu_threads_bind_that_many_of_this_process_cores(monkeypatch, tmp_path):
    sent = {}
    class Side:
        def call(self, python, cmd, job, timeout, env):
            sent.update(job=job, env=env)
            return {}
    monkeypatch.setattr(vllm, "SIDE", Side())
    vllm.vllm_perplexities({"m": {"model": tmp_path, "per_token": True}}, [[1, 2, 3]], python="py", cpu_threads=1)
    assert len(sent["env"]["VLLM_CPU_OMP_THREADS_BIND"].split(",")) == 1 and sent["job"]["runs"][0]["per_token"]
    vllm.vllm_perplexities({"m": tmp_path}, [[1, 2, 3]], python="py")
    assert "VLLM_CPU_OMP_THREADS_BIND" not in sent["env"]
