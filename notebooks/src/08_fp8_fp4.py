# %% [markdown]
# # 08 · FP8 and FP4: the microscaling formats, from scratch and bit-exact
#
# Notebooks 02-05 put weights on *integer* grids with float16 scales. The formats that 2025-26 models ship in,
# and that new accelerators multiply natively, are *floating-point*: **FP8** (E4M3, E5M2), **MXFP4** (the OCP
# Microscaling format: 32 E2M1 numbers sharing one power-of-two scale; gpt-oss ships its experts in it) and
# **NVFP4** (16 E2M1 numbers sharing an FP8 scale, times one fp32 number per tensor). In this lesson you:
#
# 1. see why a floating-point grid suits weights (their distribution against the E2M1 and INT4 levels);
# 2. quantize one MXFP4 block by hand and check it against the package, whose bytes are llama.cpp's;
# 3. build NVFP4's two-level scale, and put MXFP4, NVFP4 and INT4 on the same tensors;
# 4. measure what the scale's rounding rule changes;
# 5. write MXFP4 and NVFP4 GGUF files, predict their bytes, and run them in llama.cpp beside Q4_0, IQ4_NL, Q4_K_M;
# 6. run GPTQ on the FP4 grids: does error feedback help FP4 as much as INT4?
#
# Then which hardware runs each format natively, and when to pick which.

# %% [markdown]
# ## Parameters
# `FAST = True` keeps the notebook to a few minutes on a laptop CPU: the llama.cpp files are scored on the
# "sweep" windows (2 x 512 tokens), the layer-level GPTQ comparison uses three layers, and the whole-model GPTQ
# run covers MXFP4 only. `FAST = False` scores on "eval" (4 x 512), compares all nine layers of section 3 and
# also runs NVFP4 and INT4 through GPTQ. `N_THREADS = 1` for llama.cpp and timed torch work (a busy 2-core machine
# slows down with 2).

# %%
from quantedu.course import fast_default, parameter

MODEL = parameter("MODEL", "auto")  # or "smollm2-135m", a hub id, a local path (env: QUANTEDU_MODEL)
FAST = fast_default()              # True on a CPU, False on a GPU (env: QUANTEDU_FAST)
N_THREADS = 1
PURPOSE = "sweep" if FAST else "eval"                  # the window set the llama.cpp files are scored on
MIXES = ["Q4_0", "IQ4_NL", "Q4_K_M"]                   # llama.cpp's integer 4-bit types beside the FP4 files
CALIB_SAMPLES, CALIB_LEN = 6, 512                      # 3072 tokens: 2 x the widest linear input (1536)
GPTQ_FORMATS = ["MXFP4"] if FAST else ["MXFP4", "NVFP4", "INT4 g32 sym"]

# %%
from quantedu.course import start

session = start(MODEL)
model, tokenizer = session.model, session.tokenizer
print(f"{model.config.num_hidden_layers} layers, hidden {model.config.hidden_size}, "
      f"intermediate {model.config.intermediate_size}, weights in {session.dtype_name}")

# %% [markdown]
# ## 1. E2M1, E4M3, E5M2: small floats from their bits
# A float with `e` exponent bits and `m` mantissa bits stores `sign x 1.mantissa x 2**(exponent - bias)`, and
# `0.mantissa x 2**(1 - bias)` when the exponent field is 0 (subnormals). E2M1 has 1 sign, 2 exponent and 1 mantissa
# bit, bias 1, no infinity and no NaN: 16 codes, 15 distinct values. Decoded by hand:

# %%
import numpy as np
import torch
from quantedu import fp

def e2m1(code: int) -> float:
    sign = -1.0 if code & 8 else 1.0
    exp, man = (code >> 1) & 3, code & 1
    return sign * (man / 2 if exp == 0 else (1 + man / 2) * 2.0 ** (exp - 1))

by_hand = np.array([e2m1(c) for c in range(16)])
assert np.array_equal(by_hand, fp.decode(np.arange(16), fp.E2M1))
print("E2M1 values of codes 0-7:", by_hand[:8].tolist(), "(codes 8-15: the same, negative)")

all_codes = torch.arange(256, dtype=torch.uint8)
for name, dtype in [("e4m3", torch.float8_e4m3fn), ("e5m2", torch.float8_e5m2)]:
    ours = torch.from_numpy(np.asarray(fp.decode(all_codes.numpy(), fp.FP8[name]), np.float32))
    theirs = all_codes.view(dtype).float()
    assert torch.equal(ours.nan_to_num(0.0, 1e9, -1e9), theirs.nan_to_num(0.0, 1e9, -1e9))
    back = fp.torch_cast_codes(theirs[torch.isfinite(theirs)], name)
    assert torch.equal(back, theirs[torch.isfinite(theirs)].to(dtype).view(torch.uint8))
    print(f"FP8 {name.upper()}: all 256 codes decode as torch's {dtype}, max {fp.FP8[name].max:g}; "
          "encoding them again gives torch's codes")

# %% [markdown]
# ### Why a floating-point grid
# An INT4 grid is evenly spaced; E2M1's levels (0, 0.5, 1, 1.5, 2, 3, 4, 6) are 0.5 apart up to 2, 1 apart up to
# 4, then 2 apart, so it has its finest steps near zero. With one scale per group of 32 consecutive weights, what matters is the
# distribution of `|w| / max |w|` inside a group: here are this model's weights of one MLP projection, against
# the levels of each grid when the group's largest weight sits on the top level.

# %%
import matplotlib.pyplot as plt
from quantedu.course.figures.fp4 import group_normalized, plot_levels

W_DOWN = model.model.layers[0].mlp.down_proj.weight.detach().float()
x = group_normalized(W_DOWN, 32)
e2m1_levels = by_hand[:8] / 6
levels = {"E2M1 (x max/6)": e2m1_levels, "INT4 symmetric (x max/7)": np.arange(8) / 7}
plot_levels(x, levels, title="layer 0 down_proj: weights inside their groups of 32, and the 4-bit levels")
plt.show()

def nearest_error(x, pos_levels):
    grid = np.concatenate([-pos_levels[::-1], pos_levels])
    return float(np.mean((grid[np.abs(x[:, None] - grid[None]).argmin(1)] - x) ** 2))

sample = x[:: max(1, x.size // 200_000)]
err = {k: nearest_error(sample, v) for k, v in levels.items()}
below = float(np.mean(np.abs(x) < 0.25))
lower = min(err, key=err.get).split(" (")[0]
print(f"{below:.0%} of the weights lie below a quarter of their group's largest; there E2M1 has 3 levels "
      f"(0, 1/12, 1/6 of the max), INT4 2 (0, 1/7).\nMean squared rounding error, in units of the group max²: "
      f"E2M1 {err['E2M1 (x max/6)']:.2e}, INT4 {err['INT4 symmetric (x max/7)']:.2e} (lower on this tensor: {lower})")

# %% [markdown]
# **Takeaway:** inside a group, weights pile up towards zero, where E2M1 keeps its finest steps and INT4 spreads its
# levels evenly. Which grid rounds a tensor with less error depends on how peaked its distribution is: the last line
# says it for this one, and the next sections put real scales (not this idealized "max on the top level") on it.
# (The course model's weights came from a Q4_1 file, 16 evenly spaced values per block of 32: hence the comb in
# its histogram; a bf16 model's is smooth.)

# %% [markdown]
# ## 2. MXFP4: one block, by hand
# An MXFP4 block is 32 weights `x` and one **E8M0** byte `e`: a bare exponent, scale `2**(e - 127)`, no mantissa,
# no sign. The OCP spec (and ggml, and gguf-py) choose `e = floor(log2(max|x|)) - 2 + 127`: the largest weight
# divided by the scale lands in [4, 8), and E2M1's largest value is 6, so the top of that range clips to 6.
# Every weight is then rounded to the nearest E2M1 value times the scale. What that layout costs per weight:

# %%
from quantedu import microscaling as ms
from quantedu.course.quiz import Quiz

quiz = Quiz.load("fp4", ids=["mxfp4-bits"], values={"mx_bits": ms.MXFP4.bits_per_weight,
                                                     "nv_bits": ms.NVFP4.bits_per_weight})
quiz.show()

# %% [markdown]
# Now write it yourself, byte for byte as llama.cpp stores it:

# %% [exercise 08.mxfp4_block]

# %% [markdown]
# The same in torch, on the first block of the layer above (values, not bytes), against the package's two
# implementations: `quantedu.microscaling` (torch, what the model computes with) and `quantedu.gguf` (GGML's
# bytes; `tests/test_gguf_fp4.py` proves them equal to ggml's C reference, `ggml_quantize_chunk`, on random, real
# and adversarial blocks).

# %%
from quantedu import gguf

xb = W_DOWN[0, :32]
scale = 2.0 ** (torch.floor(torch.log2(xb.abs().max())) - 2)           # E8M0: a power of two
grid = torch.tensor(by_hand, dtype=torch.float32)
q = grid[(xb[:, None] / scale - grid[None]).abs().argmin(1)] * scale  # nearest E2M1 value, times the scale
print(f"block max {xb.abs().max():.4f} -> scale 2^{int(torch.log2(scale))}; max/scale = "
      f"{xb.abs().max() / scale:.2f}; rel. squared error {((q - xb) ** 2).sum() / (xb ** 2).sum():.4f}")

package = ms.quantize_fp4(W_DOWN, ms.MXFP4).dequantize()[0, :32]
ggml_bytes = gguf.quantize(W_DOWN.numpy(), "MXFP4")
from_ggml = torch.from_numpy(gguf.dequantize(ggml_bytes, "MXFP4"))[0, :32]
assert torch.equal(q, package) and torch.equal(q, from_ggml)
print(f"equal to quantedu.microscaling and to the dequantized GGML bytes ({ggml_bytes.shape[1]} bytes per row of "
      f"{W_DOWN.shape[1]} = {ggml_bytes.shape[1] // (W_DOWN.shape[1] // 32)} bytes per block of 32)")

# %% [markdown]
# ## 3. NVFP4: a two-level scale, and FP4 against INT4 on the same tensors
# NVFP4 shrinks the group to 16 and gives each group an **E4M3** scale (3 mantissa bits: the scale is no longer
# forced to a power of two). It also adds one float32 scale for the whole tensor. Why would it need that?

# %%
quiz = Quiz.load("fp4", ids=["nvfp4-global"])
quiz.show()

# %% [markdown]
# E4M3 reaches only 448 and loses precision below 2^-6 (0.0156), while a group's `max/6` in an LLM's weights
# (most of them a few hundredths) is often near or below that; so a per-tensor float32 `g` first lifts the scales
# into E4M3's range: value = `E2M1 x s / g`. Write the scales yourself:

# %% [exercise 08.nvfp4_scales]

# %% [markdown]
# The package's version (`microscaling.choose_scales`, equal to llm-compressor's NVFP4A16 on the course model,
# `tests/test_export_fp.py`), on the layer above:

# %%
codes, g = ms.choose_scales(W_DOWN, ms.NVFP4)
s = fp.decode(codes, fp.E4M3)
print(f"g = {g.item():.4g}; block scales s from {s[s > 0].min().item():.3g} to {s.max().item():.0f} "
      f"({int(codes.unique().numel())} distinct E4M3 codes of 126 positive ones)")

# %% [markdown]
# Now every grid by round-to-nearest on the same real tensors (`fp_grids.rtn_on_grid`: one scale per group
# chosen from the group, every weight rounded): INT4 with a float16 scale per 32 (symmetric: 4.5 bits per weight;
# asymmetric, with a 4-bit zero point: 4.625), MXFP4 (4 + 8/32 = 4.25), NVFP4 (4 + 8/16 = 4.5, the fp32 per
# tensor is negligible) and FP8 E4M3 with one scale per output row (8 bits and a bit more).

# %%
import pandas as pd
from quantedu import fp_grids, memory
from quantedu.course.figures.fp4 import plot_error_vs_bits

BITS = {"INT4 g32 sym": memory.GroupFormat(4, 32, zero_bits=0).bits_per_weight(),
        "INT4 g32 asym": memory.bits_per_weight("int4-g32"), "MXFP4": ms.MXFP4.bits_per_weight,
        "NVFP4": ms.NVFP4.bits_per_weight}
n = model.config.num_hidden_layers
LAYERS = [f"model.layers.{i}.{kind}" for i in (0, n // 2, n - 1)
          for kind in ("self_attn.q_proj", "self_attn.o_proj", "mlp.down_proj")]
rows = []
for name in LAYERS:
    Wl = model.get_submodule(name).weight.detach().float()
    for label, make in fp_grids.default_grids().items():
        grid_obj = make(Wl)
        Q = fp_grids.rtn_on_grid(Wl, grid_obj, fp_grids.gptq_config(grid_obj).group_size)
        bits = BITS.get(label, 8 + 32 / Wl.shape[1])
        rows.append({"layer": name, "grid": label, "bits_per_weight": bits,
                     "rel_sq_error": float(((Q - Wl) ** 2).sum() / (Wl ** 2).sum())})
same = pd.DataFrame(rows)
plot_error_vs_bits(same)
plt.show()
err_by = same.groupby("grid", sort=False)["rel_sq_error"].apply(lambda e: float(np.exp(np.log(e).mean())))
print("geometric mean over", len(LAYERS), "layers:", ", ".join(f"{k} {v:.2e}" for k, v in err_by.items()))

# %% [markdown]
# MXFP4 and NVFP4 spend 4 bits on every code; one of them rounds with more error. Before the takeaway says why:

# %%
quiz = Quiz.load("fp4", ids=["mx-vs-nv"], values={"mx_over_nv": float(err_by["MXFP4"] / err_by["NVFP4"])})
quiz.show()

# %% [markdown]
# **Takeaway:** the points sort by bits: FP8 (twice the bits) sits far below every 4-bit grid; among those, MXFP4's
# power-of-two scale is the cheapest (4.25 bits) and the line below says what it costs against NVFP4 and INT4.
# (On the course model, whose weights are Q4_1 values, 16 evenly spaced levels per block of 32, an integer grid
# over the same blocks, INT4 asymmetric above all, has an edge that a bf16 model's weights do not give it.)

# %%
ratio_nv = err_by["NVFP4"] / err_by["INT4 g32 sym"]
ratio_mx = err_by["MXFP4"] / err_by["NVFP4"]
fp8_factor = min(v for k, v in err_by.items() if not k.startswith("FP8")) / err_by["FP8 E4M3 per-channel"]
print(f"error ratios: NVFP4 / INT4 g32 sym {ratio_nv:.2f}; MXFP4 / NVFP4 {ratio_mx:.2f}; "
      f"INT4 g32 asym / sym {err_by['INT4 g32 asym'] / err_by['INT4 g32 sym']:.2f}; "
      f"the lowest 4-bit error / FP8's {fp8_factor:.0f}")
session.claim(err_by["MXFP4"] > err_by["NVFP4"], "MXFP4's error is larger than NVFP4's on the same tensors")

# %% [markdown]
# ## 4. The scale's rounding rule
# How a group's `max` becomes a scale is a choice, and the tools differ (`microscaling.SCALE_ROUNDINGS`):
#
# * MXFP4 `floor` (OCP spec, ggml, gguf-py): `max/scale` in [4, 8): values above 6 x scale clip;
# * MXFP4 `round` (llm-compressor / compressed-tensors, vLLM's reference): one exponent higher when `max`'s mantissa
#   is >= 1.75, so only values in (6, 7) x scale clip;
# * MXFP4 `ceil`: nothing clips, but the step can be twice as coarse;
# * NVFP4 `nearest_even` (NVIDIA, llm-compressor), `up` (never clips), `ggml` (ggml's own UE4M3 rounding), and
#   NVFP4 without the per-tensor scale (GGUF's NVFP4 has none).

# %%
from quantedu.course.figures.fp4 import plot_scale_rounding

weights = {nm: model.get_submodule(nm).weight.detach().float() for nm in LAYERS}
rounding = ms.scale_rounding_effect(weights)
plot_scale_rounding(rounding)
plt.show()
mean_err = rounding.groupby(["format", "scale_rounding", "global_scale"])["rel_sq_error"].mean()
spread = {f: mean_err[f].max() / mean_err[f].min() - 1 for f in ("MXFP4", "NVFP4")}
order = " < ".join(r for (r, _), _ in mean_err["MXFP4"].sort_values().items())
print(f"MXFP4, mean error by rule: {order}; the rule moves it by up to {spread['MXFP4']:.0%}, NVFP4's by "
      f"{spread['NVFP4']:.0%}; MXFP4 / NVFP4 with their default rules: {ratio_mx:.2f}")
session.claim(spread["MXFP4"] < ratio_mx - 1, "MXFP4's rounding rule moves its error less than the format does")

# %% [markdown]
# **Takeaway:** the rule is a second-order effect next to the format (the line above compares both): `ceil` and
# `up` never clip but coarsen the step of many groups, `floor` clips the top of [6, 8) x scale, `round` sits
# between. Still, ggml writes `floor` and llm-compressor `round`: the same "MXFP4" checkpoint from two tools does
# not hold the same weights.

# %% [markdown]
# ## 5. GGUF files: predicted bytes, then llama.cpp
# llama.cpp has both formats: `MXFP4` (block of 32: 1 E8M0 byte + 16 bytes of codes = 17 bytes, 4.25 bits per
# weight) and `NVFP4` (64 weights: 4 UE4M3 scales + 32 bytes = 36 bytes, 4.5 bits; no per-tensor scale: so
# "NVFP4 (course)" below is GGUF's variant, not section 3's two-level one). It has
# no dense "MXFP4 mix" (`llama-quantize`'s `MXFP4_MOE` converts MoE experts only), so `gguf.fp4_files.fp4_gguf`
# writes every linear layer of the blocks in the FP4 type with the course's quantizers, the embedding in Q8_0
# (what the Q4 mixes give it on the course model) and norms in F32. Blocks of 32 and 64 divide the course model's
# rows of 576, so unlike K-quants (super-blocks of 256) nothing falls back there (the line below counts the
# fallbacks of this model). `quantedu.memory` predicts every tensor's bytes from its shape and type; the file must
# hold exactly those.

# %%
from gguf import GGUFReader
from quantedu.gguf.fp4_files import fp4_gguf

SPEC = {"F32": "fp32", "F16": "fp16"}  # quantedu.memory's names of the float types; GGUF block types by name
fp4_files = {}
for qtype in ["MXFP4", "NVFP4"]:
    f = fp4_files[qtype] = fp4_gguf(model, qtype)
    table_of_file = GGUFReader(f.path).tensors   # shape in GGUF order: row length first
    predicted = sum(memory.tensor_bytes(int(np.prod(t.shape[1:])), int(t.shape[0]),
                                        SPEC.get(t.tensor_type.name, t.tensor_type.name)) for t in table_of_file)
    in_file = sum(int(t.n_bytes) for t in table_of_file)
    assert predicted == in_file, (qtype, predicted, in_file)
    counts = pd.Series(f.types).value_counts().to_dict()
    print(f"{qtype}: tensors {counts}; {f.n_fallbacks} fallbacks; tensor bytes predicted {predicted / 2**20:.2f} MiB = "
          f"in the file; file {f.sizes['file_MiB']:.1f} MiB, {f.sizes['linear_bits_per_weight']:.3f} bits/weight "
          f"in the linear layers")

# %% [markdown]
# The same model in llama.cpp's integer 4-bit types, made by llama.cpp's own quantizer from the same source file.
# Q4_K_M asks for K-quants, which need rows that are multiples of 256: on the course model's rows of 576 most
# tensors fall back to a 32-block type, so there "Q4_K_M" is mostly not Q4_K. Rows of 576 matter only for the
# K-quants: the 32- and 64-blocks of Q4_0, IQ4_NL, MXFP4 and NVFP4 fit them. `gguf.mixes.mix_counts` says what each
# mix really gave this model's matrices:

# %%
from quantedu import artifacts
from quantedu.engines.llama_cpp import bindings, quality
from quantedu.gguf import mixes

src = session.gguf_source()

def mix_file(mix):
    if session.is_offline_file:
        return bindings.gguf_file(mix)
    key = artifacts.cache_key("gguf-08", src.name, src.stat().st_size, mix)
    return artifacts.cached_dir("gguf-08", key, lambda d: bindings.quantize_file(src, d / f"model.{mix}.gguf", mix),
                                meta={"mix": mix}) / f"model.{mix}.gguf"

cfg = model.config
infos = [mixes.TensorInfo(t.name, tuple(int(d) for d in t.shape), t.tensor_type) for t in GGUFReader(src).tensors]
for mix in MIXES:
    print(mixes.mix_counts(infos, mix, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads))
files = {**{f"{q} (course)": f.path for q, f in fp4_files.items()}, **{m: mix_file(m) for m in MIXES}}

# %% [markdown]
# Each file runs in llama.cpp (llama-cpp-python, one thread) on the session's windows; its logits are scored
# against the unquantized model's (`engines.llama_cpp.quality.measure`: KL divergence, same top token, perplexity
# with intervals, and decode speed).

# %%
from quantedu.course.views import plot_kld, quality_table

baseline = session.baseline(PURPOSE)
measured = {label: quality.measure(path, {PURPOSE: baseline}, label, n_threads=N_THREADS) for label, path in files.items()}
reports = [m.reports[PURPOSE] for m in measured.values()]
speed = pd.DataFrame([{"model": label, "MiB": m.sizes["file_MiB"], "linear bits/weight": m.sizes["linear_bits_per_weight"],
                       "tok/s": m.tokens_per_s} for label, m in measured.items()]).set_index("model")
table = quality_table(reports).join(speed.round({"MiB": 1, "linear bits/weight": 3, "tok/s": 0}))
table

# %%
plot_kld(reports, title=f"llama.cpp, per-token KLD from the {session.dtype_name} model ({baseline.tokens:,} tokens)")
plt.show()
from quantedu.course.views import decimals_for

def kld_verdict(a, b):
    """The rule's verdict on two reports' KLD (paired, token by token), its numbers rounded to their noise."""
    v = a.verdict(b, metric="kld")
    iv = v.interval
    d = decimals_for(iv.se)
    span = f"difference {iv.mean:+.{d}f} nats/token, 95% interval {iv.low:+.{d}f} to {iv.high:+.{d}f}, {iv.tokens:,} tokens"
    if v.tie:
        return f"{v.a} vs {v.b}: a tie at this much text ({span}); ~{float(f'{v.tokens_needed:.2g}'):,.0f} tokens would separate them"
    return f"{v.winner} is better than {v.b if v.winner == v.a else v.a} by KLD ({span})"

r = {rep.name: rep for rep in reports}
print(kld_verdict(r["NVFP4 (course)"], r["MXFP4 (course)"]))
print(kld_verdict(r["NVFP4 (course)"], r["Q4_0"]))

# %% [markdown]
# **Takeaway:** the curves are whole distributions of damage: a format whose curve sits to the right damages most
# tokens more, not just a few. The verdict lines are the course's one rule (paired, token by token); a "tie at this
# much text" says how many tokens it would take to separate the two.

# %% [markdown]
# ## 6. GPTQ on a floating-point grid
# GPTQ was written for integer grids (notebook 03). What would have to change for FP4?

# %%
quiz = Quiz.load("fp4", ids=["gptq-fp-grid"])
quiz.show()

# %% [markdown]
# GPTQ never looks inside its rounding: it rounds one column, measures the error and spreads it over
# the columns not yet rounded. Any grid with `choose(group) -> scale` and `round(column, scale)` works:
# `fp_grids.FP4Grid` and `FP8Grid` are those for FP4 and FP8. First, the quantity GPTQ minimizes, the layer's output
# error `tr(dW H dW^T) / tr(W H W^T)`, for RTN and GPTQ on every grid, with one Hessian `H` per layer from the same
# calibration tokens (enough of them: 2 x the widest layer input).

# %%
from quantedu import calibration
from quantedu.runtime import timed, torch_threads

calib = session.calibration(CALIB_SAMPLES, CALIB_LEN)
print(calibration.budget(model, calib))
GPTQ_LAYERS = LAYERS[2::3] if FAST else LAYERS
H = fp_grids.layer_hessians(model, calib, GPTQ_LAYERS)
with torch_threads(session.quant_threads):
    layer_cmp = fp_grids.grid_comparison({nm: weights[nm] for nm in GPTQ_LAYERS}, H)
gain = layer_cmp.groupby("grid", sort=False)["gptq_gain"].apply(lambda v: float(np.exp(np.log(v).mean())))
ax = gain.plot.barh(figsize=(6, 2.6), color="C2")
ax.set(xlabel="RTN error / GPTQ error (layer output, geometric mean)", ylabel="",
       title=f"what error feedback buys on each grid ({len(GPTQ_LAYERS)} layers)")
plt.show()
print(", ".join(f"{k}: {v:.2f}x" for k, v in gain.items()))
print(f"relative to INT4 g32 sym: MXFP4 {gain['MXFP4'] / gain['INT4 g32 sym']:.2f}, "
      f"NVFP4 {gain['NVFP4'] / gain['INT4 g32 sym']:.2f} (1 = the same share of the error removed)")

# %% [markdown]
# **Takeaway:** a bar above 1 is error GPTQ's feedback removed on that grid, from the same `H`: the last line puts
# each FP4 grid's share beside INT4 g32's (MXFP4's groups are 32 too; NVFP4's are 16). That answers section 6's
# question on the calibration data, layer by layer. On the whole model, with the same calibration for every run, GPTQ against RTN
# on the same grid, on the evaluation text ("eval", in the calibration's domain) and on held-out text
# ("heldout", the standard library's code):

# %%
import copy
from quantedu.gptq import gptq_quantize_model
from quantedu.rtn import replace_linear

GRIDS = fp_grids.default_grids()
gptq_reports, rtn_reports, seconds = {}, {}, {}
for label in GPTQ_FORMATS:
    rtn_model = copy.deepcopy(model)
    if label in ("MXFP4", "NVFP4"):
        cfg4 = getattr(ms, label)
        replace_linear(rtn_model, lambda w, name: ms.fake_quantize(w.float(), cfg4).to(w.dtype), progress=False)
    else:
        replace_linear(rtn_model, lambda w, name: fp_grids.rtn_on_grid(
            w.float(), GRIDS[label](w), 32).to(w.dtype), progress=False)
    rtn_reports[label] = {p: session.report(rtn_model, f"RTN {label}", p) for p in ("eval", "heldout")}
    del rtn_model
    gptq_model = copy.deepcopy(model)
    gconf = fp_grids.gptq_config(GRIDS[label](model.model.layers[0].mlp.down_proj.weight.float()))
    with torch_threads(session.quant_threads):
        _, seconds[label], _ = timed(lambda: gptq_quantize_model(gptq_model, calib, gconf, progress=False,
                                                                  grid=lambda W: GRIDS[label](W.float())))
    gptq_reports[label] = {p: session.report(gptq_model, f"GPTQ {label}", p) for p in ("eval", "heldout")}
    del gptq_model
display(quality_table([rep for lb in GPTQ_FORMATS for rep in (rtn_reports[lb]["eval"], gptq_reports[lb]["eval"])]))
quality_table([rep for lb in GPTQ_FORMATS for rep in (rtn_reports[lb]["heldout"], gptq_reports[lb]["heldout"])])

# %%
for label in GPTQ_FORMATS:
    print(f"{label}: GPTQ took {seconds[label]:.0f} s on {calib.numel():,} calibration tokens")
    for p in ("eval", "heldout"):
        print(f"  {p:8s} {kld_verdict(gptq_reports[label][p], rtn_reports[label][p])}")

# %% [markdown]
# The first table is on the evaluation text, the second on held-out text; the verdicts are the rule's, paired token
# by token: whether GPTQ's error feedback beat round-to-nearest on each FP4 grid, for the whole model. The
# layer-level bars above measure the calibration data itself. With `FAST = True` only MXFP4 runs here; notebook
# 03 runs GPTQ against RTN on INT4 for the whole model.

# %% [markdown]
# ## 7. Which hardware runs each format natively
# Not measured here (this machine is a CPU: llama.cpp and torch above *emulate* the formats, decoding to float32):
# what the vendors document. Your guess first:

# %%
quiz = Quiz.load("fp4", ids=["native-fp4"])
quiz.show()

# %% [markdown]
# | format | runs natively on | source |
# |---|---|---|
# | FP8 E4M3 / E5M2 | NVIDIA Hopper (H100, H200), Ada Lovelace (L4, L40S, RTX 40) and Blackwell tensor cores; AMD Instinct MI300 and MI350; Intel Gaudi 2/3 | NVIDIA H100 Tensor Core GPU Architecture whitepaper (2022, "Transformer Engine", FP8); NVIDIA Ada GPU Architecture whitepaper (2022); NVIDIA Blackwell architecture technical brief (2024); AMD CDNA 3 (2023) and CDNA 4 (2025) Architecture whitepapers |
# | MXFP4 (and MXFP6/MXFP8) | NVIDIA Blackwell (B200, GB200, RTX 50) tensor cores; AMD Instinct MI350/MI355X (CDNA 4) | OCP Microscaling Formats (MX) Specification v1.0 (2023); NVIDIA Blackwell architecture technical brief (2024); AMD CDNA 4 Architecture whitepaper (2025) |
# | NVFP4 | NVIDIA Blackwell only (5th-generation tensor cores) | NVIDIA technical blog "Introducing NVFP4 for Efficient and Accurate Low-Precision Inference" (2025); NVIDIA Blackwell technical brief |
# | INT4 weights (Q4_0, GPTQ/AWQ int4) | no 4-bit float unit needed: kernels unpack to fp16/bf16/int8 (Marlin, Machete, llama.cpp) on any GPU or CPU | notebooks 03-06 |
#
# On a GPU without native FP4 (Hopper, Ada) an FP4 checkpoint still runs, through kernels that unpack the weights
# in software (gpt-oss's MXFP4 experts run on H100 this way, per its model card): the memory saving stays, the
# FP4 tensor-core speed does not. An FP8 checkpoint on a pre-Hopper GPU (Ampere) likewise runs weight-only.

# %% [markdown]
# ## 8. Selecting a format
# What this lesson measured, as a note beside 07's selection guide (07's table re-measures the course's MXFP4 and
# NVFP4 files beside the K-quants, GPTQ and AWQ; it has no FP8 row: GGUF has no FP8 weight type, and vLLM's x86 CPU
# backend lists kernels only for AWQ, GPTQ and INT8 W8A8):
#
# * **FP8 (E4M3, one scale per channel, or DeepSeek-V3's 128 x 128 blocks where they divide the shapes)**: many
#   times less weight error than any 4-bit grid (section 3's ratio), at twice the bits; native on Hopper, Ada, Blackwell, MI300, MI350.
# * **NVFP4**: 16-weight groups with an E4M3 scale; the fast path on Blackwell. On a CPU or an older GPU nothing
#   runs it natively, and llama.cpp's integer 4-bit types of the same size are its peers: compare them on your
#   model with the KLD table of section 5, not by name.
# * **MXFP4**: the cheapest 4-bit layout (4.25 bits), the one OCP checkpoints (gpt-oss) ship in; its power-of-two
#   scale costs accuracy (section 3), and the tool that wrote the file (`floor` vs `round`) changes the weights.
# * GPTQ on an FP4 grid is the same algorithm as on INT4 (section 6): where calibration data is at hand, measure
#   it against RTN on your model.

# %%
from quantedu.course.views import plus_minus

print(f"measured here (llama.cpp, {baseline.tokens:,} tokens): bits/weight of the linear layers and mean KLD")
for label, m in measured.items():
    kld = m.reports[PURPOSE].kld
    print(f"  {label:15s} {m.sizes['linear_bits_per_weight']:.2f} bits, KLD {plus_minus(kld.mean, kld.se)}")
