# %% [markdown]
# # 06 · Serving quantized models
#
# A quantized checkpoint is only useful once something serves it. This lesson puts the course's
# quantized models behind a **real OpenAI-compatible HTTP server** and measures it from the client's
# side: time to first token, decode speed, latency percentiles and total throughput as more users
# arrive at once.
#
# * On a CPU (this machine, a laptop): **llama.cpp's server** (through llama-cpp-python) serving the
#   course's GGUF files.
# * On a CUDA GPU (e.g. a Colab T4): **vLLM** serving the GPTQ and AWQ exports of notebooks 03-04, and
#   (experimentally) a GGUF file. These cells skip with a message on a CPU.
#
# The same client code talks to both: they speak the same `/v1/completions` API.

# %% [markdown]
# ## Parameters
# `FAST = True` keeps the load test small (a 2-core CPU shared with other work); on a quiet machine or
# a GPU, raise `N_REQUESTS` and `MAX_TOKENS`. `N_THREADS = 1`: llama.cpp's default thread count was
# measured to collapse to about 1 token/s on a busy 2-core machine, while 1 thread keeps its speed.

# %%
MODEL = "auto"
FAST = True
CONCURRENCY = (1, 2, 4)                  # simultaneous clients per level (4 at most on a 2-core CPU)
N_REQUESTS = 4 if FAST else 12           # requests per concurrency level
MAX_TOKENS = 24 if FAST else 128         # the per-request `max_tokens` (llama-server's --n-predict)
N_THREADS = 1
GGUF_MIXES = ("Q4_K_M", "Q8_0")          # made from the shipped Q4_1 file by llama.cpp's own quantizer

# %%
import importlib.util

import matplotlib.pyplot as plt
import pandas as pd

from quantedu import serving
from quantedu.gguf import llama
from quantedu import serving_bench as bench
from quantedu.course import start

session = start(MODEL)
HAVE_LLAMA_SERVER = all(importlib.util.find_spec(m) for m in ("llama_cpp", "uvicorn", "sse_starlette"))
ON_GPU = serving.cuda_available()
print(f"llama.cpp server available: {HAVE_LLAMA_SERVER}; CUDA GPU: {ON_GPU}")
if not HAVE_LLAMA_SERVER:
    print(f"The CPU part needs llama.cpp's server:  {serving.LLAMA_CPP_EXTRA}")

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
# `pip install llama-cpp-python` ships no `llama-server` binary; its Python server
# (`pip install 'llama-cpp-python[server]'`) takes the same settings. Here is the command `quantedu.serving`
# runs (a free port is picked for you):

# %%
cmd = serving.llama_cpp_command(files["Q4_1"], port=8080, n_threads=N_THREADS, n_ctx=2048)
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
    server = serving.start_llama_cpp(files["Q4_1"], n_threads=N_THREADS, n_ctx=2048)
    print(server)
    print(f"ready after {server.startup_s:.1f} s; serves {serving.models(server)[0].split('/')[-1]}")

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
# `quantedu.serving_bench.stream_completion` is the same loop, plus a timeout, a loopback-only check,
# and per-token timestamps for decode speed. Greedy decoding makes the two answers identical:

# %%
if HAVE_LLAMA_SERVER:
    r = bench.stream_completion(server, "The capital of France is", MAX_TOKENS)
    assert r.error == "" and r.text == text, (r.error, r.text, text)
    print(f"TTFT {r.ttft_s * 1000:.0f} ms, {r.n_tokens} tokens, decode {r.decode_tps:.1f} tokens/s")

# %% [markdown]
# ### Exercise 06.sse_timings: time to first token and decode speed from a stream
# Write `sse_timings(t_sent, events)` for one streamed completion: `t_sent` is when the request was sent (seconds),
# `events` the lines the server sent as `(arrival time, line)` pairs. A line `data: {...}` carries a JSON chunk
# whose `choices[0]["text"]` may be empty; `data: [DONE]` ends the stream; blank lines and comments (`: ping`)
# carry nothing. Return `(ttft_s, decode_tps)`: the time from sending to the first chunk **with text**, and
# `(n - 1) / (t_last - t_first)` over the `n` chunks with text (`nan` when there are fewer than two).
#
# *Checked against* `quantedu.serving_bench.stream_completion` (replayed on each stream with a virtual clock).
# `hint("06.sse_timings")` reveals the hints one at a time.

# %%
# Exercise 06.sse_timings: time to first token and decode speed from a stream
# Fill in the code marked YOUR CODE, then run the cell. hint("06.sse_timings") gives a hint.
import json

from quantedu.exercises import check, hint


def sse_timings(t_sent, events):
    """(ttft_s, decode_tps) of a stream of (arrival time, line) server-sent events."""
    ...  # YOUR CODE


check("06.sse_timings", sse_timings)

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
# ## A concurrency sweep
# At each level `c`, `c` client threads send `N_REQUESTS` streamed requests between them. Per request
# we record time to first token (TTFT), decode tokens/s and latency; per level, p50/p95 latency and the
# total throughput (all generated tokens / wall time of the level).

# %%
results = {}
if HAVE_LLAMA_SERVER:
    with server:  # leaving the block (or an interrupt inside it) stops the server
        results["Q4_1"] = bench.sweep(server, CONCURRENCY, n_requests=N_REQUESTS, max_tokens=MAX_TOKENS)
    print(f"server running after the block: {server.running}")
    print(bench.summarize(results["Q4_1"]).round(3).to_string())

# %% [markdown]
# The same sweep for the llama.cpp-made files, one server at a time (`with` stops each one):

# %%
if HAVE_LLAMA_SERVER:
    for mix in GGUF_MIXES:
        with serving.start_llama_cpp(files[mix], n_threads=N_THREADS, n_ctx=2048) as s:
            results[mix] = bench.sweep(s, CONCURRENCY, n_requests=N_REQUESTS, max_tokens=MAX_TOKENS)
    summary = pd.concat({k: bench.summarize(v) for k, v in results.items()}, names=["file"])
    print(summary[["ttft_p50_s", "decode_tok_s", "throughput_tok_s", "latency_p50_s", "latency_p95_s"]]
          .round(3).to_string())

# %%
if HAVE_LLAMA_SERVER:
    axes = None
    for k, v in results.items():
        axes = bench.plot_sweep(bench.summarize(v), label=k, axes=axes)
    plt.suptitle(f"llama.cpp server, {N_THREADS} thread, {MAX_TOKENS} tokens per request")
    plt.tight_layout()
    plt.show()

# %% [markdown]
# ### Reading the sweep
# llama-cpp-python's server holds **one** llama.cpp context and serves requests one after another. More
# clients do not make it faster: total throughput does not grow (it can even drop a little) while every
# extra client waits in the queue behind the others, so TTFT and latency grow with concurrency. The next cell computes this from the data.

# %%
if HAVE_LLAMA_SERVER:
    for k, v in results.items():
        s = bench.summarize(v)
        lo, hi = s.index.min(), s.index.max()
        print(f"{k:7s} throughput x{s.throughput_tok_s[hi] / s.throughput_tok_s[lo]:.2f}, "
              f"p50 latency x{s.latency_p50_s[hi] / s.latency_p50_s[lo]:.2f}, "
              f"TTFT x{s.ttft_p50_s[hi] / s.ttft_p50_s[lo]:.1f} going from {lo} to {hi} clients; "
              f"decode {s.decode_tok_s.median():.1f} tokens/s per request")

# %% [markdown]
# Which file decodes fastest depends on the kernels your CPU has and on memory bandwidth: a 135M model
# is small enough that the weights of every file fit in cache-friendly sizes, so the differences here are
# smaller than on a 7B model, where decode speed tracks bytes per weight. vLLM, below, batches the
# requests of all clients into one forward pass (continuous batching), so on a GPU its throughput
# *grows* with concurrency until the GPU is saturated.
#
# ## vLLM on a GPU
# The commands in many tutorials look like
#
# ```
# vllm serve TheBloke/Llama-2-7B-GPTQ --quantization gptq
# vllm serve TheBloke/Llama-2-7B-AWQ --quantization awq
# vllm serve ./model.Q4_K_M.gguf
# ```
#
# With current vLLM:
#
# * **Leave `--quantization` out.** vLLM reads `quantization_config` from the checkpoint's `config.json`
#   and picks the fastest kernel the GPU supports: on Ampere or newer, GPTQ and AWQ checkpoints run on
#   the **Marlin** kernels (`gptq_marlin`, `awq_marlin`). Writing `--quantization gptq` *forces* the
#   original GPTQ kernel, which is several times slower at batch sizes above one. Exports written by
#   llm-compressor (and by `quantedu.export.save_compressed_tensors`) say `compressed-tensors`.
# * **GGUF is experimental** in vLLM: single-file models only, slower than its GPTQ/AWQ paths, and it
#   needs the base model's tokenizer (`--tokenizer HuggingFaceTB/SmolLM2-135M-Instruct`), since turning
#   the GGUF vocabulary into a Hugging Face tokenizer is slow and not always faithful.
# * **T4 (Colab's free GPU) has no bf16**: add `--dtype half`, or vLLM refuses the bf16 config.
#
# `quantedu.serving.vllm_command` builds the corrected command. On this machine:

# %%
T4_OR_OLDER = ON_GPU and __import__("torch").cuda.get_device_capability()[0] < 8
DTYPE = "half" if T4_OR_OLDER else None
for label, target, kw in [("GPTQ export", "<course cache>/gptq-w4g64", {}),
                          ("AWQ export", "<course cache>/awq-w4g64", {}),
                          ("GGUF file", "SmolLM2-135M-Instruct.Q4_K_M.gguf",
                           {"tokenizer": "HuggingFaceTB/SmolLM2-135M-Instruct"})]:
    c = serving.vllm_command("HuggingFaceTB/SmolLM2-135M-Instruct", port=8000, dtype=DTYPE, **kw)
    c[2] = target  # shown with a placeholder path; the GPU cell below passes the real one
    print(f"{label:12s}", " ".join(c))

# %% [markdown]
# On a GPU runtime the next cell quantizes the model with the course's own GPTQ and AWQ (seconds on a
# GPU; cached and shared with notebook 07), exports them (GPTQ v1 layout; compressed-tensors for AWQ),
# serves each with vLLM and runs the same sweep. On a CPU it explains why it skips.

# %%
vllm_results = {}
if not ON_GPU:
    print("Skipped: vLLM needs a CUDA GPU and none is visible. On Colab choose Runtime > Change runtime "
          "type > T4 GPU, `pip install vllm`, and run this notebook again.")
elif importlib.util.find_spec("vllm") is None:
    print(f"Skipped: vLLM is not installed. {serving.VLLM_INSTALL}")
else:
    from quantedu import comparison

    # the same cached GPTQ/AWQ exports as notebook 07 (course implementations, 4 bits, groups of 64, fp16)
    calib = (4, 256) if FAST else (32, 512)
    exports = {m.upper(): comparison.torch_row(m, session, n_samples=calib[0], seq_len=calib[1])["export"]
               for m in ("gptq", "awq")}
    targets = {**{k: (v, {}) for k, v in exports.items()},
               "GGUF Q4_K_M": (llama.gguf_file("Q4_K_M"), {"tokenizer": "HuggingFaceTB/SmolLM2-135M-Instruct"})}
    for label, (target, kw) in targets.items():
        try:
            with serving.start_vllm(target, dtype=DTYPE, **kw) as s:
                print(f"{label}: {' '.join(s.cmd[:3])} ... ready after {s.startup_s:.0f} s")
                vllm_results[label] = bench.sweep(s, (1, 4, 16), n_requests=32, max_tokens=128,
                                                  model=serving.models(s)[0])
        except serving.ServerError as exc:  # e.g. GGUF support missing in this vLLM version
            print(f"{label}: vLLM refused it:\n{str(exc)[-1500:]}")
    if vllm_results:
        print(pd.concat({k: bench.summarize(v) for k, v in vllm_results.items()}, names=["export"])
              .round(3).to_string())

# %% [markdown]
# ## Nothing left running
# Every server of this notebook was stopped by its `with` block. If you start one with
# `server = serving.start_llama_cpp(...)` and never stop it, it still goes away when the kernel
# restarts, shuts down or is killed (an `atexit` hook plus a parent-death signal), and
# `serving.stop_all()` stops them all by hand.

# %%
print("servers still running:", serving.running_servers())
assert not serving.running_servers()

# %% [markdown]
# ## Quiz

# %%
from quantedu.quiz import Quiz

quiz = Quiz.load("serving")
quiz.show()
