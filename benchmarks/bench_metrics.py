"""What a quality comparison costs on the course model, and how correlated its per-token numbers are.

    flock /tmp/quantedu-cpu.lock .venv/bin/python benchmarks/bench_metrics.py        # ~1-2 min on 2 cores

One ``evaluate.Baseline`` on 4 windows x 512 tokens (every position scored), then ``Baseline.compare`` for
RTN W8 g128 and RTN W4 g64 (asymmetric) on the in-domain help pages (pydoc) and the out-of-domain standard-library
source (pysource). Prints the baseline's memory (its log-probabilities and the process's resident-memory
growth), the time of each pass, the reports, the lag correlation of the per-token differences, and how the
standard error of the mean delta-NLL grows with the block length (1 = tokens treated as independent).
"""
from __future__ import annotations

import copy
import time

import numpy as np
import psutil
import torch

from quantedu import evaluate
from quantedu.data import load_corpus
from quantedu.models import load_model
from quantedu.primitives import QuantConfig
from quantedu.rtn import quantize_model_rtn
from quantedu.verdict import paired_interval


def lag_correlation(x: np.ndarray, lag: int) -> float:
    a, b = x[:, :-lag].ravel(), x[:, lag:].ravel()
    return float(np.corrcoef(a, b)[0, 1])


def main() -> None:
    torch.set_num_threads(2)
    model, tok = load_model("smollm2-135m", device="cpu", verbose=False)
    quants = {}
    for label, cfg in (("RTN W8 g128", QuantConfig(8, 128)), ("RTN W4 g64 asym", QuantConfig(4, 64))):
        quants[label] = copy.deepcopy(model)
        quantize_model_rtn(quants[label], cfg, progress=False)
    proc = psutil.Process()
    for corpus in ("pydoc", "pysource"):
        windows = evaluate.evaluation_windows(tok, load_corpus(corpus), 4, 512)
        rss0, t0 = proc.memory_info().rss, time.perf_counter()
        base = evaluate.Baseline(model, windows, tok, name=f"fp32 ({corpus})")
        t_base = time.perf_counter() - t0
        print(f"\n== {corpus}: Baseline 4 x 512: {t_base:.1f} s, log-probs {base.nbytes / 1e6:.1f} MB "
              f"({base.nbytes / 2**20:.1f} MiB), resident memory +{(proc.memory_info().rss - rss0) / 1e6:.0f} MB")
        reports = []
        for label, q in quants.items():
            r = base.compare(q, label, tok)
            reports.append(r)
            print(f"-- compare {label}: {r.seconds:.1f} s\n{r}")
        r = reports[-1]
        d = r.per_token["nll"] - r.per_token["nll_base"]
        print("lag correlation of delta-NLL:", {k: round(lag_correlation(d, k), 3) for k in (1, 2, 4, 8, 16, 64)})
        print("lag correlation of KLD:      ",
              {k: round(lag_correlation(r.per_token["kld"], k), 3) for k in (1, 2, 4, 8, 16, 64)})
        print("s.e. of mean delta-NLL by block:",
              {b: f"{paired_interval(d, b).se:.5f}" for b in (1, 16, 64, 128, None)})
        print(reports[0].verdict(reports[1], metric="kld"))
    print(f"\npeak resident memory {proc.memory_info().rss / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
