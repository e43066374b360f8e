"""A written recipe's llama.cpp path run on this machine, with the tools ``make llama-tools`` built.

The steps are the recipe's own commands (:func:`quantedu.recipes.gguf_commands`), run from the recipe's folder,
each tool's name replaced by this machine's build. One adjustment, about this environment and not the commands:
``convert_hf_to_gguf.py`` runs through :mod:`quantedu.engines.llama_cpp`'s runner (no ``sentencepiece`` here; the
runner lets the converter skip its probe). The source folder of a course model is its checkpoint with the
tokenizer rebuilt from the shipped GGUF (:func:`source_checkpoint`: the cached checkpoint's tokenizer.json is
transformers' GGUF reconstruction, which the converter misreads).

Used by notebook 10 and tests/test_recipe_gguf.py.
"""
from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

from .. import artifacts


def source_checkpoint(model: str = "auto") -> Path:
    """A Hugging Face folder ``convert_hf_to_gguf.py`` reads, for ``model``: the course model ("auto",
    "smollm2-135m") or a local checkpoint folder (the CI test model), with the offline GGUF's tokenizer."""
    from ..engines import llama_cpp as lt
    from ..models import offline_checkpoint, offline_gguf_path

    if str(model).lower() in ("auto", "smollm2-135m"):
        folder, name = offline_checkpoint(), "SmolLM2-135M-Instruct"
    else:
        folder = Path(str(model)).expanduser()
        if not (folder / "config.json").is_file():
            raise ValueError(f"the GGUF path runs here on a local checkpoint folder or the course model "
                             f"('smollm2-135m'), not {model!r}: download it first (hf download ID --local-dir DIR)")
        name = folder.name
    key = artifacts.cache_key("gguf-source", str(folder.resolve()), name)
    return artifacts.cached_dir("recipe-sources", key, lambda tmp: lt.checkpoint_with_gguf_tokenizer(
        folder, offline_gguf_path(), tmp, model_name=name)) / name


def local_command(cmd: list[str]) -> list[str]:
    """A recipe's command with this machine's tools: ``llama-*`` from the build, Python scripts by this Python."""
    from ..engines import llama_cpp as lt
    from ..engines.llama_cpp.tools import _CONVERT_RUNNER

    if cmd[1:2] == ["convert_hf_to_gguf.py"]:
        return [sys.executable, "-c", _CONVERT_RUNNER, str(lt.convert_script()), *cmd[2:]]
    if cmd[0].startswith("llama-"):
        return [str(lt.binary(cmd[0])), *cmd[1:]]
    return [sys.executable, *cmd[1:]] if cmd[0] == "python" else list(cmd)


def run_gguf(steps: dict, folder, threads: int = 2, timeout: float = 600.0) -> dict[str, float]:
    """Run every step of :func:`quantedu.recipes.gguf_commands` but ``serve`` (and ``download``: the source is
    local) in the recipe's ``folder``; the seconds of each. A failing step raises with its tool's output."""
    from ..engines.llama_cpp import tools

    folder = Path(folder)
    (folder / "gguf").mkdir(exist_ok=True)
    env = {**tools.tool_env(threads), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    seconds = {}
    for name, cmd in steps.items():
        if name in ("serve", "download"):
            continue
        t0 = time.perf_counter()
        out = subprocess.run(local_command(cmd), cwd=folder, capture_output=True, text=True, timeout=timeout, env=env)
        seconds[name] = time.perf_counter() - t0
        if out.returncode != 0:
            raise RuntimeError(f"step {name!r} failed: {' '.join(cmd)}\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
    return seconds


def llama_server(steps: dict, folder, threads: int = 1):
    """The recipe's ``llama-server`` command as a :class:`quantedu.engines.server.Server` (not started), with
    ``-t threads`` (a shared CPU) and ``-lv 4`` (so it logs its buffer sizes: :func:`reported_buffers`)."""
    from ..engines import server as servers
    from ..engines.llama_cpp import tools

    cmd = local_command(steps["serve"]) + ["-t", str(threads), "-lv", "4"]
    cmd[cmd.index("-m") + 1] = str(Path(folder) / cmd[cmd.index("-m") + 1])  # written relative to the folder
    port = int(cmd[cmd.index("--port") + 1])
    return servers.Server(cmd, port, name="llama-server[recipe]", health_path="/health", env=tools.tool_env(threads))


_BUFFERS = {"weights": r"CPU_Mapped model buffer size =\s+([\d.]+) MiB",
            "KV cache": r"llama_kv_cache: size =\s+([\d.]+) MiB",
            "compute": r"CPU compute buffer size =\s+([\d.]+) MiB"}


def reported_buffers(log: str) -> dict[str, float]:
    """Bytes llama.cpp says it allocated (its log at ``-lv 4``): model weights, KV cache, compute buffer."""
    found = {k: re.search(p, log) for k, p in _BUFFERS.items()}
    missing = [k for k, m in found.items() if m is None]
    if missing:
        raise ValueError(f"llama.cpp's log names no {', '.join(missing)} buffer (started with -lv 4?)")
    return {k: float(m[1]) * 2**20 for k, m in found.items()}


__all__ = ["source_checkpoint", "local_command", "run_gguf", "llama_server", "reported_buffers"]
