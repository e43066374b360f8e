"""Why notebook 07's table differs from the comparison post's: the reasons, as sentences computed from the rows.

:func:`differences` returns one bullet per reason (model size, hardware and kernels, what really got a K-quant,
the baseline's own grid, the calibration, vLLM's served check); every number is read from the measured rows
(:class:`quantedu.course.comparison.Row`, by role as in :class:`quantedu.course.seed_check.Measured`), and every
comparison of quality goes through the verdict rule (:meth:`quantedu.evaluate.QualityReport.verdict`).
"""
from __future__ import annotations

import math

from .seed_check import _short

__all__ = ["differences", "size", "speed", "kquants", "baseline_grid", "calibration", "served"]


def size(m, seed_shape: str = "llama-2-7b") -> str:
    """Where a small model's bytes go, against the seed's 7B."""
    from .. import memory
    model = m.model
    cfg = model.config
    shape, seed = memory.model_shape(model), memory.model_shape(seed_shape)
    dense, q4 = m["bf16"] or m["f16"], m["q4_k_m"]
    embed_mb = cfg.vocab_size * cfg.hidden_size * 2 / 1e6
    q4_7b = memory.weight_bytes(seed, "Q4_K", embed_spec="fp16")["total"] / memory.weight_bytes(seed, "fp16")["total"]
    return (f"Model size: {shape.n_params() / 1e6:.0f}M parameters instead of the seed's 7B. 16-bit weights are "
            f"{dense.memory_mb:.0f} MB, and the token embedding alone ({cfg.vocab_size} x {cfg.hidden_size}) is "
            f"{embed_mb:.0f} MB of them. The Q4_K_M file keeps {q4.memory_mb / dense.memory_mb:.0%} of that here; on "
            f"{seed_shape}'s shape Q4_K weights with a 16-bit embedding keep {q4_7b:.0%}: embeddings weigh more in a "
            f"small model.")


def speed(m, clients: int = 8) -> str:
    """Speeds with a real kernel per engine, one request and many."""
    q4, f16 = m["q4_k_m"], m["f16"]
    text = (f"Hardware: one CPU thread per engine here, an RTX 4090 in the seed. llama.cpp decodes Q4_K_M at "
            f"{q4.tok_s('cpu'):.0f} tokens/s and F16 at {f16.tok_s('cpu'):.0f} (x{q4.tok_s('cpu') / f16.tok_s('cpu'):.2f}): "
            "decode reads every weight once per token, so fewer bytes help, and each type's kernel has its own cost.")
    hw = m.vllm_hw
    vrows = [r for r in (m["bf16"], m["gptq"], m["awq"], m["w8a8"]) if r is not None]
    if hw is None:
        return text + " vLLM is not installed here: its rows have no speed (n/a on this hardware)."
    one = ", ".join(f"{r.variant} {r.tok_s(hw):.0f}" for r in vrows)
    many = ", ".join(f"{r.variant} {r.tok_s(hw, clients):.0f}" for r in vrows if r.tok_s(hw, clients) == r.tok_s(hw, clients))
    kernels = sorted({r.kernel.removeprefix("vLLM ") for r in vrows if r.kernel})
    text += f" vLLM ({', '.join(kernels)}), one request: {one} tokens/s"
    llama_many = q4.tok_s("cpu", clients)
    if many:
        text += (f"; {clients} requests served together: {many}"
                 + (f" (llama-server Q4_K_M: {llama_many:.0f})" if llama_many == llama_many else "")
                 + ": batching reads each weight once for every request in the batch, notebook 06's lesson")
    return text + "."


def kquants(m, real_shape: str = "llama-3.1-8b") -> str:
    """What really got a K-quant on this model, and what the mixes would be on a real shape."""
    from .seed_check import planned_bits
    cfg = m.model.config
    c4, c5 = m["q4_k_m"].coverage, m["q5_k_m"].coverage
    widths = (cfg.hidden_size, cfg.intermediate_size)
    odd = [w for w in widths if w % 256]
    text = (f"Row widths {widths[0]} / {widths[1]}: "
            + (f"{' and '.join(map(str, odd))} not a multiple of 256, so " if odd else "multiples of 256, and ")
            + f"'Q4_K_M' gives Q4_K to {c4['got']} of {c4['matrices']} block matrices ({c4['other_kquant']} another "
            f"K-quant, {c4['fell_back']} fall back: {c4['bits_per_weight']:.2f} bits/weight), 'Q5_K_M' gives Q5_K to "
            f"{c5['got']} ({c5['fell_back']} fall back, {c5['bits_per_weight']:.2f} bits/weight).")
    if c4["fell_back"] or c5["fell_back"]:
        text += (f" A verdict about the K-quant types themselves cannot be tested on this model's shapes; on "
                 f"{real_shape} every matrix gets one: Q4_K_M {planned_bits('Q4_K_M'):.2f}, Q5_K_M "
                 f"{planned_bits('Q5_K_M'):.2f} bits/weight.")
    return text


def baseline_grid(m, offline_file: bool) -> str:
    """Q5_K_M against Q4_K_M by the rule, and why the offline model's own grid matters."""
    q4, q5 = m["q4_k_m"], m["q5_k_m"]
    v = q5.report.verdict(q4.report, metric="kld")
    text = (f"Baseline: Q4_K_M {100 * math.expm1(q4.report.delta_nll.mean):+.1f}% perplexity, Q5_K_M "
            f"{100 * math.expm1(q5.report.delta_nll.mean):+.1f}%; by the rule on KL divergence: {_short(v)}.")
    if offline_file:
        text += (" The offline model's weights were already on a Q4_1 grid (blocks of 32 with a scale, a min and 16"
                 " levels, dequantized to fp32): Q4_K's sub-blocks have that same form (with 6-bit scales), while"
                 " Q5_K's 32 levels do not land on those 16, so more bits need not mean a smaller error here"
                 " (notebook 05 measures it on one matrix).")
    return text


def calibration(m, budget=None) -> str:
    """GPTQ and AWQ like with like: the same tokens, grid and group, and what each took."""
    g, a = m["gptq"], m["awq"]
    enough = f" ({budget})" if budget is not None else ""
    return (f"Calibration: {g.variant} and {a.variant} both {g.label}{enough}. Quantization took GPTQ "
            f"{g.quant_s:.0f} s and AWQ {a.quant_s:.0f} s on one thread of a shared 2-core CPU, not a GPU: compare "
            f"them with each other only. KL divergence: {_short(a.report.verdict(g.report, metric='kld'))}.")


def new_formats(m) -> str:
    """The rows notebooks 08 and 09 added: FP4 in llama.cpp against the integer 4-bit files, W8A8 in vLLM."""
    mx, nv, w8, q4 = m["mxfp4"], m["nvfp4"], m["w8a8"], m["q4_k_m"]
    parts = []
    if mx is not None and nv is not None:
        parts.append(f"FP4 (notebook 08): MXFP4 {mx.memory_mb:.0f} MB, NVFP4 {nv.memory_mb:.0f} MB against Q4_K_M's "
                     f"{q4.memory_mb:.0f} MB; {_short(nv.report.verdict(mx.report, metric='kld'))}; "
                     f"{_short(nv.report.verdict(q4.report, metric='kld'))}. This CPU has no FP4 arithmetic: llama.cpp "
                     "decodes them in software, so their speed says nothing about Blackwell's")
    if w8 is not None:
        text = (f"W8A8 (notebook 09): {w8.memory_mb:.0f} MB, twice the weight bits of the 4-bit rows, "
                f"perplexity {100 * math.expm1(w8.report.delta_nll.mean):+.1f}%")
        if m["gptq"] is not None:
            text += f"; {_short(w8.report.verdict(m['gptq'].report, metric='kld'))}"
        parts.append(text)
    return ". ".join(parts) + "." if parts else ""


def served(rows, tolerance: float) -> str:
    """vLLM's own log-probabilities against torch's on the checkpoints it served."""
    checked = [r for r in rows if r.served and "ppl_ratio" in r.served]
    refused = [r for r in rows if r.served and "error" in r.served]
    if not checked and not refused:
        return ("vLLM rows: quality in torch on the checkpoint vLLM would serve; vLLM did not run here, so its "
                "served log-probabilities are not checked against it.")
    parts = [f"{r.variant} {100 * r.served['ppl_ratio']:+.2f}%" for r in checked]
    bad = [r.variant for r in checked if not r.served["ok"]]
    return (f"vLLM rows: KL divergence needs the whole next-token distribution and vLLM returns only the top few "
            f"log-probabilities, so their quality is computed in torch on the exact checkpoint vLLM serves, and vLLM's "
            f"own log-probability of every scored token is checked against torch's. Perplexity from vLLM vs torch: "
            f"{', '.join(parts)} (tolerance {tolerance:.0%}: "
            + (f"outside it: {', '.join(bad)})." if bad else "all within).")
            + (f" Refused by vLLM: {', '.join(r.variant for r in refused)}." if refused else ""))


def differences(m, offline_file: bool, tolerance: float, budget=None) -> list[str]:
    """The bullets of notebook 07's "what differs, and why", in order."""
    rows = [r for r in m.rows.values() if r is not None]
    out = [size(m), speed(m), kquants(m), baseline_grid(m, offline_file), calibration(m, budget), new_formats(m),
           served(rows, tolerance)]
    return [line for line in out if line]
