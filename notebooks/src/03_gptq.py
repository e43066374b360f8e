# %% [markdown]
# # 03 · GPTQ: rounding with error compensation
#
# Round-to-nearest (RTN, notebook 02) treats every weight alone. **GPTQ** (Frantar et al., 2022)
# quantizes a layer one input column at a time and, after each column, *moves the columns not yet
# quantized* so that the layer's output changes as little as possible. It needs a little calibration
# data and no training.
#
# In this notebook you will:
# 1. derive GPTQ from the layer's quadratic error, from OBS/OBQ to the Cholesky trick and lazy batches;
# 2. write its two inner steps yourself (two exercises), then assemble GPTQ for one layer and check it
#    against `quantedu.gptq`, and *see* its error feedback on a real layer;
# 3. measure its knobs (group size, act-order, damping, the amount of calibration) on real layers, token by
#    token, with the course's verdict rule deciding what is a difference and what is noise;
# 4. compare RTN and GPTQ on the whole model, on text like the calibration's and on text from another source;
# 5. run the maintained library, llm-compressor, and the seed's optimum snippet beside ours on the same settings
#    (quality and time, live), and save our model in a format they and vLLM load.

# %% [markdown]
# ## Parameters
# `FAST = True` keeps the notebook to a few minutes on a laptop CPU: calibration windows of 256 tokens, as
# many as the widest layer needs (`quantedu.calibration.samples_needed`: twice its inputs, see section 4), and
# one bit width on the whole model. `FAST = False` (a GPU, or patience) calibrates on 32 x 512 tokens, the
# reference setting, and adds 3 bits. Quality is always measured on the course's named window sets
# (notebook 00): "eval" (Python's help pages, topics the calibration never saw) and "heldout" (the standard
# library's code, another source altogether).

# %%
from quantedu.course import fast_default, parameter

MODEL = parameter("MODEL", "auto")  # or "smollm2-135m", a hub id, a local path (env: QUANTEDU_MODEL)
FAST = fast_default()              # True on a CPU, False on a GPU (env: QUANTEDU_FAST)
CALIB_LEN = 256 if FAST else 512     # tokens per calibration window
MIN_SAMPLES = 4 if FAST else 32      # calibration windows at least (more if the widest layer needs them)
BITS = (4,) if FAST else (4, 3)      # bit widths quantized on the whole model

# %%
import copy
import math

import torch

from quantedu import calibration
from quantedu.course import no_bars, runs, start  # start(): no loading bars or library logs (no_bars(): llm-compressor's)
from quantedu.runtime import timed, torch_threads

# Every quantization is timed the same way (quantedu.runtime.timed: wall and this process's CPU seconds, the
# model already in memory) with session.quant_threads torch threads: one on a CPU, where a shared 2-core
# machine is steadier with one thread than with two fighting for the cores (GPTQ's column loop runs on one
# thread anyway); torch's default on a GPU. quantedu.course.runs caches each run by its settings, so
# notebook 04 reuses this notebook's GPTQ run (the times shown are those measured when it ran).
session = start(MODEL)
model, tokenizer, BASE = session.model, session.tokenizer, session.dtype_name  # BASE: "fp32", or e.g. "bfloat16"
THREADS = f"{session.quant_threads or torch.get_num_threads()} torch thread(s)"
CALIB = session.enough_calibration(CALIB_LEN, at_least=MIN_SAMPLES)  # twice the widest layer's inputs, or more
CALIB_SAMPLES = CALIB.shape[0]
print(runs.baselines(session, ("eval", "heldout")))

# %% [markdown]
# ## 1. The objective: a quadratic in the weights
# A linear layer computes `y = W x`. Quantizing `W` to `Q` changes its outputs on calibration inputs
# `X` (one column per token) by `(W - Q) X`. GPTQ minimizes the squared change,
#
# $$\lVert W X - Q X \rVert_F^2 = \operatorname{tr}\big((W - Q)\, X X^\top (W - Q)^\top\big).$$
#
# As a function of one row of `W` this is a quadratic with Hessian `H = 2 X X^T`, the `H` of the
# papers and of the code (the reference, llm-compressor and `quantedu.gptq` also average it over the
# calibration samples). With that `H` the error is **half** the trace: `||WX - QX||^2 = ½ tr((W - Q) H (W - Q)^T)`.
# Scaling `H` scales the objective, not its minimizer, so everything below holds for either.
#
# Two facts make this tractable:
#
# * **Rows are independent.** Each output row `w` contributes `½ (w - q) H (w - q)^T` with the *same*
#   `H` (columns x columns): it depends on the inputs only.
# * **It is quadratic.** If we fix (quantize) weight `q` of a row and let the others move freely, the
#   best correction of the others is closed-form. This is Optimal Brain Surgeon (OBS, Hassibi & Stork
#   1993), used for pruning; **OBQ** (Frantar & Alistarh 2022) applied it to quantization:
#
# $$\delta_F = -\frac{w_q - \mathrm{quant}(w_q)}{[H^{-1}]_{qq}}\,(H^{-1})_{:,q}, \qquad
#   \text{error added} = \frac{(w_q - \mathrm{quant}(w_q))^2}{2\,[H^{-1}]_{qq}} .$$
#
# OBQ picks the weight with the smallest added error next, separately for each row, and updates
# `H^-1` after each step: `O(rows x cols^3)`, hours for one large layer.
#
# **GPTQ's three changes** (Frantar, Ashkboos, Hoefler, Alistarh 2022):
# 1. *Arbitrary order.* Quantize columns left to right, the same order for every row. Greedy order
#    barely helps on large layers, and a shared order means `H^-1` is updated once for all rows.
# 2. *Cholesky.* At step `q` the update needs row `q` of `H_F^-1`, the inverse Hessian of the columns
#    not yet quantized (`H^-1` with columns `0..q-1` eliminated one after another). Those rows are the
#    rows of the upper Cholesky factor `U` of `H^-1` (`H^-1 = U^T U`) up to a scaling: row `q` of `U` is
#    row `q` of `H_F^-1` divided by `sqrt([H_F^-1]_qq)`, and `U_qq = sqrt([H_F^-1]_qq)`. So
#    `(w_q - quant(w_q)) / U_qq` times row `q` of `U` is exactly the OBS update: factor once, read row
#    `q` at step `q`. It is also the numerically stable way (plus **dampening**: add
#    `damp_percent x mean(diag H)` to the diagonal).
# 3. *Lazy batches.* Updating all remaining columns after every column is memory-bound. Apply
#    the updates inside a block of 128 columns, and push the block's accumulated error to the rest of
#    the matrix in one matrix multiply. Same result, compute-bound.
#
# A worked case: one row `[1.4, 1.4, 3.0]`, the 2-bit grid `{0, 1, 2, 3}`, and inputs where columns
# 0 and 1 are correlated. RTN rounds each weight alone. GPTQ rounds column 0, then moves column 1 by
# the OBS update, in proportion to how strongly its inputs follow column 0's, before rounding it. The
# cell prints each step, and checks the Cholesky statement above on this `H`.

# %%
from quantedu.gptq import GPTQConfig, gptq_quantize_weight

W = torch.tensor([[1.4, 1.4, 3.0]])
H = torch.tensor([[2.0, 1.0, 0.0], [1.0, 2.0, 0.0], [0.0, 0.0, 1.0]])
res = gptq_quantize_weight(W, H, GPTQConfig(bits=2, group_size=-1, sym=False, damp_percent=0.0))
rtn_q = W.round()                                       # this row's range [0, 3] makes the grid the integers
err = lambda Q: ((W - Q) @ H @ (W - Q).T).item()  # noqa: E731
Hinv = torch.linalg.inv(H)
e0 = W[0, 0] - res.weight[0, 0]                          # column 0's rounding error
moved = W[0] - e0 / Hinv[0, 0] * Hinv[0]                 # the OBS update of the other columns
print(f"column 0: {W[0, 0]:.1f} -> {res.weight[0, 0]:.0f} (error {e0:+.1f}); OBS moves column 1 by "
      f"{moved[1] - W[0, 1]:+.1f} to {moved[1]:.1f}, which rounds to {res.weight[0, 1]:.0f}")
print(f"GPTQ {res.weight.tolist()[0]} -> output error {err(res.weight):.2f};  RTN {rtn_q.tolist()[0]} -> {err(rtn_q):.2f}")

U = torch.linalg.cholesky(Hinv, upper=True)              # the rows GPTQ reads
HF_inv = Hinv.clone()
for q in range(3):
    assert torch.allclose(U[q, q:], HF_inv[q, q:] / HF_inv[q, q].sqrt(), atol=1e-6)
    HF_inv = HF_inv - HF_inv[:, q:q + 1] @ HF_inv[q:q + 1] / HF_inv[q, q]  # eliminate column q
print("row q of U = row q of H_F^-1 / sqrt([H_F^-1]_qq): checked for q = 0, 1, 2")

# %% [markdown]
# ## 2. Your turn: GPTQ's two inner steps
# `quantedu.gptq` runs GPTQ as its paper's steps: **step 1** `hessian_inverse` (dead inputs, damping, the
# upper Cholesky factor of `H^-1`), **step 2** `gptq_block` (the column loop over one block, with the OBS
# update inside the block), **step 3** the lazy batch update of the later columns. Write steps 1 and 2; each
# checker runs *your* step inside the package's GPTQ on a real layer of the course model and compares the
# codes, one by one. (The hints lead you there; the next section assembles the steps.)

# %% [exercise 03.gptq_hinv]
# %% [exercise 03.gptq_block]
# %% [markdown]
# ## 3. GPTQ on a real layer
# First the Hessians. `quantedu.gptq.layer_hessians` hooks named layers (with `quantedu.calibration`'s
# `observe_linear_inputs`), runs the calibration windows through the model and accumulates `2 x^T x` per
# window, as `gptq_quantize_model` does block by block. We take three layers of different kinds, early, middle
# and late, and keep one Hessian per calibration window (section 4 averages fewer of them), plus each layer's
# inputs on the evaluation windows: text the calibration never saw, where we will measure the error, token by
# token.

# %%
from quantedu import gptq
from quantedu.calibration import decoder_layers

N_BLOCKS = len(decoder_layers(model))
LAYERS = [f"model.layers.{round(at * (N_BLOCKS - 1))}.{kind}"
          for at, kind in ((0.1, "self_attn.q_proj"), (0.35, "mlp.down_proj"), (0.7, "mlp.up_proj"))]
LAYER, DOWN = LAYERS[0], LAYERS[1]                  # an early attention projection; the widest input
H_samples = gptq.layer_hessians(model, CALIB, LAYERS, per_sample=True)  # (windows, in, in) per layer
H_calib = {n: h.mean(0) for n, h in H_samples.items()}                  # what GPTQ uses: the mean over windows
EVAL = session.windows("eval")
X_eval = calibration.layer_inputs(model, EVAL, LAYERS)                   # (tokens, in) per layer
W_layers = {n: model.get_submodule(n).weight.data.float().clone() for n in LAYERS}
W_layer, H_layer = W_layers[LAYER], H_calib[LAYER]
print("\n".join(f"{n}: W {tuple(W_layers[n].shape)}, H from {CALIB_SAMPLES} x {CALIB_LEN} tokens, "
                f"{X_eval[n].shape[0]:,} evaluation tokens" for n in LAYERS))

# %% [markdown]
# Now GPTQ for one layer, without act-order, as the reference `fasterquant` runs it. Steps 1 and 2 are yours
# once their checkers pass (until then the package's named steps stand in); step 3 and the group grids (a
# group's grid is chosen from the weights *as GPTQ has updated them* when the group starts) are the dozen
# lines below.

# %%
from quantedu.exercises import RESULTS
from quantedu.primitives import QuantConfig


def passed(exercise):
    return exercise in RESULTS and RESULTS[exercise].passed


step1 = gptq_hinv if passed("03.gptq_hinv") else gptq.hessian_inverse   # noqa: F821 (defined by the exercise cell)
step2 = gptq_block if passed("03.gptq_block") else gptq.gptq_block      # noqa: F821


def my_gptq(W, H, bits=4, group_size=128, damp=0.01, B=128):
    W = W.clone()
    W[:, torch.diag(H) == 0] = 0                     # inputs that never fired: any weight is optimal
    Hinv = step1(H, damp)                            # step 1
    grid, params = gptq.IntGrid(QuantConfig(bits, group_size, symmetric=True)), {}
    Q = torch.zeros_like(W)
    for i1 in range(0, W.shape[1], B):               # lazy batches of B columns
        i2 = min(i1 + B, W.shape[1])

        def quantize(i, W1, i1=i1, i2=i2):          # column i of the block, on its group's grid
            g = (i1 + i) // group_size
            if (i1 + i) % group_size == 0:           # a group starts: its grid from the weights as updated so far
                params[g] = grid.choose(torch.cat([W1[:, i:], W[:, i2:]], 1)[:, :group_size])
            return grid.round(W1[:, i], params[g])[1]

        Q[:, i1:i2], Err1 = step2(W[:, i1:i2], Hinv[i1:i2, i1:i2], quantize)   # step 2
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]         # step 3: the block's error, to all later columns at once
    return Q


with torch_threads(1):        # quantedu.gptq runs its column loop on one CPU thread: the same arithmetic
    Q_mine = my_gptq(W_layer, H_layer)
pkg = gptq_quantize_weight(W_layer, H_layer, GPTQConfig(bits=4, group_size=128, sym=True))
same = (Q_mine == pkg.weight).float().mean().item()
whose = "yours" if step1 is not gptq.hessian_inverse and step2 is not gptq.gptq_block else \
    "the package's" if step1 is gptq.hessian_inverse and step2 is gptq.gptq_block else "yours and the package's"
print(f"my_gptq (steps 1 and 2: {whose}) vs quantedu.gptq: {same:.2%} of the weights identical")
assert same == 1.0

# %% [markdown]
# Why pin the thread count? GPTQ is a chain of rounding decisions along each row: if float noise
# (a different summation order, e.g. another thread count) flips one code, every later update of that
# row changes, and so do many later codes. Implementations agree code for code only when they do the
# same arithmetic; otherwise compare what GPTQ minimizes.
#
# **The error feedback, on this layer.** The picture below runs steps 1 and 2 on the first block of 128
# columns. Left: the rounding error of one column (a strip, in units of each row's quantization step) and the
# update it makes to the columns after it: the error times row `i` of `Hinv`, whose bars on top say how
# strongly each later column's input follows this one's. Right: all those updates added up, how far each
# weight had been moved by the time GPTQ rounded it.

# %%
import matplotlib.pyplot as plt

from quantedu.course.figures import gptq as gptq_figures

fb = gptq_figures.error_feedback(W_layer, H_layer, GPTQConfig(bits=4, group_size=128, sym=True))
gptq_figures.plot_error_feedback(fb, column=4, title=f"{LAYER}, W4 sym g128, the first block of 128 columns")
plt.show()
update = fb.update(4)[:, 5:].abs()
print(f"column 4: rounding errors up to {fb.error[:, 4].abs().max():.2f} steps; each update it makes is at most "
      f"{update.max():.3f} steps; by column {fb.moved.shape[1] - 1} the updates of all earlier columns have moved "
      f"the weights {fb.moved[:, -16:].abs().mean():.2f} steps on average (at most {fb.moved.abs().max():.2f}); "
      f"{fb.differs.mean():.0%} of this block's codes differ from rounding to nearest")

# %% [markdown]
# Each column passes on only a few percent of a step to each later column, but every column does, so the
# moves add up along the row until they tip the rounding of some codes (the share printed above) and nudge
# every later weight towards the values that cancel the earlier errors: that is where GPTQ's gain over RTN
# comes from.
#
# Does it pay off on the objective? The error of the layer's output on the evaluation windows (a share of the
# output's energy, `quantedu.gptq.output_error`, token by token), and, for contrast, the error in the weights
# themselves, which RTN minimizes and GPTQ does not. The verdict rule (notebook 00) decides, from the per-token
# differences, whether the gap is more than the text's noise:

# %%
from quantedu.primitives import fake_quantize
from quantedu.verdict import verdict

N_EVAL = EVAL.shape[0]
rtn_layer = fake_quantize(W_layer, QuantConfig(4, 128, symmetric=True))
out_err = {name: gptq.output_error(W_layer, Q, X_eval[LAYER]).reshape(N_EVAL, -1).double().numpy()
           for name, Q in (("RTN", rtn_layer), ("GPTQ", pkg.weight))}
w_err = {name: (((W_layer - Q) ** 2).sum() / (W_layer ** 2).sum()).item() for name, Q in (("RTN", rtn_layer), ("GPTQ", pkg.weight))}
print(f"{LAYER}, W4 sym g128: output error on the evaluation windows RTN {out_err['RTN'].mean():.3%}, GPTQ "
      f"{out_err['GPTQ'].mean():.3%}; error in the weights RTN {w_err['RTN']:.3%}, GPTQ {w_err['GPTQ']:.3%}")
print(verdict(out_err["GPTQ"] - out_err["RTN"], "GPTQ", "RTN", "relative output error"))

# %% [markdown]
# ## 4. The knobs, on real layers
# * **group size**: one scale (and zero point) per 32/64/128 input weights: smaller groups store more
#   of them (notebook 01's formula) and follow the weights more closely. Where a row's length is not a
#   multiple of the group size, its last group is shorter (`quantedu` handles it; llm-compressor refuses it).
# * **desc_act** (act-order): quantize the columns with the largest `diag(H)` (largest inputs) first,
#   while many columns remain to absorb their error. With **static groups** the groups' grids are
#   fixed from the original weights first, so the checkpoint keeps the natural column->group map
#   (`g_idx`) and kernels need no reordering; without, the groups follow the permuted order.
# * **damp_percent**: the ridge `λ I` added to `H`. Too small and `H` (rank <= tokens) may not be
#   invertible; the larger it is, the closer `H + λ I` is to a multiple of the identity, for which
#   GPTQ's updates vanish: in the limit it is RTN.
# * **calibration tokens**: more tokens, a better estimate of `H`.
#
# Measured on the three layers' objective (cheap, and exactly what GPTQ optimizes) on the evaluation windows,
# token by token, the layers' errors averaged per token; `quantedu.course.layer_sweep` applies the verdict rule
# to every setting against the best of its knob.

# %%
from quantedu.course import layer_sweep


def gptq_setting(**kw):
    return lambda W, H: gptq_quantize_weight(W, H, GPTQConfig(bits=4, sym=True, **kw)).weight


settings = {**{f"g{g}": gptq_setting(group_size=g) for g in (32, 64, 128)},
            "off": gptq_setting(group_size=128), "on, static groups": gptq_setting(group_size=128, desc_act=True, static_groups=True),
            "on, dynamic groups": gptq_setting(group_size=128, desc_act=True),
            "off, static groups": gptq_setting(group_size=128, static_groups=True)}
KNOBS = {"group size": ["g32", "g64", "g128"],
         "act-order (g128)": ["off", "on, static groups", "on, dynamic groups", "off, static groups"]}
knob_err = layer_sweep.sweep(W_layers, H_calib, X_eval, settings, N_EVAL)
rtn_err = layer_sweep.sweep(W_layers, H_calib, X_eval, {"RTN g128": lambda W, H: fake_quantize(W, QuantConfig(4, 128, symmetric=True))}, N_EVAL)
gptq_figures.plot_knobs(knob_err, KNOBS, rtn_err)
plt.show()
for knob, labels in KNOBS.items():
    best, verdicts = layer_sweep.best_and_ties(knob_err, labels)
    print(f"{knob}: lowest error {best} ({knob_err[best].mean():.3%})")
    for v in verdicts.values():
        print(f"   {v}")
# section 5 fixes the grids from the original weights without act-order: that choice, against grids chosen as GPTQ goes
static = verdict(knob_err["off, static groups"] - knob_err["off"], "off, static groups", "off", "relative output error")
print(f"without act-order, static grids against grids chosen as GPTQ goes:\n   {static}")

# %% [markdown]
# Smaller groups cost more bits per weight (one more scale and zero point per group: notebook 01's formula); act-order
# mostly pays where a few input channels are much larger than the rest, and static groups keep that gain
# without a permuted `g_idx`, which is why llm-compressor defaults to them. The last line compares the two grid
# rules without act-order, the setting the whole-model runs of section 5 use.
#
# **Damping and the amount of calibration.** A Hessian from `n` tokens has rank at most `n`: `down_proj`
# reads 1,536 inputs, so with fewer tokens its `H` is singular and only the damping keeps GPTQ's Cholesky
# alive. The course asks for twice the widest input (`calibration.budget`). Below, **on purpose**, GPTQ on
# `down_proj` with Hessians of fewer calibration windows than that (the dashed lines mark 4 x 256 = 1,024 tokens,
# two thirds of `down_proj`'s inputs), against the damping, measured on the evaluation windows.

# %%
SIZES = sorted({max(1, CALIB_SAMPLES // 4), CALIB_SAMPLES // 3, 2 * CALIB_SAMPLES // 3, CALIB_SAMPLES})
DAMPS = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3)
minimum = calibration.budget(model, CALIB).minimum
with calibration.inconclusive("shown on purpose: the damping lesson needs a starved Hessian"):
    for n in SIZES:
        if n * CALIB_LEN < minimum:
            calibration.warn_if_starved(model, CALIB[:n], f"GPTQ Hessian of {n} x {CALIB_LEN}")
damp_err = layer_sweep.damping_sweep(W_layers[DOWN], H_samples[DOWN], X_eval[DOWN], SIZES, DAMPS,
                                     GPTQConfig(bits=4, group_size=128, sym=True), N_EVAL)
rtn_down = gptq.output_error(W_layers[DOWN], fake_quantize(W_layers[DOWN], QuantConfig(4, 128, symmetric=True)),
                             X_eval[DOWN]).mean().item()
gptq_figures.plot_damping(damp_err, SIZES, DAMPS, CALIB_LEN, minimum, rtn=rtn_down).set_title(f"{DOWN}, W4 sym g128")
plt.show()


def spread(n):
    """How much the worst damping loses against the best, with n calibration windows."""
    errs = [damp_err[n, d].mean() for d in DAMPS]
    return max(errs) / min(errs) - 1


few, full = SIZES[0], SIZES[-1]
print(f"worst vs best damping: +{spread(few):.0%} with {few * CALIB_LEN:,} tokens, +{spread(full):.0%} with "
      f"{full * CALIB_LEN:,}; the usual 0.01 against 0.1:")
for n in (few, full):
    print(f"   {n * CALIB_LEN:,} tokens: {verdict(damp_err[n, 0.01] - damp_err[n, 0.1], 'damp 0.01', 'damp 0.1', 'relative output error')}")
session.claim(spread(few) > spread(full), "damping matters more on a starved Hessian than on enough calibration")

# %% [markdown]
# Starved, the damping decides whether GPTQ beats RTN at all (the dotted line), and a large ridge wins because
# it regularizes a Hessian estimated from too few tokens: a sweep run on a starved Hessian crowns the
# regularizer, not the setting you will use. With enough tokens the curves flatten and the choice matters far
# less (the lines above say how much is left, and whether it is more than the noise). If the last line still
# finds 0.1 better with enough tokens, that is a finding about this layer, not yet a rule: the runs below keep
# 0.01, the default of the reference code, llm-compressor and GPTQModel, so that section 6 compares our codes with
# llm-compressor's on equal settings. On your own model, sweep the damping with enough calibration, as here, and
# check the whole model (KLD on held-out text) before you change it. Every run below calibrates on `CALIB`,
# enough by the budget.
#
# ## 5. The whole model: RTN vs GPTQ, in-domain and out-of-domain
# `gptq_quantize_model` runs the model **block by block** (memory: one decoder block and its
# calibration inputs): hook every linear layer of the block, one forward pass fills their Hessians,
# GPTQ quantizes them, then the block runs again so the *next* block is calibrated on the outputs of
# the already-quantized one (`inputs_from="quantized"`, the default of the reference code and
# llm-compressor: later blocks learn to compensate earlier errors; `"fp"` is the other choice).
#
# The settings: 4 bits, asymmetric (an integer zero point per group), groups of 64 (they divide this model's
# 576 columns, as llm-compressor and compressed-tensors require), and grids fixed from the original weights
# (`static_groups=True`, llm-compressor's rule; section 4's last line compares it with the other rule): the same run serves the
# comparison with llm-compressor in section 6 and notebook 04's AWQ-vs-GPTQ comparison. `quantedu.course.runs`
# quantizes, times and caches each run, and reports it against the baseline on both window sets.

# %%
from quantedu import memory

GPTQ_CFG = GPTQConfig(bits=4, group_size=64, sym=False, static_groups=True)
rtn = runs.quantize(session, "rtn", GPTQ_CFG, purposes=("eval", "heldout"))
gq = runs.quantize(session, "gptq", GPTQ_CFG, CALIB, purposes=("eval", "heldout"))
whole = [rtn, gq]
for bits in BITS[1:]:  # FAST = False: 3 bits too
    cfg3 = GPTQConfig(bits=bits, group_size=64, sym=False, static_groups=True)
    whole += [runs.quantize(session, "rtn", cfg3, purposes=("eval", "heldout")),
              runs.quantize(session, "gptq", cfg3, CALIB, purposes=("eval", "heldout"))]
print(f"{memory.GroupFormat(4, 64).bits_per_weight():.4g} bits per weight at W4 g64 (a 16-bit scale and a "
      f"4-bit zero per group of 64: notebook 01's formula); calibration {CALIB_SAMPLES} x {CALIB_LEN} tokens, {THREADS}")
runs.table(whole)

# %%
v_eval = gq.report("eval").verdict(rtn.report("eval"))
print(f"{gq.name} vs {rtn.name}, evaluation windows: {v_eval}")
print(f"mean KL divergence from the baseline: {gq.report('eval').verdict(rtn.report('eval'), metric='kld')}")
session.claim(v_eval.winner == gq.name, "GPTQ is better than RTN at W4 g64 on the evaluation windows (the rule)")

# %% [markdown]
# **Calibration data is a choice.** GPTQ fitted every layer to the help pages it was calibrated on; the
# evaluation windows are other help pages, the same kind of text. The "heldout" windows are the standard
# library's code, another source and genre. Side by side, each run's cost over the baseline on both (RTN uses
# no calibration, so it is the control):

# %%
from quantedu.course.figures.domains import plot_domains

display(runs.domain_table(whole))
plot_domains([rtn, gq])
plt.show()
v_out = gq.report("heldout").verdict(rtn.report("heldout"))
print(f"out of domain (the standard library's code): {v_out}")

# %% [markdown]
# Where a calibrated method's lead over RTN shrinks on the other source, part of what it learned was the
# calibration text, not the model; calibrate on text like what the model will serve. The seed post's snippet
# calibrates on `load_dataset("wikitext", ...)["train"].select(range(128))`, which is not what it looks like:

# %%
from quantedu import data

print(data.select_pitfall(128))

# %% [markdown]
# ## 6. The real libraries
# * **AutoGPTQ**, the library behind most GPTQ checkpoints on the Hub, stopped development and its
#   repository was archived in spring 2025; its last release is 0.7.1 (2024). transformers and optimum
#   made **GPTQModel**, its maintained successor (the same checkpoint layout, plus CPU kernels), their
#   GPTQ backend in January 2025 (transformers PR #35012, AutoGPTQ kept behind a deprecation warning),
#   and transformers removed the AutoGPTQ code paths in December 2025 (PR #41567; optimum followed in
#   PR #2385).
# * **llm-compressor** (vLLM project) implements GPTQ (`GPTQModifier`) and writes the
#   **compressed-tensors** format that vLLM serves and transformers loads.
#
# llm-compressor 0.14 computes every group's grid *before* GPTQ from the original weights (our
# `static_groups=True`; its `actorder="static"` default is act-order with static groups). On the same
# weight and Hessian our `gptq_quantize_weight` reproduces its `quantize_weight` code for code (the
# test suite checks it for 2/3/4/8 bits, sym/asym, groups and act-order); here, on section 3's layer:

# %%
from quantedu.engines import llm_compressor

if llm_compressor.available():
    from compressed_tensors.quantization import QuantizationArgs
    from llmcompressor.modifiers.gptq.gptq_quantize import quantize_weight

    cfg = GPTQConfig(bits=4, group_size=64, desc_act=True, static_groups=True)
    ours = gptq_quantize_weight(W_layer, H_layer, cfg)
    args = QuantizationArgs(num_bits=4, symmetric=True, strategy="group", group_size=64, actorder="static")
    with torch_threads(1):  # the same arithmetic as ours (section 3)
        Q_lib, _, _ = quantize_weight(W_layer[None].clone(), H_layer[None].clone(), ours.scales[None],
                                      torch.zeros_like(ours.scales)[None].to(torch.int8), None, args)
    mismatches = (Q_lib[0] != ours.weight).sum().item()
    print(f"{LAYER}, W4 g64 act-order: {mismatches} of {W_layer.numel()} weights differ from llm-compressor")
    assert mismatches == 0, "quantedu's GPTQ no longer reproduces llm-compressor's on the same weight and Hessian"
else:
    print(f"llm-compressor is not installed: {llm_compressor.INSTALL}")

# %% [markdown]
# **The whole model, live, on the same settings.** llm-compressor gets section 5's config (`gptq_recipe`
# builds its recipe from it), the same calibration windows, the same thread count and the same timer (with
# llm-compressor already imported and the model in memory); ours is section 5's run. The full-size comparison
# is `benchmarks/bench_gptq.py`. llm-compressor draws progress bars on stderr with no switch to turn them off;
# the cell keeps them out of the page.

# %%
if llm_compressor.available():
    lib = copy.deepcopy(model)
    with torch_threads(session.quant_threads), no_bars():
        _, lib_wall, lib_cpu = timed(lambda: llm_compressor.run_oneshot(lib, CALIB, llm_compressor.gptq_recipe(GPTQ_CFG)))
    lib_run = runs.external(session, "llm-compressor " + GPTQ_CFG.label(), lib, lib_wall, lib_cpu, CALIB,
                            purposes=("eval",))
    counts = runs.identical_weights(gq.model, lib)
    differ = sum(t - s for s, t in counts)
    print(f"identical weights: {counts[0][0] / counts[0][1]:.2%} in block 0 (the same inputs), "
          f"{counts[-1][0] / counts[-1][1]:.2%} in the last block; {differ:,} of {sum(t for _, t in counts):,} "
          "weights differ" + (" (later blocks' inputs went through earlier blocks where float noise flipped a few codes)"
                              if session.dtype == torch.float32 else
                              f" (in {BASE} llm-compressor rounds its scales to {BASE}, ours stay fp32: other grids)"))
    display(runs.table([gq, lib_run]))
    for metric, what in (("nll", "negative log-likelihood"), ("kld", "KL divergence")):
        v = lib_run.report("eval").verdict(gq.report("eval"), metric=metric)
        print(f"llm-compressor's model minus ours, paired over {v.interval.tokens:,} tokens, {what} per token: {v.interval} "
              f"({'excludes' if v.interval.low > 0 or v.interval.high < 0 else 'includes'} zero)")
    if session.dtype == torch.float32:
        assert counts[0][0] / counts[0][1] > 0.99, "block 0 sees the same inputs in both libraries: its codes should agree"
else:
    print(f"llm-compressor is not installed: {llm_compressor.INSTALL}")

# %% [markdown]
# Read these intervals for what they are: a difference between two sets of **codes**, not between two libraries.
# Each covers the noise of *this text*: where it excludes zero, these two quantized models do differ on it. It does not cover the noise of *the quantization*: both libraries run the same
# algorithm on the same settings, their codes agree in block 0, and they part only where float noise (another
# summation order) flipped a code and the difference grew block by block. Another thread count could change
# which of the two comes out ahead by that much; it is no verdict on either library.
#
# ### The seed's `optimum` snippet, run as written
# The seed quantizes with optimum's `GPTQQuantizer(bits=4, group_size=128, desc_act=True, damp_percent=0.01,
# dataset=...)`. optimum 2.3 runs GPTQ through GPTQModel 7.7, whose pins clash with this course's (it wants a
# newer transformers and declares torch >= 2.14.1), so both live in an environment of their own
# (`make seed-libs`: `.venv-seed`) and `quantedu.engines.seed_libs` runs them there in a subprocess, on the
# first `SEED_BLOCKS` blocks of this session's model saved as a checkpoint of their own (`runs.truncated_checkpoint`:
# GPTQModel's start-up and packing are slow on a CPU) and the same calibration windows. First the snippet as
# written, then the smallest fix for each error it hits. The checkpoint optimum writes is read back with the
# course's own loader.

# %%
from quantedu.engines import seed_libs

SEED_BLOCKS = 2
seed_env = seed_libs.status()
if not seed_env["usable"]:
    print(f"Skipped: {seed_env['why']}\n  {seed_env['install']}")
else:
    for dist, info in seed_env["libraries"].items():
        print(f"{dist:10s} {info['version']:8s} " + ("imports" if info["imports"] else
                                                 f"does not import: {info['error'].split(' (/')[0]}"))  # no path
    seed_dir = runs.truncated_checkpoint(session, SEED_BLOCKS)
    seed_runs = {"as written": seed_libs.run_optimum_gptq(seed_dir, calibration=CALIB, fix=False),
                 "+ act_group_aware=False": seed_libs.run_optimum_gptq(seed_dir, calibration=CALIB, fix=True)}
    if not seed_runs["+ act_group_aware=False"]["ok"]:  # e.g. GPTQModel's default CPU kernel and a ragged last group
        seed_runs["+ backend='torch'"] = seed_libs.run_optimum_gptq(seed_dir, calibration=CALIB, fix=True, backend="torch")
    for step, r in seed_runs.items():
        print(f"{step:26s} " + (f"ran: {r['quantize_s']:.0f} s, kernel {r['kernel']}" if r["ok"]
                                 else f"{r.get('stage', '')}: {seed_libs.first_line(r)}"))
    opt = list(seed_runs.values())[-1]
    assert not seed_runs["as written"]["ok"] and opt["ok"], "the snippet's outcome changed: read the lines above"

# %% [markdown]
# The working run beside the course's GPTQ with the seed's settings (4 bits, symmetric, groups of 128,
# act-order, 1% damping) on the same blocks and calibration windows, each swapped into the whole model
# (`runs.with_blocks`: the other blocks stay as they were), so both are measured on the real task, on the
# "sweep" windows. optimum's time is its `quantize_model` call inside its own process; ours is timed as
# everywhere in this notebook.

# %%
import json
from pathlib import Path

if seed_env["usable"]:
    SEED_CFG = GPTQConfig(bits=4, group_size=128, sym=True, desc_act=True, damp_percent=0.01)
    ours_seed = runs.quantize(session, "gptq", SEED_CFG, CALIB, blocks=SEED_BLOCKS, purposes=("sweep",))
    opt_model = runs.with_blocks(model, seed_libs.load(opt, session.dtype))
    opt_run = runs.external(session, f"optimum + GPTQModel, blocks 0-{SEED_BLOCKS - 1}", opt_model, opt["quantize_s"],
                            batches=CALIB, purposes=("sweep",))
    display(runs.table([ours_seed, opt_run], "sweep"))
    print(f"the rule, KL divergence: {opt_run.report('sweep').verdict(ours_seed.report('sweep'), metric='kld')}")
    qc = json.loads((Path(opt["out"]) / "config.json").read_text())["quantization_config"]
    print(f"its config.json: format {qc.get('format', qc.get('checkpoint_format'))!r}, desc_act {qc.get('desc_act')}, "
          f"and the calibration set stored in it: {len(json.dumps(qc.get('dataset', ''))):,} characters")

# %% [markdown]
# ## 7. Saving it so engines can load it
# The in-memory model holds dequantized weights (fake quantization). `quantedu.export` writes the
# integer codes, packed 8 per int32, with their scales (and zeros, and `g_idx`):
# * `save_compressed_tensors`: llm-compressor's `pack-quantized` format; `transformers` loads it through
#   compressed-tensors, vLLM serves it. Groups must divide the columns and `g_idx` must be the natural
#   one (no act-order, or act-order with static groups).
# * `save_gptq`: the AutoGPTQ/GPTQModel layout (`qweight`, `qzeros`, `scales`, `g_idx`).
#
# We save section 5's GPTQ model, reload it with plain `transformers`, compare logits, and count where the
# checkpoint's bytes go.

# %%
import tempfile

from safetensors import safe_open
from transformers import AutoModelForCausalLM

from quantedu.export.write import save_compressed_tensors

with tempfile.TemporaryDirectory() as tmp, no_bars():
    path = save_compressed_tensors(gq.model, gq.layers, GPTQ_CFG, Path(tmp) / "gptq-w4g64", tokenizer=tokenizer)
    parts = {"packed codes": 0, "scales and zero points": 0, "not quantized": 0}
    with safe_open(path / "model.safetensors", "pt") as f:
        for k in f.keys():
            part = ("packed codes" if k.endswith("weight_packed") else "scales and zero points"
                    if k.endswith(("weight_scale", "weight_zero_point")) else "not quantized")
            parts[part] += f.get_tensor(k).nbytes
    reloaded = AutoModelForCausalLM.from_pretrained(path, dtype=session.dtype).eval().to(session.device)
    probe = session.calibration(1, 64, seed=3).to(session.device)
    with torch.no_grad():
        logits = gq.model(probe).logits.float()
        diff = (reloaded(probe).logits.float() - logits).abs().max().item()
# In fp32 the reloaded weights are ours exactly; in bf16/fp16 the checkpoint's scales are stored in that
# dtype, so a weight may differ by one rounding of its scale: allow a few of the dtype's steps.
tol = 1e-3 if session.dtype == torch.float32 else 8 * torch.finfo(session.dtype).eps * logits.abs().max().item()
embed = model.get_input_embeddings().weight
print(f"saved {sum(parts.values()) / 1e6:.0f} MB: " + ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in parts.items())
      + f"; the embedding alone ({tuple(embed.shape)}, {BASE}, shared with the output layer) is "
      f"{embed.numel() * embed.element_size() / 1e6:.0f} MB of the last part")
print(f"reloaded with transformers: max |logit difference| = {diff:.2e} (allowed: {tol:.1e})")
assert diff < tol

# %% [markdown]
# The embedding is not quantized by GPTQ (nor by AWQ): on a model this small it is the largest part of a
# "4-bit" checkpoint, and it stays in the session's dtype here. Notebook 07's exports store it in fp16 (half
# the bytes), and notebook 01 counts the same bytes by formula; on a 7-8B model the embedding is a few percent.
#
# ## Does AWQ quantize faster than GPTQ? (the seed's claim)
# The seed says it does. Both need the same calibration forward passes, block by block. The difference is the per-layer
# work: GPTQ visits the input columns **one at a time** (a sequential loop of `cols` small updates,
# plus a Cholesky of a `cols x cols` matrix), while AWQ evaluates a **grid of scale candidates** per
# group of layers, each a quantize and a forward pass of part of the block on the calibration tokens.
# Which costs more depends on the implementation, the hardware and the calibration size; on a GPU
# neither takes hours for a 7B model (the GPTQ paper already quantized a 175B model in about four GPU
# hours). This notebook timed GPTQ; notebook 04 times AWQ and GPTQ side by side, the same way.

# %%
live = (f"; llm-compressor on the same settings {lib_run.wall_s:.0f} s wall / {lib_run.cpu_s:.0f} s CPU"
        if llm_compressor.available() else "")
print(f"measured here, {THREADS}: quantedu {gq.name} on {gq.calibration} tokens {gq.wall_s:.0f} s wall, "
      f"{gq.cpu_s:.0f} s CPU{live}")

# %% [markdown]
# ## Quiz

# %%
from quantedu.course.quiz import Quiz

quiz = Quiz.load("gptq")
quiz.show()
