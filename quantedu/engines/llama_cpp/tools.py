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

from ...artifacts import atomic_path
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


def tool_env(n_threads: int | None = None) -> dict:
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
                                env=env or tool_env(), start_new_session=True,
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
        return run_tool([*cmd, src, tmp, mix.upper(), nthread], timeout=timeout, env=tool_env(nthread))


def _text_command(tool: str, model_gguf, text_file, ctx: int, chunks: int | None, n_threads: int,
                  batch: int | None = None) -> list:
    """``TOOL -m MODEL -f TEXT -c CTX -b BATCH -t N -tb N [--chunks N]``, the files checked first: how every
    tool here that reads a text starts."""
    for f, what in ((model_gguf, "model"), (text_file, "text")):
        if not Path(f).is_file():
            raise FileNotFoundError(f"{what} file {f} does not exist")
    cmd = [binary(tool), "-m", model_gguf, "-f", text_file, "-c", ctx, "-b", batch or ctx, "-t", n_threads,
           "-tb", n_threads]
    return cmd + ["--chunks", chunks] if chunks is not None else cmd


def imatrix(model_gguf, text_file, out, ctx: int = 512, chunks: int | None = None, n_threads: int = 1,
            compute_ppl: bool = False, overwrite: bool = False, extra=(), timeout: float = 900.0) -> ToolRun:
    """``llama-imatrix -m MODEL -f TEXT -o OUT -c CTX [--chunks N] -t N``: the importance matrix file.

    The text is tokenized whole and cut into chunks of ``ctx`` tokens (the tool wants at least two
    chunks' worth). The file is in the GGUF imatrix format (tensors ``<name>.in_sum2`` and ``<name>.counts``),
    or, for a name ending in ``.dat`` as in older tutorials, the legacy format that name promises (this
    llama.cpp would otherwise write GGUF under the ``.dat`` name, with a warning). Read either back with
    :func:`read_imatrix`.
    """
    cmd = _text_command("llama-imatrix", model_gguf, text_file, ctx, chunks, n_threads)
    if not compute_ppl:
        cmd.append("--no-ppl")
    fmt = "dat" if Path(out).suffix.lower() == ".dat" else "gguf"  # the seed's `-o imatrix.dat` means legacy
    with _atomic_output(out, overwrite) as tmp:
        return run_tool([*cmd, "-o", tmp, "--output-format", fmt, *extra], timeout=timeout, env=tool_env(n_threads))


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
               batch: int | None = None, extra=(), timeout: float = 900.0,
               env: dict | None = None) -> PerplexityResult:
    """``llama-perplexity -m MODEL -f TEXT -c CTX [--chunks N] -t N`` and its final estimate (``env``: extra
    environment variables for the tool, e.g. :data:`.kv_cache.ROTATION_ENV`).

    llama-perplexity's protocol: the whole text tokenized (a BOS in front if the model asks for one), cut
    into chunks of ``ctx`` tokens, and only the **second half** of each chunk scored (every scored token
    sees at least ``ctx/2`` tokens of context). The course's :func:`quantedu.engines.llama_cpp.bindings.perplexity`
    scores every position of each window, so its numbers are higher on the same text.
    """
    cmd = _text_command("llama-perplexity", model_gguf, text_file, ctx, chunks, n_threads, batch)
    run = run_tool([*cmd, *extra], timeout=timeout, env={**tool_env(n_threads), **(env or {})})
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
    The course's :func:`quantedu.engines.llama_cpp.bindings.perplexity` scores every position (and runs without flash
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


# --- llama-perplexity's KL-divergence mode --------------------------------------------------------------

_NUM = r"(-?[0-9.]+(?:e[-+]?\d+)?|nan|-?inf)"
_KLD_LINES = {
    "kld": rf"Mean\s+KLD:\s+{_NUM}\s+±\s+{_NUM}",
    "same_top": rf"Same top p:\s+{_NUM}\s+±\s+{_NUM}\s+%",
    "delta_p": rf"Mean\s+Δp:\s+{_NUM}\s+±\s+{_NUM}\s+%",
    "rms_delta_p": rf"RMS Δp\s+:\s+{_NUM}\s+±\s+{_NUM}\s+%",
    "ppl": rf"Mean PPL\(Q\)\s+:\s+{_NUM}\s+±\s+{_NUM}",
    "ppl_base": rf"Mean PPL\(base\)\s+:\s+{_NUM}\s+±\s+{_NUM}",
}
_KLD_PERCENTILES = {"max": "Maximum", "99.9": "99.9%", "99": "99.0%", "95": "95.0%", "90": "90.0%",
                    "median": "Median ", "10": "10.0%", "5": " 5.0%", "1": " 1.0%", "0.1": " 0.1%", "min": "Minimum"}


@dataclass
class KLDivergenceResult:
    """What ``llama-perplexity --kl-divergence`` prints at the end. Fractions, not percent (``same_top``,
    ``delta_p``, ``rms_delta_p``); each ``*_se`` is the tool's ``+/-``, which treats tokens as independent."""

    kld: float
    kld_se: float
    kld_percentiles: dict[str, float]   # "max", "99.9", "99", "95", "90", "median", "10", "5", "1", "0.1", "min"
    same_top: float
    same_top_se: float
    delta_p: float
    delta_p_se: float
    rms_delta_p: float
    rms_delta_p_se: float
    ppl: float
    ppl_base: float
    run: ToolRun


def kl_divergence_base(model_gguf, text_file, base_file, ctx: int = 512, chunks: int | None = None,
                       n_threads: int = 1, extra=(), overwrite: bool = False, timeout: float = 900.0) -> ToolRun:
    """``llama-perplexity -m BASE -f TEXT -c CTX --kl-divergence-base FILE``: the base model's perplexity run
    that saves, for every scored token (the second half of each chunk, as :func:`perplexity`), its whole
    log-probability distribution, 16 bits per value (:func:`read_kl_divergence_base`), and the tokens."""
    cmd = _text_command("llama-perplexity", model_gguf, text_file, ctx, chunks, n_threads)
    with _atomic_output(base_file, overwrite) as tmp:
        return run_tool([*cmd, *extra, "--kl-divergence-base", tmp], timeout=timeout, env=tool_env(n_threads))


def kl_divergence(model_gguf, base_file, n_threads: int = 1, extra=(), timeout: float = 900.0) -> KLDivergenceResult:
    """``llama-perplexity -m QUANT --kl-divergence-base FILE --kl-divergence``: the model scored on the base
    file's tokens against the base's saved log-probabilities (:func:`kl_divergence_base`)."""
    for f, what in ((model_gguf, "model"), (base_file, "base log-probabilities")):
        if not Path(f).is_file():
            raise FileNotFoundError(f"{what} file {f} does not exist")
    ctx = read_kl_divergence_base(base_file, log_probs=False).n_ctx
    run = run_tool([binary("llama-perplexity"), "-m", model_gguf, "--kl-divergence-base", base_file, "--kl-divergence",
                    "-c", ctx, "-b", ctx, "-t", n_threads, "-tb", n_threads, *extra], timeout=timeout,
                   env=tool_env(n_threads))
    found = {k: re.search(p, run.output) for k, p in _KLD_LINES.items()}
    if not all(found.values()):
        missing = ", ".join(k for k, m in found.items() if not m)
        raise ToolError(f"llama-perplexity --kl-divergence printed no {missing} (fewer than 100 tokens scored?)."
                        f"\n  command: {' '.join(run.cmd)}\n{run.tail(25)}")
    pct = {k: re.search(rf"^{re.escape(label)}\s*KLD:\s+{_NUM}", run.output, re.M) for k, label in _KLD_PERCENTILES.items()}
    v = {k: (float(m[1]), float(m[2])) for k, m in found.items()}
    return KLDivergenceResult(
        kld=v["kld"][0], kld_se=v["kld"][1], kld_percentiles={k: float(m[1]) for k, m in pct.items() if m},
        same_top=v["same_top"][0] / 100, same_top_se=v["same_top"][1] / 100, delta_p=v["delta_p"][0] / 100,
        delta_p_se=v["delta_p"][1] / 100, rms_delta_p=v["rms_delta_p"][0] / 100,
        rms_delta_p_se=v["rms_delta_p"][1] / 100, ppl=v["ppl"][0], ppl_base=v["ppl_base"][0], run=run)


@dataclass
class KLDivergenceBase:
    """A ``--kl-divergence-base`` file read back: ``tokens`` ``(n_chunks, n_ctx)`` (as tokenized, before the
    tool puts a BOS in front for a vocabulary that asks for one), and per chunk the log-probabilities of the
    predictions at positions ``first = n_ctx // 2 .. n_ctx - 2``, decoded from 16 bits: ``log_probs``
    ``(n_chunks, n_ctx - 1 - first, n_vocab)`` float32, and ``step``, each row's quantization step
    (rounding error at most ``step / 2``; values below ``max - 16`` nats are stored as that floor)."""

    n_ctx: int
    n_vocab: int
    tokens: np.ndarray
    log_probs: np.ndarray | None
    step: np.ndarray | None

    @property
    def first(self) -> int:
        """The first predicting position scored in each chunk (``Baseline(..., score_from=first)``)."""
        return self.n_ctx // 2

    def windows(self, bos: int | None = None):
        """The chunks as the tool evaluates them, a ``(n_chunks, n_ctx)`` torch tensor: ``bos`` (the BOS id of a
        vocabulary with ``add_bos_token``) replaces each chunk's first token, as llama-perplexity does."""
        import torch
        w = torch.from_numpy(self.tokens.astype(np.int64))
        if bos is not None:
            w[:, 0] = bos
        return w


def read_kl_divergence_base(base_file, log_probs: bool = True) -> KLDivergenceBase:
    """Read the file :func:`kl_divergence_base` wrote (llama.cpp's format: ``_logits_``, ``n_ctx`` u32,
    ``n_vocab`` and ``n_chunk`` i32, the tokens as i32, then per scored token a row of ``nv = 2*((n_vocab+1)//2)
    + 4`` u16: two float32 (``scale``, ``min_log_prob``) and ``n_vocab`` codes, log p = scale * code + min)."""
    raw = np.fromfile(base_file, dtype=np.uint8)
    if raw[:8].tobytes() != b"_logits_":
        raise ValueError(f"{base_file} is not a llama-perplexity --kl-divergence-base file (no _logits_ magic)")
    n_ctx, n_vocab, n_chunk = int(raw[8:12].view(np.uint32)[0]), *(int(x) for x in raw[12:20].view(np.int32))
    end = 20 + 4 * n_ctx * n_chunk
    tokens = raw[20:end].view(np.int32).reshape(n_chunk, n_ctx).copy()
    if not log_probs:
        return KLDivergenceBase(n_ctx, n_vocab, tokens, None, None)
    nv, rows = 2 * ((n_vocab + 1) // 2) + 4, n_ctx - 1 - n_ctx // 2
    codes = raw[end:].view(np.uint16)
    if codes.size != n_chunk * rows * nv:
        raise ValueError(f"{base_file} is truncated: {codes.size} values for {n_chunk} chunks of {rows} x {nv}")
    codes = codes.reshape(n_chunk, rows, nv)
    head = np.ascontiguousarray(codes[..., :4]).view(np.float32)  # (n_chunk, rows, 2): scale, min_log_prob
    scale, low = head[..., :1], head[..., 1:2]
    return KLDivergenceBase(n_ctx, n_vocab, tokens, (scale * codes[..., 4:4 + n_vocab] + low).astype(np.float32),
                            scale[..., 0].copy())
