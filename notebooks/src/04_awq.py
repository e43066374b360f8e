# %% [markdown]
# # 04 · AWQ: activation-aware weight quantization
#
# GPTQ (notebook 03) fixes rounding errors after they happen. **AWQ** (Lin et al., 2023) asks a
# different question: *which* weights matter, and can we make their rounding error smaller before
# we round? Its answer: the weights that meet large activations. It protects them not by keeping
# them in higher precision, but by **scaling**, a trick that costs nothing at inference time.
#
# In this notebook you will:
# 1. see a real layer's salient channels, and measure the salience effect live: keep 1% of the input channels
#    in full precision, chosen three ways;
# 2. see why AWQ scales those channels instead of keeping them, and measure what a fixed scale gets;
# 3. write AWQ's scale search and its fold yourself (two exercises), then watch the search on one block;
# 4. compare RTN, AWQ and GPTQ on the whole model like with like (same calibration, grid, group size; with the
#    time each took), on text like the calibration's and on text from another source;
# 5. meet the real tools (AutoAWQ, deprecated; llm-compressor, maintained) and run them beside ours, live, on
#    the same settings.

# %% [markdown]
# ## Parameters
# `FAST = True` keeps the notebook to a few minutes on a laptop CPU: calibration windows of 256 tokens, as
# many as the widest layer needs (twice its inputs: notebook 03, section 4), a coarser search grid scored on one
# calibration window, and the libraries run on the model's first block only. `FAST = False` (a GPU, or time to
# spare) uses the reference settings (a 20-point grid on all the calibration, 3 bits too). Quality is measured
# on the course's named window sets (notebook 00): "eval" (help pages the calibration never saw), "heldout"
# (the standard library's code) and, for the many small experiments, "sweep" (the first two "eval" windows).

# %%
from quantedu.course import fast_default, parameter

MODEL = parameter("MODEL", "auto")  # or "smollm2-135m", a hub id, a local path (env: QUANTEDU_MODEL)
FAST = fast_default()              # True on a CPU, False on a GPU (env: QUANTEDU_FAST)
CALIB_LEN = 256 if FAST else 512     # tokens per calibration window
MIN_SAMPLES = 4 if FAST else 8       # calibration windows at least (more if the widest layer needs them)
N_GRID = 6 if FAST else 20           # points of the alpha grid and of the clip grid (20 in the AWQ reference)
BITS = (4,) if FAST else (4, 3)      # bit widths quantized on the whole model
LIB_BLOCKS = 1 if FAST else 4        # blocks the libraries (AutoAWQ, llm-compressor) quantize live

# %%
import copy

import torch

from quantedu import awq, calibration
from quantedu.course import no_bars, runs, start  # start(): no loading bars or library logs (no_bars(): llm-compressor's)
from quantedu.course.views import quality_table
from quantedu.runtime import timed, torch_threads

# Every quantization is timed the same way (quantedu.runtime.timed: wall and this process's CPU seconds, the
# model already in memory) with session.quant_threads torch threads: one on a CPU, where a shared 2-core
# machine is steadier with one thread than with two fighting for the cores; torch's default on a GPU.
# quantedu.course.runs caches each run by its settings: the GPTQ run below is notebook 03's when it ran first
# (the times shown are those measured when each run ran).
session = start(MODEL)
model, tokenizer, BASE = session.model, session.tokenizer, session.dtype_name  # BASE: "fp32", or e.g. "bfloat16"
THREADS = f"{session.quant_threads or torch.get_num_threads()} torch thread(s)"
CALIB = session.enough_calibration(CALIB_LEN, at_least=MIN_SAMPLES)  # twice the widest layer's inputs, or more
CALIB_SAMPLES = CALIB.shape[0]
print(runs.baselines(session, ("sweep", "eval", "heldout")))

# %% [markdown]
# ## 1. Salient weights: 1% of the channels
# AWQ's first step is a statistic: the mean |activation| of every input channel of every linear layer, over
# the calibration tokens (`awq.channel_magnitudes`). Here it is for the input of one block's MLP, beside the
# mean |weight| of the same input channels, each with its top 1% marked:

# %%
import matplotlib.pyplot as plt

from quantedu.calibration import decoder_layers
from quantedu.course.figures import awq as awq_figures

BLOCK = 0
act_mean = awq.channel_magnitudes(model, CALIB)
MLP_IN = f"model.layers.{BLOCK}.mlp.gate_proj"
x_mean, w_mean = act_mean[MLP_IN], model.get_submodule(MLP_IN).weight.detach().abs().float().mean(0).cpu()
awq_figures.plot_channel_magnitudes(x_mean, w_mean, title=f"{MLP_IN}: its {x_mean.numel()} input channels")
plt.show()
k = max(1, x_mean.numel() // 100)
top_x, top_w = set(x_mean.topk(k).indices.tolist()), set(w_mean.topk(k).indices.tolist())
print(f"{len(act_mean)} linear layers observed; in {MLP_IN}, the top 1% of channels ({k}) carry "
      f"{x_mean.topk(k).values.sum() / x_mean.sum():.1%} of the activation mass; {len(top_x & top_w)} of them are "
      f"also among the {k} channels with the largest weights")

# %% [markdown]
# A few channels carry activations several times the average; the line above says how many of them also hold
# the largest weights, so the two statistics pick different channels where that count is below the 1%.
#
# The experiment from the AWQ paper (and MIT 6.5940's lab): quantize every linear layer to **3 bits**
# (groups of 128, round to nearest), but keep 1% of each layer's *input channels* (columns of the
# weight) in full precision. Which 1%? The channels whose **activations** are largest on average, the channels
# whose **weights** are largest (mean |w| of the column), or **random** channels. Each model is compared with
# the baseline on the "sweep" windows (perplexity, KL divergence, same top token); the verdicts are the rule's.

# %%
from quantedu.primitives import QuantConfig, fake_quantize

W3 = QuantConfig(bits=3, group_size=128)


def keep_fp(how: str, frac: float = 0.01, scale: float | None = None, seed: int = 0):
    """A copy of the model, 3-bit RTN everywhere; the chosen 1% of input channels kept in full precision (or,
    with ``scale``, multiplied by it before rounding and divided after)."""
    m = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, layer in m.named_modules():
            if name not in act_mean:
                continue
            W = layer.weight.data
            k = max(1, int(frac * W.shape[1]))
            keep = {"activation": lambda: act_mean[name].topk(k).indices,
                    "weight": lambda: W.abs().mean(0).topk(k).indices,
                    "random": lambda: torch.randperm(W.shape[1], generator=gen)[:k],
                    "none": lambda: torch.tensor([], dtype=torch.long)}[how]().to(W.device)
            if scale is None:
                Wq = fake_quantize(W, W3)
                Wq[:, keep] = W[:, keep]                   # mixed precision: those columns stay in full precision
            else:
                s = torch.ones(W.shape[1], device=W.device, dtype=W.dtype)
                s[keep] = scale
                Wq = fake_quantize(W * s, W3) / s          # AWQ's idea: scale up, round, scale back
            layer.weight.data = Wq
    return m


salience = {how: runs.external(session, f"W3 RTN, keep 1% by {how}" if how != "none" else "W3 RTN", keep_fp(how),
                               purposes=("sweep",)).release() for how in ("none", "random", "weight", "activation")}
display(quality_table([r.report("sweep") for r in salience.values()]))
act = salience["activation"].report("sweep")
for how in ("none", "random", "weight"):
    print(f"{act.name} vs {salience[how].name}: {act.verdict(salience[how].report('sweep'), metric='kld')}")
session.claim(all(act.verdict(salience[h].report("sweep"), metric="kld").winner == act.name for h in ("none", "random", "weight")),
              "keeping the activation-chosen 1% is better than plain RTN, weight-chosen and random channels (the rule, KLD)")

# %% [markdown]
# Where the claim above holds, weight magnitude is a poor guide to importance and the data flowing
# through the weight a good one (the table says by how much, on this model).
#
# ## 2. Why scale instead of keeping fp16?
# Keeping 1% of the weights in full precision worked. AWQ does something else: it scales those channels. Why, do you
# think?

# %%
from quantedu.course.quiz import Quiz

quiz = Quiz.load("awq", ids=["awq-why-scale"])
quiz.show()

# %% [markdown]
# Mixed precision is awkward for hardware: a kernel that multiplies 4-bit weights cannot also hold a
# scattered 1% of fp16 columns without a second code path (and the memory layout to match). AWQ's
# observation: multiply salient column `c` by `s > 1` before rounding and divide its input by `s`.
# Rounding error of a weight is at most half a step, and the step is set by the group's largest
# weight, which usually is not in that column, so the error of `w*s` is about the same in absolute
# terms and `s` times smaller after dividing back. All weights stay 3-bit. Same experiment,
# salient columns (by activation) **scaled** instead of kept:

# %%
scaled = [runs.external(session, f"W3 RTN, 1% scaled by {s:g}", keep_fp("activation", scale=s),
                        purposes=("sweep",)).release() for s in (2.0, 4.0)]
display(quality_table([salience["none"].report("sweep"), *[r.report("sweep") for r in scaled], act]))
for r in scaled:
    rep = r.report("sweep")
    print(f"{r.name}: vs plain RTN {rep.verdict(salience['none'].report('sweep'), metric='kld').sentence.split(':')[0]}; "
          f"vs keeping them: {rep.verdict(act, metric='kld').sentence.split(':')[0]}")

# %% [markdown]
# A scale that is too large makes the scaled column the group's maximum, which widens the step for
# every *other* weight of the group (compare the two scales above). So the scale has to be searched, per
# channel, from the data. That is AWQ: `s = s_x ** alpha` with `s_x` the mean |activation| of each channel and
# one exponent `alpha` in [0, 1) per group of layers that read the same input, chosen by the error of the
# **inspected module's output**: the attention block (for q/k/v_proj), the MLP (for gate/up_proj), or the
# layer itself (o_proj, down_proj).
#
# The division by `s` is free: it is folded into the operation that produces the input:
# the RMSNorm weight in front of q/k/v_proj and in front of gate/up_proj, the rows of up_proj in front of
# down_proj, and the rows of v_proj in front of o_proj. On this model one of these pairs cannot take a scale:

# %%
quiz = Quiz.load("awq", ids=["awq-gqa"])
quiz.show()

# %% [markdown]
# The v_proj -> o_proj pair is skipped with grouped-query attention, where one v channel feeds several
# o_proj inputs. This model's scale groups:

# %%
cfg_model = model.config
groups0 = awq.llama_scale_groups(decoder_layers(model)[0])
print(f"{cfg_model.num_attention_heads} query heads, {cfg_model.num_key_value_heads} KV heads: "
      f"{len(groups0)} scale groups per block:\n" + "\n".join(f"  {g.prev} -> {', '.join(g.layers)} (scored on {g.inspect})"
                                                             for g in groups0))

# %% [markdown]
# ## 3. The scale search: your turn
# For one group of layers that read the same input `x`: for every `alpha` on the grid, scale the weights'
# input channels by `s = s_x ** alpha` (normalized around 1), round, divide back, and measure the error of the
# group's output against the full-precision output; keep the best `alpha`. Then fold `1/s` into the norm in
# front, so the model computes the same function with the scaled weights. Write both; the checkers compare
# yours with `quantedu.awq`'s on hand-made, random and real inputs.

# %% [exercise 04.awq_search]
# %% [exercise 04.awq_fold]
# %% [markdown]
# **The search on a real block.** The MLP of block `BLOCK`: `mlp(x) = down(silu(gate(x)) * up(x))`, its input
# `x` the output of `post_attention_layernorm`. For every `alpha` on the grid: scale, quantize gate and up (4
# bits, groups of 64), measure the MLP's output error on all the calibration tokens, and, to see how much data
# the search needs, on one calibration window alone.

# %%
from quantedu.calibration import capture_block_inputs, observe_linear_inputs, run_block

inputs, kwargs = capture_block_inputs(model, CALIB)
blocks = decoder_layers(model)
for i in range(BLOCK):
    inputs = run_block(blocks[i], inputs, kwargs)
block = copy.deepcopy(blocks[BLOCK])
captured = []
with torch.no_grad(), observe_linear_inputs(block, lambda n, x: captured.append(x), names={"mlp.gate_proj"}):
    for h in inputs:
        block(h, **kwargs)
X = torch.cat(captured)                                    # (tokens, hidden): the MLP's input
W4 = QuantConfig(bits=4, group_size=64)
mlp = block.mlp
gate_w, up_w = mlp.gate_proj.weight.data.clone(), mlp.up_proj.weight.data.clone()
alphas = [i / N_GRID for i in range(N_GRID)]


def search(X):
    """The MLP's output error for every alpha, scales from X's own statistics."""
    s_x = X.abs().float().mean(0)                           # mean |activation| per input channel
    losses = []
    with torch.no_grad():
        reference = mlp(X)
        for alpha in alphas:
            s = s_x.pow(alpha).clamp(min=1e-4)
            s = (s / (s.max() * s.min()).sqrt()).to(gate_w.dtype)  # centred around 1, in the weights' dtype
            mlp.gate_proj.weight.data = fake_quantize(gate_w * s, W4) / s
            mlp.up_proj.weight.data = fake_quantize(up_w * s, W4) / s
            losses.append(((mlp(X) - reference) ** 2).mean().item())
        mlp.gate_proj.weight.data, mlp.up_proj.weight.data = gate_w, up_w
    return losses


losses, losses_one = search(X), search(X[:CALIB_LEN])
best_alpha = alphas[losses.index(min(losses))]
awq_figures.plot_scale_search(alphas, {f"all {X.shape[0]:,} calibration tokens": losses,
                                       f"one window of {CALIB_LEN}": losses_one},
                              title=f"AWQ scale search, block {BLOCK} gate/up_proj, W4 g64")
plt.show()
print(f"block {BLOCK} MLP: best alpha {best_alpha:.2f} ({min(losses) / losses[0]:.0%} of RTN's error) on all the "
      f"calibration; {alphas[losses_one.index(min(losses_one))]:.2f} on one window")

# %% [markdown]
# The error falls as the salient channels get larger scales, then rises again once the scaled channels start
# to set their groups' steps; the curve's shape hardly depends on how much text it is measured on, because AWQ
# fits one exponent per group of layers, not every weight: it needs far less calibration than GPTQ's Hessians
# (but the statistics, and the clipping search that follows, still use every token).
#
# The package's `search_scale` is the same loop; it must pick the same alpha. Then the scales are folded into
# `post_attention_layernorm`, and the block computes the same function as before (up to float rounding).

# %%
cfg = awq.AWQConfig(bits=4, group_size=64, n_grid=N_GRID)
with torch.no_grad():
    mlp_ref = mlp(X)
    s_pkg, alpha_pkg, hist_pkg = awq.search_scale([mlp.gate_proj, mlp.up_proj], awq.activation_scale(X),
                                                  lambda: ((mlp(X) - mlp_ref) ** 2).mean().item(), cfg)
assert alpha_pkg == best_alpha and max(abs(a - b) / b for a, b in zip(hist_pkg, losses)) < 1e-4

before = run_block(block, inputs[:1], kwargs)[0]
awq.fold_scales(block.post_attention_layernorm, [mlp.gate_proj, mlp.up_proj], s_pkg)
after = run_block(block, inputs[:1], kwargs)[0]
print(f"package: alpha {alpha_pkg:.2f}; folding changes the block output by at most {(after - before).abs().max():.1e} "
      f"(outputs up to {before.abs().max():.1f})")

# %% [markdown]
# The full method does this for every scale group of every block (printed in section 2: their number
# depends on the model), then a second small search: per output row and group, clip the weight range
# to `±max|w| * r` with `r` in [0.5, 1], keeping the `r` that minimizes the layer's output error
# (outliers cost every other weight a coarser step). Finally it rounds with an integer zero point.
# `quantedu.awq.awq_quantize_model` runs it block by block (memory: one block and its calibration
# inputs).
#
# ## 4. The whole model: RTN vs AWQ vs GPTQ, like with like
# The same calibration windows, the same grid (4 bits, asymmetric: an integer zero point per group), the same
# groups of 64, every run timed the same way (set-up cell). GPTQ's settings are notebook 03's (grids fixed from
# the original weights, llm-compressor's rule), so its run is shared through the cache. With `FAST` our AWQ
# searches `N_GRID`-point grids and scores `alpha` of the attention and MLP groups on one calibration window
# (`search_samples`, the figure above says why that is enough).

# %%
from quantedu.gptq import GPTQConfig


def configs(bits):
    return (GPTQConfig(bits=bits, group_size=64, sym=False, static_groups=True),
            awq.AWQConfig(bits=bits, group_size=64, sym=False, n_grid=N_GRID, clip_grid=N_GRID,
                          search_samples=1 if FAST else None))


whole = {}
for bits in BITS:
    gptq_cfg, awq_cfg = configs(bits)
    whole[bits] = [runs.quantize(session, "rtn", gptq_cfg, purposes=("eval", "heldout")),
                   runs.quantize(session, "awq", awq_cfg, CALIB, purposes=("eval", "heldout")),
                   runs.quantize(session, "gptq", gptq_cfg, CALIB, purposes=("eval", "heldout"))]
rtn, aw, gq = whole[4]
print(f"calibration {CALIB_SAMPLES} x {CALIB_LEN} tokens for AWQ and GPTQ, {THREADS}")
runs.table([r for rs in whole.values() for r in rs])

# %%
for bits, (r, a, g) in whole.items():
    for purpose in ("eval", "heldout"):
        print(f"W{bits}, {purpose}: {a.report(purpose).verdict(g.report(purpose))}")
        print(f"   KL divergence: {a.report(purpose).verdict(g.report(purpose), metric='kld')}")
session.claim(aw.report("eval").verdict(rtn.report("eval")).winner == aw.name,
              "AWQ is better than RTN at W4 g64 on the evaluation windows (the rule)")

# %% [markdown]
# **In-domain vs out-of-domain.** AWQ and GPTQ both learned from the help pages; the "heldout" windows are the
# standard library's code. RTN uses no calibration: the control.

# %%
from quantedu.course.figures.domains import plot_domains

display(runs.domain_table(whole[4]))
plot_domains(whole[4])
plt.show()
for m in (aw, gq):
    print(f"out of domain, {m.name} vs RTN: {m.report('heldout').verdict(rtn.report('heldout'), metric='kld')}")

# %% [markdown]
# A calibrated method's lead that shrinks on the other source was partly learned from the calibration text;
# choose calibration text like what the model will serve (notebook 03 explains the seed's wikitext pitfall).
#
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
# subprocess: as written, then with the smallest fix for each failure, the checkpoint it writes read back by
# the course's own loader. AutoAWQ's search is slow on a CPU (it re-runs each block on every calibration token
# for every candidate), so it quantizes the first `LIB_BLOCKS` block(s) of the session's model, saved as a
# checkpoint of their own (`runs.truncated_checkpoint`), on the same calibration windows; its blocks are then
# swapped into the whole model (`runs.with_blocks`), so every model below is measured on the real task.

# %%
from quantedu.engines import seed_libs

seed_env = seed_libs.status()
awq_runs = {}
if not seed_env["usable"]:
    print(f"Skipped: {seed_env['why']}\n  {seed_env['install']}")
else:
    seed_dir = runs.truncated_checkpoint(session, LIB_BLOCKS)
    autoawq = lambda **kw: seed_libs.run_autoawq(seed_dir, calibration=CALIB, **kw)  # noqa: E731
    awq_runs["as written (group 128)"] = autoawq(fix=False)
    group = 128
    if not awq_runs["as written (group 128)"]["ok"]:  # AutoAWQ has no short last group: 128 must divide the row length (576)
        shape = (model.config.hidden_size, model.config.intermediate_size)
        group = next(g for g in (64, 32) if all(n % g == 0 for n in shape))
        awq_runs[f"group {group}"] = autoawq(fix=False, group_size=group)
    awq_runs[f"group {group} + backup .detach().clone()"] = autoawq(fix=True, group_size=group)
    for step, r in awq_runs.items():
        print(f"{step:38s} " + (f"ran in {r['quantize_s']:.0f} s" if r["ok"] else f"{r.get('stage', '')}: {seed_libs.first_line(r)}"))

# %% [markdown]
# On a CPU the run that completes without the one-line fix returns a broken model: AutoAWQ's scale search
# backs the weights up with `v.cpu()`, which on a CPU is the *same* tensor, then scales the weights in place
# for each candidate, so its "backup" drifts with them. `.detach().clone()` makes it a copy
# (`quantedu.engines.seed_libs` patches that one line of `AwqQuantizer._compute_best_scale`). Beside the course's
# AWQ with AutoAWQ's settings (asymmetric, duo scaling, 20-point grids, clipping, the same group and calibration
# windows) on the same block(s):

# %%
if awq_runs:
    fixed, broken = list(awq_runs.values())[-1], list(awq_runs.values())[-2]
    ours_seed = runs.quantize(session, "awq", awq.AWQConfig(bits=4, group_size=group, duo_scaling=True), CALIB,
                              name=f"ours as AutoAWQ, block(s) 0-{LIB_BLOCKS - 1}", blocks=LIB_BLOCKS,
                              purposes=("sweep",))
    lib_runs = [runs.external(session, f"AutoAWQ {tag}, block(s) 0-{LIB_BLOCKS - 1}",
                              runs.with_blocks(model, seed_libs.load(r, session.dtype)), r["quantize_s"], batches=CALIB,
                              purposes=("sweep",)).release() for tag, r in (("fixed", fixed), ("as shipped", broken))
                if r["ok"]]
    display(runs.table([ours_seed, *lib_runs], "sweep"))
    fixed_run = lib_runs[0]
    print(f"the rule, KL divergence: {fixed_run.report('sweep').verdict(ours_seed.report('sweep'), metric='kld')}")
    if len(lib_runs) > 1:
        v = fixed_run.report("sweep").verdict(lib_runs[1].report("sweep"), metric="kld")
        print(f"the one-line fix: {v}")
        session.claim(v.winner == fixed_run.name, "AutoAWQ as shipped returns a broken model on a CPU; the fix repairs it")

# %% [markdown]
# ### llm-compressor's `AWQModifier`, the maintained path
# ```python
# from llmcompressor import oneshot
# from llmcompressor.modifiers.transform.awq import AWQModifier
# from llmcompressor.modifiers.quantization import QuantizationModifier
# oneshot(model=model, dataset=ds, processor=tokenizer,
#         recipe=[AWQModifier(), QuantizationModifier(targets="Linear", scheme="W4A16_ASYM", ignore=["lm_head"])])
# ```
# Its defaults differ from the paper in three ways: "duo scaling" (`s = s_x^a / s_w^(1-a)`,
# `AWQConfig(duo_scaling=True)` here), no clipping search, and its grid of exponents (below). The test suite
# checks that with the paper's settings and our grid put in place of its own, it picks exactly our scales on the
# same block and data. It refuses groups that do
# not divide a layer's columns; ours handles the short last group. On a machine without a GPU it
# needs one patch (`IntermediatesCache.pin_memory` asks for an accelerator), which
# `quantedu.engines.llm_compressor.run_oneshot` applies.
#
# **Live, on the same settings.** One `AWQConfig` drives both: llm-compressor's method (duo scaling, no
# clipping) with section 4's `N_GRID`-point grid (llm-compressor's default is 20 points), 4 bits asymmetric,
# groups of 64, the same calibration windows, threads and timer, on the same first block(s) as AutoAWQ, swapped
# into the whole model. One difference remains, the grid: with duo scaling llm-compressor tries `alpha = 0`
# without duo scaling (plain round-to-nearest) and then `i / (n_grid - 2)` for `i < n_grid - 1`, ours the
# reference's `i / n_grid`. The full-size comparison is `benchmarks/bench_awq.py`.

# %%
from quantedu.engines import llm_compressor

if llm_compressor.available():
    lib_cfg = awq.AWQConfig(bits=4, group_size=64, duo_scaling=True, clip=False, n_grid=N_GRID)
    lib = runs.truncated_model(model, LIB_BLOCKS)
    recipe = llm_compressor.awq_recipe(lib_cfg, duo_scaling=lib_cfg.duo_scaling, n_grid=lib_cfg.n_grid)
    with torch_threads(session.quant_threads), no_bars():
        _, lib_wall, lib_cpu = timed(lambda: llm_compressor.run_oneshot(lib, CALIB, recipe, tokenizer))
    llm_compressor.bake_weights(lib)  # it quantizes inside forward: write the quantized weights before copying them
    lib_run = runs.external(session, f"llm-compressor AWQ, block(s) 0-{LIB_BLOCKS - 1}", runs.with_blocks(model, lib),
                            lib_wall, lib_cpu, CALIB, purposes=("sweep",)).release()
    ours_lib = runs.quantize(session, "awq", lib_cfg, CALIB, name=f"ours as llm-compressor, block(s) 0-{LIB_BLOCKS - 1}", blocks=LIB_BLOCKS, purposes=("sweep",))
    display(runs.table([ours_lib, lib_run], "sweep"))
    print(f"the rule, KL divergence: {lib_run.report('sweep').verdict(ours_lib.report('sweep'), metric='kld')}")
else:
    print(f"llm-compressor is not installed: {llm_compressor.INSTALL}")

# %% [markdown]
# ## GPTQ or AWQ for vLLM?
# The seed's question, with this notebook's measurements behind it. Your answer first:

# %%
v4 = aw.report("eval").verdict(gq.report("eval"))
quiz = Quiz.load("awq", ids=["awq-gptq-vllm"], values={
    "calib": f"{CALIB_SAMPLES} x {CALIB_LEN}", "fp_eval": aw.report("eval").ppl_base, "awq_w4": aw.report("eval").ppl,
    "gptq_w4": gq.report("eval").ppl, "awq_cpu": aw.cpu_s, "gptq_cpu": gq.cpu_s,
    "awq_w4_verdict": "AWQ better" if v4.winner == aw.name else "GPTQ better" if v4.winner == gq.name else "a tie at this much text"})
quiz.show()

# %% [markdown]
# In current vLLM the 4-bit checkpoints of both algorithms (GPTQ's and AutoAWQ's layouts, and compressed-tensors
# W4A16, which llm-compressor writes for either) run on recent NVIDIA GPUs through the same mixed-precision
# kernels (Marlin; Machete on Hopper), so serving speed is not the difference. The choice is about accuracy
# on your model and data, and the cost of calibration. This notebook's numbers, all timed the same way:

# %%
print(f"W4 asym g64, {CALIB_SAMPLES} x {CALIB_LEN} calibration tokens, perplexity: {v4}")
print(f"   KL divergence: {aw.report('eval').verdict(gq.report('eval'), metric='kld')}")
print(f"time, {THREADS}: AWQ {aw.wall_s:.0f} s wall / {aw.cpu_s:.0f} s CPU ({N_GRID}-point grids"
      + (", alpha scored on 1 window" if FAST else "") + f"), GPTQ {gq.wall_s:.0f} s / {gq.cpu_s:.0f} s CPU")

# %% [markdown]
# ## Quiz

# %%
quiz = Quiz.load("awq", ids=["awq-salience", "awq-fold", "awq-scale-normalization", "awq-alpha-zero"], values={
    "fp_sweep": act.ppl_base, **{k: r.report("sweep").ppl for k, r in salience.items() if k != "none"},
    "rtn": salience["none"].report("sweep").ppl})
quiz.show()
