"""Where llama.cpp's tools are: the pinned version, this machine's build folder, the binaries and the
converter in it (or in ``QUANTEDU_LLAMA_TOOLS``), and what to run when they are missing."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import subprocess
from functools import lru_cache
from pathlib import Path

ENV_VAR = "QUANTEDU_LLAMA_TOOLS"          # a folder with your own llama.cpp binaries (overrides the build)
CACHE_ENV_VAR = "QUANTEDU_TOOLS_CACHE"    # where builds are kept (default: the user cache folder)
JOBS_ENV_VAR = "QUANTEDU_BUILD_JOBS"
DEFAULT_VERSION = "0.3.36"                # constraints.txt's llama-cpp-python, if it is not installed
PACKAGE = "llama-cpp-python"
TOOLS = ("llama-server", "llama-quantize", "llama-imatrix", "llama-perplexity")
BUILD_COMMAND = "make llama-tools"
CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",            # self-contained binaries: the folder can be moved into place
    "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_OPENSSL=OFF",                # no HTTPS: the server listens on 127.0.0.1 only
    "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF",  # no npm, no web-UI download: the API only
    "-DGGML_CCACHE=OFF",
)
INSTALL_CMAKE = ("cmake is not installed. Install it (Debian/Ubuntu: sudo apt-get install cmake; "
                 "macOS: brew install cmake; anywhere: pip install cmake), then run `make llama-tools`.")
INSTALL_COMPILER = ("no C++ compiler found. Install one (Debian/Ubuntu: sudo apt-get install build-essential; "
                    "macOS: xcode-select --install), then run `make llama-tools`.")


class ToolError(RuntimeError):
    """A llama.cpp tool failed (the message has the command and the end of its output)."""


class ToolsMissingError(ToolError, FileNotFoundError):
    """The tools are not built here; the message says which command builds them."""


class BuildError(ToolError):
    """The build failed; the message has the failing step and the end of its log."""


# ------------------------------------------------------------------------------------------ where

def version() -> str:
    """The llama-cpp-python version whose llama.cpp the tools are built from (the installed one)."""
    try:
        from importlib.metadata import PackageNotFoundError, version as dist_version
        return dist_version(PACKAGE)
    except PackageNotFoundError:
        return DEFAULT_VERSION


def build_supported() -> tuple[bool, str]:
    """(True, "") where :func:`build` can work, else (False, why)."""
    if os.name != "posix":
        return False, (f"the llama.cpp tools build is written for Linux and macOS; on {platform.system()} "
                       f"build llama.cpp yourself and set {ENV_VAR} to its build/bin folder")
    return True, ""


def _first_line(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (out.stdout or out.stderr).strip().splitlines()[0] if out.returncode == 0 and (out.stdout or out.stderr) \
        else ""


def _cpu_id() -> str:
    """What GGML_NATIVE compiles for: the CPU's model and instruction-set flags."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return f"{platform.machine()} {platform.processor()}"
    keys = {}
    for line in text.splitlines():
        k, _, v = line.partition(":")
        k = k.strip()
        if k in ("model name", "flags", "Features", "CPU implementer", "CPU part") and k not in keys:
            keys[k] = " ".join(sorted(v.split())) if k in ("flags", "Features") else v.strip()
    return f"{platform.machine()} " + " | ".join(f"{k}={keys[k]}" for k in sorted(keys))


@lru_cache(maxsize=4)
def _identity(pkg_version: str) -> dict:
    cxx = os.environ.get("CXX", "c++")
    cc = os.environ.get("CC", "cc")
    return {"llama-cpp-python": pkg_version, "cmake_flags": list(CMAKE_FLAGS),
            "cxx": _first_line([cxx, "--version"]), "cc": _first_line([cc, "--version"]),
            "cpu": hashlib.sha256(_cpu_id().encode()).hexdigest()[:16], "system": platform.system()}


def cache_root() -> Path:
    root = os.environ.get(CACHE_ENV_VAR)
    if not root:
        import platformdirs
        root = platformdirs.user_cache_dir("quantedu")
    return Path(root).expanduser()


def build_dir(pkg_version: str | None = None) -> Path:
    """The folder a build for this version, compiler and CPU lives in (it may not exist yet)."""
    pkg_version = pkg_version or version()
    ident = _identity(pkg_version)
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:10]
    return cache_root() / f"llama.cpp-{pkg_version}-{digest}"


def _complete(folder: Path) -> bool:
    return (folder / ".complete").is_file() and all((folder / "bin" / t).is_file() for t in TOOLS)


def tools_dir() -> Path:
    """The folder holding the binaries: ``QUANTEDU_LLAMA_TOOLS`` if set, else this machine's build."""
    override = os.environ.get(ENV_VAR)
    if override:
        return Path(override).expanduser()
    return build_dir() / "bin"



def _missing_message(what: str) -> str:
    if os.environ.get(ENV_VAR):
        return (f"{what} not found in {tools_dir()} ({ENV_VAR} points there). Point {ENV_VAR} at the folder "
                f"with llama.cpp's binaries (e.g. llama.cpp/build/bin), or unset it and run `{BUILD_COMMAND}`.")
    ok, why = build_supported()
    if not ok:
        return f"{what} is not available: {why}."
    return (f"{what} is not built on this machine. Run `{BUILD_COMMAND}` in the course folder (part of "
            f"`make setup`; compiles llama.cpp's tools from the pinned {PACKAGE}=={version()} source, about "
            f"4-5 minutes on 2 idle cores, once per machine; expected in {build_dir()}), or set {ENV_VAR} to a "
            f"folder with your own llama.cpp binaries.")


def binary(name: str) -> Path:
    """Path of one tool (``"llama-quantize"``), or :class:`ToolsMissingError` naming ``make llama-tools``."""
    if name not in TOOLS:
        raise ValueError(f"unknown tool {name!r}; the course builds {', '.join(TOOLS)}")
    folder = tools_dir()
    for candidate in (folder / name, folder / "bin" / name):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            if not os.environ.get(ENV_VAR) and not (folder.parent / ".complete").is_file():
                break  # a folder without the completion marker is not a build we trust
            return candidate
    raise ToolsMissingError(_missing_message(name))


def convert_script() -> Path:
    """llama.cpp's ``convert_hf_to_gguf.py`` from the same source (kept beside the binaries)."""
    folder = tools_dir()
    for candidate in (folder.parent / "convert" / "convert_hf_to_gguf.py", folder / "convert_hf_to_gguf.py",
                      folder.parent / "convert_hf_to_gguf.py", folder.parent.parent / "convert_hf_to_gguf.py"):
        if candidate.is_file():
            return candidate
    raise ToolsMissingError(_missing_message("convert_hf_to_gguf.py"))


def status() -> dict:
    """What ``quantedu doctor`` reports: found or not, where, the build's record, or what to run."""
    out = {"dir": str(tools_dir()), "version": version(), "override": bool(os.environ.get(ENV_VAR))}
    try:
        out["tools"] = {t: str(binary(t)) for t in TOOLS}
        out["convert"] = str(convert_script())
        out["ok"], out["why"] = True, ""
    except ToolsMissingError as exc:
        out["ok"], out["why"] = False, str(exc)
    record = tools_dir().parent / "build.json"
    if record.is_file():
        with contextlib.suppress(OSError, ValueError):
            out["build"] = json.loads(record.read_text())
    return out


def available() -> bool:
    return status()["ok"]
