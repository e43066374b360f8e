"""llama.cpp's KV-cache types at a long context on the offline GGUF: the bytes the course's formula predicts
against the bytes llama-perplexity reports, its perplexity and its speed, with and without llama.cpp's
Hadamard rotation of a quantized cache.

    flock /tmp/quantedu-cpu.lock .venv/bin/python benchmarks/bench_kv_cache.py --ctx 4096   # ~3-5 min, 2 cores

One chunk of ``--ctx`` tokens of the pydoc evaluation text (llama-perplexity scores its second half), 2 threads.
Writes ``--out`` (default benchmarks/results/kv_cache.json).
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from quantedu.data import evaluation_text
from quantedu.engines.llama_cpp.kv_cache import KVCacheReport, kv_cache_perplexity, kv_cache_type_bytes
from quantedu.models import offline_gguf_path

CASES = [("f16", "f16", True), ("bf16", "bf16", True), ("q8_0", "q8_0", True), ("q8_0", "q4_0", True),
         ("q4_0", "q4_0", True), ("q4_0", "q4_0", False), ("q4_1", "q4_1", True), ("iq4_nl", "iq4_nl", True),
         ("q5_0", "q5_0", True), ("q5_1", "q5_1", True)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ctx", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/kv_cache.json")
    args = ap.parse_args()
    gguf = offline_gguf_path()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        text = Path(tmp) / "text.txt"
        text.write_text(evaluation_text())
        for k, v, rot in CASES:
            r = kv_cache_perplexity(gguf, text, k, v, ctx=args.ctx, chunks=1, n_threads=args.threads, rotation=rot)
            kv = r["kv"]
            pred = kv_cache_type_bytes("smollm2-135m", kv.cells, k, v)
            row = {"K": k, "V": v, "rotation": kv.rotate_k or kv.rotate_v, "cells": kv.cells,
                   "predicted_MiB": KVCacheReport.mib(pred["total"]), "reported_MiB": kv.total_mib,
                   "predicted_bytes": pred["total"], "equal": KVCacheReport.mib(pred["total"]) == kv.total_mib
                   and KVCacheReport.mib(pred["K"]) == kv.k_mib and KVCacheReport.mib(pred["V"]) == kv.v_mib,
                   "ppl": r["ppl"], "ppl_stderr": r["stderr"], "tokens_per_s": r["tokens_per_s"]}
            rows.append(row)
            print(json.dumps(row), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"ctx": args.ctx, "threads": args.threads, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
