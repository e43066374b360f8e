"""Shared fixtures: a tiny random Llama (fast), the real course model (loaded once per session), ggml's C reference."""
import pytest


@pytest.fixture(scope="session")
def tiny_llama():
    """A 2-layer Llama with hidden size 64 and random weights: the shape of the course model, in milliseconds."""
    from quantedu.testmodel import tiny_llama as build

    return build()


@pytest.fixture(scope="session")
def course_model():
    """(model, tokenizer) of the offline default model, fp32 on CPU."""
    from quantedu.models import load_model

    return load_model("smollm2-135m", device="cpu", verbose=False)


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    """An empty artifact cache for the test."""
    monkeypatch.setenv("QUANTEDU_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def ggml():
    """ggml's C quantizers (the bit-exact reference of quantedu.gguf); fail (not skip) with the install command
    when llama-cpp-python is missing."""
    from quantedu.engines.llama_cpp import ggml as ggml_reference
    try:
        ggml_reference.lib()
    except (ImportError, OSError) as exc:
        pytest.fail(f"ggml reference unavailable: {exc}\n{ggml_reference.INSTALL_HINT}")
    return ggml_reference
