# %% [markdown]
# # 02 · PTQ vs QAT
#
# **Post-training quantization (PTQ)** rounds a trained model's weights onto a grid, with no
# training: here round-to-nearest (RTN), the baseline every later method must beat.
# **Quantization-aware training (QAT)** keeps training *through* the rounding, so the model learns to
# live on the grid. This notebook looks at the real model's weights, sweeps RTN over bit widths and
# group sizes, then runs a short QAT and compares at the same bit width.

# %% [markdown]
# ## Parameters
# The sweep evaluates each configuration on `EVAL_WINDOWS` windows of `EVAL_SEQ_LEN` tokens of the
# evaluation split: few, so that the whole sweep fits a small CPU (notebook 00 shows how much a
# baseline depends on its windows, which is why this notebook measures its own). The final
# PTQ-vs-QAT comparison uses `FINAL_WINDOWS`, and reads it also on each half of them (two pieces of
# text) to show how much the numbers move with the text. On a GPU everything grows automatically.

# %%
from quantedu.course import parameter

MODEL = parameter("MODEL", "auto")  # or "smollm2-135m", a hub id, a local path (env: QUANTEDU_MODEL)
BITS = (8, 4, 3, 2)
GROUPS = (32, 128, None)      # None = one scale per output channel
EVAL_WINDOWS, EVAL_SEQ_LEN = 2, 256
FINAL_WINDOWS = 2             # windows of the final PTQ-vs-QAT comparison (read also half by half)
QAT_BITS, QAT_GROUP = 3, 128  # where the RTN gap is large enough to see a QAT effect
QAT_STEPS = None              # None: quantedu.qat.plan() picks for this hardware

# %%
import copy
import time

import matplotlib.pyplot as plt
import pandas as pd
import torch
from transformers.utils import logging as hf_logging

from quantedu import qat
from quantedu.course import start
from quantedu.primitives import QuantConfig, choose_qparams, dequantize, fake_quantize, quantize, quantization_error

hf_logging.disable_progress_bar()  # transformers' loading bars would stay in the saved notebook as fragments
session = start(MODEL)
model, tokenizer, corpus = session.model, session.tokenizer, session.corpus
if session.on_gpu:
    EVAL_WINDOWS, EVAL_SEQ_LEN, FINAL_WINDOWS = 8, 512, 16
session.n_windows, session.seq_len = EVAL_WINDOWS, EVAL_SEQ_LEN
T0, CPU0 = time.perf_counter(), time.process_time()


def ppl(m, windows=None):
    return session.perplexity(m, n_windows=windows)

baseline = ppl(model)
print(f"baseline perplexity ({EVAL_WINDOWS} x {EVAL_SEQ_LEN} tokens of the evaluation split): {baseline:.3f}")

# %% [markdown]
# ## Symmetric or asymmetric, from scratch
# * **absmax (symmetric)**: `scale = max|w| / (2^(b-1) - 1/2)`, codes centred on a fixed zero point
#   `2^(b-1)`. Cheap (no zero point to store for signed codes), but if a group's weights are not
#   centred on 0, part of the grid is wasted.
# * **zero-point (asymmetric)**: `scale = (max - min) / (2^b - 1)` and an integer zero point
#   `round(-min / scale)`, so the grid covers exactly `[min, max]` (widened to include 0, which must
#   stay exactly representable).
#
# Both, written out for one row of a real weight, checked against `quantedu.primitives`:

# %%
from quantedu.calibration import decoder_layers

LAYER = "mlp.down_proj"                                # of the first decoder block
W = decoder_layers(model)[0].get_submodule(LAYER).weight.detach().float().cpu()
row = W[:1]
bits = 3

absmax = row.abs().max()
s_sym = absmax / (2 ** (bits - 1) - 0.5)
q_sym = torch.clamp(torch.round(row / s_sym) + 2 ** (bits - 1), 0, 2**bits - 1)
ours_sym = s_sym * (q_sym - 2 ** (bits - 1))

lo, hi = min(row.min(), 0), max(row.max(), 0)
s_asym = (hi - lo) / (2**bits - 1)
z_asym = torch.round(-lo / s_asym)
ours_asym = s_asym * (torch.clamp(torch.round(row / s_asym) + z_asym, 0, 2**bits - 1) - z_asym)

for sym, ours in ((True, ours_sym), (False, ours_asym)):
    ref = fake_quantize(row, QuantConfig(bits, symmetric=sym, granularity="channel"))
    assert torch.allclose(ours, ref, atol=1e-6)
    print(f"{'symmetric ' if sym else 'asymmetric'}: mean squared error {((ours - row) ** 2).mean().item():.3e}")

# %% [markdown]
# The histogram of that weight matrix, with the 3-bit grids of one 128-weight group drawn on it: the
# weights are bell-shaped with long tails, so most grid levels sit where few weights are.

# %%
group = W[0, :128]
fig, axes = plt.subplots(1, 2, figsize=(11, 3.2))
axes[0].hist(W.flatten().numpy(), bins=200, log=True, color="tab:gray")
axes[0].set_title(f"block 0 {LAYER}, {W.numel():,} weights (log count)")
axes[1].hist(group.numpy(), bins=40, color="tab:gray", alpha=0.6)
for sym, color in ((True, "tab:blue"), (False, "tab:red")):
    cfg = QuantConfig(bits, 128, symmetric=sym)
    s, z = choose_qparams(group[None], cfg)
    levels = s[0, 0] * (torch.arange(2**bits) - z[0, 0])
    for v in levels:
        axes[1].axvline(v.item(), color=color, lw=1, ls="--" if sym else ":")
axes[1].set_title("one group of 128: 3-bit levels, symmetric (--) vs asymmetric (:)")
plt.show()

# %% [exercise 02.asym_quantize]
# %% [markdown]
# ## Granularity and outliers
# One scale for the whole tensor, one per output channel (row), or one per group of columns in a
# row: finer means more scales to store (notebook 01) and less error. Relative squared error
# `||W_q - W||^2 / ||W||^2` of this layer:

# %%
rows_ = []
for b in (4, 3):
    for gran, g in (("tensor", 128), ("channel", 128), ("group", 128), ("group", 32)):
        for sym in (True, False):
            cfg = QuantConfig(b, g, symmetric=sym, granularity=gran)
            rows_.append({"bits": b, "granularity": cfg.label().split(" ", 2)[2], "symmetric": sym,
                          "rel. error": (quantization_error(W, cfg).sum() / (W**2).sum()).item()})
gran_table = pd.DataFrame(rows_).pivot_table(index=["bits", "granularity"], columns="symmetric", values="rel. error")
gran_table.round(4)

# %% [markdown]
# Outliers set the range. Per layer, the ratio of the largest weight to the standard deviation, and
# the RTN error at 4 and 3 bits (asymmetric, group 128), for every linear layer of the model:

# %%
from torch import nn

records = []
for name, m in model.named_modules():
    if isinstance(m, nn.Linear) and name != "lm_head":
        w = m.weight.detach().float()
        rec = {"layer": name, "block": int(name.split(".")[2]), "kind": name.split(".")[-1],
               "max/std": (w.abs().max() / w.std()).item()}
        for b in (4, 3):
            cfg = QuantConfig(b, 128)
            rec[f"W{b} rel. error"] = (quantization_error(w, cfg).sum() / (w**2).sum()).item()
        records.append(rec)
layer_err = pd.DataFrame(records)

fig, axes = plt.subplots(1, 2, figsize=(12, 3.5))
for kind, df in layer_err.groupby("kind"):
    axes[0].plot(df["block"], df["W3 rel. error"], marker=".", label=kind)
    axes[1].scatter(df["max/std"], df["W3 rel. error"], s=10, label=kind)
axes[0].set(xlabel="block", ylabel="relative error", title="W3 g128 RTN error per layer", yscale="log")
axes[1].set(xlabel="max |w| / std (outlier ratio)", ylabel="relative error", xscale="log", yscale="log",
            title="layers with larger outliers lose more")
axes[0].legend(fontsize=7)
plt.show()
worst = layer_err.sort_values("W3 rel. error", ascending=False).head(3)
print("largest W3 errors:", ", ".join(f"{r.layer} ({r['W3 rel. error']:.3f}, max/std {r['max/std']:.0f})"
                                       for _, r in worst.iterrows()))

# %% [markdown]
# ## PTQ: RTN on the whole model
# Every linear layer (the tied embedding/LM head stays as it is; `replace_linear` reports it) at each
# bit width and group size, evaluated on the evaluation split.

# %%
from quantedu.rtn import quantize_model_rtn, rtn_sweep, summary_line

report = quantize_model_rtn(copy.deepcopy(model), QuantConfig(4, 128), progress=False)
print(summary_line(report))

t = time.perf_counter()
sweep = rtn_sweep(model, ppl, bits=BITS, groups=GROUPS, progress=False)
sweep = sweep.rename(columns={"score": "perplexity"})
print(f"{len(sweep)} configurations in {time.perf_counter() - t:.0f} s (baseline {baseline:.3f})")
ptq_table = sweep.pivot(index="bits", columns="group", values="perplexity").sort_index(ascending=False)
ptq_table.round(2)

# %%
fig, ax = plt.subplots(figsize=(7, 4))
for g, df in sweep.groupby("group", sort=False):
    ax.plot(df["bits/weight"], df["perplexity"], marker="o", label=f"group {g}")
ax.axhline(baseline, color="k", ls="--", lw=1, label=f"baseline {baseline:.2f}")
ax.set(xlabel="bits per weight (scales and zeros included)", ylabel="perplexity (log)", yscale="log",
       title="RTN, asymmetric")
ax.legend()
plt.show()

# %%
w4 = sweep.set_index(["bits", "group"])["perplexity"]


def versus(p):
    """A perplexity next to the baseline, in the words its ratio calls for."""
    r = p / baseline
    return f"{p:.2f} ({r - 1:+.1%} vs the baseline)" if r < 2 else f"{p:,.1f} ({r:,.1f}x the baseline)"


for b in BITS:
    row_ = {g: w4[(b, g if g else "channel")] for g in GROUPS}
    order = sorted(row_, key=row_.get)
    monotone = order == sorted(GROUPS, key=lambda g: g or 10**9)  # smaller groups (more scales) better
    print(f"{b} bits: " + ", ".join(f"{'g' + str(g) if g else 'per-channel'} {versus(v)}" for g, v in row_.items())
          + ("; smaller groups do better" if monotone else "; the group sizes do not rank in order"))


# %% [markdown]
# ## QAT at the same bit width
# `quantedu.qat` swaps each linear layer for a `FakeQuantLinear`: the forward pass uses the
# quantized weight `s * (clamp(round(w / s) + z) - z)`; the backward pass treats `round` as the
# identity (the **straight-through estimator**), so gradients reach the weights, and the per-group
# scale `s` is a parameter too (**LSQ**, learned step size). Training data is the *calibration*
# split; evaluation is on the *evaluation* split.
#
# What is trained depends on the hardware (`qat.plan`):
# * on a GPU, **end-to-end**: the whole fake-quantized model at once, loss = KL divergence between
#   the full-precision and the quantized model's next-token distributions (distillation, as LLM-QAT);
# * on a CPU, **block-wise**: one decoder block at a time, trained (weights and scales) to reproduce
#   the full-precision block's output on the inputs that the already-quantized earlier blocks
#   produce, like the Block-AP phase of EfficientQAT. A step costs one block's forward and backward
#   instead of the whole model's, which is what makes QAT fit a few minutes on two cores.
#
# The STE in two lines, checked: the forward rounds, the gradient passes straight through.

# %%
x = torch.tensor([0.4, 1.6], requires_grad=True)
y = qat.round_ste(x)
y.sum().backward()
print(f"forward {y.tolist()}, gradient {x.grad.tolist()}")
assert y.tolist() == [0.0, 2.0] and x.grad.tolist() == [1.0, 1.0]

# %% [exercise 02.round_ste]
# %% [markdown]
# The PTQ side of the comparison: RTN, and RTN with the MSE-optimal clipping search (each group's
# range shrunk by the factor that minimises its squared error), a stronger PTQ baseline. The QAT run
# starts from RTN's min/max scales and learns its own.

# %%
qcfg = QuantConfig(QAT_BITS, QAT_GROUP)
plan = qat.plan(session.device)
if QAT_STEPS is not None:
    plan.steps = QAT_STEPS
print(f"QAT plan on {session.device}: {plan}")

import math

from quantedu.evaluate import evaluation_windows, window_nll

# The FINAL_WINDOWS windows, and each half of them: two pieces of text, from one forward pass.
final_windows = evaluation_windows(tokenizer, corpus, FINAL_WINDOWS, EVAL_SEQ_LEN)
HALF = FINAL_WINDOWS // 2


def scored(m, method):
    nll = window_nll(m, final_windows, progress=False)
    of = lambda part: math.exp(part.sum().item() / (len(part) * (EVAL_SEQ_LEN - 1)))  # noqa: E731
    return {"method": method, "perplexity": of(nll), "text A": of(nll[:HALF]), "text B": of(nll[HALF:])}


rtn_model = copy.deepcopy(model)
quantize_model_rtn(rtn_model, qcfg, progress=False)
results = [scored(model, "baseline (no quantization)"), scored(rtn_model, f"PTQ: RTN {qcfg.label()}")]
del rtn_model

from quantedu.primitives import mse_clip_search
from quantedu.rtn import replace_linear

def rtn_mse(w, name):  # a coarser grid than the default 100 steps: 20 ratios in [0.2, 1]
    wf = w.float()
    return fake_quantize(wf, qcfg, mse_clip_search(wf, qcfg, grid=25)).to(w.dtype)

mse_model = copy.deepcopy(model)
replace_linear(mse_model, rtn_mse, progress=False)
results.append(scored(mse_model, f"PTQ: RTN + MSE clip {qcfg.label()}"))
del mse_model

# %%
cal = session.calibration(plan.n_samples, plan.seq_len, seed=0)
qat_model = copy.deepcopy(model)
run = qat.train_qat(qat_model, cal, qcfg, plan, progress=False)
print(qat.summary_line(run))
results.append(scored(qat_model, f"QAT ({run['plan'].mode}, STE + LSQ scales, {run['steps']} steps) {qcfg.label()}"))
comparison = pd.DataFrame(results).set_index("method")
comparison.round(3)

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.2))
if "per_block" in run:
    pb = pd.DataFrame(run["per_block"])
    axes[0].semilogy(pb["block"], pb["mse before"], marker=".", label="RTN scales")
    axes[0].semilogy(pb["block"], pb["mse after"], marker=".", label="after QAT")
    axes[0].set(xlabel="block", ylabel="block output MSE", title="block-wise QAT: error per block")
    axes[0].legend()
else:
    axes[0].plot(run["losses"], marker=".")
    axes[0].set(xlabel="step", ylabel="KL(fp || quantized)", title="QAT loss on calibration batches")
comparison["perplexity"].plot.barh(ax=axes[1], logx=True, color="tab:blue")
axes[1].set(xlabel=f"perplexity ({FINAL_WINDOWS} x {EVAL_SEQ_LEN} evaluation tokens, log)")
plt.show()
for col in ("perplexity", "text A", "text B"):
    r = comparison[col]
    print(f"{col:>10}: RTN {r.iloc[1]:.2f} -> RTN+MSE clip {r.iloc[2]:.2f} -> QAT {r.iloc[3]:.2f} (baseline {r.iloc[0]:.2f})")
rank = [list(comparison[c].iloc[1:].sort_values().index) for c in ("text A", "text B")]
gaps = [comparison[c].iloc[1:].max() / comparison[c].iloc[1:].min() - 1 for c in ("text A", "text B")]
print(("the three quantized models rank the same on both halves of the text" if rank[0] == rank[1] else
       "the ranking changes with the text: those differences are within what the text moves")
      + f" (best to worst: {gaps[0]:.0%} and {gaps[1]:.0%} apart); QAT took {run['seconds']:.0f} s.")

# %% [markdown]
# ### What this short run shows, and what it does not
# * It shows the mechanism: through the STE the loss reaches every scale and weight, and a handful
#   of steps per block already move perplexity at a bit width where RTN struggles. Part of the gain
#   is the scales shrinking: the same effect the MSE clipping search gets without training, which is
#   why RTN + MSE clip is the fair PTQ baseline to compare with. Part of it is what no PTQ rounding
#   rule does: each block is trained to undo the error of the blocks before it.
# * Block-wise training only matches each block's output; it never sees the final loss. End-to-end
#   QAT (what runs on a GPU here, and what LLM-QAT and EfficientQAT's second phase do) optimizes the
#   thing perplexity measures.
# * It does not show what QAT can reach. Printed below: the tokens this run used against a full QAT
#   run like LLM-QAT's (on the order of 10^8 tokens of self-generated data, all weights trained).
# * The evaluation uses few windows. The two halves of the text above show how much the numbers move
#   with the text; a difference that does not survive that change is not a result.
# * The baseline is not a pristine model: the offline weights were stored as **Q4_1** (4-bit codes
#   with a scale and minimum per block of 32) and dequantized. Our 8-bit and 4-bit g32 RTN results are
#   measured against that already-4-bit model, and a grid that does not line up with the Q4_1 blocks
#   (asymmetric integer zero points, group 128) re-rounds weights that were already rounded once.
#   Distillation targets the Q4_1 model's outputs, not the original bf16 model's.

# %%
n_params = sum(p.numel() for p in model.parameters())
full = qat.full_qat_cost(n_params, tokens=1e8)
print(f"this run: {run['tokens']:,} token passes through the trained part. A full QAT run of {full['tokens']:.0e} tokens on this "
      f"{n_params / 1e6:.0f} M-parameter model is ~{full['FLOPs']:.1e} FLOPs: {full['hours']:.2f} h at a sustained "
      f"50 TFLOP/s (one modern GPU); for a 7B model, {qat.full_qat_cost(7e9, 1e8)['hours']:.0f} GPU-hours, plus "
      f"optimizer state for every weight (Adam: 8 bytes/parameter more).")
print(f"notebook compute since loading the model: {time.perf_counter() - T0:.0f} s wall, "
      f"{time.process_time() - CPU0:.0f} s CPU")

# %% [markdown]
# ## Quiz

# %%
from quantedu import memory
from quantedu.course.quiz import Quiz

quiz = Quiz.load("ptq_qat", values={"bpw_g32": memory.GroupFormat(4, 32).bits_per_weight(),
                                    "bpw_channel": memory.GroupFormat(4, None).bits_per_weight(cols=W.shape[1])})
quiz.show()
