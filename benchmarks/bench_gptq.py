"""Whole-model GPTQ W4 sym on the course model: quantedu.gptq vs llm-compressor, same run, same data.

For each group size: wall time (and process CPU time: on a shared machine wall time mostly measures
the other jobs) of the quantization, then perplexity on the same evaluation windows. Every method
starts from a fresh copy of the fp32 model and gets the same calibration token windows.

    .venv/bin/python benchmarks/bench_gptq.py                      # 32 x 512 calibration, 8 x 512 eval
    .venv/bin/python benchmarks/bench_gptq.py --samples 8 --threads 1 --out benchmarks/results/gptq.json

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


def timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def run_ours(model, calib, group, device):
    from quantedu.gptq import GPTQConfig, gptq_quantize_model

    cfg = GPTQConfig(bits=4, group_size=group, sym=True)
    return gptq_quantize_model(model, calib, cfg, device=device, progress=True)


def run_llmcompressor(model, calib, group):
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.gptq import GPTQModifier

    scheme = {"targets": ["Linear"], "weights": {"num_bits": 4, "type": "int", "symmetric": True,
                                                 "strategy": "group", "group_size": group}}
    recipe = GPTQModifier(config_groups={"group_0": scheme}, ignore=["lm_head"], actorder=None,
                          dampening_frac=0.01, block_size=128)
    data = Dataset.from_dict({"input_ids": calib.tolist(), "attention_mask": torch.ones_like(calib).tolist()})
    oneshot(model=model, dataset=data, recipe=recipe, num_calibration_samples=len(calib),
            max_seq_length=calib.shape[1], shuffle_calibration_samples=False)


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
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from quantedu.data import calibration_batches, evaluation_text
    from quantedu.evaluate import perplexity
    from quantedu.models import load_model
    from quantedu.primitives import QuantConfig, fake_quantize

    base, tok = load_model(args.model, device=args.device, verbose=False)
    calib = calibration_batches(tok, n_samples=args.samples, seq_len=args.seq_len, seed=0)
    text = evaluation_text()
    ppl = lambda m: perplexity(m, tok, text, n_windows=args.windows, seq_len=512, progress=False)  # noqa: E731
    rows = [{"method": "fp32", "group": None, "wall_s": 0.0, "cpu_s": 0.0, "ppl": ppl(base)}]
    print(rows[-1], flush=True)
    for group in args.groups:
        for lib in args.libs:
            model = copy.deepcopy(base)
            row = {"method": lib, "group": group}
            try:
                if lib == "rtn":
                    def rtn():
                        for name, m in model.named_modules():
                            if isinstance(m, torch.nn.Linear) and name.startswith("model.layers."):
                                m.weight.data = fake_quantize(m.weight.data, QuantConfig(4, group, symmetric=True))
                    _, row["wall_s"], row["cpu_s"] = timed(rtn)
                elif lib == "quantedu":
                    _, row["wall_s"], row["cpu_s"] = timed(lambda: run_ours(model, calib, group, args.device))
                elif lib == "llm-compressor":
                    _, row["wall_s"], row["cpu_s"] = timed(lambda: run_llmcompressor(model, calib, group))
                else:
                    raise ValueError(f"unknown library {lib!r}")
                row["ppl"] = ppl(model)
            except Exception as exc:  # a library that refuses a setting is a result, not a crash
                row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            rows.append(row)
            print(row, flush=True)
            del model
    meta = {"samples": args.samples, "seq_len": args.seq_len, "windows": args.windows, "device": args.device,
            "threads": torch.get_num_threads(), "torch": torch.__version__}
    print(json.dumps(meta))
    print(f"{'method':16} {'group':>5} {'wall s':>8} {'cpu s':>8} {'ppl':>8}")
    for r in rows:
        ppl_s = f"{r['ppl']:8.3f}" if "ppl" in r else "  failed"
        print(f"{r['method']:16} {str(r['group']):>5} {r.get('wall_s', 0):8.1f} {r.get('cpu_s', 0):8.1f} {ppl_s}"
              + (f"  {r['error']}" if "error" in r else ""))
    if args.out:
        from quantedu.artifacts import atomic_write_bytes

        atomic_write_bytes(args.out, json.dumps({"meta": meta, "rows": rows}, indent=1).encode())


if __name__ == "__main__":
    main()
