"""Full sweep: every quantizable tensor of the offline model x every type it fits, ours vs ggml bytes.

    .venv/bin/python benchmarks/sweep_gguf_exact.py [--imatrix] [--types ...]

For each (tensor, type) whose row length is a multiple of the type's block size, quantize the
tensor (dequantized from the file) with :mod:`quantedu.gguf` and with ``ggml_quantize_chunk`` and count
the blocks whose bytes differ. ``--imatrix`` uses a random positive importance per column. Prints a
table per type: tensors, blocks checked, mismatching blocks. tests/test_gguf_quants.py checks a
subset of these tensors in CI; this is the exhaustive version (minutes of CPU).
"""
from __future__ import annotations

import argparse
import time

import numpy as np


def main(argv=None):
    from gguf import GGUFReader
    from gguf import quants

    from quantedu import gguf
    from quantedu.engines.llama_cpp import ggml
    from quantedu.gguf.mixes import TensorInfo, should_quantize
    from quantedu.models import offline_gguf_path

    ap = argparse.ArgumentParser()
    ap.add_argument("--types", nargs="*", default=list(gguf.TYPES))
    ap.add_argument("--imatrix", action="store_true")
    args = ap.parse_args(argv)
    reader = GGUFReader(offline_gguf_path())
    tensors = [t for t in reader.tensors
               if should_quantize(TensorInfo(t.name, tuple(int(s) for s in t.shape)))]
    rng = np.random.default_rng(0)
    print(f"{len(tensors)} quantizable tensors; imatrix={'random' if args.imatrix else 'none'}")
    totals = {}
    t_start = time.time()
    for qtype in args.types:
        bs, ts = gguf.layout(qtype).block_size, gguf.layout(qtype).type_size
        n_t = n_b = n_bad = 0
        for t in tensors:
            cols = int(t.shape[0])
            if cols % bs:
                continue
            w = quants.dequantize(t.data, t.tensor_type).reshape(-1, cols)
            im = (rng.random(cols) + 0.05).astype(np.float32) if args.imatrix else None
            a, b = gguf.quantize(w, qtype, im), ggml.quantize(w, qtype, im)
            bad = int((a.reshape(-1, ts) != b.reshape(-1, ts)).any(axis=1).sum())
            n_t, n_b, n_bad = n_t + 1, n_b + a.size // ts, n_bad + bad
            if bad:
                print(f"  MISMATCH {t.name} {qtype}: {bad} blocks", flush=True)
        totals[qtype] = (n_t, n_b, n_bad)
        print(f"{qtype:7s} tensors {n_t:4d}  blocks {n_b:9,d}  mismatching blocks {n_bad}  "
              f"({time.time() - t_start:.0f} s)", flush=True)
    return totals


if __name__ == "__main__":
    main()
