"""The recipe's llama.cpp path run on the course model with the built tools (issue 25), and the plan's bytes
against what llama.cpp itself reports for the file it loads.

The steps are the recipe's own commands (:func:`quantedu.recipes.gguf_commands`), each tool's name replaced by
this machine's build. Two adjustments, both about this environment, not the commands: the converter runs through
``quantedu.engines.llama_cpp``' runner (no ``sentencepiece`` here; the runner lets the converter skip its probe), and
the source folder is the course checkpoint with its tokenizer rebuilt from the shipped GGUF
(``checkpoint_with_gguf_tokenizer``: the cached checkpoint's tokenizer.json is transformers' GGUF reconstruction,
which the converter misreads). The server gets ``-t 1`` (a shared 2-core machine) and ``-lv 4`` (so it prints
its buffer sizes), on a free port.
"""
import re
import subprocess
import sys
import time

import gguf
import pytest
from helpers import missing

from quantedu import memory, recipes
from quantedu.engines import server as servers
from quantedu.engines import llama_cpp as lt
from quantedu import plan as P
from quantedu.engines.procs import free_port

CONTEXT, BATCH = 1024, 2
pytestmark = pytest.mark.slow  # one engine start per module: 25-60 s, still run in CI
TIMES: dict = {}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    ok, why = lt.build_supported()
    if not ok:
        pytest.skip(why)
    st = lt.status()
    if not st["ok"]:
        missing(st["why"])
    from quantedu.engines.llama_cpp.tools import _CONVERT_RUNNER
    from quantedu.models import offline_checkpoint, offline_gguf_path

    work = tmp_path_factory.mktemp("gguf-recipe")
    source = lt.checkpoint_with_gguf_tokenizer(offline_checkpoint(), offline_gguf_path(), work / "hf",
                                               model_name="SmolLM2-135M-Instruct")
    r = recipes.recipe(str(source), method="gptq", group_size=64, dataset="pydoc", n_samples=8, seq_len=256,
                       context=CONTEXT, batch=BATCH, gguf_mix="Q4_K_M")
    folder = work / "recipe"
    recipes.write(r, folder)
    (folder / "gguf").mkdir()
    steps = recipes.gguf_commands(r, port=free_port())
    for name, cmd in steps.items():
        if name == "serve":
            continue
        if cmd[1:2] == ["convert_hf_to_gguf.py"]:
            cmd = [sys.executable, "-c", _CONVERT_RUNNER, str(lt.convert_script()), *cmd[2:]]
        else:
            cmd = [str(lt.binary(cmd[0])) if cmd[0].startswith("llama-") else sys.executable, *cmd[1:]]
        t0 = time.perf_counter()
        out = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, timeout=600,
                             env={**lt.tools.tool_env(2), "HF_HUB_OFFLINE": "1"})
        TIMES[name] = time.perf_counter() - t0
        assert out.returncode == 0, f"{name}: {' '.join(cmd)}\n{out.stdout[-2000:]}{out.stderr[-2000:]}"
    return r, folder, steps


@pytest.fixture(scope="module")
def server(built):
    r, folder, steps = built
    cmd = [str(lt.binary("llama-server")), *steps["serve"][1:], "-t", "1", "-lv", "4"]
    cmd[cmd.index("-m") + 1] = str(folder / cmd[cmd.index("-m") + 1])  # the written path, from the recipe's folder
    port = int(cmd[cmd.index("--port") + 1])
    with servers.Server(cmd, port, name="llama-server[recipe]", health_path="/health", env=lt.tools.tool_env(1)) as s:
        yield s


def test_the_gguf_commands_run_on_the_course_model(built):
    r, folder, steps = built
    out = folder / steps["quantize"][4]
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(out)).tensors}
    # llama-quantize chose the types the planner assumes (576-wide rows fall back, ffn_down gets K-quants)
    plan_bytes = P.gguf_tensor_bytes(memory.model_shape("smollm2-135m"), "Q4_K_M")
    assert set(types) == set(plan_bytes) and types["blk.0.ffn_down.weight"] in ("Q4_K", "Q6_K")
    assert sum(plan_bytes.values()) == memory.gguf_file_bytes(out)["tensors"]
    print("GGUF path on the course model: " + ", ".join(f"{k} {v:.1f} s" for k, v in TIMES.items()))


def test_plan_bytes_equal_what_llama_cpp_reports(built, server):
    """Weights and KV cache of the 1-GPU Q4_K_M plan = llama.cpp's own "model buffer" and "KV cache" lines."""
    r = built[0]
    p = P.plan(r.model, scheme="Q4_K_M", gpus=1, context=CONTEXT, batch=BATCH)
    log = server.log_tail(400)
    mib = lambda pattern: float(re.search(pattern, log)[1]) * 2**20  # noqa: E731
    model = mib(r"CPU_Mapped model buffer size =\s+([\d.]+) MiB")
    kv = mib(r"llama_kv_cache: size =\s+([\d.]+) MiB")
    compute = mib(r"CPU compute buffer size =\s+([\d.]+) MiB")
    # on a CPU every tensor sits in the one mapped buffer; on GPUs the plan moves token_embd to host RAM
    assert abs(model - p.per_gpu["weights"]) <= 0.005 * 2**20
    assert abs(kv - p.per_gpu["KV cache"]) <= 0.005 * 2**20  # -c CONTEXT*BATCH, -np BATCH: BATCH x CONTEXT cells
    print(f"llama.cpp reports model {model / 2**20:.2f} MiB, KV {kv / 2**20:.2f} MiB, compute {compute / 2**20:.2f}"
          f" MiB; the plan: {p.per_gpu['weights'] / 2**20:.2f}, {p.per_gpu['KV cache'] / 2**20:.2f}, activations "
          f"(estimate) {p.per_gpu['activations'] / 2**20:.2f} MiB")


def test_the_recipes_client_talks_to_llama_server(built, server):
    folder = built[1]
    out = subprocess.run([sys.executable, str(folder / "client.py"), f"{server.base_url}/v1"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    m = re.search(r"\[.*: (\d+) tokens, finish_reason=(\w+)\]", out.stdout)
    assert m and int(m[1]) >= 1 and out.stdout.split("\n[")[0].strip(), out.stdout  # a real answer, in English
