"""The package's KL divergence against llama.cpp's own: ``llama-perplexity --kl-divergence`` on the same tokens.

The course model (F32 GGUF, the baseline) and a Q4_0 quant of it made by the package's quantizer: llama-perplexity
saves the baseline's log-probabilities (``--kl-divergence-base``) and scores the quant against them; the package
runs the baseline (torch fp32) and the quant (the Q4_0 GGUF loaded and dequantized by transformers) on the
tokens read back from that file, scoring the same positions (the second half of each chunk).

So that both sides do the same arithmetic, llama.cpp runs the quant as the dequantized weights stored in F32 and
with ``-fa off -ctk f32 -ctv f32`` (its flash attention and its default KV cache round to 16 bits). What is left
is derived, per token ``t``, from how llama.cpp stores the baseline: 16 bits per log-probability, a code times
a step ``s_t = (max logit - max(min logit, max logit - 16)) / 65535 <= 2.4e-4``, so each stored value is off by
at most ``s_t / 2``; and ``EPS = 2e-4`` nats of float32 disagreement between the two engines (twice the most
measured on this machine: the stored baseline values are checked against it first). A per-token KLD then moves
by at most ``b_t = (s_t/2 + EPS) (1 + sum_v p_v |ln p_v - ln q_v|) + EPS`` (plus the tool's dropping of
``p < e^-16`` terms, computed exactly), and the mean by the mean of ``b_t``.

The Q4_0 file run natively (llama.cpp's quantized dot products round the activations to 8 bits) differs from its
dequantized weights by a divergence the tool measures itself; the package's number is checked against it by
the triangle inequality of ``sqrt(KLD)`` (to leading order KLD is half a squared distance).

Missing llama.cpp tools fail this module under CI (``make setup`` builds them) and skip it elsewhere.
"""
from __future__ import annotations

import contextlib
import io
import math
import os

import numpy as np
import pytest
import torch

from quantedu import evaluate
from quantedu.engines import llama_cpp as lt
from quantedu.engines.llama_cpp.quality import EPS, kld_tolerance

pytestmark = pytest.mark.slow
EXACT = ("-fa", "off", "-ctk", "f32", "-ctv", "f32")
CTX, CHUNKS = 512, 2


@pytest.fixture(scope="module")
def tools():
    ok, why = lt.build_supported()
    if not ok:
        pytest.skip(why)
    st = lt.status()
    if not st["ok"]:
        if os.environ.get("CI"):
            pytest.fail(f"CI runs `make setup`, which builds the llama.cpp tools: {st['why']}")
        pytest.skip(st["why"].splitlines()[0])
    return st


@pytest.fixture(scope="module")
def run(tools, course_model, tmp_path_factory):
    from transformers import AutoModelForCausalLM

    from quantedu.data import evaluation_text
    from quantedu.gguf import io as gguf_io
    from quantedu.models import _no_gguf_reader_bar
    base, tokenizer = course_model
    root = tmp_path_factory.mktemp("kld")
    f32, q4 = root / "base-f32.gguf", root / "q4_0.gguf"
    gguf_io.write_gguf(base, f32, "F32")
    gguf_io.write_gguf(base, q4, "Q4_0")
    with _no_gguf_reader_bar(), contextlib.redirect_stderr(io.StringIO()):
        quant = AutoModelForCausalLM.from_pretrained(root, gguf_file=q4.name, dtype=torch.float32).eval()
    q4_f32 = root / "q4_0-dequantized-f32.gguf"
    gguf_io.write_gguf(quant, q4_f32, "F32")
    text = root / "text.txt"
    text.write_text(evaluation_text("pydoc")[:40_000])
    base_file = root / "base.kld"
    lt.kl_divergence_base(f32, text, base_file, ctx=CTX, chunks=CHUNKS, n_threads=2, extra=EXACT)
    tool = lt.kl_divergence(q4_f32, base_file, n_threads=2, extra=EXACT)
    native = lt.kl_divergence(q4, base_file, n_threads=2, extra=EXACT)
    engine_file = root / "q4_0-dequantized.kld"  # the engines' own difference, measured by the tool
    lt.kl_divergence_base(q4_f32, text, engine_file, ctx=CTX, chunks=CHUNKS, n_threads=2, extra=EXACT)
    engine = lt.kl_divergence(q4, engine_file, n_threads=2, extra=EXACT)

    stored = lt.read_kl_divergence_base(base_file)
    add_bos = bool(lt.read_header(f32)[0].get("tokenizer.ggml.add_bos_token", False))
    windows = stored.windows(tokenizer.bos_token_id if add_bos else None)
    baseline = evaluate.Baseline(base, windows, tokenizer, score_from=stored.first)
    ours = baseline.compare(quant, "Q4_0", tokenizer)
    with torch.no_grad():
        lq = torch.log_softmax(quant(windows).logits[:, stored.first:-1].float(), -1).numpy()
    return {"tool": tool, "native": native, "engine": engine, "ours": ours, "stored": stored,
            "lp": baseline.logprobs.numpy(), "lq": lq}


def bounds(r):
    """Per-token bound ``b_t`` on |KLD_tool - KLD_ours| (module doc; ``quality.kld_tolerance``, the one notebook 05
    states), and the step of each token's storage."""
    return kld_tolerance(r["stored"], r["lp"], r["lq"], EPS), r["stored"].step


def test_the_tool_stores_the_baseline_we_compute_on_the_same_tokens(run):
    stored, lp = run["stored"].log_probs, run["lp"]
    above_floor = stored > stored.min(-1, keepdims=True)  # values under max - 16 nats are stored as the floor
    err = np.abs(stored - lp)[above_floor]
    s = np.broadcast_to(run["stored"].step[..., None], stored.shape)[above_floor]
    assert (err <= s / 2 + EPS).all(), (err - s / 2).max()
    assert run["ours"].tokens == CHUNKS * (CTX - 1 - CTX // 2)


def test_mean_kld_and_percentiles_agree_within_the_16_bit_storage_bound(run):
    tool, ours = run["tool"], run["ours"]
    b, _ = bounds(run)
    tol = b.mean()
    print(f"\nmean KLD: llama-perplexity {tool.kld:.6f} +/- {tool.kld_se:.6f}, quantedu {ours.kld.mean:.6f} "
          f"+/- {ours.kld.se:.6f} (blocks); |diff| {abs(tool.kld - ours.kld.mean):.2e} <= tolerance {tol:.2e}")
    assert abs(tool.kld - ours.kld.mean) <= tol
    # the tool's +/- treats tokens as independent: the same formula on our per-token values gives it back
    k = ours.per_token["kld"].ravel()
    assert tool.kld_se == pytest.approx(k.std() / math.sqrt(k.size - 1), rel=0.02)
    for key, q in (("median", 50), ("99", 99), ("90", 90), ("max", 100)):
        print(f"KLD {key}: {tool.kld_percentiles[key]:.6f} vs {ours.kld_percentile(q):.6f}")
        assert abs(tool.kld_percentiles[key] - ours.kld_percentile(q)) <= b.max() + 1e-6, key


def near_ties(run) -> int:
    """Tokens whose top choice the 16-bit storage or EPS could flip: top-2 gap under ``s_t + 2 EPS`` (baseline)
    or ``2 EPS`` (quant)."""
    _, s = bounds(run)
    gap = lambda x: np.diff(np.sort(x, -1)[..., -2:], axis=-1)[..., 0]  # noqa: E731
    return int(((gap(run["lp"]) < s + 2 * EPS) | (gap(run["lq"]) < 2 * EPS)).sum())


def test_same_top_token_agrees_up_to_near_ties(run):
    tool, ours = run["tool"], run["ours"]
    may_flip = near_ties(run)
    ours_count, tool_count = int(ours.per_token["same_top"].sum()), round(tool.same_top * ours.tokens)
    print(f"same top: llama-perplexity {tool_count}, quantedu {ours_count} of {ours.tokens} "
          f"({may_flip} near-ties could flip)")
    assert abs(tool_count - ours_count) <= may_flip


def test_delta_p_and_perplexities_agree(run):
    tool, ours, lp, lq = run["tool"], run["ours"], run["lp"], run["lq"]
    _, s = bounds(run)
    tgt = run["stored"].tokens[:, run["stored"].first + 1:, None]
    pb, pq = np.exp(np.take_along_axis(lp, tgt, -1)[..., 0]), np.exp(np.take_along_axis(lq, tgt, -1)[..., 0])
    e = pb * (np.expm1(s / 2 + EPS)) + pq * np.expm1(EPS)  # each token's delta-p can move this much
    printed = 5e-6  # the tool prints percentages with 3 decimals
    assert abs(tool.delta_p - ours.delta_p.mean) <= e.mean() + printed
    assert abs(tool.rms_delta_p - ours.rms_delta_p) <= math.sqrt((e ** 2).mean()) + printed
    assert abs(math.log(tool.ppl / ours.ppl)) <= EPS + 1e-6
    assert abs(math.log(tool.ppl_base / ours.ppl_base)) <= (s / 2).mean() + EPS + 1e-6


def test_the_native_q4_0_run_agrees_up_to_the_engines_own_divergence(run):
    """llama.cpp's Q4_0 kernels vs the same weights dequantized: the tool measures that divergence (``engine``).
    To leading order KLD is half a squared distance, so sqrt(KLD) obeys the triangle inequality: the native mean
    lies within sqrt(engine) of the dequantized one in sqrt scale (which the previous test pins to ours)."""
    native, ours, engine, tool = run["native"], run["ours"], run["engine"], run["tool"]
    b, _ = bounds(run)
    gap = abs(math.sqrt(native.kld) - math.sqrt(ours.kld.mean))
    allowed = math.sqrt(engine.kld) + b.mean() / (math.sqrt(tool.kld) + math.sqrt(ours.kld.mean))
    print(f"native Q4_0: llama-perplexity {native.kld:.6f}, quantedu (dequantized) {ours.kld.mean:.6f}, the "
          f"kernels' own KLD {engine.kld:.6f} (independent errors would give {ours.kld.mean + engine.kld:.6f}): "
          f"|sqrt diff| {gap:.4f} <= {allowed:.4f}")
    assert gap <= allowed
    # a token counts differently only where the kernels change the top choice (or at a near-tie)
    assert abs(native.same_top - ours.same_top.mean) <= 1 - engine.same_top + (near_ties(run) + 1) / ours.tokens
