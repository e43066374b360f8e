"""What the top of every notebook calls: load the model, tokenizer and corpus for a ``MODEL`` choice."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .data import Corpus, calibration_batches, check_windows, load_corpus
from .evaluate import perplexity
from .models import load_model


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

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"

    def perplexity(self, model=None, n_windows: int | None = None, seq_len: int | None = None) -> float:
        """Perplexity of ``model`` (default: the session's) on the session's evaluation windows."""
        n_windows, seq_len = check_windows(self.n_windows if n_windows is None else n_windows,
                                           self.seq_len if seq_len is None else seq_len, "n_windows", "perplexity")
        return perplexity(model if model is not None else self.model, self.tokenizer, self.corpus,
                          n_windows=n_windows, seq_len=seq_len, progress=False)

    def calibration(self, n_samples: int, seq_len: int, seed: int = 0) -> torch.Tensor:
        """``(n_samples, seq_len)`` calibration token windows from the session's corpus."""
        return calibration_batches(self.tokenizer, n_samples, seq_len, seed=seed, corpus=self.corpus)


def start(model: str = "auto", corpus: str = "pydoc", seed: int = 0, n_windows: int = 4, seq_len: int = 512,
          **load_kwargs) -> Session:
    """Seed everything, load ``(model, tokenizer)`` (printing which model and why) and the corpus.

    ``n_windows`` x ``seq_len`` are the evaluation windows ``Session.perplexity`` uses by default.
    On GPU, fp16/bf16 weights are used.
    """
    torch.manual_seed(seed)
    m, tok = load_model(model, **load_kwargs)
    return Session(m, tok, load_corpus(corpus), model, n_windows=n_windows, seq_len=seq_len)


COURSE_MAP = [
    ("00_setup_and_tour", "Set-up and tour", "baseline perplexity, tokens/s, memory of the fp32 model"),
    ("01_memory_math", "Memory math", "bytes of weights/KV cache/activations, predicted vs measured"),
    ("02_ptq_vs_qat", "PTQ vs QAT", "RTN perplexity by bits x group size; QAT vs PTQ at the same bits"),
    ("03_gptq", "GPTQ", "GPTQ vs RTN perplexity, vs llm-compressor, quantization time"),
    ("04_awq", "AWQ", "salience experiment, AWQ vs RTN/GPTQ perplexity, vs llm-compressor"),
    ("05_gguf_kquants", "GGUF and K-quants", "bit-exact K-quants vs llama.cpp; size/ppl/speed per GGUF type"),
    ("06_serving", "Serving", "llama.cpp server (CPU) / vLLM (GPU): latency, throughput, concurrency"),
    ("07_benchmark_and_guide", "Benchmark and guide", "the seed's comparison table re-measured; selection guide"),
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
