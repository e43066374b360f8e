# %% [markdown]
# # 03 · GPTQ: rounding with error compensation
#
# Round-to-nearest (RTN, notebook 02) treats every weight alone. **GPTQ** (Frantar et al., 2022)
# quantizes a layer one input column at a time and, after each column, *moves the columns not yet
# quantized* so that the layer's output changes as little as possible. It needs a little calibration
# data and no training, and at 4 bits it recovers most of what RTN loses.
#
# In this notebook you will:
# 1. derive GPTQ from the layer's quadratic error, from OBS/OBQ to the Cholesky trick and lazy batches;
# 2. write GPTQ for one layer in ~30 lines and check it against `quantedu.gptq`;
# 3. compare RTN and GPTQ on the whole model at 4 and 3 bits, and see what group size, act-order,
#    damping and the number of calibration samples change;
# 4. meet the real libraries (llm-compressor, GPTQModel; AutoGPTQ is retired) with their quality and
#    speed next to ours, and save our model in a format they and vLLM load.

# %% [markdown]
# ## Parameters
# `FAST = True` keeps the notebook to a few minutes on a laptop CPU: a small calibration set, short
# evaluation windows, and the knob sweeps measured on single layers (the objective GPTQ minimizes)
# rather than on whole-model perplexity. `FAST = False` (a GPU, or patience) runs every sweep on the
# whole model with the reference settings (32 x 512 calibration tokens, 8 x 512 evaluation tokens).

# %%
MODEL = "auto"
FAST = True
CALIB_SAMPLES = 4 if FAST else 32    # calibration sequences
CALIB_LEN = 256 if FAST else 512     # tokens per calibration sequence
N_WINDOWS = 2 if FAST else 8         # perplexity windows ...
SEQ_LEN = 256 if FAST else 512       # ... of this many tokens
WHOLE_MODEL_SWEEPS = not FAST        # group size / act-order / damping / samples on whole-model perplexity
RUN_LLM_COMPRESSOR = False           # True: run llm-compressor's GPTQ live (~minutes on a CPU)

# %%
import copy
import time

import torch

from quantedu.course import start
from quantedu.evaluate import results_table, torch_threads

session = start(MODEL, n_windows=N_WINDOWS, seq_len=SEQ_LEN)
model, tokenizer, corpus = session.model, session.tokenizer, session.corpus
batches = session.calibration(CALIB_SAMPLES, CALIB_LEN, seed=0)
ppl = session.perplexity  # perplexity on the N_WINDOWS x SEQ_LEN evaluation windows


fp_ppl = ppl(model)
print(f"fp32 perplexity ({N_WINDOWS} x {SEQ_LEN} tokens): {fp_ppl:.3f}")

# %% [markdown]
# ## 1. The objective: a quadratic in the weights
# A linear layer computes `y = W x`. Quantizing `W` to `Q` changes its outputs on calibration inputs
# `X` (one column per token) by `(W - Q) X`. GPTQ minimizes the squared change,
#
# $$\lVert W X - Q X \rVert_F^2 = \operatorname{tr}\big((W - Q)\, H\, (W - Q)^\top\big), \qquad H = 2 X X^\top .$$
#
# Two facts make this tractable:
#
# * **Rows are independent.** Each output row `w` contributes `(w - q) H (w - q)^T` with the *same*
#   `H` (columns x columns, 576 x 576 here): it depends on the inputs only.
# * **It is quadratic.** If we fix (quantize) weight `q` of a row and let the others move freely, the
#   best correction of the others is closed-form. This is Optimal Brain Surgeon (OBS, Hassibi & Stork
#   1993), used for pruning; **OBQ** (Frantar & Alistarh 2022) applied it to quantization:
#
# $$\delta_F = -\frac{w_q - \mathrm{quant}(w_q)}{[H^{-1}]_{qq}}\,(H^{-1})_{:,q}, \qquad
#   \text{error added} = \frac{(w_q - \mathrm{quant}(w_q))^2}{[H^{-1}]_{qq}} .$$
#
# OBQ picks the weight with the smallest added error next, separately for each row, and updates
# `H^-1` after each step: `O(rows x cols^3)`, hours for one large layer.
#
# **GPTQ's three changes** (Frantar, Ashkboos, Hoefler, Alistarh 2022):
# 1. *Arbitrary order.* Quantize columns left to right, the same order for every row. Greedy order
#    barely helps on large layers, and a shared order means `H^-1` is updated once for all rows.
# 2. *Cholesky.* Removing columns `0..q-1` from `H^-1` one after another gives exactly the rows of the
#    upper Cholesky factor of `H^-1`: compute it once, read row `q` at step `q`. It is also the
#    numerically stable way (plus **dampening**: add `damp_percent x mean(diag H)` to the diagonal).
# 3. *Lazy batches.* Updating all remaining columns after every column is memory-bound. Apply
#    the updates inside a block of 128 columns, and push the block's accumulated error to the rest of
#    the matrix in one matrix multiply. Same result, compute-bound.
#
# A worked case: one row `[1.4, 1.4, 3.0]`, 2-bit grid `{0, 1, 2, 3}`, inputs where columns 0 and 1
# are correlated. RTN gives `[1, 1, 3]`. GPTQ rounds column 0 down (error +0.4), and because
# column 1 "sees" the same inputs, it moves column 1 up by half of that (`H01/H11 = 1/2`) to 1.6,
# which rounds to 2. The tests check these numbers.

# %%
from quantedu.gptq import GPTQConfig, gptq_quantize_weight

W = torch.tensor([[1.4, 1.4, 3.0]])
H = torch.tensor([[2.0, 1.0, 0.0], [1.0, 2.0, 0.0], [0.0, 0.0, 1.0]])
res = gptq_quantize_weight(W, H, GPTQConfig(bits=2, group_size=-1, sym=False, damp_percent=0.0))
rtn_q = torch.tensor([[1.0, 1.0, 3.0]])
err = lambda Q: ((W - Q) @ H @ (W - Q).T).item()  # noqa: E731
print(f"GPTQ {res.weight.tolist()[0]} -> output error {err(res.weight):.2f};  RTN {rtn_q.tolist()[0]} -> {err(rtn_q):.2f}")

# %% [markdown]
# ### Exercise 03.gptq_hinv: GPTQ's Hinv: damping and the Cholesky factor of H^-1
# Write `gptq_hinv(H, damp_percent)`: give every dead input (a zero on the diagonal of `H`) `H[i, i] = 1`,
# add `damp_percent * mean(diag(H))` to the diagonal, and return the **upper** Cholesky factor of `H^-1`, whose
# row `i` GPTQ reads when it quantizes column `i`.
#
# *Checked against* `quantedu.gptq.gptq_quantize_weight` (run with your Hinv inside, code for code).
# `hint("03.gptq_hinv")` reveals the hints one at a time.

# %%
# Exercise 03.gptq_hinv: GPTQ's Hinv: damping and the Cholesky factor of H^-1
# Fill in the code marked YOUR CODE, then run the cell. hint("03.gptq_hinv") gives a hint.
import torch

from quantedu.exercises import check, hint


def gptq_hinv(H, damp_percent):
    """Upper Cholesky factor of (H with dead inputs fixed + damping)^-1."""
    ...  # YOUR CODE


check("03.gptq_hinv", gptq_hinv)

# %% [markdown]
# ### Exercise 03.gptq_block: GPTQ's inner loop over one block of columns
# Write `gptq_block(W1, Hinv1, scale, zero, maxq)`: quantize the columns of one block left to right. For column
# `i`: round it on each row's grid (`scale`, `zero`: one per row; codes in `[0, maxq]`), compute the scaled
# error `err = (w - q) / Hinv1[i, i]` and push it onto the block's columns not yet quantized with row `i` of
# `Hinv1` (the OBS update). Return `(Q1, Err1)`: the dequantized block and every column's `err` (the caller
# applies `Err1 @ Hinv[block, later]` to the later blocks: the lazy batch update). The checker runs your loop
# inside GPTQ on a real layer and compares the codes with `quantedu.gptq`'s.
#
# *Checked against* `quantedu.gptq.gptq_quantize_weight` (run with your block loop inside, code for code).
# `hint("03.gptq_block")` reveals the hints one at a time.

# %%
# Exercise 03.gptq_block: GPTQ's inner loop over one block of columns
# Fill in the code marked YOUR CODE, then run the cell. hint("03.gptq_block") gives a hint.
import torch

from quantedu.exercises import check, hint


def gptq_block(W1, Hinv1, scale, zero, maxq):
    """(Q1, Err1) of one block: W1 (rows, B) as updated so far, Hinv1 (B, B), scale/zero (rows,)."""
    ...  # YOUR CODE


check("03.gptq_block", gptq_block)

# %% [markdown]
# ## 2. GPTQ for one layer, in ~30 lines
# First the Hessian: hook the layer, run the calibration data through the model, average `2 x x^T`.
# We take block 3's `q_proj` (its input is also `k_proj`'s and `v_proj`'s).

# %%
from quantedu.gptq import HessianAccumulator

LAYER = "model.layers.3.self_attn.q_proj"
layer = model.get_submodule(LAYER)
acc = HessianAccumulator(layer.in_features)
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
    H += damp * torch.diag(H).mean() * torch.eye(cols)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    Q = torch.zeros_like(W)
    per_row = QuantConfig(bits, symmetric=True, granularity="channel")
    for i1 in range(0, cols, block):               # lazy batches of columns
        i2 = min(i1 + block, cols)
        W1, Err1 = W[:, i1:i2].clone(), torch.zeros(W.shape[0], i2 - i1)
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
# same arithmetic; otherwise compare what GPTQ minimizes. Does it pay off on that objective? Relative output error `tr(E H E^T) / tr(W H W^T)`:

# %%
from quantedu.primitives import fake_quantize


def rel_err(Q, W=W_layer, H=H_layer):
    E = W - Q
    return (torch.trace(E @ H @ E.T) / torch.trace(W @ H @ W.T)).item()


rtn_layer = fake_quantize(W_layer, QuantConfig(4, 128, symmetric=True))
print(f"{LAYER}, W4 sym g128: RTN {rel_err(rtn_layer):.3%}  GPTQ {rel_err(pkg.weight):.3%} of the output energy")

# %% [markdown]
# ## 3. The whole model: RTN vs GPTQ at 4 and 3 bits
# `gptq_quantize_model` runs the model **block by block** (memory: one decoder block and its
# calibration inputs): hook every linear layer of the block, one forward pass fills their Hessians,
# GPTQ quantizes them, then the block runs again so the *next* block is calibrated on the outputs of
# the already-quantized one (`inputs_from="quantized"`, the default of the reference code and
# llm-compressor: later blocks learn to compensate earlier errors; `"fp"` is the other choice).

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
    m = copy.deepcopy(model)
    t0 = time.perf_counter()
    layers = gptq_quantize_model(m, calib, cfg, progress=False)
    return m, time.perf_counter() - t0, layers


GROUP = 64
records, timings = [], {}
for bits in (4, 3):
    records.append({"method": "RTN", "bits": bits, "group": GROUP, "ppl": ppl(rtn_model(bits, GROUP))})
    m, seconds, layers = gptq_model(GPTQConfig(bits=bits, group_size=GROUP))
    timings[bits] = seconds
    records.append({"method": "GPTQ", "bits": bits, "group": GROUP, "ppl": ppl(m)})
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
ax.axhline(fp_ppl, color="gray", ls="--", label="fp32")
ax.set(xlabel=f"bits (sym, g{GROUP})", ylabel="perplexity", yscale="log", xticks=[3, 4], title="RTN vs GPTQ")
ax.legend()
plt.show()
pick = {(r["method"], r["bits"]): r["ppl"] for r in records}
print(f"W4: RTN {pick['RTN', 4]:.2f} -> GPTQ {pick['GPTQ', 4]:.2f};  W3: RTN {pick['RTN', 3]:.2f} -> "
      f"GPTQ {pick['GPTQ', 3]:.2f}  (fp32 {fp_ppl:.2f}); GPTQ W4 g{GROUP} took {timings[4]:.0f} s on {CALIB_SAMPLES} x {CALIB_LEN} tokens")

# %% [markdown]
# ## 4. The knobs
# * **group size**: one scale per 32/64/128 input weights; smaller groups cost 0.5/0.25/0.125 extra
#   bits per weight (a 16-bit scale) and follow the weights more closely. 576 is not a multiple of 128:
#   the last group of each row is 64 wide (`quantedu` handles it; llm-compressor refuses it).
# * **desc_act** (act-order): quantize the columns with the largest `diag(H)` (largest inputs) first,
#   while many columns remain to absorb their error. With **static groups** the groups' grids are
#   fixed from the original weights first, so the checkpoint keeps the natural column->group map
#   (`g_idx`) and kernels need no reordering; without, the groups follow the permuted order.
# * **damp_percent**: the ridge added to `H`. Too small and `H` (rank <= tokens) may not be
#   invertible; too large and GPTQ degenerates towards RTN.
# * **calibration samples**: more tokens, a better estimate of `H`.
#
# With `FAST` these are measured on the layer objective of three real layers (cheap, and exactly what
# GPTQ optimizes), scored on *held-out* calibration data; `WHOLE_MODEL_SWEEPS` measures perplexity.

# %%
SWEEP_LAYERS = ["model.layers.3.self_attn.q_proj", "model.layers.10.mlp.down_proj", "model.layers.20.mlp.up_proj"]
held_out = session.calibration(4, CALIB_LEN, seed=1)
per_sample = {name: [] for name in SWEEP_LAYERS}


def collect(rows, sink):
    accs = {n: HessianAccumulator(model.get_submodule(n).in_features) for n in SWEEP_LAYERS}
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
collect(held_out, held)


def layer_sweep(cfg, n_samples=CALIB_SAMPLES):
    """Mean over the sweep layers of the held-out relative output error of GPTQ (cfg) on n_samples."""
    out = []
    for n in SWEEP_LAYERS:
        W = model.get_submodule(n).weight.data.float()
        H_cal = torch.stack(per_sample[n][:n_samples]).mean(0)
        Q = W if cfg is None else gptq_quantize_weight(W, H_cal, cfg).weight
        out.append(rel_err(Q, W, held[n][0]))
    return sum(out) / len(out)


def layer_rtn(bits, group):
    errs = []
    for n in SWEEP_LAYERS:
        W = model.get_submodule(n).weight.data.float()
        errs.append(rel_err(fake_quantize(W, QuantConfig(bits, group, symmetric=True)), W, held[n][0]))
    return sum(errs) / len(errs)


sweep = []
for g in (32, 64, 128):
    sweep.append({"knob": "group size", "setting": g, "RTN": layer_rtn(4, g), "GPTQ": layer_sweep(GPTQConfig(4, g))})
for label, cfg in (("off", GPTQConfig(4, 128)), ("on, static groups", GPTQConfig(4, 128, desc_act=True, static_groups=True)),
                   ("on, dynamic groups", GPTQConfig(4, 128, desc_act=True))):
    sweep.append({"knob": "desc_act (g128)", "setting": label, "GPTQ": layer_sweep(cfg)})
for d in (0.001, 0.01, 0.1, 0.5):
    sweep.append({"knob": "damp_percent (g128)", "setting": d, "GPTQ": layer_sweep(GPTQConfig(4, 128, damp_percent=d))})
for n in sorted({1, 2, CALIB_SAMPLES // 2, CALIB_SAMPLES}):
    sweep.append({"knob": "calibration samples (g128)", "setting": f"{n} x {CALIB_LEN}",
                  "GPTQ": layer_sweep(GPTQConfig(4, 128), n_samples=n)})
sweep_df = results_table(sweep)
print("held-out relative output error of W4 sym layers (lower is better), mean over", len(SWEEP_LAYERS), "layers")
sweep_df

# %%
get = lambda knob, setting: next(r["GPTQ"] for r in sweep if r["knob"] == knob and r["setting"] == setting)  # noqa: E731
print(f"group 32 vs 128: GPTQ {get('group size', 32):.3%} vs {get('group size', 128):.3%}; "
      f"act-order static {get('desc_act (g128)', 'on, static groups'):.3%} vs off {get('desc_act (g128)', 'off'):.3%}; "
      f"damp 0.5 {get('damp_percent (g128)', 0.5):.3%} vs 0.01 {get('damp_percent (g128)', 0.01):.3%}; "
      f"1 sample {get('calibration samples (g128)', f'1 x {CALIB_LEN}'):.3%} vs {CALIB_SAMPLES}: "
      f"{get('calibration samples (g128)', f'{CALIB_SAMPLES} x {CALIB_LEN}'):.3%}")

# %%
if WHOLE_MODEL_SWEEPS:
    whole = []
    for g in (32, 64, 128):
        whole.append({"knob": "group", "setting": g, "RTN": ppl(rtn_model(4, g)), "GPTQ": ppl(gptq_model(GPTQConfig(4, g))[0])})
    for label, cfg in (("desc_act static", GPTQConfig(4, 128, desc_act=True, static_groups=True)),
                       ("desc_act dynamic", GPTQConfig(4, 128, desc_act=True))):
        whole.append({"knob": "desc_act", "setting": label, "GPTQ": ppl(gptq_model(cfg)[0])})
    for d in (0.001, 0.1):
        whole.append({"knob": "damp_percent", "setting": d, "GPTQ": ppl(gptq_model(GPTQConfig(4, 128, damp_percent=d))[0])})
    for n in (4, 8):
        whole.append({"knob": "samples", "setting": n, "GPTQ": ppl(gptq_model(GPTQConfig(4, 128), batches[:n])[0])})
    display(results_table(whole))
else:
    print("Whole-model sweeps skipped (FAST = True); set FAST = False to run them.")

# %% [markdown]
# ## 5. The real libraries
# * **AutoGPTQ**, the library behind most GPTQ checkpoints on the Hub (and behind `optimum`'s and
#   transformers' GPTQ support until 2024), is **archived**: its last release (0.7.1) needs
#   transformers 4.x and CUDA. transformers and optimum moved to **GPTQModel**, its maintained fork,
#   which reads and writes the same checkpoint layout and adds CPU kernels.
# * **llm-compressor** (vLLM project) implements GPTQ (`GPTQModifier`) and writes the
#   **compressed-tensors** format that vLLM serves and transformers loads.
#
# llm-compressor 0.14 computes every group's grid *before* GPTQ from the original weights (our
# `static_groups=True`; its `actorder="static"` default is act-order with static groups). On the same
# weight and Hessian our `gptq_quantize_weight` reproduces its `quantize_weight` code for code (the
# test suite checks it for 2/3/4/8 bits, sym/asym, groups and act-order):

# %%
import importlib.util

if importlib.util.find_spec("llmcompressor") is not None:
    from compressed_tensors.quantization import QuantizationArgs
    from llmcompressor.modifiers.gptq.gptq_quantize import quantize_weight

    cfg = GPTQConfig(bits=4, group_size=64, desc_act=True, static_groups=True)
    ours = gptq_quantize_weight(W_layer, H_layer, cfg)
    args = QuantizationArgs(num_bits=4, symmetric=True, strategy="group", group_size=64, actorder="static")
    Q_lib, _, _ = quantize_weight(W_layer[None].clone(), H_layer[None].clone(), ours.scales[None],
                                  torch.zeros_like(ours.scales)[None].to(torch.int8), None, args)
    print(f"{LAYER}, W4 g64 act-order: {(Q_lib[0] != ours.weight).sum().item()} of {W_layer.numel()} weights differ from llm-compressor")
else:
    print("llm-compressor is not installed: pip install 'llmcompressor==0.14.0.1'")

# %% [markdown]
# Whole model, quality and time. llm-compressor's run takes minutes on a CPU, so by default the notebook
# shows what `benchmarks/bench_gptq.py` **recorded** (one process: the same calibration windows for
# both, the same evaluation windows; set `RUN_LLM_COMPRESSOR = True` to run it here).

# %%
import json
from pathlib import Path

import quantedu
from quantedu import reference

if RUN_LLM_COMPRESSOR and reference.available():
    lib = copy.deepcopy(model)
    lib_s = reference.run_oneshot(lib, batches, reference.gptq_recipe(GPTQConfig(4, 64)))
    ours_m, ours_s, _ = gptq_model(GPTQConfig(4, 64))
    print(f"live, this machine, {CALIB_SAMPLES} x {CALIB_LEN} tokens: llm-compressor GPTQ W4 g64 {lib_s:.0f} s, "
          f"ppl {ppl(lib):.2f}; quantedu {ours_s:.0f} s, ppl {ppl(ours_m):.2f}")
else:
    print("llm-compressor not run live (RUN_LLM_COMPRESSOR = False or not installed).")

candidates = [Path.cwd() / "benchmarks" / "results" / "bench_gptq.json",
              Path.cwd().parent / "benchmarks" / "results" / "bench_gptq.json",
              Path(next(iter(quantedu.__path__))).resolve().parent / "benchmarks" / "results" / "bench_gptq.json"]
recorded = next((p for p in candidates if p.is_file()), None)
if recorded is None:
    print("No recorded benchmark found (run: python benchmarks/bench_gptq.py).")
else:
    bench = json.loads(recorded.read_text())
    meta = bench["meta"]
    print(f"RECORDED, not measured now: benchmarks/bench_gptq.py, {meta['samples']} x {meta['seq_len']} calibration "
          f"tokens, ppl on {meta['windows']} x 512 tokens, {meta['threads']} thread(s), torch {meta['torch']}, {meta['device']}")
    display(results_table(bench["rows"]))
print(f"this notebook, live: quantedu GPTQ W4 g{GROUP} on {CALIB_SAMPLES} x {CALIB_LEN} tokens took {timings[4]:.0f} s")

# %% [markdown]
# ### The seed's `optimum` snippet
# `optimum.gptq.GPTQQuantizer` quantizes a transformers model with GPTQModel's kernels underneath. As
# written in the seed (`desc_act=True`), current optimum rejects it with *"act_group_aware == True
# requires desc_act == False"*: add `act_group_aware=False`. It needs GPTQModel, which declares
# torch >= 2.14.1 (this course pins 2.13), so it runs on a GPU runtime such as Colab, not here.

# %%
if torch.cuda.is_available() and importlib.util.find_spec("optimum") and importlib.util.find_spec("gptqmodel"):
    from optimum.gptq import GPTQQuantizer

    texts = [tokenizer.decode(row) for row in batches]
    quantizer = GPTQQuantizer(bits=4, dataset=texts, group_size=64, desc_act=True, act_group_aware=False,
                              model_seqlen=CALIB_LEN)
    t0 = time.perf_counter()
    opt_model = quantizer.quantize_model(copy.deepcopy(model), tokenizer)
    print(f"optimum GPTQQuantizer W4 g64 desc_act: {time.perf_counter() - t0:.0f} s, ppl {ppl(opt_model):.2f}")
else:
    print("Skipped: the optimum/GPTQModel snippet needs a CUDA GPU with `pip install optimum gptqmodel` (e.g. Colab).")

# %% [markdown]
# ## 6. Saving it so engines can load it
# The in-memory model holds dequantized fp32 weights (fake quantization). `quantedu.export` writes the
# integer codes, packed 8 per int32, with their scales (and zeros, and `g_idx`):
# * `save_compressed_tensors`: llm-compressor's `pack-quantized` format; `transformers` loads it through
#   compressed-tensors, vLLM serves it. Groups must divide the columns (g64 here) and `g_idx` must be
#   the natural one (no act-order, or act-order with static groups).
# * `save_gptq`: the AutoGPTQ/GPTQModel layout (`qweight`, `qzeros`, `scales`, `g_idx`).
#
# We save the W4 g64 model of section 3, reload it with plain `transformers` and compare logits.

# %%
import tempfile

from transformers import AutoModelForCausalLM

from quantedu.export import save_compressed_tensors

ct_model, ct_layers, ct_cfg = w4_model, w4_layers, GPTQConfig(bits=4, group_size=GROUP)
with tempfile.TemporaryDirectory() as tmp:
    path = save_compressed_tensors(ct_model, ct_layers, ct_cfg, Path(tmp) / "smollm2-gptq-w4g64",
                                   tokenizer=tokenizer)
    size_mb = sum(f.stat().st_size for f in path.iterdir()) / 1e6
    reloaded = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    probe = session.calibration(1, 64, seed=3).to(session.device)
    with torch.no_grad():
        diff = (reloaded(probe).logits - ct_model(probe).logits).abs().max().item()
print(f"saved {size_mb:.0f} MB; reloaded with transformers: max |logit difference| = {diff:.2e}")
assert diff < 1e-3

# %% [markdown]
# ## Why does AWQ quantize faster than GPTQ?
# Both need the same calibration forward passes, block by block. The difference is the per-layer
# work: GPTQ visits the input columns **one at a time** (a sequential loop of `cols` small updates,
# plus a Cholesky of a `cols x cols` matrix), while AWQ evaluates a **grid of ~20 scale candidates**
# per group of layers, each a batched quantize + matmul. Neither is slow on a GPU: modern GPTQ
# implementations (GPTQModel, llm-compressor) quantize a 7-8B model in minutes on one GPU, not the
# hours of 2022. On a 2-core CPU the ranking can even invert (the measured-facts notes: AWQ ran slower
# than GPTQ in every library here), because AWQ's grid search re-runs the layers on every token for
# every candidate.

# %% [markdown]
# ## Quiz

# %%
from quantedu.quiz import Quiz

quiz = Quiz.load("gptq")
quiz.show()

# %% [markdown]
# The quiz logic, checked on the first question.

# %%
print(quiz.answer(0, quiz.questions[0].answer).correct, quiz.score_text())
