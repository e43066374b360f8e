"""Whole-model AWQ W4 (asymmetric, groups of 64 and 128) on the offline model: quantedu.awq vs
llm-compressor's AWQModifier, wall time and perplexity, in one process on one machine.

    nice .venv/bin/python benchmarks/bench_awq.py --threads 1            # ~15-40 min on 2 busy cores

Wall and process CPU seconds are both reported: on a shared machine CPU seconds are the steadier
comparison (with --threads 1 they are the work done). Protocol (as notes/measured-facts.md): 8 calibration samples x 512 tokens of the pydoc corpus (AWQ is
expensive on a CPU), perplexity on 8 windows x 512 tokens of the evaluation split. Every variant starts
from a fresh copy of the fp32 model. llm-compressor runs with its defaults (duo scaling, n_grid 20, no
clipping search) plus one CPU-only patch: ``IntermediatesCache.pin_memory`` is made a no-op, because
llm-compressor 0.14 asks for an accelerator there on a machine without one. It refuses groups of 128
on SmolLM2's 576 input columns; the table reports the refusal.

Writes a JSON record to ``--out`` (default benchmarks/results/awq.json), which notebook 04 shows.
"""
from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch

from quantedu import awq
import results as bench
from quantedu.data import calibration_batches, load_corpus
from quantedu.evaluate import perplexity
from quantedu.models import load_model


def ours(model, batches, group_size: int, search_samples):
    cfg = awq.AWQConfig(bits=4, group_size=group_size, sym=False, search_samples=search_samples)
    _, wall, cpu = bench.timed(lambda: awq.awq_quantize_model(model, batches, cfg))
    return wall, cpu


def llm_compressor(model, tokenizer, batches, group_size: int):
    from quantedu.engines import llm_compressor

    recipe = llm_compressor.awq_recipe(awq.AWQConfig(4, group_size, sym=False))
    _, wall, cpu = bench.timed(lambda: llm_compressor.run_oneshot(model, batches, recipe, tokenizer))
    return wall, cpu


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (1 is steadier on a shared 2-core CPU)")
    ap.add_argument("--ours", nargs="+", default=["64:2", "128:2", "64:0"],
                    help="GROUP:SEARCH_SAMPLES runs of quantedu AWQ (search samples 0 = all, the reference's choice)")
    ap.add_argument("--library-groups", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--skip-library", action="store_true")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "awq.json"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    base, tokenizer = load_model("smollm2-135m")
    batches = calibration_batches(tokenizer, args.samples, args.seq_len, seed=0)
    text = load_corpus("pydoc")

    def ppl(model):
        return perplexity(model, tokenizer, text, n_windows=args.windows, seq_len=args.seq_len, progress=False)

    rows = [bench.row("fp32", "-", 0.0, 0.0, ppl(base))]
    print(rows[-1], flush=True)
    meta = bench.meta(samples=args.samples, seq_len=args.seq_len, windows=args.windows)

    def run_ours(spec):
        g, ss = (int(v) for v in spec.split(":"))
        model = copy.deepcopy(base)
        secs, cpu = ours(model, batches, g, ss or None)
        note = f"search_samples={ss}" if ss else "all samples (reference)"
        return bench.row("quantedu AWQ", g, secs, cpu, ppl(model), note)

    def run_library(g):
        model = copy.deepcopy(base)
        try:
            secs, cpu = llm_compressor(model, tokenizer, batches, g)
            return bench.row("llm-compressor AWQ", g, secs, cpu, ppl(model), "defaults (duo scaling, no clip search)")
        except Exception as exc:  # noqa: BLE001 - the refusal is a result
            msg = str(exc).strip().splitlines()[0][:200]
            return bench.row("llm-compressor AWQ", g, note=f"refused: {type(exc).__name__}: {msg}")

    # Most informative first (a shared machine may stop a long run): the head-to-head at g64, then the rest.
    jobs = [("ours", args.ours[0])] + [("lib", g) for g in ([] if args.skip_library else args.library_groups)]
    jobs += [("ours", spec) for spec in args.ours[1:]]
    for kind, what in jobs:
        rows.append(run_ours(what) if kind == "ours" else run_library(what))
        print(rows[-1], flush=True)
        bench.write(args.out, meta, rows)  # partial results survive
    bench.print_table(rows, reference="llm-compressor AWQ")

if __name__ == "__main__":
    main()
