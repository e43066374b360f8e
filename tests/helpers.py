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


def random_llama(hidden=64, heads=4, kv_heads=2, head_dim=None, intermediate=128, vocab=256, seed=0,
                 norm_noise=0.3, outlier_channels=(), outlier_gain=30.0, folder=None):
    """A random 2-layer Llama (:func:`quantedu.testmodel.tiny_llama`, tied embeddings) with random norm weights ``1 + norm_noise * N(0, 1)``, so folding
    into a norm is really exercised, and optionally a few norm channels ``outlier_gain`` times larger, so its
    activations have outlier channels like a trained model's. With ``folder``: saved in bf16 and loaded back
    as transformers loads a bf16 checkpoint (rotary buffers stay fp32, unlike ``model.to(torch.bfloat16)``)."""
    import torch
    from transformers import LlamaForCausalLM

    from quantedu.testmodel import tiny_llama

    model = tiny_llama(seed, vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=2,
                       num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim,
                       max_position_embeddings=256, tie_word_embeddings=True)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + norm_noise * torch.randn_like(p))
                p[list(outlier_channels)] *= outlier_gain
    if folder is None:
        return model
    model.to(torch.bfloat16).save_pretrained(folder)
    return LlamaForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).eval()


def token_ids(n=4, seq=32, seed=3, vocab=256):
    """Seeded random token ids ``(n, seq)``."""
    import torch

    return torch.randint(0, vocab, (n, seq), generator=torch.Generator().manual_seed(seed))
