"""Re-measure the course's comparison table (FP16, GPTQ-4bit, AWQ-4bit, GGUF Q4_K_M, GGUF Q5_K_M) on this machine.

Every cell comes from a real run, cached with :func:`quantedu.artifacts.cached_json` (keyed by the
settings) so a notebook re-run reuses it:

* **memory_mb**: bytes of the stored weights - the GGUF file; for FP16 / GPTQ / AWQ, where vLLM runs them,
  the weights vLLM loads (:func:`vllm_measure`: vLLM's own "Model loading took" figure on a GPU, else the
  checkpoint's tensors in the dtype vLLM serves), otherwise the safetensors of the fp16 export.
* **ppl**: perplexity on the course's evaluation text. GGUF rows: llama.cpp's own logits
  (:func:`quantedu.engines.llama_cpp.bindings.perplexity`). GPTQ/AWQ rows: the quantized model's exact weights
  (``scales * (codes - zeros)``) in transformers; :func:`fp16_agreement` checks the two paths agree.
* **quant_s**: wall time of the quantizer (llama.cpp's ``llama_model_quantize``; the course's GPTQ/AWQ with
  the given calibration set). Machine load inflates it: compare ratios taken in one run.
* **cpu_tok_s / gpu_tok_s**: decode tokens/s with a **real kernel** only - llama.cpp for GGUF, vLLM
  (:mod:`quantedu.engines.vllm`: its CPU backend here, CUDA on a GPU) for FP16, GPTQ (v1 export) and AWQ
  (AutoAWQ GEMM export). A dequantized (fake-quantized) model runs fp32 matmuls, so its speed says nothing
  about the format: where no engine ran, the cell stays NaN ("n/a on this hardware").
"""
from __future__ import annotations

import importlib
import math
import re
import time
from pathlib import Path

from .. import artifacts
from ..runtime import torch_threads

VARIANTS = ("FP16", "GPTQ-4bit", "AWQ-4bit", "GGUF Q4_K_M", "GGUF Q5_K_M")
_VERSION = 3  # 2: the AWQ row exports AutoAWQ's GEMM layout (save_awq); 3: ppl halves, GGUF source per model


def _model_id(session) -> str:
    """What the session really loaded (``MODEL="auto"`` means the hub model on one machine, the offline one on another)."""
    return str(getattr(session.model, "name_or_path", "") or session.model_name)


def _dir_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in Path(path).rglob("*.safetensors")) / 1e6


def gguf_row(mix: str, text: str, n_windows: int = 4, seq_len: int = 512, n_tokens: int = 64, src=None,
             imatrix: dict | None = None) -> dict:
    """A GGUF variant measured with llama.cpp (``mix`` = ``F16`` or a ``llama-quantize`` type), cached.

    ``src``: the GGUF file llama.cpp's quantizer starts from - the session's model
    (:meth:`quantedu.course.Session.gguf_source`), so every row of a table is one model; default the shipped file.
    ``imatrix``: quantize with this importance matrix (:func:`quantedu.gguf.imatrix.compute_imatrix`);
    the variant is then named ``GGUF <mix> +imatrix``."""
    from ..engines.llama_cpp import bindings as llama
    from ..gguf.imatrix import imatrix_digest
    from ..models import offline_gguf_path

    src = Path(src) if src is not None else offline_gguf_path()
    im = imatrix_digest(imatrix) if imatrix is not None else ""
    key = artifacts.cache_key("gguf-row", mix, n_windows, seq_len, n_tokens, str(src), src.stat().st_size, im,
                              _VERSION, artifacts.code_fingerprint(llama, gguf_row))

    def compute() -> dict:
        r = llama.quantize_and_measure(src, mix, text, n_windows, seq_len, n_threads=1, n_tokens=n_tokens,
                                       imatrix=imatrix)
        return {"memory_mb": r["file_MiB"] * 2**20 / 1e6, "ppl": r["perplexity"],
                "quant_s": float("nan") if mix == "F16" else r["quantize_s"], "cpu_tok_s": r["tokens_per_s"]}

    variant = "FP16" if mix == "F16" else f"GGUF {mix}" + (" +imatrix" if imatrix is not None else "")
    return {"variant": variant, "format": "fp16" if mix == "F16" else "gguf", "engine": "llama.cpp",
            **artifacts.cached_json("comparison", key, compute)}


def torch_row(method: str, session, n_samples: int = 4, seq_len: int = 256, group_size: int = 64,
              n_windows: int = 4, eval_len: int = 512, threads: int | None = 1, desc_act: bool = False) -> dict:
    """GPTQ or AWQ (4-bit, ``group_size``) with the course's own implementation, exported in fp16, cached.

    Returns the row and leaves the export folder in the artifact cache (``row["export"]``) for vLLM.
    ``threads``: torch CPU threads while measuring: 1, like the llama.cpp rows, so times compare (and on a
    busy 2-core machine torch's default 2 threads ran this several times slower); None keeps torch's setting.
    ``desc_act``: GPTQ in activation order (dynamic groups, ``desc_act: true`` in the export); variant
    ``GPTQ-4bit act-order``. The row's ``ppl, text A`` / ``ppl, text B`` are the two halves of the evaluation
    windows (:meth:`quantedu.course.Session.scored`), to tell a difference from the text's noise.
    """
    import dataclasses

    from ..data import calibration_batches

    if method not in ("gptq", "awq"):
        raise ValueError(f"method must be 'gptq' or 'awq', got {method!r}")
    if desc_act and method != "gptq":
        raise ValueError("desc_act (activation order) is a GPTQ option; AWQ has none")
    key = artifacts.cache_key("torch-row", method, _model_id(session), n_samples, seq_len, group_size, n_windows, eval_len,
                              threads, desc_act, _VERSION, _torch_code(method))
    export = artifacts.entry_dir("exports", key)

    def compute() -> dict:
        with torch_threads(threads):
            return measure()

    def measure() -> dict:
        import copy

        import torch

        model = copy.deepcopy(session.model)
        batches = calibration_batches(session.tokenizer, n_samples, seq_len)
        t0 = time.perf_counter()
        if method == "gptq":
            from ..gptq import GPTQConfig, gptq_quantize_model

            cfg = GPTQConfig(bits=4, group_size=group_size, sym=True, desc_act=desc_act)
            layers = gptq_quantize_model(model, batches, cfg, progress=False)
        else:
            from ..awq import AWQConfig, awq_quantize_model

            cfg = AWQConfig(bits=4, group_size=group_size, search_samples=min(n_samples, 4))
            layers = awq_quantize_model(model, batches, cfg, progress=False)
        quant_s = time.perf_counter() - t0
        scores = dataclasses.replace(session, n_windows=n_windows, seq_len=eval_len).scored(model)

        def build(tmp: Path) -> None:
            from ..export.write import save_awq, save_gptq

            half = model.to(torch.float16)
            save = save_gptq if method == "gptq" else save_awq  # GPTQ v1 / AutoAWQ GEMM: what `vllm serve` loads
            save(half, layers, cfg, tmp / "model", tokenizer=session.tokenizer)

        folder = artifacts.cached_dir("exports", key, build) / "model"
        return {"memory_mb": _dir_mb(folder), **scores, "quant_s": quant_s, "cpu_tok_s": float("nan"),
                "label": cfg.label(), "calibration": f"{n_samples} x {seq_len} tokens"}

    row = artifacts.cached_json("comparison", key, compute)
    variant = "AWQ-4bit" if method == "awq" else "GPTQ-4bit" + (" act-order" if desc_act else "")
    # measured in transformers on the dequantized weights until add_vllm serves the export with vLLM's kernels
    return {"variant": variant, "format": method, "engine": "transformers (dequantized)", "kernel": "",
            "export": str(export / "model"), **row}


def _torch_code(method: str) -> str:
    """Fingerprint of the code behind a GPTQ/AWQ row: a change to any of it recomputes the row."""
    from .. import calibration, evaluate
    from ..export import packing, write
    algo = importlib.import_module(f"quantedu.{method}")
    return artifacts.code_fingerprint(algo, calibration, evaluate, packing, write, torch_row)


def dense_target(session) -> str:
    """What vLLM serves for the FP16 row: the session model's own checkpoint folder (or its hub id)."""
    return str(getattr(session.model, "name_or_path", "") or session.model_name)


def vllm_measure(target, dtype: str | None = None, max_tokens: int = 64, n_requests: int = 4,
                 quantization: str | None = None, cpu_threads: int | None = 1) -> dict:
    """Serve ``target`` with vLLM and measure it: median decode tokens/s of single requests, TTFT, weights.

    ``cpu_threads=1`` on a CPU: the same single thread as the llama.cpp rows, so the speeds compare.
    Cached per target, settings and vLLM (``{"tok_s", "ttft_s", "memory_mb", "device", "kernels", ...}``);
    raises :class:`quantedu.engines.vllm.VLLMError` where vLLM cannot run here.
    """
    from ..engines import server as serving
    from ..engines import load as bench
    from ..engines import vllm

    info = vllm.probe()
    dtype = dtype or ("bfloat16" if info["device"] == "cpu" else "half")
    stamp = Path(target).stat().st_mtime if Path(target).exists() else 0
    key = artifacts.cache_key("vllm-row", str(target), stamp, dtype, quantization, max_tokens, n_requests,
                              cpu_threads, info["python"], info["vllm"], info["device"], _VERSION)

    def compute() -> dict:
        with vllm.start_vllm(target, dtype=dtype, quantization=quantization, cpu_threads=cpu_threads) as s:
            df = bench.sweep(s, (1,), n_requests=n_requests, max_tokens=max_tokens, model=serving.models(s)[0],
                             timeout=120)
            reported = reported_weight_bytes(s)
            startup = s.startup_s
            kernels = vllm.engine_choices(s)
        ok = df[df.error == ""]
        weights = reported if reported is not None else loaded_bytes(target, dtype)
        return {"tok_s": float(ok.decode_tps.median()), "ttft_s": float(ok.ttft_s.median()),
                "memory_mb": weights / 1e6 if weights else math.nan, "memory_source":
                "vLLM's log" if reported is not None else f"checkpoint tensors as {dtype}",
                "device": info["device"], "dtype": dtype, "startup_s": startup, "kernels": kernels}

    return artifacts.cached_json("comparison", key, compute)


def loaded_bytes(model, dtype: str = "bfloat16") -> int | None:
    """Bytes of the weights vLLM loads from ``model``: every tensor of its safetensors, floating ones in
    ``dtype`` (vLLM casts them), packed integer ones as stored; a .gguf file's size. None for a hub id."""
    from safetensors import safe_open

    path = Path(str(model))
    if path.is_file():
        return path.stat().st_size
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else []
    if not files:
        return None
    width = {"bfloat16": 2, "float16": 2, "half": 2, "float32": 4, "float": 4}.get(dtype, 2)
    sizes = {"I32": 4, "I64": 8, "U8": 1, "I8": 1, "I16": 2, "U32": 4, "BOOL": 1}
    total = 0
    for f in files:
        with safe_open(str(f), "pt") as st:
            for key in st.keys():
                t = st.get_slice(key)
                total += math.prod(t.get_shape()) * sizes.get(t.get_dtype(), width)
    return total


def reported_weight_bytes(server) -> int | None:
    """vLLM's own "Model loading took X GiB memory" (its GPU model runner reports it; the CPU one does not)."""
    found = re.findall(r"Model loading took ([0-9.]+) ?GiB", server.log_tail(2000))
    return int(float(found[-1]) * 2**30) if found else None



def add_vllm(rows: list[dict], session, **kwargs) -> list[dict]:
    """Measure the FP16, GPTQ-4bit and AWQ-4bit rows with vLLM (in place): speed, weights, engine."""
    targets = {"FP16": dense_target(session)}
    targets.update({r["variant"]: r["export"] for r in rows if r.get("export")})
    for row in rows:
        if row["variant"] not in targets:
            continue
        m = vllm_measure(targets[row["variant"]], **kwargs)
        if row["variant"] == "FP16":  # llama.cpp's F16 numbers stay beside vLLM's, in their own columns
            row["llama_cpp_tok_s"], row["llama_cpp_mb"] = row.get("cpu_tok_s"), row.get("memory_mb")
            row["cpu_tok_s"] = math.nan
        speed_col = "cpu_tok_s" if m["device"] == "cpu" else "gpu_tok_s"
        row.update({speed_col: m["tok_s"], "memory_mb": m["memory_mb"], "engine": "vllm",
                    "kernel": _kernel(m["kernels"]), "vllm_ttft_s": m["ttft_s"]})
    return rows


def _kernel(choices: list[str]) -> str:
    used = [c.split()[1] for c in choices if c.startswith("Using ") and "Kernel" in c]
    return ", ".join(dict.fromkeys(used)) or "dense"


def fp16_agreement(session, text: str, n_windows: int = 4, seq_len: int = 512) -> tuple[float, float]:
    """Perplexity of the session's model in transformers and of its F16 GGUF in llama.cpp (cached): they should agree."""
    from ..evaluate import perplexity

    key = artifacts.cache_key("fp32-ppl", _model_id(session), n_windows, seq_len, _VERSION)
    def compute() -> float:
        with torch_threads(1):
            return perplexity(session.model, session.tokenizer, text, n_windows, seq_len, progress=False)

    hf = artifacts.cached_json("comparison", key, compute)
    return hf, gguf_row("F16", text, n_windows, seq_len, src=session.gguf_source())["ppl"]


def table(rows: list[dict]):
    """The rows as a DataFrame in the seed's order, with 'n/a on this hardware' shown for missing speeds."""
    import pandas as pd

    names = [r["variant"] for r in rows]  # the seed's variants in its order, any others after them
    order = [v for v in VARIANTS if v in names] + [v for v in names if v not in VARIANTS]
    df = pd.DataFrame(rows).set_index("variant").reindex(order)
    for col in ("cpu_tok_s", "gpu_tok_s"):
        if col not in df:
            df[col] = math.nan
    return df.reset_index()


def display_table(df):
    """Rounded, with 'n/a on this hardware' instead of NaN speeds and '-' for no quantization."""
    cols = ["variant", "memory_mb", "ppl", "quant_s", "cpu_tok_s", "gpu_tok_s"] + (["engine"] if "engine" in df else [])
    out = df[cols].copy()
    out["memory_mb"] = out.memory_mb.round(1)
    out["ppl"] = out.ppl.round(2)
    out["quant_s"] = [("-" if math.isnan(v) else f"{v:.1f}") for v in out.quant_s]
    for col in ("cpu_tok_s", "gpu_tok_s"):
        out[col] = [("n/a on this hardware" if math.isnan(v) else f"{v:.1f}") for v in out[col]]
    return out.set_index("variant")


__all__ = ["VARIANTS", "gguf_row", "torch_row", "dense_target", "vllm_measure", "add_vllm", "fp16_agreement",
           "table", "display_table"]
