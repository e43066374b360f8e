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
# 2. write GPTQ for one layer in ~30 lines and check it against `quantedu.gptq`;
# 3. compare RTN and GPTQ on the whole model at 4 and 3 bits, and see what group size, act-order,
#    damping and the number of calibration samples change;
# 4. run the maintained library, llm-compressor, beside ours on the same settings (quality and time,
#    live), meet GPTQModel (AutoGPTQ is archived), and save our model in a format they and vLLM load.

# %% [markdown]
# ## Parameters
# `FAST = True` keeps the notebook to a few minutes on a laptop CPU: a small calibration set, short
# evaluation windows, and the knob sweeps measured on single layers (the objective GPTQ minimizes)
# rather than on whole-model perplexity. `FAST = False` (a GPU, or patience) runs every sweep on the
# whole model with the reference settings (32 x 512 calibration tokens, 8 x 512 evaluation tokens).
# The live side-by-side run with llm-compressor calibrates both libraries on `LIB_SAMPLES x LIB_LEN`
# tokens: fewer on a CPU, so that both runs fit the notebook's few minutes.

# %%
from quantedu.course import fast_default, parameter

MODEL = parameter("MODEL", "auto")  # or "smollm2-135m", a hub id, a local path (env: QUANTEDU_MODEL)
FAST = fast_default()              # True on a CPU, False on a GPU (env: QUANTEDU_FAST)
CALIB_SAMPLES = 4 if FAST else 32    # calibration sequences
CALIB_LEN = 256 if FAST else 512     # tokens per calibration sequence
N_WINDOWS = 2 if FAST else 8         # perplexity windows ...
SEQ_LEN = 256 if FAST else 512       # ... of this many tokens
WHOLE_MODEL_SWEEPS = not FAST        # group size / act-order / damping / samples on whole-model perplexity
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
# where a shared 2-core machine is steadier with one thread than with two fighting for the cores
# (GPTQ's column loop runs on one thread anyway), torch's default on a GPU.


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

# %% [exercise 03.gptq_hinv]
# %% [exercise 03.gptq_block]
# %% [markdown]
# ## 2. GPTQ for one layer, in ~30 lines
# First the Hessian: hook the layer, run the calibration data through the model, average `2 x x^T`
# over the samples (as the reference code does; the scale does not change GPTQ's result). We take an
# early block's `q_proj` (its input is also `k_proj`'s and `v_proj`'s).

# %%
from quantedu.gptq import HessianAccumulator

from quantedu.calibration import decoder_layers

N_BLOCKS = len(decoder_layers(model))
LAYER = f"model.layers.{round(0.1 * (N_BLOCKS - 1))}.self_attn.q_proj"  # an early attention projection
layer = model.get_submodule(LAYER)
acc = HessianAccumulator(layer.in_features, session.device)
handle = layer.register_forward_hook(acc.hook())
with torch.no_grad():
    for row in batches:
        model(row[None].to(session.device))
handle.remove()
H_layer, W_layer = acc.H, layer.weight.data.float().clone()
print(f"{LAYER}: W {tuple(W_layer.shape)}, H {tuple(H_layer.shape)} from {acc.n} samples x {CALIB_LEN} tokens")

# %% [markdown]
# Now GPTQ itself, following the reference `fasterquant` (no act-order, grid chosen when a group starts).

# %%
from quantedu.primitives import QuantConfig, choose_qparams


def my_gptq(W, H, bits=4, group_size=128, damp=0.01, block=128):
    W, H = W.clone(), H.clone()
    cols = W.shape[1]
    dead = torch.diag(H) == 0                      # inputs that never fire: weight irrelevant
    H[dead, dead], W[:, dead] = 1, 0
    H += damp * torch.diag(H).mean() * torch.eye(cols, device=W.device)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    Q = torch.zeros_like(W)
    per_row = QuantConfig(bits, symmetric=True, granularity="channel")
    for i1 in range(0, cols, block):               # lazy batches of columns
        i2 = min(i1 + block, cols)
        W1, Err1 = W[:, i1:i2].clone(), torch.zeros(W.shape[0], i2 - i1, device=W.device)
        for i in range(i2 - i1):
            if (i1 + i) % group_size == 0:         # new group: grid from the weights as updated so far
                s, z = choose_qparams(torch.cat([W1[:, i:], W[:, i2:]], 1)[:, :group_size], per_row)
            w, d = W1[:, i], Hinv[i1 + i, i1 + i]
            q = s[:, 0] * (torch.clamp(torch.round(w / s[:, 0]) + z[:, 0], 0, 2**bits - 1) - z[:, 0])
            Q[:, i1 + i] = q
            err = (w - q) / d
            W1[:, i:] -= err[:, None] * Hinv[i1 + i, i1 + i : i2][None, :]   # OBS update, this block
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]       # the block's error, to all later columns at once
    return Q


with torch_threads(1):        # quantedu.gptq runs its column loop on one CPU thread: same arithmetic
    Q_mine = my_gptq(W_layer, H_layer)
pkg = gptq_quantize_weight(W_layer, H_layer, GPTQConfig(bits=4, group_size=128, sym=True))
same = (Q_mine == pkg.weight).float().mean().item()
print(f"my_gptq vs quantedu.gptq: {same:.4%} of weights identical, max difference {(Q_mine - pkg.weight).abs().max():.2e}")
assert same > 0.999

# %% [markdown]
# Why pin the thread count? GPTQ is a chain of rounding decisions along each row: if float noise
# (a different summation order, e.g. another thread count) flips one code, every later update of that
# row changes, and so do many later codes. Implementations agree code for code only when they do the
# same arithmetic; otherwise compare what GPTQ minimizes. Does it pay off on that objective? Relative
# output error `tr(E H E^T) / tr(W H W^T)` (a ratio: the scale of `H` cancels), and, for contrast, the
# error in the weights themselves, which RTN minimizes and GPTQ does not:

# %%
from quantedu.primitives import fake_quantize


def rel_err(Q, W=W_layer, H=H_layer):
    E = W - Q
    return (torch.trace(E @ H @ E.T) / torch.trace(W @ H @ W.T)).item()


def weight_err(Q, W=W_layer):
    return (((W - Q) ** 2).sum() / (W**2).sum()).item()


rtn_layer = fake_quantize(W_layer, QuantConfig(4, 128, symmetric=True))
print(f"{LAYER}, W4 sym g128, share of the output energy lost: RTN {rel_err(rtn_layer):.3%}, GPTQ {rel_err(pkg.weight):.3%}; "
      f"of the weights' energy: RTN {weight_err(rtn_layer):.3%}, GPTQ {weight_err(pkg.weight):.3%}")

# %% [markdown]
# ## 3. The whole model: RTN vs GPTQ at 4 and 3 bits
# `gptq_quantize_model` runs the model **block by block** (memory: one decoder block and its
# calibration inputs): hook every linear layer of the block, one forward pass fills their Hessians,
# GPTQ quantizes them, then the block runs again so the *next* block is calibrated on the outputs of
# the already-quantized one (`inputs_from="quantized"`, the default of the reference code and
# llm-compressor: later blocks learn to compensate earlier errors; `"fp"` is the other choice).
# Every model is scored on the evaluation windows and on each half of them (text A, text B).

# %%
from quantedu.gptq import gptq_quantize_model


def rtn_model(bits, group):
    m = copy.deepcopy(model)
    with torch.no_grad():
        for name, lin in m.named_modules():
            if isinstance(lin, torch.nn.Linear) and name.startswith("model.layers."):
                lin.weight.data = fake_quantize(lin.weight.data, QuantConfig(bits, group, symmetric=True))
    return m


def gptq_model(cfg, calib=batches):
    """(quantized copy of the model, {"wall s", "CPU s"}, its QuantizedLayers), timed as stated above."""
    m = copy.deepcopy(model)
    with torch_threads(QUANT_THREADS):
        layers, wall, cpu = timed(lambda: gptq_quantize_model(m, calib, cfg, progress=False))
    return m, {"wall s": wall, "CPU s": cpu}, layers


GROUP = 64
records = []
for bits in (4, 3):
    records.append(scored(rtn_model(bits, GROUP), method="RTN", bits=bits, group=GROUP))
    m, seconds, layers = gptq_model(GPTQConfig(bits=bits, group_size=GROUP))
    records.append(scored(m, method="GPTQ", bits=bits, group=GROUP, **seconds))
    if bits == 4:
        w4_model, w4_layers = m, layers  # saved to disk in section 6
    del m, layers
main_df = results_table(records)
main_df

# %%
import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(5, 3))
for method, marker in (("RTN", "o"), ("GPTQ", "s")):
    sub = [r for r in records if r["method"] == method]
    ax.plot([r["bits"] for r in sub], [r["ppl"] for r in sub], marker=marker, label=method)
ax.axhline(fp_ppl, color="gray", ls="--", label=BASE)
ax.set(xlabel=f"bits (sym, g{GROUP})", ylabel="perplexity", yscale="log", xticks=[3, 4], title="RTN vs GPTQ")
ax.legend()
plt.show()
pick = {(r["method"], r["bits"]): r for r in records}
for bits in (4, 3):
    rtn, gq = pick["RTN", bits], pick["GPTQ", bits]
    print(f"W{bits} g{GROUP}: RTN {rtn['ppl']:.2f} -> GPTQ {gq['ppl']:.2f}; text A: {rtn['ppl, text A']:.2f} -> "
          f"{gq['ppl, text A']:.2f}, text B: {rtn['ppl, text B']:.2f} -> {gq['ppl, text B']:.2f}  ({BASE} {fp_ppl:.2f})")
    session.claim(better(gq, rtn), f"GPTQ beats RTN at {bits} bits on both halves of the text")
t4 = pick["GPTQ", 4]
print(f"GPTQ W4 g{GROUP} took {t4['wall s']:.0f} s wall, {t4['CPU s']:.0f} s CPU ({THREADS}, {CALIB_SAMPLES} x {CALIB_LEN} "
      "calibration tokens, model in memory)")

# %% [markdown]
# ## 4. The knobs
# * **group size**: one scale (and zero point) per 32/64/128 input weights: smaller groups store more
#   of them (the table prints the bits per weight, notebook 01's formula) and follow the weights more
#   closely. Where a row's length is not a multiple of the group size, its last group is shorter
#   (`quantedu` handles it; llm-compressor refuses it).
# * **desc_act** (act-order): quantize the columns with the largest `diag(H)` (largest inputs) first,
#   while many columns remain to absorb their error. With **static groups** the groups' grids are
#   fixed from the original weights first, so the checkpoint keeps the natural column->group map
#   (`g_idx`) and kernels need no reordering; without, the groups follow the permuted order.
# * **damp_percent**: the ridge `λ I` added to `H`. Too small and `H` (rank <= tokens) may not be
#   invertible; the larger it is, the closer `H + λ I` is to a multiple of the identity, for which
#   GPTQ's updates vanish: in the limit it is RTN.
# * **calibration samples**: more tokens, a better estimate of `H`.
#
# With `FAST` these are measured on the layer objective of three real layers (cheap, and exactly what
# GPTQ optimizes), scored on *held-out* calibration data. Two held-out sets of the same size show how
# much an error moves with the data: a setting is called better only when it is better on both, by
# more than the two sets disagree about the gap. `WHOLE_MODEL_SWEEPS` measures perplexity instead.

# %%
from quantedu import memory

# three layers of different kinds, early, middle and late in the model
SWEEP_LAYERS = [f"model.layers.{round(at * (N_BLOCKS - 1))}.{kind}"
                for at, kind in ((0.1, "self_attn.q_proj"), (0.35, "mlp.down_proj"), (0.7, "mlp.up_proj"))]
held_out = [session.calibration(4, CALIB_LEN, seed=seed) for seed in (1, 2)]  # two held-out sets
per_sample = {name: [] for name in SWEEP_LAYERS}


def collect(rows, sink):
    accs = {n: HessianAccumulator(model.get_submodule(n).in_features, session.device) for n in SWEEP_LAYERS}
    hs = [model.get_submodule(n).register_forward_hook(accs[n].hook()) for n in SWEEP_LAYERS]
    with torch.no_grad():
        model(rows.to(session.device))
    for h in hs:
        h.remove()
    for n in SWEEP_LAYERS:
        sink[n].append(accs[n].H)


for row in batches:
    collect(row[None], per_sample)
held = {n: [] for n in SWEEP_LAYERS}
for rows in held_out:
    collect(rows, held)        # held[n] = [H of held-out set 1, H of held-out set 2]


def mean_errors(quantize):
    """Held-out relative output error of quantize(W, name), mean over the sweep layers, on each held-out set."""
    errs = [[], []]
    for n in SWEEP_LAYERS:
        W = model.get_submodule(n).weight.data.float()
        Q = quantize(W, n)
        for k in (0, 1):
            errs[k].append(rel_err(Q, W, held[n][k]))
    return [sum(e) / len(e) for e in errs]


def layer_sweep(cfg, n_samples=CALIB_SAMPLES):
    return mean_errors(lambda W, n: gptq_quantize_weight(W, torch.stack(per_sample[n][:n_samples]).mean(0), cfg).weight)


def layer_rtn(bits, group):
    return mean_errors(lambda W, n: fake_quantize(W, QuantConfig(bits, group, symmetric=True)))[0]


sweep = []


def add(knob, setting, errors, **extra):
    sweep.append({"knob": knob, "setting": setting, **extra, "GPTQ": errors[0], "GPTQ, held-out set 2": errors[1]})


for g in (32, 64, 128):
    add("group size", g, layer_sweep(GPTQConfig(4, g)), **{"bits/weight": memory.GroupFormat(4, g).bits_per_weight()},
        RTN=layer_rtn(4, g))
for label, cfg in (("off", GPTQConfig(4, 128)), ("on, static groups", GPTQConfig(4, 128, desc_act=True, static_groups=True)),
                   ("on, dynamic groups", GPTQConfig(4, 128, desc_act=True)), ("off, static groups", GPTQConfig(4, 128, static_groups=True))):
    add("desc_act (g128)", label, layer_sweep(cfg))
for d in (0.001, 0.01, 0.1, 0.5):
    add("damp_percent (g128)", d, layer_sweep(GPTQConfig(4, 128, damp_percent=d)))
for n in sorted({1, 2, CALIB_SAMPLES // 2, CALIB_SAMPLES}):
    add("calibration samples (g128)", f"{n} x {CALIB_LEN}", layer_sweep(GPTQConfig(4, 128), n_samples=n))
sweep_df = results_table(sweep)
cols = {n: model.get_submodule(n).in_features for n in SWEEP_LAYERS}
print(f"held-out relative output error of W4 sym layers (lower is better), mean over {', '.join(SWEEP_LAYERS)}; "
      f"input columns {sorted(set(cols.values()))}, bits/weight with fp16 scales and 4-bit zeros")
sweep_df

# %%
SETS = ("GPTQ", "GPTQ, held-out set 2")


def gaps(a, b):
    """How much larger b's error is than a's, relative, on each held-out set."""
    return [b[k] / a[k] - 1 for k in SETS]


def beats(a, b):
    """a beats b: lower on both held-out sets, each time by more than the gap changes between the sets."""
    g = gaps(a, b)
    return min(g) > abs(g[0] - g[1])


knobs = {knob: [r for r in sweep if r["knob"] == knob] for knob in dict.fromkeys(r["knob"] for r in sweep)}
changes = sorted(abs(g[0] - g[1]) for rows in knobs.values() for a in rows for b in rows if a is not b for g in [gaps(a, b)])
print(f"between two settings of a knob, the relative gap changes from one held-out set to the other by "
      f"{changes[len(changes) // 2]:.1%} (median) and up to {changes[-1]:.1%}: a setting beats another only by more than that change")
best = {}
for knob, rows in knobs.items():
    best[knob] = [r["setting"] for r in rows if not any(beats(o, r) for o in rows)]  # beaten by no other setting
    print(f"{knob}: " + ", ".join(f"{r['setting']} {r['GPTQ']:.3%} / {r['GPTQ, held-out set 2']:.3%}" for r in rows)
          + f"  -> {'best' if len(best[knob]) == 1 else 'tied best'}: {', '.join(map(str, best[knob]))}")

# %%
damp = [r for r in sweep if r["knob"] == "damp_percent (g128)"]
falls = all(a["GPTQ"] > b["GPTQ"] for a, b in zip(damp, damp[1:]))
rises = all(a["GPTQ"] < b["GPTQ"] for a, b in zip(damp, damp[1:]))
trend = "falls" if falls else "rises" if rises else "is not monotone"
b = best["damp_percent (g128)"]
verdict = (f"the best: {' and '.join(map(str, b))}" + (" (tied)" if len(b) > 1 else "")
           + (f", above the usual 0.01: on {CALIB_SAMPLES} x {CALIB_LEN} calibration tokens the ridge also regularizes "
              "a Hessian estimated from few tokens" if min(b) > 0.01 else
              ", below the usual 0.01" if max(b) < 0.01 else ""))
print(f"damping: from {damp[0]['setting']} to {damp[-1]['setting']} the held-out error {trend} "
      f"({damp[0]['GPTQ']:.3%} -> {damp[-1]['GPTQ']:.3%}; RTN on these layers: {layer_rtn(4, 128):.3%}); {verdict}.")
stat = {r["setting"]: r for r in sweep if r["knob"] == "desc_act (g128)"}
print(f"grids chosen before GPTQ (static) vs as it goes (dynamic), no act-order: {stat['off, static groups']['GPTQ']:.3%} vs "
      f"{stat['off']['GPTQ']:.3%}" + (" (static is worse on both sets)" if beats(stat["off"], stat["off, static groups"])
                                       else " (static is better on both sets)" if beats(stat["off, static groups"], stat["off"])
                                       else ": a tie"))

# %%
if WHOLE_MODEL_SWEEPS:
    whole = []
    for g in (32, 64, 128):
        whole.append(scored(gptq_model(GPTQConfig(4, g))[0], knob="group", setting=g, RTN=ppl(rtn_model(4, g))))
    for label, cfg in (("desc_act static", GPTQConfig(4, 128, desc_act=True, static_groups=True)),
                       ("desc_act dynamic", GPTQConfig(4, 128, desc_act=True))):
        whole.append(scored(gptq_model(cfg)[0], knob="desc_act", setting=label))
    for d in (0.001, 0.1):
        whole.append(scored(gptq_model(GPTQConfig(4, 128, damp_percent=d))[0], knob="damp_percent", setting=d))
    for n in (4, 8):
        whole.append(scored(gptq_model(GPTQConfig(4, 128), batches[:n])[0], knob="samples", setting=n))
    display(results_table(whole))
else:
    print("Whole-model sweeps skipped (FAST = True); set FAST = False to run them.")

# %% [markdown]
# ## 5. The real libraries
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
# test suite checks it for 2/3/4/8 bits, sym/asym, groups and act-order); here, on section 2's layer:

# %%
import importlib.util

if importlib.util.find_spec("llmcompressor") is not None:
    from compressed_tensors.quantization import QuantizationArgs
    from llmcompressor.modifiers.gptq.gptq_quantize import quantize_weight

    cfg = GPTQConfig(bits=4, group_size=GROUP, desc_act=True, static_groups=True)
    ours = gptq_quantize_weight(W_layer, H_layer, cfg)
    args = QuantizationArgs(num_bits=4, symmetric=True, strategy="group", group_size=GROUP, actorder="static")
    with torch_threads(1):  # the same arithmetic as ours (section 2)
        Q_lib, _, _ = quantize_weight(W_layer[None].clone(), H_layer[None].clone(), ours.scales[None],
                                      torch.zeros_like(ours.scales)[None].to(torch.int8), None, args)
    mismatches = (Q_lib[0] != ours.weight).sum().item()
    print(f"{LAYER}, W4 g{GROUP} act-order: {mismatches} of {W_layer.numel()} weights differ from llm-compressor")
    assert mismatches == 0, "quantedu's GPTQ no longer reproduces llm-compressor's on the same weight and Hessian"
else:
    print("llm-compressor is not installed: pip install 'llmcompressor==0.14.0.1'")

# %% [markdown]
# **The whole model, live, on the same settings.** Both libraries get the same config object (so
# `static_groups=True`, llm-compressor's grid rule; `llm_compressor.gptq_recipe` builds its recipe from
# it), the same `LIB_SAMPLES x LIB_LEN` calibration windows, the same thread count, and the same
# timer (`benchmark.timed`, with llm-compressor already imported and the model in memory). The
# full-size comparison is `benchmarks/bench_gptq.py`. llm-compressor draws progress bars on stderr
# with no switch to turn them off; the cell keeps them out of the page.

# %%
from quantedu.engines import llm_compressor


def agreement(a, b, k):
    """Share of identical weights in the linear layers of block k of models a and b."""
    la = {n: m for n, m in decoder_layers(a)[k].named_modules() if isinstance(m, torch.nn.Linear)}
    lb = dict(decoder_layers(b)[k].named_modules())
    return sum((la[n].weight == lb[n].weight).sum().item() for n in la) / sum(la[n].weight.numel() for n in la)


if llm_compressor.available():
    lib_cfg = GPTQConfig(bits=4, group_size=GROUP, static_groups=True)
    lib_batches = session.calibration(LIB_SAMPLES, LIB_LEN, seed=0)
    lib = copy.deepcopy(model)
    with torch_threads(QUANT_THREADS), no_bars():
        _, lib_wall, lib_cpu = timed(lambda: llm_compressor.run_oneshot(lib, lib_batches, llm_compressor.gptq_recipe(lib_cfg)))
    ours_m, ours_t, _ = gptq_model(lib_cfg, lib_batches)
    live_df = results_table([scored(ours_m, library="quantedu", **ours_t),
                             scored(lib, library="llm-compressor", **{"wall s": lib_wall, "CPU s": lib_cpu})], index="library")
    first, last = agreement(ours_m, lib, 0), agreement(ours_m, lib, N_BLOCKS - 1)
    q, l = live_df.loc["quantedu"], live_df.loc["llm-compressor"]
    print(f"W4 g{GROUP} static groups, {LIB_SAMPLES} x {LIB_LEN} calibration tokens, {THREADS}: identical weights "
          f"{first:.2%} in block 0 (the same inputs), {last:.2%} in the last block"
          + (" (its inputs went through earlier blocks in which float noise flipped a few codes)"
             if session.dtype == torch.float32 else ""))
    print(f"time: quantedu {q['wall s']:.0f} s wall / {q['CPU s']:.0f} s CPU, llm-compressor {l['wall s']:.0f} s / "
          f"{l['CPU s']:.0f} s (CPU time {l['CPU s'] / q['CPU s']:.2f}x ours); perplexity {q['ppl']:.2f} vs {l['ppl']:.2f}, "
          f"text A {q['ppl, text A']:.2f} vs {l['ppl, text A']:.2f}, text B {q['ppl, text B']:.2f} vs {l['ppl, text B']:.2f}"
          + (f": {'quantedu' if better(q, l) else 'llm-compressor'} ahead on both texts" if better(q, l) or better(l, q)
             else ": the same quality within the noise (they swap places between the two texts)"))
    if session.dtype == torch.float32:
        assert first > 0.99, "block 0 sees the same inputs in both libraries: its codes should agree"
    else:  # llm-compressor keeps its scales in the weights' dtype, ours stay fp32: other grids, other codes
        print(f"(in {BASE} llm-compressor rounds its scales to {BASE}, ours stay fp32: the grids differ, so do the codes)")
    display(live_df)
else:
    print(f"llm-compressor is not installed: {llm_compressor.INSTALL}")

# %% [markdown]
# ### The seed's `optimum` snippet, run as written
# The seed quantizes with optimum's `GPTQQuantizer(bits=4, group_size=128, desc_act=True, damp_percent=0.01,
# dataset=...)`. optimum 2.3 runs GPTQ through GPTQModel 7.7, whose pins clash with this course's (it wants a
# newer transformers and declares torch >= 2.14.1), so both live in an environment of their own
# (`make seed-libs`: `.venv-seed`) and `quantedu.engines.seed_libs` runs them there in a subprocess, on this session's
# model, with `LIB_SAMPLES x LIB_LEN` tokens of the course's calibration text. First the snippet as written,
# then the smallest fix for each error it hits, then the working run beside the course's own GPTQ with the
# seed's settings. The checkpoint optimum writes is read back with the course's own loader.

# %%
import json
from pathlib import Path

from quantedu.engines import seed_libs

SEED_DIR = session.model.name_or_path  # the checkpoint folder this session loaded: the libraries load it themselves
seed_env = seed_libs.status()
if not seed_env["usable"]:
    print(f"Skipped: {seed_env['why']}\n  {seed_env['install']}")
else:
    for dist, lib in seed_env["libraries"].items():
        print(f"{dist:10s} {lib['version']:8s} " + ("imports" if lib["imports"] else f"does not import: {lib['error']}"))
    steps = {"as written": dict(fix=False), "+ act_group_aware=False": dict(fix=True)}
    runs = {}
    for step, kw in steps.items():
        runs[step] = seed_libs.run_optimum_gptq(SEED_DIR, n_samples=LIB_SAMPLES, seq_len=LIB_LEN, **kw)
    if not runs["+ act_group_aware=False"]["ok"]:  # e.g. GPTQModel's default CPU kernel and a ragged last group
        runs["+ backend='torch'"] = seed_libs.run_optimum_gptq(SEED_DIR, n_samples=LIB_SAMPLES, seq_len=LIB_LEN,
                                                               fix=True, backend="torch")
    for step, r in runs.items():
        print(f"{step:26s} " + (f"ran: {r['quantize_s']:.0f} s, kernel {r['kernel']}" if r["ok"]
                                 else f"{r.get('stage', '')}: {seed_libs.first_line(r)}"))
    opt = list(runs.values())[-1]
    assert not runs["as written"]["ok"] and opt["ok"], "the snippet's outcome changed: read the lines above"

# %% [markdown]
# The working run beside the course's GPTQ with the seed's settings (4 bits, symmetric, groups of 128,
# act-order, 1% damping) on the same calibration windows. optimum's time is its `quantize_model` call inside
# its own process; ours is timed as everywhere in this notebook.

# %%
if seed_env["usable"]:
    seed_cfg = GPTQConfig(bits=4, group_size=128, sym=True, desc_act=True, damp_percent=0.01)
    ours_seed, ours_seed_t, _ = gptq_model(seed_cfg, session.calibration(LIB_SAMPLES, LIB_LEN, seed=0))
    opt_model = seed_libs.load(opt, session.dtype).to(session.device)
    seed_df = results_table([scored(ours_seed, library="quantedu GPTQ", **ours_seed_t),
                             scored(opt_model, library="optimum + GPTQModel", **{"wall s": opt["quantize_s"]})],
                            index="library")
    o, c = seed_df.loc["optimum + GPTQModel"], seed_df.loc["quantedu GPTQ"]
    qc = json.loads((Path(opt["out"]) / "config.json").read_text())["quantization_config"]
    print(f"{seed_cfg.label()}, {LIB_SAMPLES} x {LIB_LEN} tokens: perplexity quantedu {c['ppl']:.2f}, optimum "
          f"{o['ppl']:.2f} (" + ("quantedu" if better(c, o) else "optimum" if better(o, c) else "a tie within the noise")
          + (" ahead on both texts)" if better(c, o) or better(o, c) else ")") + f"; {BASE} {fp_ppl:.2f}")
    print(f"its config.json: format {qc.get('format', qc.get('checkpoint_format'))!r}, desc_act {qc.get('desc_act')}, "
          f"and the calibration set stored in it: {len(json.dumps(qc.get('dataset', ''))):,} characters")
    display(seed_df)

# %% [markdown]
# ## 6. Saving it so engines can load it
# The in-memory model holds dequantized weights (fake quantization). `quantedu.export` writes the
# integer codes, packed 8 per int32, with their scales (and zeros, and `g_idx`):
# * `save_compressed_tensors`: llm-compressor's `pack-quantized` format; `transformers` loads it through
#   compressed-tensors, vLLM serves it. Groups must divide the columns and `g_idx` must be the natural
#   one (no act-order, or act-order with static groups).
# * `save_gptq`: the AutoGPTQ/GPTQModel layout (`qweight`, `qzeros`, `scales`, `g_idx`).
#
# We save the W4 model of section 3, reload it with plain `transformers` and compare logits.

# %%
import tempfile
from pathlib import Path

from transformers import AutoModelForCausalLM

from quantedu.export.write import save_compressed_tensors

ct_model, ct_layers, ct_cfg = w4_model, w4_layers, GPTQConfig(bits=4, group_size=GROUP)
with tempfile.TemporaryDirectory() as tmp, no_bars():
    path = save_compressed_tensors(ct_model, ct_layers, ct_cfg, Path(tmp) / f"gptq-w4g{GROUP}", tokenizer=tokenizer)
    size_mb = sum(f.stat().st_size for f in path.iterdir()) / 1e6
    reloaded = AutoModelForCausalLM.from_pretrained(path, dtype=session.dtype).eval().to(session.device)
    probe = session.calibration(1, 64, seed=3).to(session.device)
    with torch.no_grad():
        logits = ct_model(probe).logits.float()
        diff = (reloaded(probe).logits.float() - logits).abs().max().item()
# In fp32 the reloaded weights are ours exactly; in bf16/fp16 the checkpoint's scales are stored in that
# dtype, so a weight may differ by one rounding of its scale: allow a few of the dtype's steps.
tol = 1e-3 if session.dtype == torch.float32 else 8 * torch.finfo(session.dtype).eps * logits.abs().max().item()
print(f"saved {size_mb:.0f} MB; reloaded with transformers: max |logit difference| = {diff:.2e} (allowed: {tol:.1e})")
assert diff < tol

# %% [markdown]
# ## Why does AWQ quantize faster than GPTQ? (the seed's question)
# Both need the same calibration forward passes, block by block. The difference is the per-layer
# work: GPTQ visits the input columns **one at a time** (a sequential loop of `cols` small updates,
# plus a Cholesky of a `cols x cols` matrix), while AWQ evaluates a **grid of scale candidates** per
# group of layers, each a quantize and a forward pass of part of the block on the calibration tokens.
# Which costs more depends on the implementation, the hardware and the calibration size; on a GPU
# neither takes hours for a 7B model (the GPTQ paper already quantized a 175B model in about four GPU
# hours). This notebook timed GPTQ; notebook 04 times AWQ and GPTQ side by side, the same way.

# %%
live_note = (f"; on {LIB_SAMPLES} x {LIB_LEN} tokens quantedu {q['CPU s']:.0f} s, llm-compressor {l['CPU s']:.0f} s CPU"
             if llm_compressor.available() else "")
print(f"measured in this notebook, {THREADS}: quantedu GPTQ W4 g{GROUP} on {CALIB_SAMPLES} x {CALIB_LEN} tokens "
      f"{t4['wall s']:.0f} s wall, {t4['CPU s']:.0f} s CPU{live_note}")

# %% [markdown]
# ## Quiz

# %%
from quantedu.course.quiz import Quiz

quiz = Quiz.load("gptq")
quiz.show()
