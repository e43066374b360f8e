"""llama.cpp's two servers as :class:`quantedu.engines.server.Server` s: the C++ ``llama-server`` built by
``make llama-tools`` (:func:`llama_server_command`, :func:`start_llama_server`) and llama-cpp-python's Python
server, ``python -m llama_cpp.server`` (the ``[server]`` extra: :func:`llama_cpp_command`,
:func:`start_llama_cpp`). The thread count is explicit: on a 2-core machine shared with other work, llama.cpp's
default thread count was measured to collapse to ~1 token/s while 1 thread kept 30-80.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from .. import server as serving
from ..procs import HOST, free_port
from .locate import binary
from .tools import tool_env

LLAMA_CPP_EXTRA = "pip install 'llama-cpp-python[server]'"
# the modules `python -m llama_cpp.server` imports beyond llama_cpp itself: they come with the [server] extra
_SERVER_MODULES = ("uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings")


def llama_server_command(model, port: int, parallel: int = 1, n_threads: int = 1, ctx: int | None = None,
                         n_predict: int | None = None, n_gpu_layers: int | None = None,
                         extra: list[str] | tuple = ()) -> list[str]:
    """The ``llama-server`` command the course runs, from the seed's flags, corrected:

    * ``--host 127.0.0.1`` (not ``0.0.0.0``, which serves the whole network), a port given (free).
    * ``-np N`` (``--parallel``): N slots decoded together (continuous batching, on by default).
    * ``-c N`` (``--ctx-size``): the KV cache, in tokens, shared out among the slots: each of the N
      slots gets ``ctx / N`` tokens. ``ctx=None`` gives 2048 tokens per slot.
    * ``-t`` / ``-tb``: decode / prompt threads.
    * ``--n-predict N``: the server-side cap on generated tokens per request (``None``: no cap, the
      request's ``max_tokens`` decides).
    * ``-ngl N``: layers offloaded to a GPU. On a CPU-only build (this one) it does nothing, so it is
      left out unless you pass ``n_gpu_layers``.
    """
    model = Path(model)
    if not model.is_file():
        raise FileNotFoundError(f"model file {model} does not exist (give the path of a .gguf file)")
    if model.suffix.lower() != ".gguf":
        raise ValueError(f"{model.name}: llama-server serves GGUF files")
    if parallel < 1 or n_threads < 1:
        raise ValueError("parallel and n_threads must be >= 1")
    ctx = 2048 * parallel if ctx is None else int(ctx)
    if ctx < parallel * 64:
        raise ValueError(f"ctx={ctx} leaves each of the {parallel} slots fewer than 64 tokens (-c is shared)")
    cmd = [str(binary("llama-server")), "-m", str(model), "--host", "127.0.0.1", "--port", str(port),
           "-c", str(ctx), "-np", str(parallel), "-t", str(n_threads), "-tb", str(n_threads), "--no-webui"]
    if n_predict is not None:
        cmd += ["--n-predict", str(n_predict)]
    if n_gpu_layers is not None:
        cmd += ["-ngl", str(n_gpu_layers)]
    return cmd + [str(e) for e in extra]


def llama_server(model, parallel: int = 1, n_threads: int = 1, ctx: int | None = None, port: int | None = None,
                 n_predict: int | None = None, log_path=None, extra=()):
    """A (not yet started) ``llama-server``, as a :class:`quantedu.engines.server.Server`."""
    if port is None:
        port = free_port()
    cmd = llama_server_command(model, port, parallel=parallel, n_threads=n_threads, ctx=ctx, n_predict=n_predict,
                               extra=extra)
    return serving.Server(cmd, port, name=f"llama-server[{Path(model).name},np={parallel}]", log_path=log_path,
                          health_path="/health", env=tool_env(n_threads))


def start_llama_server(model, parallel: int = 1, n_threads: int = 1, ctx: int | None = None,
                       port: int | None = None, timeout: float = 60.0, **kwargs):
    """Start llama.cpp's C++ server on ``model`` and wait until ``/health`` answers 200.

    Returns a started :class:`quantedu.engines.server.Server` (use it in ``with``; ``.base_url`` serves the
    OpenAI ``/v1/completions`` and ``/v1/chat/completions`` API). ``parallel`` is ``-np``. Same
    guarantees as the course's other servers: 127.0.0.1 only, a free port unless you give one (a port in
    use raises :class:`quantedu.engines.server.PortInUseError`), the log's tail in every error, and the server
    stopped on ``with`` exit, at interpreter exit and when the starting process dies.
    """
    return llama_server(model, parallel=parallel, n_threads=n_threads, ctx=ctx, port=port, **kwargs).start(timeout=timeout)


# ------------------------------------------------------------------ llama-cpp-python's Python server

def _missing(modules) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


def llama_cpp_command(model, port: int, n_threads: int = 1, n_ctx: int = 2048, n_gpu_layers: int = 0,
                      extra: list[str] | tuple = ()) -> list[str]:
    """The llama-cpp-python server command for a GGUF file.

    The seed's ``llama-server`` flags map to these settings: ``-ngl N`` -> ``--n_gpu_layers N`` (layers
    offloaded to a GPU; 0 on a CPU build), ``-c N`` -> ``--n_ctx N`` (context window, sizes the KV
    cache), ``--n-predict N`` -> no server flag: it is the per-request ``max_tokens``. ``-t`` ->
    ``--n_threads`` (decode) and ``--n_threads_batch`` (prompt processing).
    """
    model = Path(model)
    if not model.is_file():
        raise FileNotFoundError(f"model file {model} does not exist (give the path of a .gguf file)")
    if model.suffix.lower() != ".gguf":
        raise serving.ServerError(f"{model.name}: llama.cpp serves GGUF files; for a transformers checkpoint "
                          f"folder use quantedu.engines.vllm.start_vllm")
    if n_threads < 1:
        raise serving.ServerError("n_threads must be >= 1 (use 1 on a 2-core machine)")
    return [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", HOST,
            "--port", str(port), "--n_threads", str(n_threads), "--n_threads_batch", str(n_threads),
            "--n_ctx", str(n_ctx), "--n_gpu_layers", str(n_gpu_layers),
            # the default (True) aborts a streaming request as soon as another one arrives: under
            # concurrency, clients would get truncated completions instead of waiting their turn
            "--interrupt_requests", "False", *map(str, extra)]


def llama_cpp_server(model, port: int | None = None, n_threads: int = 1, n_ctx: int = 2048,
                     n_gpu_layers: int = 0, log_path=None, extra=()) -> serving.Server:
    """A (not yet started) llama.cpp server for a GGUF file; use it as ``with llama_cpp_server(f) as s:``."""
    missing = _missing(("llama_cpp",))
    if missing:
        raise serving.MissingPackageError(f"llama-cpp-python is not installed. Run:\n    {LLAMA_CPP_EXTRA}")
    missing = _missing(_SERVER_MODULES)
    if missing:
        raise serving.MissingPackageError(f"llama-cpp-python's server extra is missing ({', '.join(missing)}). "
                                  f"Run:\n    {LLAMA_CPP_EXTRA}")
    if port is None:
        port = free_port()
    cmd = llama_cpp_command(model, port, n_threads=n_threads, n_ctx=n_ctx, n_gpu_layers=n_gpu_layers, extra=extra)
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}  # idle threads sleep instead of spinning
    return serving.Server(cmd, port, name=f"llama.cpp[{Path(model).name}]", log_path=log_path, env=env)


def start_llama_cpp(model, port: int | None = None, timeout: float = 60.0, **kwargs) -> serving.Server:
    """Start a llama.cpp server for ``model`` (a .gguf path) and wait until it answers."""
    return llama_cpp_server(model, port=port, **kwargs).start(timeout=timeout)
