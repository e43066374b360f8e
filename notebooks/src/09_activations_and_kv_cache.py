# %% [markdown]
# # 09 · Activations and the KV cache
#
# Everything the course has quantized so far is a weight. Serving holds two more things in memory and
# arithmetic: the **activations** that flow into every matmul (quantize them too, W8A8, and the matmul
# itself runs on int8 codes, which is what vLLM's CPU backend and GPU int8 tensor cores accelerate), and
# the **KV cache**, the keys and values of every past token, which grows with the context and with every
# sequence served until it can outgrow the weights.
# This notebook measures where the memory goes, why activations are harder to quantize than weights
# (outlier channels), two cures (SmoothQuant moves the difficulty into the weights; a Hadamard rotation
# spreads it out), and what llama.cpp's quantized KV cache types cost on the course model.

# %% [markdown]
# ## Parameters

# %%
from quantedu.course import fast_default, parameter

MODEL = parameter("MODEL", "auto")  # or "smollm2-135m", a hub id, a local path (env: QUANTEDU_MODEL)
FAST = fast_default()               # small sizes on a CPU
ALPHA = 0.5                         # SmoothQuant's migration strength (the paper's default)
KV_CTX = 1024 if FAST else 4096     # llama.cpp context for the KV-cache measurements
THREADS = 1                         # llama.cpp threads (1 on the course CPU: timings compare)

# %% [markdown]
# ## 1. Where serving memory goes
# Weights are paid once; the KV cache is paid per token of context and per sequence served. Notebook 01's
# formula, `2 (K and V) x layers x kv_heads x head_dim x bytes` per token, for Llama-3-8B (grouped-query
# attention: 8 KV heads) with 4-bit weights, at 4k and 32k tokens, with the cache in 16, 8 and 4 bits:

# %%
import matplotlib.pyplot as plt

from quantedu import memory
from quantedu.course import views

rows = {}
for ctx in (4096, 32768):
    for kv_bits in (16, 8, 4):
        rows[f"{ctx // 1024}k, KV {kv_bits}-bit"] = memory.footprint("llama-3-8b", "int4-g128", ctx, 1, kv_bits=kv_bits)
views.plot_breakdown(rows, title="Llama-3-8B, int4-g128 weights, one sequence")
plt.show()
w4 = rows["4k, KV 16-bit"]
weights = w4["linear weights"] + w4["embeddings + head + norms"]
print(f"weights {weights / 2**30:.2f} GiB; fp16 KV cache {w4['KV cache'] / 2**30:.2f} GiB at 4k, "
      f"{rows['32k, KV 16-bit']['KV cache'] / 2**30:.2f} GiB at 32k "
      f"({rows['32k, KV 16-bit']['KV cache'] / weights:.1f}x the weights)")

# %% [markdown]
# The cache grows with every token and every sequence served at once (a batch of eight multiplies it by
# eight), while the weights stay: at long context, after 4-bit weights, the cache is the next thing to
# quantize. An 8-bit cache halves it, a 4-bit one quarters it.

# %% [markdown]
# ## 2. Activation outliers
# The course model and calibration text. Calibration needs at least twice the widest linear input of
# tokens (`calibration.budget`); the statistics of every linear layer's input come from one pass.

# %%
import copy

import torch

from quantedu import calibration, w8a8
from quantedu.course import start

session = start(MODEL)
model = session.model
calib = session.calibration(12, 256)
budget = calibration.budget(model, calib)
print(f"calibration: {budget.tokens} tokens; widest input {budget.widest_input} ({budget.widest_layer}), "
      f"minimum {budget.minimum}: {'enough' if budget.enough else 'starved'}")
LAYER = model.config.num_hidden_layers // 2
Q_PROJ = f"model.layers.{LAYER}.self_attn.q_proj"       # reads input_layernorm's output (q, k, v share it)
stats = w8a8.activation_stats(model, calib, [Q_PROJ])[Q_PROJ]
absmax = stats.absmax
print(f"{Q_PROJ}: input channels' max |x| over {stats.tokens} tokens: median {absmax.median():.3g}, "
      f"largest {absmax.max():.3g} ({absmax.max() / absmax.median():.0f}x the median)")

# %%
import numpy as np

order = torch.argsort(absmax, descending=True)
fig, ax = plt.subplots(figsize=(8, 2.8))
ax.bar(np.arange(absmax.numel()), absmax.numpy(), width=1.0)
ax.axhline(float(absmax.median()), color="k", lw=0.8, ls="--", label="median channel")
ax.set_yscale("log")
ax.set(xlabel="input channel", ylabel="max |x| over calibration tokens",
       title=f"the input of layer {LAYER}'s q/k/v projections, channel by channel")
ax.legend()
plt.show()
top = order[:4].tolist()
print(f"the four largest channels: {top}, max |x| {', '.join(f'{absmax[c]:.3g}' for c in top)}")

# %% [markdown]
# A handful of channels are far larger than the rest. Weights are quantized with one scale per output
# channel (row), so a large weight only costs its own row; activations cannot get one scale per input
# channel, since the matmul sums over those channels. Outlier channels therefore set the activations' scale.

# %% [markdown]
# ## 3. int8 activations: per token and per tensor
# **Dynamic per-token** int8: each token (row) gets its own scale `max|x_t| / 127`, computed at run time.
# **Static per-tensor** int8: one scale for the whole layer, fixed from calibration. Write the per-token
# version first.

# %% [exercise 09.per_token_int8]
# %% [markdown]
# From scratch on one calibration window's real input of that layer, both ways, and the package's
# `w8a8.quantize_per_token` checked against it:

# %%
from quantedu.calibration import observe_linear_inputs

captured = []
with torch.no_grad(), observe_linear_inputs(model, lambda _n, x: captured.append(x.float()), names={Q_PROJ}):
    model(calib[:1], use_cache=False)
X = captured[0]

s_tok = X.abs().amax(dim=1, keepdim=True) / 127                   # one scale per token
q_tok = torch.clamp(torch.round(X / s_tok), -128, 127)
s_ten = stats.absmax.max() / 127                                   # one scale, from all calibration tokens
q_ten = torch.clamp(torch.round(X / s_ten), -128, 127)

q_pkg, s_pkg = w8a8.quantize_per_token(X)
assert torch.allclose(s_pkg, s_tok) and (q_pkg.float() - q_tok).abs().max() <= 1  # 1: x/s vs x*(1/s) at a .5 tie
ordinary = torch.ones(X.shape[1], dtype=torch.bool)
ordinary[order[:8]] = False                                        # all but the 8 largest channels
errors = {}
for name, q, s in (("per token", q_tok, s_tok), ("per tensor", q_ten, s_ten)):
    errors[name] = float((q * s - X).norm() / X.norm())
    codes = q[:, ordinary].abs()
    print(f"{name:>10}: relative error {errors[name]:.4f}; ordinary channels use codes up to {codes.max():.0f}, "
          f"median |code| {codes.median():.0f}")
in_top = torch.isin(X.abs().argmax(dim=1), order[:8]).float().mean()
print(f"in {in_top:.0%} of this window's tokens the largest value sits in one of the 8 largest channels")
session.claim(errors["per token"] < errors["per tensor"], "per-token scales lose less of this input than one per-tensor scale")

# %% [markdown]
# The median |code| says how many of int8's 127 steps an ordinary channel really gets: the larger the outliers,
# the fewer are left to the rest under one per-tensor scale. Per-token scales lose less (each token pays only for its own largest value), but wherever the
# outlier channels are in a token, they set that token's scale too.
#
# The whole model in W8A8: every linear layer (the head excepted) gets per-channel int8 weights and int8
# activations (`w8a8.quantize_model_w8a8`). Its `W8A8Linear` is checked once against the from-scratch
# product `(q_x q_w^T) s_x s_w`:

# %%
dyn = copy.deepcopy(model)
w8a8.quantize_model_w8a8(dyn, "dynamic")
layer = dyn.get_submodule(Q_PROJ)
by_hand = (q_pkg.double() @ layer.qweight.double().T) * s_pkg.double() * layer.weight_scale.double().T
print(f"W8A8Linear vs by hand: max difference {(layer(X) - by_hand).abs().max():.1e} "
      f"(outputs up to {by_hand.abs().max():.3g})")
static = copy.deepcopy(model)
w8a8.quantize_model_w8a8(static, "static", batches=calib)
reports = [session.report(dyn, "W8A8, per-token activations"), session.report(static, "W8A8, per-tensor activations")]
views.quality_table(reports)

# %% [markdown]
# ## 4. SmoothQuant: move the difficulty into the weights
# Divide input channel `j` by `s_j` and multiply the weights' column `j` by `s_j`: the product is unchanged,
# the division folds into the RMSNorm in front (as AWQ's scales did), and with
# `s_j = max|X_j|^alpha / max|W_j|^(1-alpha)` activations and weights share the range. Write the scales:

# %% [exercise 09.smoothquant_scales]
# %%
from quantedu import smoothquant

block = model.model.layers[LAYER]
qkv = [block.self_attn.q_proj.weight, block.self_attn.k_proj.weight, block.self_attn.v_proj.weight]
w_max = torch.stack([w.detach().float().abs().amax(dim=0) for w in qkv]).amax(dim=0)
s = (absmax.pow(ALPHA) / w_max.pow(1 - ALPHA)).clamp(min=1e-5)
assert torch.allclose(s, smoothquant.smoothquant_scales(absmax, qkv, ALPHA))

smooth = copy.deepcopy(model)
sq = smoothquant.smooth_model(smooth, calib, ALPHA)
with torch.no_grad():
    same = (smooth(calib[:1]).logits - model(calib[:1]).logits).abs().max()
print(f"smoothed model vs original: largest logit difference {same:.1e} (float rounding in {session.dtype_name}: "
      "the function is unchanged)")

# %%
after_x, after_w = absmax / s, w_max * s
fig, axes = plt.subplots(1, 2, figsize=(9, 2.8), sharey=True)
for ax, (label, xa, wa) in zip(axes, (("before", absmax, w_max), (f"after SmoothQuant (alpha {ALPHA})", after_x, after_w))):
    ax.plot(xa.numpy(), lw=0.8, label="activation max |X_j|")
    ax.plot(wa.numpy(), lw=0.8, label="weight max |W_j|")
    ax.set(yscale="log", xlabel="input channel", title=label)
axes[0].set_ylabel("max |value|")
axes[0].legend(fontsize=8)
plt.show()
ratio = lambda v: float(v.max() / v.median())  # noqa: E731
print(f"max/median over channels: activations {ratio(absmax):.1f} -> {ratio(after_x):.1f}, "
      f"weights {ratio(w_max):.1f} -> {ratio(after_w):.1f}")

# %% [markdown]
# The outlier channels shrink in the activations and reappear, square-rooted, in the weights, whose spread over
# channels stays moderate (the line above): the difficulty is now shared by both sides of the matmul. Does it help
# the model? Same W8A8 conversions on the smoothed copy:

# %%
sq_dyn, sq_static = copy.deepcopy(smooth), smooth
w8a8.quantize_model_w8a8(sq_dyn, "dynamic")
w8a8.quantize_model_w8a8(sq_static, "static", batches=calib)
reports += [session.report(sq_dyn, "SmoothQuant + W8A8 per-token"), session.report(sq_static, "SmoothQuant + W8A8 per-tensor")]
del sq_static, smooth
views.quality_table(reports)

# %%
for plain, smoothed in ((reports[0], reports[2]), (reports[1], reports[3])):
    print(f"{smoothed.name} vs {plain.name}, KLD: {smoothed.verdict(plain, metric='kld')}")

# %% [markdown]
# llm-compressor's `SmoothQuantModifier` computes the same formula from two different statistics
# (`max X_j - min X_j` instead of `max|X_j|`, and `2 max|W_j|`); `smoothquant.llm_compressor_factor` is the
# ratio per channel, and `tests/test_smoothquant.py::test_scales_equal_llm_compressor_times_the_explained_factor`
# runs llm-compressor on the same calibration and checks it element by element. On this layer the factor is:

# %%
f = smoothquant.llm_compressor_factor(sq["stats"][f"model.layers.{LAYER}.input_layernorm"], ALPHA)
print(f"llm-compressor's scale / ours: from {f.min():.3f} to {f.max():.3f} (median {f.median():.3f}); "
      f"2^(2 alpha - 1) = {2 ** (2 * ALPHA - 1):.3f} for a channel symmetric around 0")

# %% [markdown]
# ## 5. Rotations: spread the outliers out
# An orthogonal matrix `Q` between two layers changes nothing (`(x Q)(W Q)^T = x W^T`), and a Hadamard
# matrix (entries `+-1/sqrt(n)`) spreads one large channel evenly over `n`. QuaRot and SpinQuant rotate the
# residual stream this way and fold `Q` into the weights. Write the Hadamard matrix and the fold:

# %% [exercise 09.hadamard_fold]
# %% [markdown]
# The model's width (576 on the course model) is not a power of two, so `rotation.rotate_model` uses a
# block-diagonal Hadamard of 64-wide blocks (what llm-compressor's QuIP/SpinQuant transforms do with
# `transform_block_size=64`); `online_down=True` also rotates down_proj's input at run time. Against
# llm-compressor's `SpinQuantModifier` (R1 + R2, `transform_type="hadamard"`, block 64) on the same model, every
# linear weight and norm comes out bit-identical; the one difference is its embedding, whose rows it also centers
# first (QuaRot's step for LayerNorm models), which with RMSNorm changes the function
# (`tests/test_rotation.py` checks both). The function must not change:

# %%
from quantedu import rotation

rotated = copy.deepcopy(model)
rot = rotation.rotate_model(rotated, block=64, online_down=True)
with torch.no_grad():
    ref, new = model(calib[:1]).logits, rotated(calib[:1]).logits
print(f"rotated vs original: largest logit difference {(new - ref).abs().max():.1e} "
      f"(logits up to {ref.abs().max():.3g}); the residual rotation is {tuple(rot['Q'].shape)}")
session.claim(bool((new - ref).abs().max() < 1e-2 * ref.abs().max()), "the rotated model computes the same logits")

# %%
probe = calib[:2]
names = {"q_proj": f"model.layers.{LAYER}.self_attn.q_proj", "down_proj": f"model.layers.{LAYER}.mlp.down_proj"}
kurt = {(short, which, state): st["kurtosis"]
        for state, m in (("before", model), ("after", rotated))
        for short, full in names.items()
        for which, st in rotation.layer_outlier_stats(m, full, probe).items()}
labels = [f"{short}\n{which}" for short in names for which in ("weight", "input")]
x = np.arange(len(labels))
fig, ax = plt.subplots(figsize=(7, 2.8))
for i, state in enumerate(("before", "after")):
    ax.bar(x + (i - 0.5) * 0.38, [kurt[(sh, w, state)] for sh in names for w in ("weight", "input")], 0.38,
           label=f"{state} rotation")
ax.axhline(3, color="k", lw=0.8, ls="--", label="Gaussian (3)")
ax.set(yscale="log", xticks=x, xticklabels=labels, ylabel="kurtosis", title=f"layer {LAYER}, before and after the rotation")
ax.legend(fontsize=8)
plt.show()
session.claim(kurt[("q_proj", "input", "after")] < kurt[("q_proj", "input", "before")],
              "the rotation lowers the kurtosis of q_proj's input")

# %% [markdown]
# The rotation pulls the kurtosis of the inputs towards 3, a Gaussian's: no channel dominates any more, so a
# per-tensor scale wastes less of its range. Same per-tensor W8A8 and a 4-bit per-channel RTN, with and without it:

# %%
from quantedu.primitives import QuantConfig
from quantedu.rtn import quantize_model_rtn

rot_static = copy.deepcopy(rotated)
w8a8.quantize_model_w8a8(rot_static, "static", batches=calib)
reports.append(session.report(rot_static, "rotated + W8A8 per-tensor"))
del rot_static
w4 = QuantConfig(4, symmetric=False, granularity="channel")
for label, m in (("RTN W4 per-channel", model), ("rotated + RTN W4 per-channel", rotated)):
    q = copy.deepcopy(m)
    quantize_model_rtn(q, w4, progress=False)
    reports.append(session.report(q, label))
    del q
views.quality_table(reports[4:] + [reports[1]])

# %%
print(f"per-tensor W8A8, rotated vs not, KLD: {reports[4].verdict(reports[1], metric='kld')}")
print(f"RTN W4 per-channel, rotated vs not, KLD: {reports[6].verdict(reports[5], metric='kld')}")
views.plot_kld([reports[1], reports[3], reports[4], reports[0]], title="per-token KLD of the W8A8 variants")
plt.show()

# %% [markdown]
# Where the per-token KLD curves sit to the left, fewer tokens were damaged: the curve shows whether a method
# helps all tokens a little or rescues a tail of badly hit ones.
#
# Read the second verdict above before trusting "rotations always help". A rotation helps a quantizer whose
# *scale* was set by one outlier: per-tensor activations, and weights quantized with error feedback (GPTQ,
# which QuaRot and SpinQuant pair with their rotations). Plain round-to-nearest per output channel is another
# story: the rotation first folds the RMSNorm weights into the next layers, which widens each row's range,
# and spreads every row's outliers over all its columns, so a per-channel grid has no small-range rows left
# to win on. `benchmarks/bench_rotation.py` separates the two steps ("norms fused only" vs "R1") and runs GPTQ
# on the rotated model, where the rotation does pay.

# %% [markdown]
# ## 6. llama.cpp's KV cache types
# llama.cpp stores K and V in a type of your choice (`-ctk`, `-ctv`): f16, or ggml blocks of 32 values. First,
# what a block costs:

# %%
from quantedu.course.quiz import Quiz

quiz = Quiz.load("activations", ids=["q8-kv-bytes"])
quiz.show()

# %% [markdown]
# q8_0 takes 34 bytes per block, q4_0 18. A quantized V needs flash attention (`-fa on`). The course's formula
# predicts the bytes from the model's shape; llama-perplexity reports what it allocated, and scores every type
# against its own f16 cache on the same tokens (`--kl-divergence`). Cached: the runs repeat on a re-run.

# %%
import tempfile
from pathlib import Path

from quantedu import artifacts
from quantedu.data import evaluation_text
from quantedu.engines.llama_cpp import kv_cache

CASES = [("q8_0", "q8_0"), ("q8_0", "q4_0"), ("q4_0", "q4_0")]
gguf = session.gguf_source()


def measure_kv():
    with tempfile.TemporaryDirectory() as tmp:
        text = Path(tmp) / "text.txt"
        text.write_text(evaluation_text())
        return kv_cache.kv_cache_kld(gguf, text, Path(tmp) / "base.kld", CASES, model, ctx=KV_CTX, chunks=2,
                                     n_threads=THREADS)


key = artifacts.cache_key("kv-types", str(gguf), gguf.stat().st_size, KV_CTX, CASES, THREADS,
                          artifacts.code_fingerprint(kv_cache))
kv_rows = artifacts.cached_json("kv-cache-types", key, measure_kv)
import pandas as pd

kv = pd.DataFrame(kv_rows)
kv["cache"] = "K " + kv.K + " / V " + kv.V
kv = kv.set_index("cache")
assert kv["equal"].all(), "llama.cpp allocated a different KV cache size than the formula predicts"
table = pd.DataFrame({
    "MiB predicted": kv.predicted_MiB, "MiB reported": kv.reported_MiB,
    "vs f16": (kv.reported_MiB / kv.reported_MiB.iloc[0]).map("{:.2f}x".format),
    "mean KLD": [views.plus_minus(r.kld, r.kld_se) if not pd.isna(r.kld) else "(the reference)"
                 for r in kv.itertuples()],
    "same top": [views.plus_minus(r.same_top, r.same_top_se, 100, "%") if not pd.isna(r.same_top) else "(the reference)"
                 for r in kv.itertuples()],
    # prompt processing at KV_CTX tokens, one pass each (benchmarks/bench_kv_cache.py times more types)
    "prefill tokens/s": [f"{t:.0f}" if not pd.isna(t) else "not timed" for t in kv.tokens_per_s]})
print(f"KV cache at {KV_CTX} tokens ({KV_CTX // 2} scored per chunk, 2 chunks), {THREADS} thread(s):")
table

# %%
q = kv.iloc[1:]
fig, ax = plt.subplots(figsize=(6, 2.8))
ax.errorbar(q.reported_MiB, q.kld, yerr=1.96 * q.kld_se, fmt="o")
for name, r in q.iterrows():
    ax.annotate(name, (r.reported_MiB, r.kld), textcoords="offset points", xytext=(5, 5), fontsize=8)
ax.axvline(kv.reported_MiB.iloc[0], color="k", lw=0.8, ls="--", label="f16 cache")
ax.set(xlabel=f"KV cache at {KV_CTX} tokens (MiB, as llama.cpp reports)", ylabel="mean KLD vs the f16 cache",
       title="what each KV cache type saves, and what it costs")
ax.legend(fontsize=8)
plt.show()
q8, q4 = kv.loc["K q8_0 / V q8_0"], kv.loc["K q4_0 / V q4_0"]
session.claim(q4.kld - 2 * q4.kld_se > q8.kld + 2 * q8.kld_se, "a q4_0 cache moves the predictions more than q8_0")
print(f"predicted = reported for all {len(kv)} types; llama.cpp rotates a quantized cache: "
      f"{', '.join(f'{n}: {r.rotated}' for n, r in kv.iloc[1:].iterrows())}")
ratios = {n: r.tokens_per_s / kv.tokens_per_s.iloc[0] for n, r in kv.iloc[1:].iterrows()}
slower = [n for n, x in ratios.items() if x < 0.85]  # beyond the ~15% timing noise of a shared machine
print("prefill speed against the f16 cache: " + ", ".join(f"{n} x{x:.2f}" for n, x in ratios.items())
      + (f"; slower beyond the timing noise: {', '.join(slower)}" if slower else "; all within the timing noise"))

# %% [markdown]
# Each halving of the bits costs more KLD than the one before; K8/V4 keeps the keys, which pass through the
# softmax, at 8 bits and pays the 4-bit price only on the values. The table's last column is the speed of
# processing the prompt at this context, one pass per type. A quantized row is quantized (and rotated) when it is
# written and dequantized when attention reads it: extra work that can cost more time than the bytes save, and
# the last line above says what it did here. A quantized cache is bought for its memory (more context, or more
# users, on the same machine), not for speed. This llama.cpp applies its own Hadamard
# rotation to a quantized cache (the idea of section 5, applied online);
# `tests/test_kv_cache.py::test_llama_cpps_rotation_of_a_quantized_cache_can_be_turned_off` measures it off.

# %% [markdown]
# ## 7. What vLLM does with this on a CPU
# vLLM serving is too slow to start inside this notebook's time budget, so the facts come from tests that
# run it (`make test`, in `.venv-vllm`):
# - `tests/test_w8a8_vllm.py::test_vllm_int8_kernels_and_the_emulation_are_bit_identical`: vLLM's CPU int8
#   ops (`onednn_scaled_int8_quant`, `onednn_scaled_mm`) and the course's `W8A8Linear` give bit-identical
#   codes, scales and outputs, per-token and per-tensor, fp32 and bf16.
# - `test_served_in_fp32_the_checkpoints_compute_what_the_emulation_computes` and
#   `test_served_in_bf16_perplexity_agrees_within_one_percent`: the course's W8A8 checkpoints
#   (`quantedu.export.w8a8.save_w8a8`, with and without SmoothQuant) served by vLLM score the same
#   log-probabilities as `load_w8a8`'s emulation, within a stated tolerance.
# - `test_fp8_kv_cache_probe_reports_what_vllm_does_here`: `--kv-cache-dtype fp8` on this CPU, served or refused
#   with vLLM's message (`quantedu doctor` prints the outcome: `quantedu.engines.vllm_kv.describe`).
#
# `benchmarks/bench_w8a8.py` measures the served perplexity and throughput by concurrency beside fp16 and W4A16.
# The checkpoint itself is cheap to write; its size against the fp32 model:

# %%
from quantedu.export.w8a8 import save_w8a8

with tempfile.TemporaryDirectory() as tmp:
    path = save_w8a8(sq_dyn, Path(tmp) / "w8a8", session.tokenizer)
    size = sum(p.stat().st_size for p in path.rglob("*.safetensors"))
fp32 = memory.measured_tensor_bytes(model)["parameters"]
print(f"SmoothQuant + W8A8 checkpoint: {size / 2**20:.1f} MiB of safetensors; the {session.dtype_name} model's "
      f"parameters {fp32 / 2**20:.1f} MiB")

# %% [markdown]
# ## 8. What each technique buys, what it costs
# Measured above, against the same baseline on the same windows (perplexity change with its 95% interval;
# the verdict column is the rule's, "tie" inside the noise):

# %%
views.quality_table(reports)

# %%
f16_mib, q8_mib, q4_mib = kv.reported_MiB.iloc[0], kv.loc["K q8_0 / V q8_0"].reported_MiB, kv.loc["K q4_0 / V q4_0"].reported_MiB
print(f"KV cache: q8_0 saves {1 - q8_mib / f16_mib:.0%} of it at KLD {kv.loc['K q8_0 / V q8_0'].kld:.4f}; "
      f"q4_0 saves {1 - q4_mib / f16_mib:.0%} at KLD {kv.loc['K q4_0 / V q4_0'].kld:.4f}")

# %% [markdown]
# ## Quiz

# %%
quiz = Quiz.load("activations", ids=["per-tensor-outliers", "smoothquant-alpha", "rotation-function"], values={
    "outlier_x": float(absmax.max() / absmax.median())})
quiz.show()
