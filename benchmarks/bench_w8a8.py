"""W8A8 on the offline model, with and without SmoothQuant: the course's own compressed-tensors checkpoints
served by vLLM (its int8 CPU kernels) and the same bytes run by the package's torch emulation.

    flock /tmp/quantedu-cpu.lock .venv/bin/python benchmarks/bench_w8a8.py          # ~4-6 min on 2 cores

Protocol: perplexity over the course's 4 x 512 evaluation windows (quantedu.evaluate's definition, every
token of a window scored); SmoothQuant and static scales calibrated on 16 x 512 calibration tokens. Every
variant starts from a fresh copy of the fp32 model; llm-compressor's own W8A8 of the bf16 model is the
reference row. vLLM serves every checkpoint in one worker process at ``--dtype`` (bfloat16, as it serves;
float32 to see the int8 arithmetic alone), per-token log-probs
(``quantedu.engines.w8a8_served.served_vs_emulated``); the emulation reads each checkpoint back (``load_w8a8``) and
runs it in fp32; the yardstick is the dense checkpoint's gap between vLLM and torch fp32.
Writes ``--out`` (default benchmarks/results/w8a8.json).
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from quantedu import smoothquant, w8a8
from quantedu.data import calibration_batches, load_corpus
from quantedu.evaluate import evaluation_windows
from quantedu.export.w8a8 import save_w8a8
from quantedu.models import load_model, offline_checkpoint
from quantedu.engines.w8a8_served import served_vs_emulated


def llm_compressor_w8a8(folder: Path, tok) -> Path:
    """llm-compressor's own W8A8 (int8 channel weights, dynamic per-token activations) of the bf16 model,
    saved into a new folder inside ``folder``."""
    import tempfile

    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(offline_checkpoint(), dtype=torch.bfloat16)
    oneshot(model=model, recipe=[QuantizationModifier(targets="Linear", scheme="W8A8", ignore=["lm_head"])])
    folder.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="llm-compressor-w8a8-", dir=folder))
    model.save_pretrained(path, save_compressed=True)
    tok.save_pretrained(path)
    return path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results/w8a8.json")
    ap.add_argument("--folder", default="/tmp/quantedu-w8a8-bench")
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--calib", type=int, default=16)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"], help="vLLM's serving dtype")
    args = ap.parse_args()
    torch.set_num_threads(2)
    base, tok = load_model("smollm2-135m", device="cpu", verbose=False)
    corpus = load_corpus("pydoc")
    windows = evaluation_windows(tok, corpus, 4, 512)
    calib = calibration_batches(tok, args.calib, 512)
    folder = Path(args.folder)
    plan = {"W8A8 dynamic": ("dynamic", None), "W8A8 dynamic + SmoothQuant": ("dynamic", args.alpha),
            "W8A8 static": ("static", None), "W8A8 static + SmoothQuant": ("static", args.alpha)}
    paths, seconds = {"dense bf16": offline_checkpoint()}, {}
    for label, (acts, alpha) in plan.items():
        model = copy.deepcopy(base)
        t0 = time.perf_counter()
        if alpha is not None:
            smoothquant.smooth_model(model, calib, alpha)
        w8a8.quantize_model_w8a8(model, acts, calib)
        seconds[label] = time.perf_counter() - t0
        paths[label] = save_w8a8(model, folder / label.replace(" ", "_").replace("+", "sq"), tokenizer=tok)
    paths["llm-compressor W8A8 (reference)"] = llm_compressor_w8a8(folder, tok)
    t0 = time.perf_counter()
    dense = paths.pop("dense bf16")
    rows = served_vs_emulated(dense, paths, windows, dtype=args.dtype)
    vllm_s = time.perf_counter() - t0
    for label, row in rows.items():
        row["quantize_s"] = seconds.get(label)
        print(label, json.dumps(row), flush=True)
    record = {"windows": "4 x 512 pydoc evaluation", "vllm_dtype": args.dtype, "calibration": f"{args.calib} x 512",
              "alpha": args.alpha, "served_and_emulated_s": vllm_s, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
