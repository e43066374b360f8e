# %% [markdown]
# # 04 · AWQ: activation-aware weight quantization
#
# GPTQ (notebook 03) fixes rounding errors after they happen. **AWQ** (Lin et al., 2023) asks a
# different question: *which* weights matter, and can we make their rounding error smaller before
# we round? Its answer: the weights that meet large activations. It protects them not by keeping
# them in higher precision, but by **scaling** — a trick that costs nothing at inference time.
#
# In this notebook you will:
# 1. measure the salience effect live: keep 1% of input channels in full precision, chosen three ways;
# 2. see why scaling those channels beats keeping them in fp16;
# 3. run AWQ's scale search step by step on one block, then check the package's version against it;
# 4. compare RTN, AWQ and GPTQ on the whole model at 4 and 3 bits, two group sizes, and with fewer
#    calibration samples;
# 5. meet the real tools (AutoAWQ, deprecated; llm-compressor, maintained) and run llm-compressor
#    beside ours, live, on the same settings.

# %% [markdown]
# ## Parameters
# `FAST = True` keeps the notebook to a few minutes on a laptop CPU: fewer and shorter calibration
# samples, a coarser search grid, short perplexity windows; set `FAST = False` on a GPU (or with time
# to spare) for the reference settings (8 x 512 calibration tokens, a 20-point grid, 8 x 512
# evaluation tokens). The live side-by-side run with llm-compressor calibrates both libraries on
# `LIB_SAMPLES x LIB_LEN` tokens: fewer on a CPU, where llm-compressor's AWQ is slow, so that both
# runs fit the notebook's few minutes.

# %%
from quantedu.course import fast_default, parameter

MODEL = parameter("MODEL", "auto")  # or "smollm2-135m", a hub id, a local path (env: QUANTEDU_MODEL)
FAST = fast_default()              # True on a CPU, False on a GPU (env: QUANTEDU_FAST)
CALIB_SAMPLES = 4 if FAST else 8     # calibration sequences (AWQ is cheap on samples, see below)
CALIB_LEN = 256 if FAST else 512     # tokens per calibration sequence
N_GRID = 6 if FAST else 20           # points of the alpha grid and of the clip grid (20 in the AWQ reference)
N_WINDOWS = 2 if FAST else 8         # perplexity windows ...
SEQ_LEN = 256 if FAST else 512       # ... of this many tokens
LIB_SAMPLES, LIB_LEN = (2, 128) if FAST else (CALIB_SAMPLES, CALIB_LEN)  # quantedu vs llm-compressor, live

# %%
import copy

import torch

from quantedu.runtime import timed
from quantedu.course import no_bars, start  # start(): no loading bars or library logs (no_bars(): llm-compressor's)
from quantedu.course.views import results_table
from quantedu.runtime import torch_threads

# Every quantization run is timed the same way: quantedu.runtime.timed (wall seconds and this
# process's CPU seconds), the model already in memory, with QUANT_THREADS torch threads: one on a CPU,
# where a shared 2-core machine is steadier with one thread than with two fighting for the cores,
# torch's default on a GPU.


session = start(MODEL, n_windows=N_WINDOWS, seq_len=SEQ_LEN)
model, tokenizer, corpus = session.model, session.tokenizer, session.corpus
QUANT_THREADS, BASE = session.quant_threads, session.dtype_name  # 1 thread on a CPU; "fp32" or e.g. "bfloat16"
THREADS = f"{QUANT_THREADS or torch.get_num_threads()} torch thread(s)"
batches = session.calibration(CALIB_SAMPLES, CALIB_LEN, seed=0)
ppl = session.perplexity  # perplexity on the N_WINDOWS x SEQ_LEN evaluation windows
# The same windows, split in two halves, are two pieces of text: every comparison is read on both, to
# see how much a difference moves when the text changes (one that flips is not a result). Free: the
# forward pass that gives the perplexity gives each window's loss (Session.scored).
scored, better, TEXTS = session.scored, session.better, session.halves
fp = scored(model, method=BASE)
fp_ppl = fp["ppl"]
print(f"{BASE} perplexity on {N_WINDOWS} x {SEQ_LEN} evaluation tokens: {fp_ppl:.3f}; {TEXTS}: {fp['ppl, text A']:.3f} "
      f"and {fp['ppl, text B']:.3f} (notebook 00 shows why a baseline belongs to its windows)")

# %% [markdown]
# ## 1. Salient weights: 1% of the channels
# The experiment from the AWQ paper (and MIT 6.5940's lab): quantize every linear layer to **3 bits**
# (groups of 128, round to nearest), but keep 1% of each layer's *input channels* (columns of the
# weight) in full precision. Which 1%? Three candidates:
#
# * the channels whose **activations** are largest on average (needs calibration data),
# * the channels whose **weights** are largest (mean |w| of the column),
# * **random** channels.
#
# First, the average |activation| entering every linear layer, from the calibration batches.

# %%
from quantedu.calibration import decoder_layers, linear_layers, observe_linear_inputs
from quantedu.primitives import QuantConfig, fake_quantize

W3 = QuantConfig(bits=3, group_size=128)
act_sum, act_count = {}, {}


def accumulate(name, x):
    act_sum[name] = act_sum.get(name, 0) + x.abs().float().sum(0)
    act_count[name] = act_count.get(name, 0) + x.shape[0]


with torch.no_grad(), observe_linear_inputs(decoder_layers(model), accumulate):
    for row in batches:
        model(row[None].to(session.device))
act_mean = {name: act_sum[name] / act_count[name] for name in act_sum}
first_q = next(name for name in act_mean if name.endswith("q_proj"))
x = act_mean[first_q]
print(f"{len(act_mean)} linear layers observed; the input of {first_q}: mean |x| per channel from "
      f"{x.min():.3f} to {x.max():.3f}, top 1% of channels carry {x.topk(max(1, len(x) // 100)).values.sum() / x.sum():.1%} of the mass")

# %%
def keep_fp(m, how: str, frac: float = 0.01, scale: float | None = None, seed: int = 0):
    """3-bit RTN everywhere; the chosen 1% of input channels kept in fp (or, with ``scale``, scaled by it)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, layer in linear_layers(decoder_layers(m)).items():
            W = layer.weight.data
            k = max(1, int(frac * W.shape[1]))
            if how == "activation":
                keep = act_mean[name].topk(k).indices
            elif how == "weight":
                keep = W.abs().mean(0).topk(k).indices
            elif how == "random":
                keep = torch.randperm(W.shape[1], generator=gen)[:k].to(W.device)
            else:  # "none": plain RTN
                keep = torch.tensor([], dtype=torch.long, device=W.device)
            if scale is None:
                Wq = fake_quantize(W, W3)
                Wq[:, keep] = W[:, keep]                   # mixed precision: those columns stay in full precision
            else:
                s = torch.ones(W.shape[1], device=W.device, dtype=W.dtype)
                s[keep] = scale
                Wq = fake_quantize(W * s, W3) / s          # AWQ's idea: scale up, round, scale back
            layer.weight.data = Wq
    return m


salience = [scored(keep_fp(copy.deepcopy(model), how), **{"keep 1% in full precision chosen by": how})
            for how in ("none", "random", "weight", "activation")]
salience_df = results_table(salience, index="keep 1% in full precision chosen by")
salience_df

# %%
sal = {r["keep 1% in full precision chosen by"]: r for r in salience}
by = salience_df["ppl"]
ranked = sorted(("random", "weight", "activation"), key=lambda h: by[h])
print(f"{BASE} {fp_ppl:.2f}; 3-bit RTN {by['none']:.2f}; keeping 1% by activation: {by['activation']:.2f}, "
      f"by weight: {by['weight']:.2f}, random: {by['random']:.2f} (best to worst: {', '.join(ranked)}; "
      + ("the same order on text A and on text B)" if ranked == sorted(ranked, key=lambda h: sal[h]["ppl, text A"])
         == sorted(ranked, key=lambda h: sal[h]["ppl, text B"]) else "another order on one of the two halves of the text)"))
session.claim(better(sal["activation"], sal["none"]) and better(sal["activation"], sal["weight"])
              and better(sal["activation"], sal["random"]),
              "keeping the activation-chosen 1% beats plain RTN, weight-chosen and random channels on both halves of the text")

# %% [markdown]
# Where the claim above holds, weight magnitude is a poor guide to importance and the data flowing
# through the weight a good one (the printed numbers say by how much, on this model).
#
# ## 2. Why scale instead of keeping fp16?
# Mixed precision is awkward for hardware: a kernel that multiplies 4-bit weights cannot also hold a
# scattered 1% of fp16 columns without a second code path (and the memory layout to match). AWQ's
# observation: multiply salient column `c` by `s > 1` before rounding and divide its input by `s`.
# Rounding error of a weight is at most half a step, and the step is set by the group's largest
# weight, which usually is not in that column, so the error of `w*s` is about the same in absolute
# terms and `s` times smaller after dividing back. All weights stay 3-bit. Same experiment,
# salient columns (by activation) **scaled** instead of kept:

# %%
scaling = [{"scale s of the 1% salient channels": 1.0,  # s = 1 is plain RTN, measured above
            **{k: sal["none"][k] for k in ("ppl", "ppl, text A", "ppl, text B")}}]
scaling += [scored(keep_fp(copy.deepcopy(model), "activation", scale=s), **{"scale s of the 1% salient channels": s})
            for s in (1.5, 2.0, 4.0)]
scaling_df = results_table(scaling, index="scale s of the 1% salient channels")
scaling_df

# %%
best_s = scaling_df["ppl"].idxmin()
best_ab = {scaling_df["ppl, text A"].idxmin(), scaling_df["ppl, text B"].idxmin()}
print(f"best s = {best_s}: ppl {scaling_df['ppl'].min():.2f} (s = 1 is plain RTN: {scaling_df['ppl'][1.0]:.2f}; "
      f"keeping them in full precision: {by['activation']:.2f}); best on text A and on text B: "
      + (f"{best_s} on both" if best_ab == {best_s} else " and ".join(map(str, sorted(best_ab)))))
largest = max(scaling_df.index)
print(f"the largest scale, s = {largest}: ppl {scaling_df['ppl'][largest]:.2f}, "
      + ("worse than the best" if scaling_df["ppl"][largest] > scaling_df["ppl"].min() else "the best here"))

# %% [markdown]
# A scale that is too large makes the scaled column the group's maximum, which widens the step for
# every *other* weight of the group (the largest scale above shows whether that happens here). So the
# scale has to be searched — per channel, from the data. That is AWQ: `s = s_x ** alpha` with `s_x`
# the mean |activation| of each channel and one exponent `alpha` in [0, 1) per group of layers that
# read the same input, chosen by the error of the **inspected module's output**: the attention block
# (for q/k/v_proj), the MLP (for gate/up_proj), or the layer itself (o_proj, down_proj).
#
# The division by `s` is free: it is folded into the operation that produces the input —
# the RMSNorm weight in front of q/k/v_proj and in front of gate/up_proj, the rows of up_proj in front of
# down_proj, and the rows of v_proj in front of o_proj. That last pair is skipped with grouped-query
# attention, where one v channel feeds several o_proj inputs. This model:

# %%
from quantedu import awq

cfg_model = model.config
groups0 = awq.llama_scale_groups(decoder_layers(model)[0])
print(f"{cfg_model.num_attention_heads} query heads, {cfg_model.num_key_value_heads} KV heads: "
      f"{len(groups0)} scale groups per block: " + "; ".join(f"{g.prev} -> {', '.join(g.layers)} (scored on {g.inspect})"
                                                          for g in groups0))

# %% [markdown]
# ## 3. The scale search, step by step, on one block
# The MLP of one block: `mlp(x) = down(silu(gate(x)) * up(x))`, its input `x` the output of
# `post_attention_layernorm`. From scratch: for every `alpha` on the grid, scale, quantize gate and
# up, measure the MLP output error.

# %%
from quantedu.calibration import capture_block_inputs, run_block

BLOCK = 0
inputs, kwargs = capture_block_inputs(model, batches)
blocks = decoder_layers(model)
for i in range(BLOCK):
    inputs = run_block(blocks[i], inputs, kwargs)
block = copy.deepcopy(blocks[BLOCK])

captured = []
with torch.no_grad(), observe_linear_inputs(block, lambda n, x: captured.append(x), names={"mlp.gate_proj"}):
    for h in inputs:
        block(h, **kwargs)
X = torch.cat(captured)                                    # (tokens, hidden): the MLP's input
W4 = QuantConfig(bits=4, group_size=128)
mlp = block.mlp
gate_w, up_w = mlp.gate_proj.weight.data.clone(), mlp.up_proj.weight.data.clone()
s_x = X.abs().float().mean(0)                               # mean |activation| per input channel
with torch.no_grad():
    reference = mlp(X)
    losses = []
    for alpha in [i / N_GRID for i in range(N_GRID)]:
        s = s_x.pow(alpha).clamp(min=1e-4)
        s = (s / (s.max() * s.min()).sqrt()).to(gate_w.dtype)  # centred around 1, in the weights' dtype
        mlp.gate_proj.weight.data = fake_quantize(gate_w * s, W4) / s
        mlp.up_proj.weight.data = fake_quantize(up_w * s, W4) / s
        losses.append(((mlp(X) - reference) ** 2).mean().item())
    mlp.gate_proj.weight.data, mlp.up_proj.weight.data = gate_w, up_w
alphas = [i / N_GRID for i in range(N_GRID)]
best_alpha = alphas[losses.index(min(losses))]
print(f"block {BLOCK} MLP: error at alpha=0 (plain RTN) {losses[0]:.3e}, best alpha {best_alpha:.2f} -> "
      f"{min(losses):.3e} ({min(losses) / losses[0]:.0%} of RTN's)")

# %%
import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(6, 3))
ax.plot(alphas, losses, "o-")
ax.axvline(best_alpha, color="k", ls="--", lw=1)
ax.set_xlabel("alpha  (s = s_x ** alpha)")
ax.set_ylabel("MLP output MSE")
ax.set_title(f"AWQ scale search, block {BLOCK} gate/up_proj, W4 g128")
plt.show()

# %% [markdown]
# The package's `search_scale` is the same loop; it must pick the same alpha and the same scales.
# Then the scales are folded into `post_attention_layernorm`, and the block computes the same function
# as before (up to float rounding).

# %%
cfg = awq.AWQConfig(bits=4, group_size=128, n_grid=N_GRID)
s_pkg, alpha_pkg, hist_pkg = awq.search_scale(
    [mlp.gate_proj, mlp.up_proj], awq.activation_scale(X), lambda: ((mlp(X) - reference) ** 2).mean().item(), cfg)
assert alpha_pkg == best_alpha and max(abs(a - b) / b for a, b in zip(hist_pkg, losses)) < 1e-4

before = run_block(block, inputs[:1], kwargs)[0]
awq.fold_scales(block.post_attention_layernorm, [mlp.gate_proj, mlp.up_proj], s_pkg)
after = run_block(block, inputs[:1], kwargs)[0]
print(f"package: alpha {alpha_pkg:.2f}; folding changes the block output by at most {(after - before).abs().max():.1e} "
      f"(outputs up to {before.abs().max():.1f})")

# %% [exercise 04.awq_search]
# %% [exercise 04.awq_fold]
# %% [markdown]
# The full method does this for every scale group of every block (printed in section 2: their number
# depends on the model), then a second small search: per output row and group, clip the weight range
# to `±max|w| * r` with `r` in [0.5, 1], keeping the `r` that minimizes the layer's output error
# (outliers cost every other weight a coarser step). Finally it rounds with an integer zero point.
# `quantedu.awq.awq_quantize_model` runs it block by block (memory: one block and its calibration
# inputs).
#
# ## 4. The whole model: RTN vs AWQ vs GPTQ
# Same calibration batches for AWQ and GPTQ; all asymmetric with integer zero points; every run timed
# the same way (set-up cell). With `FAST` our AWQ searches `N_GRID`-point grids and scores `alpha` of
# the attention and MLP groups on one calibration sequence (`search_samples`).

# %%
from quantedu.gptq import GPTQConfig, gptq_quantize_model
from quantedu.rtn import quantize_model_rtn


def awq_config(bits, group):
    return awq.AWQConfig(bits=bits, group_size=group, n_grid=N_GRID, clip_grid=N_GRID, search_samples=1 if FAST else None)


def run(method: str, bits: int, group: int, n_samples: int = CALIB_SAMPLES) -> dict:
    m = copy.deepcopy(model)
    calib = batches[:n_samples]
    quantize = {"RTN": lambda: quantize_model_rtn(m, QuantConfig(bits=bits, group_size=group), progress=False),
                "AWQ": lambda: awq.awq_quantize_model(m, calib, awq_config(bits, group), progress=False),
                "GPTQ": lambda: gptq_quantize_model(m, calib, GPTQConfig(bits=bits, group_size=group, sym=False),
                                                    progress=False)}[method]
    with torch_threads(QUANT_THREADS):
        _, wall, cpu = timed(quantize)
    return scored(m, method=method, bits=bits, group=group, samples=n_samples if method != "RTN" else 0,
                  **{"wall s": wall, "CPU s": cpu})


records = [run(method, bits, 128) for bits in (4, 3) for method in ("RTN", "AWQ", "GPTQ")]
records += [run(method, 3, 64) for method in (("RTN",) if FAST else ("RTN", "AWQ"))]
whole = results_table(records)
whole

# %%
from quantedu import memory


def rec(method, bits, group=128, samples=None):
    return next(r for r in records if r["method"] == method and r["bits"] == bits and r["group"] == group
                and (samples is None or r["samples"] == samples))


def pick(method, bits, group=128, samples=None):
    return rec(method, bits, group, samples)["ppl"]


for bits in (4, 3):
    line = ", ".join(f"{m} {pick(m, bits):.2f}" for m in ("RTN", "AWQ", "GPTQ"))
    nxt = "; ".join(f"text {t}: " + ", ".join(f"{m} {rec(m, bits)['ppl, text ' + t]:.2f}" for m in ("RTN", "AWQ", "GPTQ"))
                    for t in "AB")
    calibrated = [m for m in ("AWQ", "GPTQ") if better(rec(m, bits), rec("RTN", bits))]
    order = ("AWQ ahead of GPTQ" if better(rec("AWQ", bits), rec("GPTQ", bits)) else
             "GPTQ ahead of AWQ" if better(rec("GPTQ", bits), rec("AWQ", bits)) else "AWQ and GPTQ swap places between the two texts")
    print(f"W{bits} g128: {line} ({nxt}); beating RTN on both texts: {', '.join(calibrated) or 'neither'}; {order}")
print(f"W3 g64: RTN {pick('RTN', 3, 64):.2f}" + ("" if FAST else f", AWQ {pick('AWQ', 3, 64):.2f}")
      + f" at {memory.GroupFormat(3, 64).bits_per_weight():.3f} bits/weight, vs g128's "
      f"{memory.GroupFormat(3, 128).bits_per_weight():.3f} (fp16 scale and 3-bit zero per group: notebook 01's formula)")
session.claim(better(rec("AWQ", 3), rec("RTN", 3)), "AWQ beats RTN at 3 bits on both halves of the text")

# %% [markdown]
# ### How many calibration samples?
# AWQ fits one exponent per group of layers (plus clip ratios); GPTQ fits every weight to a Hessian
# estimated from the samples. The AWQ paper claims it needs fewer samples. Tested: one calibration
# sequence instead of several, at 3 bits.

# %%
few = [run(method, 3, 128, n_samples=1) for method in ("AWQ", "GPTQ")]
records += few
sens = results_table([{"method": m, f"ppl, {CALIB_SAMPLES} samples": pick(m, 3, 128, CALIB_SAMPLES),
                       "ppl, 1 sample": pick(m, 3, 128, 1),
                       **{f"change, text {t}": rec(m, 3, 128, 1)[f"ppl, text {t}"] / rec(m, 3, 128, CALIB_SAMPLES)[f"ppl, text {t}"] - 1
                          for t in "AB"}}
                      for m in ("AWQ", "GPTQ")], index="method")
sens["change"] = sens["ppl, 1 sample"] / sens[f"ppl, {CALIB_SAMPLES} samples"] - 1
sens

# %%
def moved(m):
    a, b = sens["change, text A"][m], sens["change, text B"][m]
    return f"{sens['change'][m]:+.1%} (text A {a:+.1%}, text B {b:+.1%})" + ("" if a * b > 0 else ": the two texts disagree, within the noise")


print(f"with 1 calibration sequence of {CALIB_LEN} tokens instead of {CALIB_SAMPLES}: AWQ {moved('AWQ')}, GPTQ {moved('GPTQ')}")

# %% [markdown]
# ## 5. The real tools
# ### AutoAWQ (the seed's snippet), run as written
# The seed quantizes with AutoAWQ: `AutoAWQForCausalLM.from_pretrained(path)`, then
# `quantize(tokenizer, quant_config={"zero_point": True, "q_group_size": 128, "w_bit": 4, "version": "GEMM"})`
# and `save_quantized`. `zero_point=True` is the asymmetric integer zero point used above, `q_group_size` the
# group, `w_bit` the bits, `version="GEMM"` the packed layout its CUDA GEMM kernel reads (vLLM and
# transformers load that "AWQ GEMM" layout too). AutoAWQ declared itself deprecated in spring 2025 (its README:
# last tested with torch 2.6.0 and transformers 4.51.3; its AWQ was adopted by the vLLM project's
# llm-compressor), and transformers dropped its AutoAWQ code paths in December 2025 (PR #41567).
#
# It lives in the seed libraries' own environment (`make seed-libs`), run by `quantedu.engines.seed_libs` in a
# subprocess, with `LIB_SAMPLES x LIB_LEN` calibration tokens: as written, then with the smallest fix for each
# failure, and the checkpoint it writes read back by the course's own loader. AutoAWQ's search costs about the
# same whatever the calibration size on this CPU (minutes per run for the whole model), so it runs on the
# first `AWQ_BLOCKS` blocks of the session's model, saved as a checkpoint of their own: enough to see each
# outcome, and every perplexity below is of that truncated model.

# %%
import tempfile

from quantedu.engines import seed_libs

AWQ_BLOCKS = 2
seed_env = seed_libs.status()
awq_runs = {}
if not seed_env["usable"]:
    print(f"Skipped: {seed_env['why']}\n  {seed_env['install']}")
else:
    small = copy.deepcopy(model)
    small.model.layers = small.model.layers[:AWQ_BLOCKS]
    small.config.num_hidden_layers = AWQ_BLOCKS
    with tempfile.TemporaryDirectory() as seed_dir:
        small.save_pretrained(seed_dir)
        tokenizer.save_pretrained(seed_dir)
        run = lambda **kw: seed_libs.run_autoawq(seed_dir, n_samples=LIB_SAMPLES, seq_len=LIB_LEN, **kw)  # noqa: E731
        awq_runs["as written (group 128)"] = run(fix=False)
        group = 128
        if not awq_runs["as written (group 128)"]["ok"]:  # AutoAWQ has no short last group: 128 must divide the rows
            shape = (model.config.hidden_size, model.config.intermediate_size)
            group = next(g for g in (64, 32) if all(n % g == 0 for n in shape))
            awq_runs[f"group {group}"] = run(fix=False, group_size=group)
        awq_runs[f"group {group} + backup .detach().clone()"] = run(fix=True, group_size=group)
    small_ppl = session.perplexity(small)
    for step, r in awq_runs.items():
        if r["ok"]:
            r["ppl"] = session.perplexity(seed_libs.load(r, session.dtype).to(session.device))
        print(f"{step:38s} " + (f"ran in {r['quantize_s']:.0f} s ({r['quantize_s'] / AWQ_BLOCKS:.0f} s per block): "
                                 f"perplexity {r['ppl']:.2f}" if r["ok"]
                                 else f"{r.get('stage', '')}: {seed_libs.first_line(r)}"))
    print(f"(the {AWQ_BLOCKS}-block model unquantized, {BASE}: {small_ppl:.2f})")

# %% [markdown]
# On a CPU the run that completes without the one-line fix returns a broken model: AutoAWQ's scale search
# backs the weights up with `v.cpu()`, which on a CPU is the *same* tensor, then scales the weights in place
# for each candidate, so its "backup" drifts with them. `.detach().clone()` makes it a copy
# (`quantedu.engines.seed_libs` patches that one line of `AwqQuantizer._compute_best_scale`). Beside the course's AWQ
# with AutoAWQ's settings (asymmetric, duo scaling, 20-point grids, clipping, the same group and calibration
# windows) on the same truncated model:

# %%
if awq_runs:
    fixed = list(awq_runs.values())[-1]
    broken = list(awq_runs.values())[-2]
    if session.real_model:
        assert fixed["ok"] and broken["ok"] and broken["ppl"] > 2 * fixed["ppl"], "AutoAWQ's CPU outcome changed"
    seed_awq_cfg = awq.AWQConfig(bits=4, group_size=group, duo_scaling=True)
    ours_awq = copy.deepcopy(small)
    with torch_threads(QUANT_THREADS):
        _, seed_wall, seed_cpu = timed(lambda: awq.awq_quantize_model(
            ours_awq, session.calibration(LIB_SAMPLES, LIB_LEN, seed=0), seed_awq_cfg, progress=False))
    seed_df = results_table([scored(ours_awq, library="quantedu AWQ", **{"wall s": seed_wall, "CPU s": seed_cpu}),
                             scored(seed_libs.load(fixed, session.dtype).to(session.device), library="AutoAWQ (fixed)",
                                    **{"wall s": fixed["quantize_s"]})], index="library")
    c, a = seed_df.loc["quantedu AWQ"], seed_df.loc["AutoAWQ (fixed)"]
    print(f"{seed_awq_cfg.label()} duo scaling, {AWQ_BLOCKS} blocks, {LIB_SAMPLES} x {LIB_LEN} tokens: quantedu "
          f"{c['ppl']:.2f} in {c['wall s']:.0f} s, AutoAWQ {a['ppl']:.2f} in {a['wall s']:.0f} s: "
          + ("quantedu ahead on both texts" if better(c, a) else "AutoAWQ ahead on both texts" if better(a, c)
             else "a tie within the noise"))
    display(seed_df)

# ### llm-compressor's `AWQModifier` — the maintained path
# ```python
# from llmcompressor import oneshot
# from llmcompressor.modifiers.transform.awq import AWQModifier
# from llmcompressor.modifiers.quantization import QuantizationModifier
# oneshot(model=model, dataset=ds, processor=tokenizer,
#         recipe=[AWQModifier(), QuantizationModifier(targets="Linear", scheme="W4A16_ASYM", ignore=["lm_head"])])
# ```
# Its defaults differ from the paper in two ways: "duo scaling" (`s = s_x^a / s_w^(1-a)`,
# `AWQConfig(duo_scaling=True)` here) and no clipping search. The test suite checks that with the
# paper's settings it picks exactly our scales on the same block and data. It refuses groups that do
# not divide a layer's columns; ours handles the short last group. On a machine without a GPU it
# needs one patch (`IntermediatesCache.pin_memory` asks for an accelerator), which
# `quantedu.engines.llm_compressor.run_oneshot` applies.
#
# **Live, on the same settings.** One `AWQConfig` drives both: llm-compressor's method (duo scaling,
# no clipping) with section 4's `N_GRID`-point grid (llm-compressor's default is 20 points), 4 bits
# asymmetric, groups of 64 (which divide this model's columns), the same `LIB_SAMPLES x LIB_LEN`
# calibration windows, the same threads and timer. One difference remains: llm-compressor's grid is
# `i / (n_grid - 1)`, ours the reference's `i / n_grid`. The full-size comparison is
# `benchmarks/bench_awq.py`.

# %%
from quantedu.engines import llm_compressor

if llm_compressor.available():
    lib_cfg = awq.AWQConfig(bits=4, group_size=64, duo_scaling=True, clip=False, n_grid=N_GRID)
    lib_batches = session.calibration(LIB_SAMPLES, LIB_LEN, seed=0)
    ours_m, lib = copy.deepcopy(model), copy.deepcopy(model)
    with torch_threads(QUANT_THREADS):
        _, ours_wall, ours_cpu = timed(lambda: awq.awq_quantize_model(ours_m, lib_batches, lib_cfg, progress=False))
        recipe = llm_compressor.awq_recipe(lib_cfg, duo_scaling=lib_cfg.duo_scaling, n_grid=lib_cfg.n_grid)
        with no_bars():
            _, lib_wall, lib_cpu = timed(lambda: llm_compressor.run_oneshot(lib, lib_batches, recipe, tokenizer))
    live_df = results_table([scored(ours_m, library="quantedu AWQ", **{"wall s": ours_wall, "CPU s": ours_cpu}),
                             scored(lib, library="llm-compressor AWQ", **{"wall s": lib_wall, "CPU s": lib_cpu})],
                            index="library")
    q, l = live_df.iloc[0], live_df.iloc[1]
    print(f"W4 g64, duo scaling, no clipping, {lib_cfg.n_grid}-point grid, {LIB_SAMPLES} x {LIB_LEN} calibration tokens, {THREADS}: "
          f"quantedu {q['wall s']:.0f} s wall / {q['CPU s']:.0f} s CPU, llm-compressor {l['wall s']:.0f} s / {l['CPU s']:.0f} s "
          f"(CPU time {l['CPU s'] / q['CPU s']:.2f}x ours); perplexity {q['ppl']:.2f} vs {l['ppl']:.2f}, text A "
          f"{q['ppl, text A']:.2f} vs {l['ppl, text A']:.2f}, text B {q['ppl, text B']:.2f} vs {l['ppl, text B']:.2f}"
          + (f": {'quantedu' if better(q, l) else 'llm-compressor'} ahead on both texts" if better(q, l) or better(l, q)
             else ": the same quality within the noise (they swap places between the two texts)"))
    display(live_df)
else:
    print(f"llm-compressor is not installed: {llm_compressor.INSTALL}")

# %% [markdown]
# ## GPTQ or AWQ for vLLM?
# The seed's question. In current vLLM both 4-bit formats (GPTQ, AWQ, and compressed-tensors W4A16,
# which llm-compressor writes for either algorithm) run on NVIDIA GPUs from Ampere on through the same
# Marlin mixed-precision kernels, so serving speed is not the difference. The choice is about accuracy
# on your model and data, and the cost of calibration. This notebook's numbers, all timed the same way:

# %%
a4, g4 = rec("AWQ", 4, samples=CALIB_SAMPLES), rec("GPTQ", 4, samples=CALIB_SAMPLES)
a3, g3 = rec("AWQ", 3, samples=CALIB_SAMPLES), rec("GPTQ", 3, samples=CALIB_SAMPLES)


def verdict(a, g):
    return "AWQ ahead on both texts" if better(a, g) else "GPTQ ahead on both texts" if better(g, a) else "a tie within the noise"


print(f"W4 g128: AWQ {a4['ppl']:.2f} vs GPTQ {g4['ppl']:.2f} ({verdict(a4, g4)}); W3 g128: AWQ {a3['ppl']:.2f} vs GPTQ "
      f"{g3['ppl']:.2f} ({verdict(a3, g3)}); {BASE} {fp_ppl:.2f}")
faster = "AWQ" if a4["CPU s"] < g4["CPU s"] else "GPTQ"
print(f"quantization time, W4 g128 on {CALIB_SAMPLES} x {CALIB_LEN} tokens, {THREADS}: AWQ {a4['wall s']:.0f} s wall / "
      f"{a4['CPU s']:.0f} s CPU ({N_GRID}-point grids" + (", alpha scored on 1 sequence" if FAST else "") + f"), GPTQ "
      f"{g4['wall s']:.0f} s / {g4['CPU s']:.0f} s: {faster} was faster here; 1-sample sensitivity: AWQ "
      f"{sens['change']['AWQ']:+.1%}, GPTQ {sens['change']['GPTQ']:+.1%}")

# %% [markdown]
# ## Quiz

# %%
from quantedu.course.quiz import Quiz

quiz = Quiz.load("awq", values={
    "fp": fp_ppl, "rtn": by["none"], "random": by["random"], "weight": by["weight"], "activation": by["activation"],
    "calib": f"{CALIB_SAMPLES} x {CALIB_LEN}", "awq_w4": a4["ppl"], "gptq_w4": g4["ppl"],
    "awq_cpu": a4["CPU s"], "gptq_cpu": g4["CPU s"]})
quiz.show()
