"""Rotations on the offline model: outlier statistics of a real layer before/after, then quantization with and
without rotation (RTN and GPTQ at W4 and W3, W8A8 per-token activations): perplexity and one layer's output error.

    flock /tmp/quantedu-cpu.lock .venv/bin/python benchmarks/bench_rotation.py --part stats   # ~1 min
    flock /tmp/quantedu-cpu.lock .venv/bin/python benchmarks/bench_rotation.py --part rtn     # ~4 min
    flock /tmp/quantedu-cpu.lock .venv/bin/python benchmarks/bench_rotation.py --part gptq-w4 # ~5 min
    flock /tmp/quantedu-cpu.lock .venv/bin/python benchmarks/bench_rotation.py --part gptq-w3 # ~5 min
    flock /tmp/quantedu-cpu.lock .venv/bin/python benchmarks/bench_rotation.py --part w8a8    # ~3 min

Rotations (quantedu.rotation, Hadamard blocks of 64): "none"; "norms fused only" (block 1: the identity
rotation, so only the RMSNorm weights move into the next layers: separates that effect); "R1" (residual stream, offline: an ordinary
Llama, exportable); "R1+R2+R4" (plus per-head value/o_proj rotations and the online rotation of down_proj's
input). Perplexity: 4 x 512 evaluation windows (every token scored). Layer error: relative output error
``||Y_q - Y|| / ||Y||`` of ``model.layers.<--layer>.mlp.down_proj`` on 2 x 512 calibration tokens, each model
against its own unquantized self (rotated or not): ``layer_rel_error`` for the quantized layer alone (fed the
unquantized model's inputs), ``layer_rel_error_cumulative`` with every earlier layer quantized too. Each part
replaces its own rows in ``--out``.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import torch

from quantedu import rotation, w8a8
from quantedu.data import calibration_batches, load_corpus
from quantedu.evaluate import evaluation_windows, window_nll
from quantedu.gptq import GPTQConfig, gptq_quantize_model
from quantedu.models import load_model
from quantedu.primitives import QuantConfig
from quantedu.rtn import quantize_model_rtn

ROTATIONS = {"none": None, "norms fused only": {"block": 1}, "R1": {},
             "R1+R2+R4": {"per_head": True, "online_down": True}}


def rotated(base, name):
    model = copy.deepcopy(base)
    if ROTATIONS[name] is not None:
        rotation.rotate_model(model, **{"block": 64, **ROTATIONS[name]})
    return model


@torch.no_grad()
def layer_io(model, name, batches):
    """Inputs and outputs of one linear layer over ``batches``."""
    xs, ys = [], []

    def keep(_module, args, out):  # returns None: the output is left as it is
        xs.append(args[0].reshape(-1, args[0].shape[-1]))
        ys.append(out.reshape(-1, out.shape[-1]))

    h = model.get_submodule(name).register_forward_hook(keep)
    for row in batches:
        model(row[None], use_cache=False)
    h.remove()
    return torch.cat(xs), torch.cat(ys)


def ppl(model, windows) -> float:
    nll = window_nll(model, windows, progress=False)
    return math.exp(nll.sum().item() / windows[:, 1:].numel())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", required=True, choices=["stats", "rtn", "gptq-w4", "gptq-w3", "w8a8"])
    ap.add_argument("--out", default="benchmarks/results/rotation.json")
    ap.add_argument("--layer", type=int, default=15)
    ap.add_argument("--calib", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(2)
    base, tok = load_model("smollm2-135m", device="cpu", verbose=False)
    windows = evaluation_windows(tok, load_corpus("pydoc"), 4, 512)
    calib = calibration_batches(tok, args.calib, 512)
    probe = calibration_batches(tok, 2, 512, seed=1)
    layer = f"model.layers.{args.layer}.mlp.down_proj"
    out = Path(args.out)
    record = json.loads(out.read_text()) if out.exists() else {}
    rows = record.setdefault(args.part, [])
    rows.clear()
    for rot in ROTATIONS:
        if args.part in ("gptq-w4", "gptq-w3") and rot == "norms fused only":
            continue  # GPTQ is the slow one: the decomposition is shown with RTN and W8A8
        model = rotated(base, rot)
        x, y = layer_io(model, layer, probe)
        if args.part == "stats":
            rows.append({"rotation": rot, "ppl": ppl(model, windows), **{
                short: rotation.layer_outlier_stats(model, f"model.layers.{args.layer}.{full}", probe)
                for short, full in (("q_proj", "self_attn.q_proj"), ("o_proj", "self_attn.o_proj"),
                                    ("down_proj", "mlp.down_proj"))}})
        else:
            configs = {"rtn": [("RTN W4 per-channel", QuantConfig(4, symmetric=False, granularity="channel")),
                               ("RTN W4 g64", QuantConfig(4, 64)), ("RTN W3 g64", QuantConfig(3, 64))],
                       "gptq-w4": [("GPTQ W4 per-channel", GPTQConfig(4, -1, sym=False))],
                       "gptq-w3": [("GPTQ W3 g64", GPTQConfig(3, 64, sym=False))],
                       "w8a8": [("W8A8 dynamic", "dynamic")]}[args.part]
            for label, cfg in configs:
                q = copy.deepcopy(model)
                t0 = time.perf_counter()
                if isinstance(cfg, QuantConfig):
                    quantize_model_rtn(q, cfg, progress=False)
                elif isinstance(cfg, GPTQConfig):
                    gptq_quantize_model(q, calib, cfg, progress=False, device="cpu")
                else:
                    w8a8.quantize_model_w8a8(q, cfg)
                seconds = time.perf_counter() - t0
                _, yq = layer_io(q, layer, probe)
                with torch.no_grad():
                    alone = q.get_submodule(layer)(x)  # the quantized layer on the unquantized model's inputs
                rows.append({"rotation": rot, "method": label, "ppl": ppl(q, windows), "seconds": seconds,
                             "layer_rel_error": float((alone - y).norm() / y.norm()),
                             "layer_rel_error_cumulative": float((yq - y).norm() / y.norm())})
                print(json.dumps(rows[-1]), flush=True)
                del q
        if args.part == "stats":
            print(json.dumps(rows[-1]), flush=True)
        del model
    record["protocol"] = {"windows": "4 x 512 pydoc evaluation", "calibration": f"{args.calib} x 512",
                          "layer": layer, "block": 64}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
