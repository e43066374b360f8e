"""llama.cpp's C++ ``llama-server`` as a :class:`quantedu.serving.Server`: the command the course runs
(:func:`llama_server_command`) and the started server (:func:`start_llama_server`)."""
from __future__ import annotations

from pathlib import Path

from .locate import binary
from .tools import _tool_env


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
    """A (not yet started) ``llama-server``, as a :class:`quantedu.serving.Server`."""
    from .. import serving  # imported when used: it registers an atexit hook
    if port is None:
        port = serving.free_port()
    cmd = llama_server_command(model, port, parallel=parallel, n_threads=n_threads, ctx=ctx, n_predict=n_predict,
                               extra=extra)
    return serving.Server(cmd, port, name=f"llama-server[{Path(model).name},np={parallel}]", log_path=log_path,
                          health_path="/health", env=_tool_env(n_threads))


def start_llama_server(model, parallel: int = 1, n_threads: int = 1, ctx: int | None = None,
                       port: int | None = None, timeout: float = 60.0, **kwargs):
    """Start llama.cpp's C++ server on ``model`` and wait until ``/health`` answers 200.

    Returns a started :class:`quantedu.serving.Server` (use it in ``with``; ``.base_url`` serves the
    OpenAI ``/v1/completions`` and ``/v1/chat/completions`` API). ``parallel`` is ``-np``. Same
    guarantees as the course's other servers: 127.0.0.1 only, a free port unless you give one (a port in
    use raises :class:`quantedu.serving.PortInUseError`), the log's tail in every error, and the server
    stopped on ``with`` exit, at interpreter exit and when the starting process dies.
    """
    from .. import serving  # imported when used: it registers an atexit hook
    server = llama_server(model, parallel=parallel, n_threads=n_threads, ctx=ctx, port=port, **kwargs)
    try:
        return server.start(timeout=timeout)
    except serving.PortInUseError:
        raise
    except serving.ServerError as exc:
        if "couldn't bind" in str(exc) or "address already in use" in str(exc).lower():
            raise serving.PortInUseError(f"llama-server could not bind port {server.port}: {exc}") from exc
        raise
