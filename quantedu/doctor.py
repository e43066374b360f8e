"""Environment report: what this machine has, and which optional engines the course can use here.

``quantedu doctor`` prints it; notebook 00 shows it. Each engine line says why it is unusable,
and what to do, instead of failing later inside a notebook.
"""
from __future__ import annotations

import importlib
import importlib.util
import importlib.metadata as md
import os
import platform
import sys
import tempfile


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def _importable(module: str) -> tuple[bool, str]:
    try:
        importlib.import_module(module)
        return True, "ok"
    except Exception as exc:  # noqa: BLE001 - report any import failure verbatim
        return False, f"{exc.__class__.__name__}: {exc}"


def engines() -> list[dict]:
    """Optional engines: usable here or not, and why."""
    import torch

    cuda = torch.cuda.is_available()
    rows = []
    ok, why = _importable("llama_cpp")
    rows.append({"engine": "llama.cpp (llama-cpp-python)", "usable": ok,
                 "why": why if not ok else f"version {_version('llama-cpp-python')}",
                 "install": "pip install 'llama-cpp-python[server]'  (compiles llama.cpp, minutes)"})
    # Importing llm-compressor takes seconds and logs; finding it is enough to say it is installed.
    ok = importlib.util.find_spec("llmcompressor") is not None
    why = "not installed"
    rows.append({"engine": "llm-compressor (GPTQ/AWQ reference)", "usable": ok,
                 "why": why if not ok else f"version {_version('llmcompressor')}",
                 "install": "pip install -c constraints.txt llmcompressor"})
    vllm = _version("vllm")
    rows.append({"engine": "vLLM (GPU serving)", "usable": bool(vllm and cuda),
                 "why": ("needs a CUDA GPU" if not cuda else "not installed") if not (vllm and cuda)
                 else f"version {vllm}", "install": "on a GPU runtime: pip install vllm"})
    rows.append({"engine": "GPTQModel (GPU/CPU kernels)", "usable": bool(_version("gptqmodel")),
                 "why": "installed" if _version("gptqmodel") else "not installed (optional)",
                 "install": "pip install gptqmodel  (declares torch>=2.14.1; Colab)"})
    return rows


def cache_status() -> tuple[str, str | None]:
    """(cache folder, None) if the artifact cache can be created and written to, else (folder, what is
    wrong and what to do). Never raises: ``doctor`` reports it, ``prepare`` refuses to start with it."""
    import platformdirs

    from . import artifacts

    where = os.environ.get(artifacts.ENV_VAR) or platformdirs.user_cache_dir("quantedu")
    try:
        where = str(artifacts.cache_dir())
        with tempfile.TemporaryFile(dir=where):  # a folder can exist and still refuse files
            pass
    except OSError as exc:
        why = f"{exc.__class__.__name__}: {exc}"
        if artifacts.ENV_VAR not in why:
            why += (f"; point {artifacts.ENV_VAR} at a writable folder, e.g. "
                    f"export {artifacts.ENV_VAR}=$HOME/quantedu-cache")
        return where, why
    return where, None


def report() -> dict:
    """Versions, CPU/GPU, memory, and the model cache location."""
    import psutil
    import torch

    from . import models

    info = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "ram_total_GiB": round(psutil.virtual_memory().total / 2**30, 1),
        "ram_available_GiB": round(psutil.virtual_memory().available / 2**30, 1),
        "cuda": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    where, problem = cache_status()
    info["cache_dir"] = where if problem is None else f"UNUSABLE {where} - {problem}"
    for dist in ("quantedu", "torch", "transformers", "gguf", "accelerate", "numpy", "compressed-tensors"):
        info[dist] = _version(dist)
    try:
        info["offline_model"] = str(models.offline_gguf_path())
    except models.ModelError as exc:
        info["offline_model"] = f"MISSING - {exc}"
    return info


def print_report() -> None:
    for key, value in report().items():
        print(f"{key:>18}: {value}")
    print("\nOptional engines:")
    for row in engines():
        mark = "yes" if row["usable"] else "no "
        line = f"  [{mark}] {row['engine']}: {row['why']}"
        if not row["usable"]:
            line += f"\n        install: {row['install']}"
        print(line)
