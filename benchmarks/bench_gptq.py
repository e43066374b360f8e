"""Whole-model GPTQ W4 sym on the course model: quantedu.gptq vs llm-compressor, same run, same data.

For each group size: wall time (and process CPU time: on a shared machine wall time mostly measures
the other jobs) of the quantization, then perplexity on the same evaluation windows. Every method
starts from a fresh copy of the fp32 model and gets the same calibration token windows.

    .venv/bin/python benchmarks/bench_gptq.py                      # 32 x 512 calibration, 8 x 512 eval
    .venv/bin/python benchmarks/bench_gptq.py --samples 8 --threads 1 --out /tmp/gptq.json

It prints each method's time as a ratio to llm-compressor's in the same run, and writes
``benchmarks/results/bench_gptq.json`` (``benchmarks/results.py``'s shape, the same as bench_awq's).

GPTQModel is not run: 7.7 declares torch>=2.14.1 and the course pins torch 2.13 (it works with
--no-deps on this CPU; see the measured-facts notes for its numbers).
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch


def run_ours(model, calib, group, device):
    from quantedu.gptq import GPTQConfig, gptq_quantize_model

    cfg = GPTQConfig(bits=4, group_size=group, sym=True)
    return gptq_quantize_model(model, calib, cfg, device=device, progress=True)


def run_llmcompressor(model, calib, group):
    from quantedu.engines import llm_compressor
    from quantedu.gptq import GPTQConfig

    llm_compressor.run_oneshot(model, calib, llm_compressor.gptq_recipe(GPTQConfig(bits=4, group_size=group, sym=True)))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--groups", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--libs", nargs="+", default=["rtn", "quantedu", "llm-compressor"])
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bench_gptq.json",
                    help="results file (the one notebook 03 shows); '' to write none")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    import results as bench
    from quantedu.data import calibration_batches, evaluation_text
    from quantedu.evaluate import perplexity
    from quantedu.models import load_model
    from quantedu.primitives import QuantConfig
    from quantedu.rtn import quantize_model_rtn

    base, tok = load_model(args.model, device=args.device, verbose=False)
    calib = calibration_batches(tok, n_samples=args.samples, seq_len=args.seq_len, seed=0)
    text = evaluation_text()
    ppl = lambda m: perplexity(m, tok, text, n_windows=args.windows, seq_len=512, progress=False)  # noqa: E731
    rows = [bench.row("fp32", None, 0.0, 0.0, ppl(base))]
    print(rows[-1], flush=True)
    for group in args.groups:
        for lib in args.libs:
            model = copy.deepcopy(base)
            try:
                if lib == "rtn":
                    fn = lambda: quantize_model_rtn(model, QuantConfig(4, group, symmetric=True), progress=False)  # noqa: E731
                elif lib == "quantedu":
                    fn = lambda: run_ours(model, calib, group, args.device)  # noqa: E731
                elif lib == "llm-compressor":
                    fn = lambda: run_llmcompressor(model, calib, group)  # noqa: E731
                else:
                    raise ValueError(f"unknown library {lib!r}")
                _, wall, cpu = bench.timed(fn)
                rows.append(bench.row(lib, group, wall, cpu, ppl(model)))
            except Exception as exc:  # a library that refuses a setting is a result, not a crash
                rows.append(bench.row(lib, group, note=f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"))
            print(rows[-1], flush=True)
            del model
    meta = bench.meta(samples=args.samples, seq_len=args.seq_len, windows=args.windows, device=args.device)
    print(json.dumps(meta))
    bench.print_table(rows, reference="llm-compressor")
    if args.out:
        print(f"wrote {bench.write(args.out, meta, rows)}")

if __name__ == "__main__":
    main()
