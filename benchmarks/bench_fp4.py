"""FP4 / FP8 on the course model: the numbers issue 23 asks for, measured in one run.

    flock /tmp/quantedu-cpu.lock .venv/bin/python benchmarks/bench_fp4.py [--sections bytes rounding gptq llama]

* ``bytes``: every weight matrix of SmolLM2-135M (210 linear + the embedding) as MXFP4 and NVFP4: our bytes vs
  ggml's C (``ggml_quantize_chunk``) and, for MXFP4, gguf-py's; time of each.
* ``rounding``: :func:`quantedu.microscaling.scale_rounding_effect` over the 210 linear weights, averaged per rule.
* ``model``: the same rules at the level of the model: torch perplexity (4 x 512) with every linear layer RTN'd.
* ``gptq``: :func:`quantedu.fp_grids.grid_comparison` (RTN vs GPTQ, layer-output error) on six real layers, with
  Hessians from 16 x 512 calibration tokens.
* ``llama``: the course's MXFP4 / NVFP4 GGUF files (:func:`quantedu.gguf.fp4_files.fp4_gguf`) beside llama.cpp's
  Q4_0 / IQ4_NL / Q4_K_M (and the shipped Q4_1 they all come from) of the same model: size, bits/weight, KLD to
  an F16 file of the same weights and same-top-1 (``llama-perplexity --kl-divergence``, 4 x 512 tokens),
  perplexity (4 x 512 tokens) and decode tokens/s in llama.cpp (1 thread).
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np
import pandas as pd
import torch

LAYERS = ("model.layers.2.self_attn.q_proj", "model.layers.2.mlp.down_proj", "model.layers.15.self_attn.o_proj",
          "model.layers.15.mlp.gate_proj", "model.layers.28.mlp.down_proj", "model.layers.28.self_attn.v_proj")


def course_tensors(model) -> dict[str, np.ndarray]:
    from quantedu.gguf.io import model_tensors
    return {n: w for n, w in model_tensors(model).items() if w.ndim == 2}


def bytes_section(model):
    from gguf import GGMLQuantizationType as T
    from gguf import quants as gq

    from quantedu import gguf
    from quantedu.engines.llama_cpp import ggml
    tensors = course_tensors(model)
    for qtype in ("MXFP4", "NVFP4"):
        t_ours = t_c = 0.0
        same = same_py = 0
        for w in tensors.values():
            t0 = time.perf_counter()
            ours = gguf.quantize(w, qtype)
            t1 = time.perf_counter()
            ref = ggml.quantize(w, qtype)
            t_ours, t_c = t_ours + t1 - t0, t_c + time.perf_counter() - t1
            same += np.array_equal(ours, ref)
            if qtype == "MXFP4":
                same_py += np.array_equal(ours, gq.quantize(w, T.MXFP4))
        n = sum(w.size for w in tensors.values())
        py = f", gguf-py equal on {same_py}/{len(tensors)}" if qtype == "MXFP4" else ""
        print(f"{qtype}: bytes equal to ggml's C on {same}/{len(tensors)} tensors ({n:,} weights){py}; "
              f"ours {t_ours:.1f} s, ggml {t_c:.1f} s")


def rounding_section(model):
    from quantedu import microscaling as ms
    weights = {n: torch.from_numpy(w) for n, w in course_tensors(model).items() if n.startswith("blk.")}
    df = ms.scale_rounding_effect(weights)
    agg = df.groupby(["format", "scale_rounding", "global_scale"])[["rel_sq_error", "clipped_share",
                                                                     "scale_changed_share"]].mean()
    print(f"scale rounding over {len(weights)} linear weights (means):")
    print(agg.to_string(float_format=lambda v: f"{v:.5f}"))


def gptq_section(model, tokenizer):
    from quantedu import fp_grids
    from quantedu.data import calibration_batches
    batches = calibration_batches(tokenizer, 16, 512)
    H = fp_grids.layer_hessians(model, batches, LAYERS)
    W = {n: model.get_submodule(n).weight.detach() for n in LAYERS}
    df = fp_grids.grid_comparison(W, H)
    print(df.to_string(float_format=lambda v: f"{v:.6f}"))
    geo = df.groupby("grid")[["rtn_error", "gptq_error", "gptq_gain"]].agg(lambda s: math.exp(np.log(s).mean()))
    print("geometric means over the layers:")
    print(geo.to_string(float_format=lambda v: f"{v:.6f}"))


def llama_section(model):
    import tempfile
    from pathlib import Path

    from quantedu.data import evaluation_text
    from quantedu.engines import llama_cpp
    from quantedu.engines.llama_cpp import bindings
    from quantedu.gguf.fp4_files import fp4_gguf
    from quantedu.gguf.io import write_gguf
    text = evaluation_text()
    files = {f"course {q}": fp4_gguf(model, q) for q in ("MXFP4", "NVFP4")}
    files.update({f"llama.cpp {mix}": bindings.gguf_file(mix) for mix in ("Q4_1", "Q4_0", "IQ4_NL", "Q4_K_M")})
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "text.txt").write_text(text)
        write_gguf(model, tmp / "f16.gguf", "F16")  # the KLD base: the unquantized model
        llama_cpp.kl_divergence_base(tmp / "f16.gguf", tmp / "text.txt", tmp / "base.kld", ctx=512, chunks=4)
        for label, f in files.items():
            path = getattr(f, "path", f)
            kld = llama_cpp.kl_divergence(path, tmp / "base.kld")
            m = bindings.measure_file(path, text, n_windows=4, seq_len=512, n_threads=1)
            rows.append({"file": label, "fallbacks": getattr(f, "n_fallbacks", None), "MiB": m["file_MiB"],
                         "linear_bpw": m["linear_bits_per_weight"], "KLD": kld.kld, "KLD_se": kld.kld_se,
                         "same_top1": kld.same_top, "same_top1_se": kld.same_top_se, "ppl": m["perplexity"],
                         "tok_s": m["tokens_per_s"]})
    print(pd.DataFrame(rows).to_string(float_format=lambda v: f"{v:.4f}"))


def model_section(model, tokenizer):
    """Perplexity in torch (the course's evaluation, 4 x 512) with every linear layer fake-quantized by RTN on each
    FP4 scale rounding: the scale-rounding effect at the level of the model."""
    from quantedu import microscaling as ms
    from quantedu.data import evaluation_text
    from quantedu.evaluate import perplexity
    text = evaluation_text()
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"}
    saved = {n: m.weight.detach().clone() for n, m in linears.items()}
    configs = [ms.FP4Config("mxfp4", scale_rounding=r) for r in ms.SCALE_ROUNDINGS["mxfp4"]]
    configs += [ms.FP4Config("nvfp4", scale_rounding=r) for r in ("nearest_even", "up")]
    configs += [ms.FP4Config("nvfp4", scale_rounding="ggml", global_scale=False)]
    rows = [{"weights": "fp32 (the Q4_1 file's values)", "ppl": perplexity(model, tokenizer, text, 4, 512, False)}]
    try:
        for cfg in configs:
            with torch.no_grad():
                for n, m in linears.items():
                    m.weight.copy_(ms.fake_quantize(saved[n], cfg))
            rows.append({"weights": f"RTN {cfg.label()}", "ppl": perplexity(model, tokenizer, text, 4, 512, False)})
    finally:
        with torch.no_grad():
            for n, m in linears.items():
                m.weight.copy_(saved[n])
    print(pd.DataFrame(rows).to_string(float_format=lambda v: f"{v:.3f}"))


def main(argv=None):
    from quantedu.models import load_model
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sections", nargs="*", default=["bytes", "rounding", "model", "gptq", "llama"])
    args = ap.parse_args(argv)
    model, tokenizer = load_model("smollm2-135m", device="cpu", verbose=False)
    for section in args.sections:
        t0 = time.perf_counter()
        print(f"\n## {section}")
        {"bytes": lambda: bytes_section(model), "rounding": lambda: rounding_section(model),
         "model": lambda: model_section(model, tokenizer), "gptq": lambda: gptq_section(model, tokenizer),
         "llama": lambda: llama_section(model)}[section]()
        print(f"({section}: {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
