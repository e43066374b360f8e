"""Our numpy quantizers vs ggml's C quantizer: same tensors, single thread, time ratio per type.

    .venv/bin/python benchmarks/bench_gguf_quantize.py [--types Q4_K Q6_K] [--repeat 3] [--no-imatrix]

Tensors: real weights of the offline SmolLM2 model (dequantized from its Q4_1 file): ``blk.0.ffn_down``
(576 x 1536, the only shape every type accepts) for all types. ggml's ``ggml_quantize_chunk`` runs on
one thread; numpy's element-wise ufuncs are single-threaded too. Times are the best of ``--repeat``
runs; both run in the same process one after the other, so the ratio is fair even on a busy machine.
"""
from __future__ import annotations

import argparse
import time

import numpy as np


def load_tensor(name: str = "blk.0.ffn_down.weight") -> np.ndarray:
    from gguf import GGUFReader
    from gguf import quants

    from quantedu.models import offline_gguf_path
    for t in GGUFReader(offline_gguf_path()).tensors:
        if t.name == name:
            return quants.dequantize(t.data, t.tensor_type).reshape(int(t.shape[1]), int(t.shape[0]))
    raise KeyError(name)


def best_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv=None):
    from quantedu import gguf
    from quantedu.engines.llama_cpp import ggml

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--types", nargs="*", default=list(gguf.TYPES))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-imatrix", action="store_true")
    args = ap.parse_args(argv)

    w = load_tensor()
    rng = np.random.default_rng(0)
    imatrix = (rng.random(w.shape[1]) + 0.05).astype(np.float32)
    print(f"tensor blk.0.ffn_down.weight {w.shape}, {w.size:,} weights; best of {args.repeat}")
    print(f"{'type':8s} {'imatrix':7s} {'ours ms':>9s} {'ggml ms':>9s} {'ratio':>7s}  same bytes")
    rows = []
    for qtype in args.types:
        for im in ([None] if args.no_imatrix else [None, imatrix]):
            ours = best_time(lambda: gguf.quantize(w, qtype, im), args.repeat)
            ref = best_time(lambda: ggml.quantize(w, qtype, im), args.repeat)
            same = np.array_equal(gguf.quantize(w, qtype, im), ggml.quantize(w, qtype, im))
            rows.append((qtype, im is not None, ours, ref))
            print(f"{qtype:8s} {'yes' if im is not None else 'no':7s} {ours * 1e3:9.1f} {ref * 1e3:9.1f} "
                  f"{ours / ref:7.1f}  {same}", flush=True)
    return rows


if __name__ == "__main__":
    main()
