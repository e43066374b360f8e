"""llama.cpp, in one place: its command-line tools built from the pinned source, its two servers, the
llama-cpp-python bindings (:mod:`.bindings`: load a GGUF, perplexity, tokens/s, the C quantizer) and ggml's C
block quantizers through ctypes (:mod:`.ggml`, the bit-exact reference of :mod:`quantedu.gguf`).

The tools, built from the llama.cpp source the course already pins.

Tutorials use llama.cpp through its programs: ``convert_hf_to_gguf.py`` (a Hugging Face checkpoint ->
an f16 GGUF), ``llama-quantize``, ``llama-imatrix``, ``llama-perplexity`` and ``llama-server``.
``pip install llama-cpp-python`` ships none of them, but its source distribution carries the llama.cpp
tree it compiles (``vendor/llama.cpp``). :func:`build` compiles the four programs from exactly that
source (``llama-cpp-python==<the installed version>``), so the tools run the same llama.cpp code as the
library the course calls through its C API:

* CMake, ``Release``, static libraries, no curl / OpenSSL / web UI / tests / examples, ``-j2``
  (``QUANTEDU_BUILD_JOBS`` to change it); 4-5 minutes on two idle cores, more on a busy machine.
  ``make llama-tools`` runs it and prints the time.
* Built once per machine, outside the clone: ``<cache>/llama.cpp-<version>-<hash>/`` where ``<cache>``
  is ``QUANTEDU_TOOLS_CACHE`` or the user cache folder (``~/.cache/quantedu``) and ``<hash>`` covers the
  CMake flags, the compiler and the CPU (``GGML_NATIVE`` compiles for this CPU's instruction set).
  A second clone finds the same folder and does not rebuild.
* Atomic: everything happens in a hidden temporary folder that is renamed into place only when the
  four programs exist and ran; an interrupted build leaves nothing the course would use (its
  temporary folder is removed by the next build).
* ``QUANTEDU_LLAMA_TOOLS=/path/to/llama.cpp/build/bin`` uses binaries you built yourself instead.

The wrappers run the programs as subprocesses and raise :class:`ToolError` with the command and the
tail of its output when one fails; :func:`start_llama_server` starts ``llama-server`` as a
:class:`quantedu.engines.server.Server` (127.0.0.1, free port, ``/health`` wait, process-group stop, atexit
and parent-death cleanup).
"""
from __future__ import annotations

from .builder import build, main
from .checkpoint import checkpoint_with_gguf_tokenizer, convertible_checkpoint
from .files import compare_tensors, metadata_differences, read_header, read_imatrix, tensor_bytes
from .locate import (BUILD_COMMAND, CACHE_ENV_VAR, CMAKE_FLAGS, DEFAULT_VERSION, ENV_VAR, INSTALL_CMAKE,
                     INSTALL_COMPILER, JOBS_ENV_VAR, PACKAGE, TOOLS, BuildError, ToolError, ToolsMissingError,
                     available, binary, build_dir, build_supported, cache_root, convert_script, status, tools_dir,
                     version)
from .server import (LLAMA_CPP_EXTRA, llama_cpp_command, llama_cpp_server, llama_server, llama_server_command,
                     start_llama_cpp, start_llama_server)
from .tools import (PerplexityResult, ToolRun, convert_hf_to_gguf, imatrix, perplexity, perplexity_tool_protocol,
                    quantize, run_tool)
from .tools import KLDivergenceBase, KLDivergenceResult, kl_divergence, kl_divergence_base, read_kl_divergence_base
from .quality import course_bytes, kld_tolerance

__all__ = [
    "BUILD_COMMAND", "CACHE_ENV_VAR", "CMAKE_FLAGS", "DEFAULT_VERSION", "ENV_VAR", "INSTALL_CMAKE",
    "INSTALL_COMPILER", "JOBS_ENV_VAR", "PACKAGE", "TOOLS",
    "BuildError", "ToolError", "ToolsMissingError",
    "available", "binary", "build", "build_dir", "build_supported", "cache_root", "convert_script", "main",
    "status", "tools_dir", "version",
    "PerplexityResult", "ToolRun", "convert_hf_to_gguf", "imatrix", "perplexity", "perplexity_tool_protocol",
    "quantize", "run_tool",
    "KLDivergenceBase", "KLDivergenceResult", "kl_divergence", "kl_divergence_base", "read_kl_divergence_base",
    "course_bytes", "kld_tolerance",
    "checkpoint_with_gguf_tokenizer", "convertible_checkpoint",
    "compare_tensors", "metadata_differences", "read_header", "read_imatrix", "tensor_bytes",
    "llama_server", "llama_server_command", "start_llama_server",
    "LLAMA_CPP_EXTRA", "llama_cpp_command", "llama_cpp_server", "start_llama_cpp",
]


def __getattr__(name):  # LLAMA_TOOLS_DIR, computed when asked (it runs `c++ --version` once)
    if name == "LLAMA_TOOLS_DIR":
        return tools_dir()
    raise AttributeError(name)

