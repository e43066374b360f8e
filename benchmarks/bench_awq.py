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
import json
import platform
import time
from pathlib import Path

import torch

from quantedu import awq
from quantedu.artifacts import atomic_write_bytes
from quantedu.data import calibration_batches, load_corpus
from quantedu.evaluate import perplexity
from quantedu.models import load_model


def ours(model, batches, group_size: int, search_samples):
    cfg = awq.AWQConfig(bits=4, group_size=group_size, sym=False, search_samples=search_samples)
    t0, c0 = time.perf_counter(), time.process_time()
    awq.awq_quantize_model(model, batches, cfg)
    return time.perf_counter() - t0, time.process_time() - c0


def llm_compressor(model, tokenizer, batches, group_size: int):
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from llmcompressor.modifiers.transform.awq import AWQModifier
    from llmcompressor.pipelines.cache import IntermediatesCache

    # CPU-only machine: llm-compressor 0.14 pins cached activations, which needs an accelerator.
    IntermediatesCache.pin_memory = lambda self, *a, **k: None
    scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(
        num_bits=4, type="int", symmetric=False, strategy="group", group_size=group_size))
    data = Dataset.from_dict({"input_ids": batches.tolist(), "attention_mask": torch.ones_like(batches).tolist()})
    t0, c0 = time.perf_counter(), time.process_time()
    oneshot(model=model, processor=tokenizer, dataset=data,
            recipe=[AWQModifier(), QuantizationModifier(config_groups={"group_0": scheme}, ignore=["lm_head"])],
            num_calibration_samples=len(batches), max_seq_length=batches.shape[1], shuffle_calibration_samples=False)
    return time.perf_counter() - t0, time.process_time() - c0


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

    rows = [{"method": "fp32", "group": "-", "seconds": 0.0, "cpu_seconds": 0.0, "ppl": ppl(base), "note": ""}]
    print(rows[-1], flush=True)
    record = {"rows": rows, "samples": args.samples, "seq_len": args.seq_len, "windows": args.windows,
              "threads": torch.get_num_threads(), "torch": torch.__version__, "machine": platform.processor()
              or platform.machine(), "date": time.strftime("%Y-%m-%d %H:%M")}

    def run_ours(spec):
        g, ss = (int(v) for v in spec.split(":"))
        model = copy.deepcopy(base)
        secs, cpu = ours(model, batches, g, ss or None)
        note = f"search_samples={ss}" if ss else "all samples (reference)"
        return {"method": "quantedu AWQ", "group": g, "seconds": secs, "cpu_seconds": cpu, "ppl": ppl(model),
                "note": note}

    def run_library(g):
        model = copy.deepcopy(base)
        try:
            secs, cpu = llm_compressor(model, tokenizer, batches, g)
            return {"method": "llm-compressor AWQ", "group": g, "seconds": secs, "cpu_seconds": cpu, "ppl": ppl(model),
                    "note": "defaults (duo scaling, no clip search)"}
        except Exception as exc:  # noqa: BLE001 - the refusal is a result
            msg = str(exc).strip().splitlines()[0][:200]
            return {"method": "llm-compressor AWQ", "group": g, "seconds": None, "cpu_seconds": None, "ppl": None,
                    "note": f"refused: {type(exc).__name__}: {msg}"}

    # Most informative first (a shared machine may stop a long run): the head-to-head at g64, then the rest.
    jobs = [("ours", args.ours[0])] + [("lib", g) for g in ([] if args.skip_library else args.library_groups)]
    jobs += [("ours", spec) for spec in args.ours[1:]]
    for kind, what in jobs:
        rows.append(run_ours(what) if kind == "ours" else run_library(what))
        print(rows[-1], flush=True)
        atomic_write_bytes(args.out, json.dumps(record, indent=1).encode())  # partial results survive

    atomic_write_bytes(args.out, json.dumps(record, indent=1).encode())
    print("\n| method | group | wall s | CPU s | ppl | note |\n|---|---|---|---|---|---|")
    for r in rows:
        secs = "—" if r["seconds"] is None else f"{r['seconds']:.0f}"
        cpu = "—" if r["cpu_seconds"] is None else f"{r['cpu_seconds']:.0f}"
        p = "—" if r["ppl"] is None else f"{r['ppl']:.2f}"
        print(f"| {r['method']} | {r['group']} | {secs} | {cpu} | {p} | {r['note']} |")


if __name__ == "__main__":
    main()
