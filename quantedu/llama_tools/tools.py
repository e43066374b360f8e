"""The wrappers around llama.cpp's programs: ``convert_hf_to_gguf.py``, ``llama-quantize``,
``llama-imatrix`` and ``llama-perplexity``, each run to the end in its own process group
(:func:`run_tool`), its output file written atomically; and llama-perplexity's protocol replayed through
llama-cpp-python (:func:`perplexity_tool_protocol`)."""
from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..artifacts import atomic_path
from ..procs import set_pdeathsig
from .locate import ToolError, binary, convert_script


@dataclass
class ToolRun:
    """One finished tool run: the command, its exit code, its output, and how long it took."""

    cmd: list[str]
    returncode: int
    output: str
    seconds: float

    def tail(self, n_lines: int = 20) -> str:
        return "\n".join(self.output.splitlines()[-n_lines:])


def _tool_env(n_threads: int | None = None) -> dict:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}  # idle OpenMP threads sleep (a shared 2-core CPU)
    if n_threads:
        env["OMP_NUM_THREADS"] = str(n_threads)
    return env


def run_tool(cmd: list, timeout: float = 900.0, env: dict | None = None, check: bool = True) -> ToolRun:
    """Run a tool command to the end (output captured); :class:`ToolError` with its tail if it fails.

    The tool runs in its own process group with the parent-death signal set, and an interrupt (or a
    timeout) kills that whole group: a stopped notebook cell leaves no llama.cpp process behind.
    """
    cmd = [str(c) for c in cmd]
    t0 = time.perf_counter()
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env or _tool_env(), start_new_session=True,
                                preexec_fn=set_pdeathsig(signal.SIGKILL))
    except OSError as exc:
        raise ToolError(f"could not run {cmd[0]}: {exc}") from exc
    try:
        out, _ = proc.communicate(timeout=timeout)
    except BaseException as exc:  # timeout, KeyboardInterrupt: no orphan
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if isinstance(exc, subprocess.TimeoutExpired):
            raise ToolError(f"{Path(cmd[0]).name} did not finish within {timeout:.0f} s: {' '.join(cmd)}") from None
        raise
    run = ToolRun(cmd, proc.returncode, out.decode(errors="replace"), time.perf_counter() - t0)
    if check and run.returncode != 0:
        raise ToolError(f"{Path(cmd[0]).name} failed with exit code {run.returncode}.\n  command: {' '.join(cmd)}\n"
                        f"  last lines of its output:\n{run.tail(25)}")
    return run


@contextlib.contextmanager
def _atomic_output(dst, overwrite: bool = False) -> Path:
    """A temporary path beside ``dst`` for a tool to write; renamed to ``dst`` only if the tool succeeded.
    (The package's write rules: a file there that quantedu did not write is replaced only with ``overwrite``.)"""
    with atomic_path(Path(dst), overwrite=overwrite) as tmp:
        yield Path(tmp)
        if not Path(tmp).is_file():
            raise ToolError(f"the tool exited successfully but wrote no {Path(dst).name}")


# convert_hf_to_gguf.py run by this Python. One adjustment, only when sentencepiece is not installed:
# for a model without tokenizer.model the converter's SentencePiece probe imports sentencepiece before it
# looks for the file, so the import error would end the run instead of moving on to the tokenizer.json
# paths. The probe is made to look for the file first (what it does anyway when sentencepiece exists).
_CONVERT_RUNNER = """
import importlib.util, runpy, sys
from pathlib import Path
script = Path(sys.argv[1]).resolve()
sys.path.insert(0, str(script.parent))
sys.path.insert(1, str(script.parent / 'gguf-py'))
if importlib.util.find_spec('sentencepiece') is None:
    from conversion import base
    _probe = base.TextModel._create_vocab_sentencepiece
    def _create_vocab_sentencepiece(self):
        if not (self.dir_model / 'tokenizer.model').is_file():
            raise FileNotFoundError(f"File not found: {self.dir_model / 'tokenizer.model'}")
        return _probe(self)
    base.TextModel._create_vocab_sentencepiece = _create_vocab_sentencepiece
sys.argv = [str(script), *sys.argv[2:]]
runpy.run_path(str(script), run_name='__main__')
"""


def convert_hf_to_gguf(model_dir, out, outtype: str = "f16", overwrite: bool = False,
                       timeout: float = 900.0) -> ToolRun:
    """``python convert_hf_to_gguf.py MODEL_DIR --outfile OUT --outtype OUTTYPE`` (llama.cpp's converter).

    Runs with this Python (it needs torch, numpy, transformers; ``gguf`` comes from the source's own
    ``gguf-py`` folder, as in a llama.cpp checkout). ``outtype``: f32, f16, bf16, q8_0, auto.
    """
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} is not a Hugging Face checkpoint folder (no config.json)")
    script = convert_script()
    with _atomic_output(out, overwrite) as tmp:
        return run_tool([sys.executable, "-c", _CONVERT_RUNNER, script, model_dir, "--outfile", tmp,
                         "--outtype", outtype], timeout=timeout)


def quantize(src, dst, mix: str, imatrix_file=None, nthread: int = 1, allow_requantize: bool = True,
             overwrite: bool = False, timeout: float = 900.0) -> ToolRun:
    """``llama-quantize [--imatrix FILE] SRC DST MIX NTHREAD``.

    ``allow_requantize`` adds ``--allow-requantize``: needed when ``src`` is already quantized (the
    shipped Q4_1 file); llama.cpp dequantizes it to F32 first.
    """
    src = Path(src)
    if not src.is_file():
        raise FileNotFoundError(f"{src} does not exist (give a .gguf file)")
    cmd = [binary("llama-quantize")]
    if allow_requantize:
        cmd.append("--allow-requantize")
    if imatrix_file is not None:
        if not Path(imatrix_file).is_file():
            raise FileNotFoundError(f"imatrix file {imatrix_file} does not exist")
        cmd += ["--imatrix", imatrix_file]
    with _atomic_output(dst, overwrite) as tmp:
        return run_tool([*cmd, src, tmp, mix.upper(), nthread], timeout=timeout, env=_tool_env(nthread))


def imatrix(model_gguf, text_file, out, ctx: int = 512, chunks: int | None = None, n_threads: int = 1,
            compute_ppl: bool = False, overwrite: bool = False, extra=(), timeout: float = 900.0) -> ToolRun:
    """``llama-imatrix -m MODEL -f TEXT -o OUT -c CTX [--chunks N] -t N``: the importance matrix file.

    The text is tokenized whole and cut into chunks of ``ctx`` tokens (the tool wants at least two
    chunks' worth). The file is in the GGUF imatrix format (tensors ``<name>.in_sum2`` and ``<name>.counts``),
    or, for a name ending in ``.dat`` as in older tutorials, the legacy format that name promises (this
    llama.cpp would otherwise write GGUF under the ``.dat`` name, with a warning). Read either back with
    :func:`read_imatrix`.
    """
    for f, what in ((model_gguf, "model"), (text_file, "text")):
        if not Path(f).is_file():
            raise FileNotFoundError(f"{what} file {f} does not exist")
    cmd = [binary("llama-imatrix"), "-m", model_gguf, "-f", text_file, "-c", ctx, "-b", ctx, "-t", n_threads,
           "-tb", n_threads]
    if chunks is not None:
        cmd += ["--chunks", chunks]
    if not compute_ppl:
        cmd.append("--no-ppl")
    fmt = "dat" if Path(out).suffix.lower() == ".dat" else "gguf"  # the seed's `-o imatrix.dat` means legacy
    with _atomic_output(out, overwrite) as tmp:
        return run_tool([*cmd, "-o", tmp, "--output-format", fmt, *extra], timeout=timeout, env=_tool_env(n_threads))


_PPL = re.compile(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)")
_CHUNK = re.compile(r"\[(\d+)\]([0-9.]+|nan|inf)")


@dataclass
class PerplexityResult:
    ppl: float
    stderr: float
    per_chunk: list[float]       # running estimate after each chunk, as the tool prints it
    n_ctx: int
    chunks: int
    run: ToolRun


def perplexity(model_gguf, text_file, ctx: int = 512, chunks: int | None = None, n_threads: int = 1,
               batch: int | None = None, extra=(), timeout: float = 900.0, env: dict | None = None) -> PerplexityResult:
    """``llama-perplexity -m MODEL -f TEXT -c CTX [--chunks N] -t N`` and its final estimate.

    llama-perplexity's protocol: the whole text tokenized (a BOS in front if the model asks for one), cut
    into chunks of ``ctx`` tokens, and only the **second half** of each chunk scored (every scored token
    sees at least ``ctx/2`` tokens of context). The course's :func:`quantedu.gguf.llama.perplexity`
    scores every position of each window, so its numbers are higher on the same text.
    """
    for f, what in ((model_gguf, "model"), (text_file, "text")):
        if not Path(f).is_file():
            raise FileNotFoundError(f"{what} file {f} does not exist")
    cmd = [binary("llama-perplexity"), "-m", model_gguf, "-f", text_file, "-c", ctx, "-t", n_threads,
           "-tb", n_threads, "-b", batch or ctx]
    if chunks is not None:
        cmd += ["--chunks", chunks]
    run = run_tool([*cmd, *extra], timeout=timeout, env={**_tool_env(n_threads), **(env or {})})
    m = _PPL.search(run.output)
    if not m:
        raise ToolError(f"llama-perplexity printed no final estimate.\n  command: {' '.join(run.cmd)}\n{run.tail(25)}")
    per_chunk = [float(v) for _, v in _CHUNK.findall(run.output)]
    return PerplexityResult(float(m[1]), float(m[2]), per_chunk, int(ctx), len(per_chunk), run)


def perplexity_tool_protocol(model_gguf, text: str, ctx: int = 512, chunks: int = 2, n_threads: int = 1,
                             flash_attn: bool = True) -> float:
    """llama-perplexity's protocol replayed through llama-cpp-python: the text tokenized whole (no BOS for a
    vocabulary that does not ask for one), consecutive chunks of ``ctx`` tokens, each evaluated from an empty
    KV cache, and only the predictions of the second half of each chunk scored. ``flash_attn=True`` as the
    tool's default (``-fa auto`` turns it on for a CPU); with both the same the numbers agree to about 1e-5.
    The course's :func:`quantedu.gguf.llama.perplexity` scores every position (and runs without flash
    attention)."""
    import llama_cpp
    llm = llama_cpp.Llama(model_path=str(model_gguf), n_ctx=ctx, n_batch=ctx, n_threads=n_threads,
                          n_threads_batch=n_threads, logits_all=True, flash_attn=flash_attn, verbose=False)
    try:
        bos = llm.metadata.get("tokenizer.ggml.add_bos_token", "false") == "true"
        ids = llm.tokenize(text.encode("utf-8"), add_bos=bos, special=False)
        if len(ids) < chunks * ctx:
            raise ValueError(f"text has {len(ids)} tokens, need {chunks * ctx}")
        nll, count, first = 0.0, 0, ctx // 2
        for k in range(chunks):
            window = ids[k * ctx:(k + 1) * ctx]
            if bos and k > 0:
                window = [llm.token_bos(), *window[1:]]
            llm.reset()
            llm.eval(window)
            logits = np.asarray(llm.scores[:ctx], dtype=np.float64)[first:ctx - 1]
            logits -= logits.max(axis=1, keepdims=True)
            logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
            nll -= logp[np.arange(len(logp)), window[first + 1:]].sum()
            count += len(logp)
    finally:
        llm.close()
    return float(np.exp(nll / count))


# --- the KV cache: -ctk / -ctv -------------------------------------------------------------------------

_KV_SIZE = re.compile(r"llama_kv_cache: size = +([0-9.]+) MiB \( *(\d+) cells, +(\d+) layers, +(\d+)/(\d+) seqs\), "
                      r"K \((\w+)\): +([0-9.]+) MiB, V \((\w+)\): +([0-9.]+) MiB")
_KV_ROT = re.compile(r"llama_kv_cache: attn_rot_([kv]) = (\d)")
_PASS = re.compile(r"perplexity: ([0-9.]+) seconds per pass")
KV_LOG_FLAGS = ("-lv", "4")  # llama.cpp logs its KV cache (size, rotation) only at verbosity 4 and above
ROTATION_ENV = "LLAMA_ATTN_ROT_DISABLE"  # =1: no Hadamard rotation of a quantized K/V cache


def kv_cache_flags(k_type: str = "f16", v_type: str | None = None) -> list[str]:
    """``-ctk K -ctv V`` for any llama.cpp program (llama-perplexity, llama-server, llama-cli), plus
    ``-fa on`` when V is quantized: llama.cpp stores a quantized V only for flash attention (its plain
    attention reads V transposed, which block types cannot be). Checked against the types llama.cpp has
    (:data:`quantedu.memory.KV_CACHE_TYPES`): a ValueError lists them. Pass the result as ``extra=``
    (with :data:`KV_LOG_FLAGS` to get the cache's size in the log, :func:`parse_kv_cache`)."""
    from ..memory import kv_cache_type

    k = kv_cache_type(k_type)
    v = k if v_type is None else kv_cache_type(v_type)
    flags = ["-ctk", k, "-ctv", v]
    if v not in ("f32", "f16", "bf16"):
        flags += ["-fa", "on"]
    return flags


@dataclass
class KVCacheReport:
    """The KV cache as llama.cpp reports it when it creates a context (MiB with two decimals), and whether it
    rotates a quantized K / V cache (this llama.cpp applies a Hadamard rotation to quantized caches by default)."""

    cells: int
    layers: int
    seqs: int
    k_type: str
    v_type: str
    k_mib: float
    v_mib: float
    total_mib: float
    rotate_k: bool | None = None
    rotate_v: bool | None = None

    @staticmethod
    def mib(n_bytes: int) -> float:
        """``n_bytes`` as llama.cpp prints it: ``(float)bytes / (1024.0f * 1024.0f)`` with ``%.2f``."""
        return float(f"{np.float32(n_bytes) / np.float32(1024 * 1024):.2f}")


def parse_kv_cache(output: str) -> KVCacheReport:
    """The ``llama_kv_cache: size = ...`` line (and ``attn_rot_k/v``) of a llama.cpp program's log, which it
    prints at verbosity 4 (:data:`KV_LOG_FLAGS`); the last one if several."""
    found = _KV_SIZE.findall(output)
    if not found:
        raise ToolError("no 'llama_kv_cache: size = ...' line in the output: run the program with "
                        f"{' '.join(KV_LOG_FLAGS)} (llama.cpp logs its KV cache at verbosity 4)")
    total, cells, layers, seqs, _streams, k_type, k, v_type, v = found[-1]
    rot = dict(_KV_ROT.findall(output))
    return KVCacheReport(int(cells), int(layers), int(seqs), k_type, v_type, float(k), float(v), float(total),
                         rot["k"] == "1" if "k" in rot else None, rot["v"] == "1" if "v" in rot else None)


def kv_cache_perplexity(model_gguf, text_file, k_type: str = "f16", v_type: str | None = None, ctx: int = 4096,
                        chunks: int = 1, n_threads: int = 1, rotation: bool = True, extra=(),
                        timeout: float = 900.0) -> dict:
    """``llama-perplexity ... -c CTX -ctk K -ctv V [-fa on]``: the KV memory llama.cpp allocates for that
    context and cache type, its perplexity (second half of each chunk scored, see :func:`perplexity`) and its
    speed (context tokens per second of the first pass). ``rotation=False`` sets :data:`ROTATION_ENV`, turning
    off llama.cpp's Hadamard rotation of a quantized cache. Returns ``{"kv": KVCacheReport, "ppl", "stderr",
    "tokens_per_s", "run"}``. The flags come from :func:`kv_cache_flags`; other wrappers take them as ``extra``."""
    flags = kv_cache_flags(k_type, v_type)
    res = perplexity(model_gguf, text_file, ctx=ctx, chunks=chunks, n_threads=n_threads,
                     extra=[*flags, *KV_LOG_FLAGS, *extra], timeout=timeout,
                     env=None if rotation else {ROTATION_ENV: "1"})
    per_pass = _PASS.search(res.run.output)
    return {"kv": parse_kv_cache(res.run.output), "ppl": res.ppl, "stderr": res.stderr,
            "tokens_per_s": ctx / float(per_pass[1]) if per_pass else None, "run": res.run}
