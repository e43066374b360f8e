"""Runs inside vLLM's own interpreter (``.venv-vllm``), started by :mod:`quantedu.engines.vllm`.

A standalone script: it imports only the standard library and vLLM (the vLLM environment has no
quantedu). vLLM starts processes of its own, so everything runs under ``if __name__ == "__main__"``.

    python _vllm_worker.py probe OUT.json          vLLM version, device, CPU features
    python _vllm_worker.py ppl JOB.json OUT.json   perplexity of each checkpoint in JOB over its windows (and, on
                                                   request, each token's log-probability and decode speed)
    python _vllm_worker.py selftest                 `make vllm`'s check: one tiny generate
    python _vllm_worker.py guard CMD...             run CMD (vLLM's server) under a guard, see guard()

The engine runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, set by the caller): a load takes
seconds instead of the half minute a spawned engine core costs, and nothing outlives this process.
"""
import gc
import json
import math
import sys
import time
import traceback
from pathlib import Path

# Run as a script from quantedu/, Python puts this folder first on sys.path, where quantedu/gguf would
# shadow the real gguf package (vLLM's GGUF plugin imports it). Only the vLLM env's packages belong here.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]


def _write(path, data):
    with open(path, "w") as f:
        json.dump(data, f, indent=1)


def probe(out):
    import torch
    import vllm
    from vllm.platforms import current_platform

    info = {"vllm": vllm.__version__, "torch": torch.__version__, "device": current_platform.device_type,
            "platform": type(current_platform).__name__}
    if current_platform.device_type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
        info["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
    else:
        info["cpu_bf16"] = bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())
        info["cpu_avx512"] = bool(getattr(torch.cpu, "_is_avx512_supported", lambda: False)())
    _write(out, info)


def _inspect(model):
    """{"QuantMethod[/Scheme] -> Kernel": number of layers} of the layers vLLM built."""
    kinds = {}
    for module in model.modules():
        method = getattr(module, "quant_method", None)
        if method is None or not hasattr(module, "input_size"):
            continue
        scheme = getattr(module, "scheme", None)
        kernel = getattr(method, "kernel", None) or getattr(scheme, "kernel", None)
        label = type(method).__name__ + (f"/{type(scheme).__name__}" if scheme is not None else "")
        label += f" -> {type(kernel).__name__}" if kernel is not None else ""
        kinds[label] = kinds.get(label, 0) + 1
    return kinds


def _shards(model):
    """{module: [rows, columns]} of this rank's slice of every linear and embedding layer (issue 25: the
    tensor-parallel split as vLLM made it; on a CPU the weights themselves are repacked after loading)."""
    out = {}
    for name, m in model.named_modules():
        if hasattr(m, "output_size_per_partition") and hasattr(m, "input_size_per_partition"):
            out[name] = [m.output_size_per_partition, m.input_size_per_partition]
        elif hasattr(m, "num_embeddings_per_partition"):
            out[name] = [m.num_embeddings_per_partition, m.embedding_dim]
    return out


def _checkpoint_bytes(model_path):
    """Bytes of the tensors vLLM reads from the checkpoint (safetensors headers; a .gguf file's size)."""
    import glob
    import os

    from safetensors import safe_open

    if os.path.isfile(model_path):
        return os.path.getsize(model_path)
    total = 0
    for f in glob.glob(os.path.join(model_path, "*.safetensors")):
        with safe_open(f, "pt") as st:
            for key in st.keys():
                t = st.get_slice(key)
                n = 1
                for d in t.get_shape():
                    n *= d
                total += n * {"F32": 4, "F16": 2, "BF16": 2, "I32": 4, "I64": 8, "U8": 1, "I8": 1}.get(t.get_dtype(), 4)
    return total


class _Capture:
    """Collects vLLM's log lines about kernels and memory (the engine runs in this process)."""

    def __init__(self):
        import logging

        self.lines = []
        self.handler = logging.Handler()
        self.handler.emit = lambda record: self.lines.append(record.getMessage())
        logging.getLogger("vllm").addHandler(self.handler)

    def memory_gib(self):
        import re

        found = [re.search(r"Model loading took ([0-9.]+) ?GiB", ln) for ln in self.lines]
        found = [float(m.group(1)) for m in found if m]
        return found[-1] if found else None


def _one(run, windows, LLM, SamplingParams, capture):
    capture.lines.clear()
    t0 = time.perf_counter()
    kwargs = {k: run[k] for k in ("quantization", "tokenizer", "kv_cache_dtype", "max_num_batched_tokens",
                                  "tensor_parallel_size") if run.get(k)}
    llm = LLM(model=run["model"], dtype=run.get("dtype", "bfloat16"), max_model_len=run.get("max_model_len", 1024),
              enforce_eager=True, seed=0, kv_cache_memory_bytes=run.get("kv_cache_bytes", 256 * 2**20),
              skip_tokenizer_init=run.get("skip_tokenizer_init", False), **kwargs)
    load_s = time.perf_counter() - t0
    try:
        kernels = llm.apply_model(_inspect)[0]
        shards = llm.apply_model(_shards)  # one entry per tensor-parallel rank
        cache = llm.llm_engine.vllm_config.cache_config
        t1 = time.perf_counter()
        params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0)
        outs = llm.generate([{"prompt_token_ids": w} for w in windows], params, use_tqdm=False)
        logprobs = [[o.prompt_logprobs[i][w[i]].logprob for i in range(1, len(w))] for w, o in zip(windows, outs)]
        nll, n = -sum(map(sum, logprobs)), sum(map(len, logprobs))
        gib = capture.memory_gib()
        extra = {"token_logprobs": logprobs} if run.get("per_token") else {}  # every scored token, window by window
        if run.get("greedy_prompt"):  # decode steps read the KV cache (a prefill may not)
            greedy = SamplingParams(max_tokens=run.get("greedy_tokens", 16), temperature=0.0)
            gen = llm.generate([{"prompt_token_ids": run["greedy_prompt"]}], greedy, use_tqdm=False)[0]
            extra["greedy_ids"] = list(gen.outputs[0].token_ids)
        if run.get("speed"):
            extra["speed"] = _speed(llm, SamplingParams, run["speed"])
        return {**extra, "ppl": math.exp(nll / n), "nll": nll, "tokens": n, "kernels": kernels,
                "checkpoint_bytes": _checkpoint_bytes(run["model"]),
                "reported_bytes": None if gib is None else int(gib * 2**30), "shards": shards,
                "kv_cache": {"blocks": cache.num_gpu_blocks, "block_size": cache.block_size,
                             "bytes": run.get("kv_cache_bytes", 256 * 2**20)},
                "load_s": load_s, "eval_s": time.perf_counter() - t1, "error": None}
    finally:
        del llm
        gc.collect()


def _speed(llm, SamplingParams, spec):
    """Decode speed with this engine's kernels: ``{"1": decode tokens/s of one request (the time of its first
    token subtracted), "K": total tokens/s of K requests served together}`` for K in ``spec["clients"]``; every
    request generates ``spec["max_tokens"]`` tokens after ``spec["prompt"]`` (token ids), EOS ignored. One
    request is timed ``spec["repeats"]`` times: ``"1"`` is the median, ``"1_runs"`` every timing."""
    prompt = {"prompt_token_ids": spec["prompt"]}
    n = spec.get("max_tokens", 64)

    def seconds(k, tokens):
        params = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)
        t0 = time.perf_counter()
        llm.generate([prompt] * k, params, use_tqdm=False)
        return time.perf_counter() - t0

    seconds(1, 4)  # warm-up: the first request pays one-off costs
    out = {}
    for k in spec.get("clients", [1]):
        if k == 1:
            runs = [(n - 1) / (seconds(1, n) - seconds(1, 1)) for _ in range(max(1, spec.get("repeats", 1)))]
            out["1"], out["1_runs"] = sorted(runs)[len(runs) // 2], runs
        else:
            out[str(k)] = k * n / seconds(k, n)
    return out


def ppl(job_path, out):
    from vllm import LLM, SamplingParams
    from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

    job = json.load(open(job_path))
    results, capture = {}, _Capture()
    for run in job["runs"]:
        try:
            results[run["name"]] = _one(run, run.get("windows", job.get("windows")), LLM, SamplingParams, capture)
        except Exception as exc:  # noqa: BLE001 - reported per checkpoint: a refusal is a result too
            lines = [ln for ln in traceback.format_exception_only(type(exc), exc)]
            results[run["name"]] = {"error": "".join(lines).strip()[-3000:], "error_type": type(exc).__name__}
        finally:
            cleanup_dist_env_and_memory()
        _write(out, results)  # after every checkpoint: a crash later keeps the earlier results
    _write(out, results)


def selftest():
    """A tiny random Llama, written with this environment's transformers, generates 4 tokens."""
    import tempfile

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from vllm import LLM, SamplingParams
    from vllm.platforms import current_platform

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                             num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256)
        LlamaForCausalLM(config).save_pretrained(tmp)
        llm = LLM(model=tmp, dtype="bfloat16", max_model_len=128, enforce_eager=True, skip_tokenizer_init=True,
                  kv_cache_memory_bytes=64 * 2**20, seed=0)
        out = llm.generate([{"prompt_token_ids": [1, 2, 3, 4]}], SamplingParams(max_tokens=4, temperature=0.0),
                           use_tqdm=False)[0]
        n = len(out.outputs[0].token_ids)
        del llm
    if n != 4:
        sys.exit(f"vLLM self-test FAILED: generated {n} tokens instead of 4")
    import vllm
    print(f"vLLM self-test ok: vllm {vllm.__version__} on {current_platform.device_type}, 4 tokens generated "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)


def _group_members(pgid, me):
    """Pids of the live processes of process group ``pgid`` other than ``me`` (Linux /proc)."""
    import os

    pids = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if entry.isdigit() and int(entry) != me:
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z" and int(fields[2]) == pgid:  # state, ppid, pgrp
                pids.append(int(entry))
    return pids


def guard(cmd):
    """Run ``cmd`` (vLLM's API server) in this process group and make sure the whole group ends with us.

    vLLM's API server spawns an engine core, which spawns a worker. Killed (SIGTERM) while it waits for
    them to start, the API server ignores the signal and the three outlive whoever started them (measured).
    The guard leads the group: on SIGTERM/SIGHUP (a stop, or the parent-death signal when the owning Python
    dies, even by SIGKILL) or when its parent is gone, it sends SIGTERM to the group, waits up to 6 s for the
    server, then SIGKILLs every member. When the server exits on its own, the guard ends its leftovers and
    exits with the server's code.
    """
    import os
    import signal
    import subprocess

    me, parent = os.getpid(), os.getppid()
    pgid = os.getpgrp()
    child = subprocess.Popen(cmd)

    def end_group(grace):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            os.killpg(pgid, signal.SIGTERM)
        except OSError:
            pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and (child.poll() is None or _group_members(pgid, me)):
            time.sleep(0.1)
        for pid in _group_members(pgid, me):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        child.poll()

    def on_signal(signum, frame):
        end_group(6.0)
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the owner's Ctrl-C is not for us: it stops us with SIGTERM
    while True:
        rc = child.poll()
        if rc is not None:
            end_group(3.0)
            sys.exit(rc if rc >= 0 else 128 - rc)
        if os.getppid() != parent:  # the owner died and no signal came (it started us from another thread)
            end_group(6.0)
            sys.exit(1)
        time.sleep(0.2)


def int8_ops(cases_path, out):
    """vLLM's CPU int8 ops (oneDNN) on the cases saved by :func:`quantedu.engines.w8a8_served.vllm_kernel_check`:
    per case the activation codes and scales vLLM computes, and the layer's output."""
    import torch
    from vllm import _custom_ops as ops

    cases, results = torch.load(cases_path), {}
    for name, c in cases.items():
        torch.set_default_dtype(c["x"].dtype)
        handler = ops.create_onednn_scaled_mm(c["qweight"].t(), c["weight_scale"], c["x"].dtype,
                                              c["input_scale"] is None, False, 32)
        xq, xs, xzp = ops.onednn_scaled_int8_quant(c["x"], c["input_scale"], None, True)
        y = torch.empty((c["x"].shape[0], c["qweight"].shape[0]), dtype=c["x"].dtype)
        ops.onednn_scaled_mm(handler, xq, y, xs, xzp, None, None)
        results[name] = {"codes": xq, "scales": xs, "y": y}
    torch.set_default_dtype(torch.float32)
    torch.save(results, out)


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command == "probe":
        probe(sys.argv[2])
    elif command == "ppl":
        ppl(sys.argv[2], sys.argv[3])
    elif command == "int8_ops":
        int8_ops(sys.argv[2], sys.argv[3])
    elif command == "selftest":
        selftest()
    elif command == "guard":
        guard(sys.argv[2:])
    else:
        sys.exit(f"usage: {sys.argv[0]} probe OUT.json | ppl JOB.json OUT.json | int8_ops IN.pt OUT.pt | selftest | guard CMD...")
