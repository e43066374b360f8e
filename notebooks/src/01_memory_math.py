# %% [markdown]
# # 01 · Memory math
#
# How much memory does a model need? The usual answer, "parameters times bytes per parameter",
# is where we start; then we add what real deployments pay for: the scales and zero points of
# quantized formats, the embeddings that stay in 16 bits, the KV cache that grows with every token
# of context, and activations. Finally we check the predictions against bytes measured on the
# course model: tensors in memory and files on disk.

# %% [markdown]
# ## Parameters

# %%
from quantedu.course import parameter

MODEL = parameter("MODEL", "auto")  # or "smollm2-135m", a hub id, a local path (env: QUANTEDU_MODEL)
CONTEXT = 8192     # tokens of context for the KV cache
BATCH = 1          # sequences served at once
PREFILL_CHUNK = 512  # prompt tokens in one forward pass (llama.cpp's default batch): the activations' peak

# %% [markdown]
# The course model, loaded now: its shape joins the real 7-70B shapes in this notebook's pictures.

# %%
from quantedu.course import start

session = start(MODEL)
model = session.model

# %% [markdown]
# ## Number formats
# Every format trades range (how large a number it can hold) against resolution (how finely it
# cuts the numbers it holds). The table is computed: floats from `torch.finfo` and from raw bit
# patterns of each dtype (fp4 E2M1 has no torch dtype, so from its bit layout); integers are
# uniform grids whose step is set by a scale.

# %%
import pandas as pd
import torch
from quantedu import number_formats as formats

table = formats.formats_table()
shown = table[["bits", "max", "smallest_normal", "smallest_subnormal", "resolution_at_1", "decimal_digits"]]
shown.map(lambda v: f"{v:.4g}" if v == v else "-")  # 4 significant digits; "-" where a grid has no such number

# %% [markdown]
# **From scratch.** An 8-bit float E4M3 (`float8_e4m3fn`) has 1 sign, 4 exponent and 3 mantissa bits,
# exponent bias 7, and no infinities: only `S.1111.111` is NaN. Decoding all 256 bit patterns by hand
# gives its largest value and its spacing; torch's own dtype must agree.

# %%
import math


def decode_e4m3(byte: int) -> float:
    sign = -1.0 if byte >> 7 else 1.0
    exp, man = (byte >> 3) & 0xF, byte & 0x7
    if exp == 0xF and man == 0x7:
        return float("nan")
    if exp == 0:                                     # subnormal: no implicit leading 1
        return sign * (man / 8) * 2.0 ** (1 - 7)
    return sign * (1 + man / 8) * 2.0 ** (exp - 7)

by_hand = torch.tensor([decode_e4m3(b) for b in range(256)], dtype=torch.float64)
by_torch = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).to(torch.float64)
assert torch.equal(by_hand.nan_to_num(7e7), by_torch.nan_to_num(7e7))
finite = by_hand[torch.isfinite(by_hand)]
tiny = finite[finite > 0].min().item()
print(f"E4M3: max {finite.max().item():g}, smallest subnormal 2^{math.log2(tiny):.0f} = {tiny:.4g}, "
      f"{len(finite.unique())} distinct finite values")
assert finite.max().item() == table.loc["fp8_e4m3", "max"]

# %% [markdown]
# A float grid is dense near zero and sparse near its maximum (its steps grow with the exponent); an int4 grid
# is evenly spaced. Here are the positive halves of the fp8 E4M3, fp4 E2M1 and int4 grids, scaled so each tops
# out at 1.

# %%
import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(8, 2.2))
for y, name in enumerate(["int4", "fp4_e2m1", "fp8_e4m3"]):
    v = formats.representable_values(name)
    v = v[v >= 0] / v.max()
    ax.plot(v, [y] * len(v), "|", markersize=14)
ax.set_yticks([0, 1, 2], ["int4", "fp4 E2M1", "fp8 E4M3"])
ax.set_xlabel("value / largest value")
ax.set_title("where each format can put a number (positive half)")
plt.show()

# %% [markdown]
# ## The seed's table
# A popular comparison post (the "seed" this course answers) gives the classic back-of-the-envelope
# table of weight memory by bit width. Its figures are quoted, with their source, in the package's data
# (`quantedu/course/data/seed_memory.csv`); here they are, and the arithmetic that produces them:
# nominal parameters x bits / 8, in GB (10^9 bytes).

# %%
# NBVAL_CHECK_OUTPUT
import numpy as np

from quantedu import memory
from quantedu.course.seed import seed_csv

seed = seed_csv("seed_memory")                     # quoted, not measured
seed_mem = seed[seed.table == "memory"].pivot(index="model", columns="item", values="value")
naive = memory.naive_table()                       # parameters x bits / 8, in GB
seed_mem = seed_mem.loc[naive.index, naive.columns]
assert np.allclose(seed_mem.values, naive.values)  # the seed's table is exactly this arithmetic
print("the seed's table (GB), quoted:")
print(seed_mem.to_string(float_format=lambda x: f"{x:g}"))
print(f"source: {seed[seed.table == 'memory'].source.iloc[0]}")

# %% [markdown]
# It is right as arithmetic, and wrong as a plan, for three reasons that the rest of this notebook
# computes: (1) a "4-bit" checkpoint stores more than 4 bits per weight, (2) not every tensor is
# quantized, (3) weights are not the only thing in memory. Section 2 puts the corrected numbers next
# to the seed's.

# %% [markdown]
# ## 1. Bits per weight, overhead included
# **The one formula.** A group of `group_size` consecutive weights of a row shares one scale of
# `scale_bits` bits and, in an asymmetric format, one integer zero point of `zero_bits` bits. Each
# weight therefore costs
#
# $$\text{bits per weight} = \text{bits} + \frac{\text{scale bits} + \text{zero-point bits}}{\text{group size}} .$$
#
# GPTQ and AWQ checkpoints store an fp16 scale and pack the zero point at the weights' own width
# (`zero_bits = bits`); a symmetric compressed-tensors checkpoint stores no zero point
# (`zero_bits = 0`); a format that kept the zero point in fp16 would pay `zero_bits = 16`.
# `quantedu.memory.GroupFormat(bits, group_size, scale_bits, zero_bits).bits_per_weight()` is this
# formula, and every bits-per-weight figure in the course (notebooks and quizzes) comes from it.
#
# **Your turn first**: use the formula on one checkpoint before the next cell prints a table of them.

# %%
from quantedu.course.quiz import Quiz

quiz = Quiz.load("memory", ids=["bpw-int4-g128"],
                 values={"bpw_g32": memory.GroupFormat(4, 32).bits_per_weight()})
quiz.show()

# %%
# NBVAL_CHECK_OUTPUT
assert memory.GroupFormat(4, 128).bits_per_weight() == 4 + (16 + 4) / 128   # the formula, by hand once
zero_points = {"no zero point (sym)": 0, "4-bit zero (GPTQ/AWQ)": None, "fp16 zero": 16}
overhead = pd.DataFrame({f"int4, group {g}": {name: memory.GroupFormat(4, g, zero_bits=z).bits_per_weight()
                                             for name, z in zero_points.items()} for g in (32, 64, 128)}).T
print(overhead.to_string(float_format=lambda x: f"{x:.3f}"))
print(f"int8 per channel (one group per row): {memory.GroupFormat(8, None).bits_per_weight(cols=4096):.3f} "
      f"bits/weight at 4096 columns")

# %% [markdown]
# GGUF formats are fixed-size blocks. Their bits per weight follow from the block structs of
# ggml-common.h (`quantedu.gguf.layouts` lists their fields). Before the next cell prints the fields of two of
# them, a guess at the second. The list after them includes the two 4-bit *float* types of 2025-26 (MXFP4: E2M1
# codes with a power-of-two scale per 32; NVFP4: an E4M3 scale per 16), which notebook 08 builds from their bits.

# %%
quiz = Quiz.load("memory", ids=["gguf-q4k"])
quiz.show()

# %%
# NBVAL_CHECK_OUTPUT
from quantedu.gguf.layouts import layout

for name in ("Q4_0", "Q4_K"):
    lay = layout(name)
    fields = ", ".join(f"{f.name}: {f.nbytes} B" for f in lay.fields)
    print(f"{name}: block of {lay.block_size} weights = {fields} -> {lay.type_size} B = "
          f"{8 * lay.type_size / lay.block_size:.4f} bits/weight")
gguf_bpw = pd.Series({n: memory.bits_per_weight(n) for n in ("Q8_0", "Q6_K", "Q5_K", "Q4_K", "Q4_1", "Q4_0",
                                                            "IQ4_XS", "MXFP4", "NVFP4", "Q3_K", "Q2_K")},
                     name="bits/weight")
print(gguf_bpw.to_string(float_format=lambda x: f"{x:.4g}"))

# %% [markdown]
# The seed also lists bits per weight of GGUF types. Next to what their block structs give
# (`Q4_K_M` and `Q5_K_M` are not block types but *mixes* of types chosen per tensor, so their average
# depends on the model: notebook 05 measures it on this one):

# %%
seed_gguf = seed[seed.table == "gguf_bits"].set_index("item")["value"]
gguf_check = pd.DataFrame({"seed says": seed_gguf,
                           "block layout": [memory.bits_per_weight(t) if "_K_" not in t else np.nan for t in seed_gguf.index]})
gguf_check["difference"] = gguf_check["seed says"] - gguf_check["block layout"]
print(gguf_check.to_string(float_format=lambda x: f"{x:.4g}", na_rep="a mix (notebook 05)"))
q8 = layout("Q8_0")
print(f"Q8_0 is not 8 bits per weight: a block holds {q8.block_size} one-byte codes and an fp16 scale, "
      f"{q8.type_size} bytes = {8 * q8.type_size / q8.block_size:g} bits per weight.")

# %% [exercise 01.weight_bytes]
# %% [markdown]
# ## 2 and 3. A real "4-bit" 7B, and the KV cache
# To predict the next token, attention looks at every earlier token's key and value vectors. Recomputing
# them for every new token would cost a forward pass over the whole context, so a server keeps them: the
# **KV cache**, one key and one value vector per KV head, per layer, per token of every sequence it serves.
# It grows with context and batch, not with the weights. With grouped-query attention (GQA, Llama-2-70B,
# Llama-3) several query heads share one KV head, and only the KV heads are cached.
#
# Write it yourself first:

# %% [exercise 01.kv_cache]
# %% [markdown]
# With your function (or by hand), one published shape, before the package prints it:

# %%
llama7 = memory.model_shape("llama-2-7b")
quiz = Quiz.load("memory", ids=["kv-7b-4k"],
                 values={"w4_gib": memory.weight_bytes(llama7, "int4-g128")["total"] / 2**30})
quiz.show()

# %% [markdown]
# The package's version, on real published shapes (`quantedu.memory.PRESETS`, from each model's
# config.json):

# %%
# NBVAL_CHECK_OUTPUT
print(f"llama-2-7b: {memory.kv_bytes_per_token(llama7) / 2**20:.3f} MiB of fp16 KV cache per token; "
      f"{memory.kv_cache_bytes(llama7, CONTEXT) / 2**30:.2f} GiB at {CONTEXT} tokens x batch 1")
for name in ("llama-2-13b", "llama-3-8b", "llama-2-70b"):
    s = memory.model_shape(name)
    print(f"{name}: {s.heads} query heads share {s.kv_heads} KV heads -> "
          f"{memory.kv_cache_bytes(s, CONTEXT) / 2**30:.2f} GiB at {CONTEXT} tokens")

# %% [markdown]
# The cache need not stay in fp16. llama.cpp can store K and V in the 32-value blocks of its weight types
# (`-ctk q8_0 -ctv q8_0`: 34 bytes per 32 values; `q4_0`: 18), and the same formula, with each type's bytes per
# row, predicts what it allocates. Notebook 09 checks the prediction against llama.cpp's own report and
# measures what each type costs in quality.

# %%
from quantedu.engines.llama_cpp.kv_cache import kv_cache_type_bytes

print(f"llama-2-7b, KV cache at {CONTEXT} tokens x batch 1, by llama.cpp cache type:")
for k, v in [("f16", "f16"), ("q8_0", "q8_0"), ("q8_0", "q4_0"), ("q4_0", "q4_0")]:
    print(f"   K {k:4s} / V {v:4s} {kv_cache_type_bytes(llama7, CONTEXT, k, v)['total'] / 2**30:5.2f} GiB")

# %% [markdown]
# ### The seed's table, corrected
# The same four rows for real models of those sizes (Llama-2-7B and Llama-2-70B, their published
# shapes): the linear layers in each format with its overhead (INT8 per channel, INT4 in groups of
# 128 with fp16 scales and 4-bit zeros), embeddings and head in fp16 (fp32 in the FP32 row), and the
# fp16 KV cache of `CONTEXT` tokens x `BATCH` sequences on top. In GB (10^9 bytes), as the seed. The INT8 row is
# also what a W8A8 checkpoint stores (notebook 09): quantizing the activations too changes no weight byte.

# %%
specs = {"FP32": "fp32", "FP16": "fp16", "INT8": "int8-channel", "INT4": "int4-g128"}
fixed = []
for label, preset in (("7B", "llama-2-7b"), ("70B", "llama-2-70b")):
    s = memory.model_shape(preset)
    kv = memory.kv_cache_bytes(s, CONTEXT, BATCH)
    for prec, spec in specs.items():
        w = memory.weight_bytes(s, spec, embed_spec="fp32" if spec == "fp32" else "fp16")
        fixed.append({"model": f"{label} ({preset})", "format": prec, "seed GB": seed_mem.loc[label, prec],
                      "linear bits/weight": 8 * w["linear"] / s.params()["linear"],
                      "weights GB": w["total"] / 1e9, "+ KV cache GB": kv / 1e9,
                      "total GB": (w["total"] + kv) / 1e9})
fixed = pd.DataFrame(fixed).set_index(["model", "format"])
fixed["total / seed"] = fixed["total GB"] / fixed["seed GB"]
fixed.round(3)

# %%
r7 = fixed.xs("INT4", level="format").iloc[0]
w16 = fixed.xs("FP16", level="format").iloc[0]["weights GB"]
claim = seed[seed.item == "FP16->INT4"].value.iloc[0]
print(f"INT4 7B: the seed says {r7['seed GB']:g} GB. Llama-2-7B's linear layers cost {r7['linear bits/weight']:.3f} bits per "
      f"weight, not 4; with its fp16 embedding and head the weights are {r7['weights GB']:.2f} GB, and serving {CONTEXT} "
      f"tokens adds {r7['+ KV cache GB']:.2f} GB of KV cache: {r7['total GB']:.2f} GB, {r7['total / seed']:.1f}x the seed's figure.")
print(f"'FP16 -> INT4 saves about {claim:g}x': the weights shrink {w16 / r7['weights GB']:.2f}x, the memory with the KV cache "
      f"{fixed.xs('FP16', level='format').iloc[0]['total GB'] / r7['total GB']:.2f}x.")
print(f"(GB here; in GiB, what memory tools report, every figure is {1e9 / 2**30:.3f} times as large: "
      f"{1 - 1e9 / 2**30:.0%} smaller.)")

# %% [markdown]
# ### Where a model's bytes go
# Weights, KV cache and activations, for the loaded model and for real 7-70B shapes, serving `CONTEXT`
# tokens x `BATCH` sequences. Activations are the peak of the largest step, a prefill chunk of
# `PREFILL_CHUNK` prompt tokens in one pass; a one-token decode step needs far less. Each bar is one
# model in one format, split into shares of its total, which is written at its end.

# %%
import matplotlib.pyplot as plt
import torch

from quantedu.course.figures.memory import bytes_by_part, plot_where_bytes_go

import dataclasses

shape = dataclasses.replace(memory.model_shape(model), name=session.label)
# the model is in memory in its session dtype (fp32 on a CPU, bf16/fp16 on a GPU)
in_memory = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[session.dtype]
rows = {f"{session.label}, {in_memory} (as loaded)": bytes_by_part(shape, in_memory, CONTEXT, BATCH, PREFILL_CHUNK,
                                                                  embed_spec=in_memory),
        f"{session.label}, int4-g128": bytes_by_part(shape, "int4-g128", CONTEXT, BATCH, PREFILL_CHUNK)}
for name, spec in (("llama-2-7b", "fp16"), ("llama-2-7b", "int4-g128"), ("llama-2-13b", "int4-g128"),
                   ("llama-3-8b", "int4-g128"), ("llama-2-70b", "int4-g128")):
    rows[f"{name}, {spec}"] = bytes_by_part(name, spec, CONTEXT, BATCH, PREFILL_CHUNK)
plot_where_bytes_go(rows, title=f"where the bytes go: {CONTEXT} tokens of context x batch {BATCH}")
plt.show()
kv_small = rows[f"{session.label}, int4-g128"]
print(f"{session.label} in int4: KV cache {kv_small['KV cache'] / 2**20:.0f} MiB against "
      f"{(kv_small['linear weights'] + kv_small['embeddings + head + norms']) / 2**20:.0f} MiB of weights")

# %% [markdown]
# **Takeaway:** quantizing the weights shrinks one part of the bar. At long context the KV cache can take a
# large share of what is left, and the models without GQA (Llama-2-7B and 13B) pay more cache per
# token than those with it: Llama-2-7B four times Llama-3-8B's, at the same width and depth (32 KV heads
# against 8). The KV cache needs its own plan (a shorter context, fewer sequences, a quantized cache).

# %% [markdown]
# ## Predicted vs measured on the course model
# Now the course model: first the prediction, from its config alone.

# %%
print(shape)
pred_mem = memory.weight_bytes(shape, in_memory, embed_spec=in_memory)
print(f"in {in_memory}:", {k: f"{v / 2**20:.2f} MiB" for k, v in pred_mem.items()})

# %% [markdown]
# Measured: the bytes of every parameter tensor in memory (a tied head shares the embedding's
# storage, so it is counted once), then the size of checkpoint files written to disk.

# %%
import tempfile
from pathlib import Path

from safetensors.torch import save_file

measured = memory.measured_tensor_bytes(model)
print(f"parameters in memory: measured {measured['parameters']:,} B, predicted {int(pred_mem['total']):,} B "
      f"(buffers such as RoPE frequencies: {measured['buffers']:,} B)")
assert measured["parameters"] == pred_mem["total"]

tmp = Path(tempfile.mkdtemp())
state16 = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()
           if not (shape.tied and k == "lm_head.weight")}
save_file(state16, tmp / "fp16.safetensors")
pred16 = memory.weight_bytes(shape, "fp16")["total"]
size16 = (tmp / "fp16.safetensors").stat().st_size
print(f"fp16 safetensors file: {size16:,} B; predicted tensors {int(pred16):,} B; "
      f"the other {size16 - pred16:,.0f} B are the JSON header")

# %% [markdown]
# A real 4-bit checkpoint: every linear layer packed in the GPTQ layout (int32 words of eight 4-bit
# codes, fp16 scales, packed zero points), groups of 128, embeddings and norms in fp16. Where a row's
# length is not a multiple of 128, its last group is shorter and still pays a whole scale and zero
# (`GroupFormat.bits_per_weight(cols)` counts it so); the cell prints this model's case.

# %%
from quantedu.export.write import gptq_state_dict
from quantedu.primitives import QuantConfig
from quantedu.rtn import rtn_layers

cfg4 = QuantConfig(bits=4, group_size=128)
packed = gptq_state_dict(model, rtn_layers(model, cfg4), cfg4, checkpoint_format="gptq_v2", dtype=torch.float16)
save_file(packed, tmp / "int4-g128.safetensors")
size4 = (tmp / "int4-g128.safetensors").stat().st_size
pred4 = memory.weight_bytes(shape, "int4-g128")
tensors4 = sum(t.numel() * t.element_size() for t in packed.values())
# A GPTQ checkpoint also stores g_idx, the group of every input column (int32): not a weight, but bytes.
g_idx4 = sum(t.numel() * t.element_size() for k, t in packed.items() if k.endswith(".g_idx"))
assert tensors4 == pred4["total"] + g_idx4
print(f"g_idx maps: {g_idx4:,} B ({g_idx4 / tensors4:.2%} of the tensors)")
naive4 = memory.naive_bytes(shape.n_params(), 4)
print(f"int4-g128 file: {size4 / 2**20:.2f} MiB; predicted {pred4['total'] / 2**20:.2f} MiB "
      f"(linear layers {pred4['linear'] / 2**20:.2f} MiB, embedding {pred4['embedding'] / 2**20:.2f} MiB); "
      f"naive 'params x 4 bits' {naive4 / 2**20:.2f} MiB")
print(f"in this small model the fp16 embedding is {pred4['embedding'] / pred4['total']:.0%} of the 4-bit checkpoint")
ragged = shape.hidden % 128
print(f"rows of {shape.hidden} columns: {shape.hidden // 128} groups of 128" + (f" + one of {ragged}" if ragged else "")
      + f" -> {memory.GroupFormat(4, 128).bits_per_weight(cols=shape.hidden):.4f} bits/weight "
      f"(whole groups: {memory.GroupFormat(4, 128).bits_per_weight():.4f})")

# %% [markdown]
# ### One model, three "4-bit" sizes
# The course prints three sizes for a 4-bit checkpoint of this model: the file above (this notebook),
# notebook 03's saved checkpoint and notebook 07's GPTQ/AWQ rows. They count different things, in different
# units. The cell below writes the checkpoint 03 and 07 write (compressed-tensors, 4 bits, groups of 64,
# asymmetric: a 4-bit zero point per group, here with RTN codes, which take the same bytes as GPTQ's or AWQ's)
# and counts it both ways:
#
# * **MiB or MB**: a MiB is 2^20 bytes, an MB 10^6 bytes;
# * **group size**: 03 and 07 use groups of 64 (they divide this model's rows; 128 does not), twice the
#   scales of 128;
# * **which dtype the other tensors take**: 03 saves in the session's dtype (fp32 on a CPU: the embedding and
#   the scales at 4 bytes a number) and counts the tensors of its file; 07 counts the tensors vLLM loads
#   (floats cast to 16 bits, the packed integers as stored).

# %%
from quantedu.export.read import loaded_bytes
from quantedu.export.write import save_compressed_tensors

cfg64 = QuantConfig(bits=4, group_size=64, symmetric=False)   # the grid of 03's and 07's checkpoints
ct64 = save_compressed_tensors(model, rtn_layers(model, cfg64), cfg64, tmp / "w4-asym-g64")
tensors_03 = loaded_bytes(ct64, str(session.dtype).removeprefix("torch."))  # what 03's "saved ... MB" adds up
tensors_07 = loaded_bytes(ct64, "bfloat16")                                  # what 07's rows count
asym64 = memory.GroupFormat(4, 64, scale_bits=torch.finfo(session.dtype).bits)  # 4-bit zeros, scales in that dtype
predicted_03 = memory.weight_bytes(shape, asym64, embed_spec=in_memory)["total"]
sizes = pd.DataFrame([
    {"notebook": "01 (this file)", "format": "GPTQ layout, int4 g128", "other tensors": "fp16",
     "counts": "the .safetensors file", "bytes": size4},
    {"notebook": "like 03's saved", "format": "compressed-tensors, int4 g64 asym", "other tensors": in_memory,
     "counts": "tensors in the file", "bytes": tensors_03},
    {"notebook": "like 07's rows", "format": "compressed-tensors, int4 g64 asym", "other tensors": "bf16",
     "counts": "tensors vLLM loads", "bytes": tensors_07},
]).set_index("notebook")
sizes["MiB (2^20 B)"] = (sizes["bytes"] / 2**20).round(1)
sizes["MB (10^6 B)"] = (sizes["bytes"] / 1e6).round(1)
display(sizes.drop(columns="bytes"))
by_group = {g: memory.weight_bytes(shape, memory.GroupFormat(4, g))["linear"] for g in (64, 128)}
embed = {d: memory.tensor_bytes(shape.vocab, shape.hidden, d) for d in (in_memory, "fp16")}
print(f"03's tensors predicted by the formula: {predicted_03 / 1e6:.1f} MB, measured {tensors_03 / 1e6:.1f} MB (the "
      f"file adds {tensors_03 - predicted_03:,.0f} bytes:\ncompressed-tensors' 16-byte shape record per layer). "
      f"1 MiB = {2**20 / 1e6:.4f} MB.\nGroups of 64 instead of 128: {(by_group[64] - by_group[128]) / 1e6:.1f} MB more "
      f"scales and zero points. The embedding in {in_memory} instead of 16 bits: "
      f"{(embed[in_memory] - embed['fp16']) / 1e6:.1f} MB more.")
assert abs(tensors_03 - predicted_03) < 1e-3 * tensors_03

# %% [markdown]
# The shipped GGUF file of the offline model, predicted from block layouts and checked tensor by
# tensor against the file's own byte counts. (Which types it holds says something about the model we
# call our fp32 baseline.)

# %%
from quantedu.models import ModelError, offline_gguf_path

try:
    g = memory.gguf_file_bytes(offline_gguf_path())
    print(f"{offline_gguf_path().name}: {g['file']:,} B = tensors {g['tensors']:,} B (by type: "
          + ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in g["by_type"].items())
          + f") + metadata and alignment {g['metadata + alignment']:,} B (tokenizer vocabulary, merges, config)")
except ModelError as exc:
    print(f"offline GGUF not installed: {exc}")

# %% [markdown]
# One tensor of the file is not Q4_1. llama.cpp's quantizer (`llama_tensor_get_type` in
# `src/llama-quant.cpp`, read in the copy that llama-cpp-python 0.3.36 vendors) raises the **output**
# tensor above the mix: to Q6_K, or to Q8_0 when its rows are not a multiple of 256 (Q6_K's block). A
# `token_embd` that is *tied* to the output is the output, so it gets the same treatment; an untied
# `token_embd` keeps the mix's type (only the lowest-bit IQ mixes change it). Which case this file is:

# %%
import gguf

try:
    tensors = {t.name: t for t in gguf.GGUFReader(offline_gguf_path()).tensors}
    embd = tensors["token_embd.weight"]
    tied, cols = "output.weight" not in tensors, int(embd.shape[0])
    rule = "Q6_K" if cols % 256 == 0 else "Q8_0"
    print(f"token_embd.weight: {embd.tensor_type.name}, rows of {cols} values; "
          + ("no output.weight: the embedding is tied and serves as the output, "
             f"so the rule gives {rule} ({cols} % 256 = {cols % 256})" if tied else "an untied embedding: the mix's type"))
    if tied:
        assert embd.tensor_type.name == rule
except ModelError as exc:
    print(f"offline GGUF not installed: {exc}")

# %% [markdown]
# **The KV cache, measured.** On a GPU the allocator shows what a prefill leaves allocated; on a CPU there is no
# comparable counter, so the cell only predicts there (a 16-bit cache, as engines keep it; a model run in fp32
# keeps twice that).

# %%
kv_pred = memory.kv_cache_bytes(shape, CONTEXT, BATCH)
print(f"predicted 16-bit KV cache at {CONTEXT} tokens x batch {BATCH}: {kv_pred / 2**20:.1f} MiB "
      f"({memory.kv_bytes_per_token(shape):,.0f} B per token)")
if torch.cuda.is_available() and session.on_gpu:
    from transformers import DynamicCache

    ids = torch.randint(0, shape.vocab, (BATCH, 2048), device=session.device)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    with torch.no_grad():
        cache = DynamicCache()
        model(ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
    kv_measured = torch.cuda.memory_allocated() - base
    dtype_bits = 8 * next(model.parameters()).element_size()
    print(f"after a 2048-token prefill: {kv_measured / 2**20:.1f} MiB still allocated; predicted KV cache "
          f"{memory.kv_cache_bytes(shape, 2048, BATCH, dtype_bits) / 2**20:.1f} MiB")
else:
    print("no GPU: skipping the measured KV-cache allocation")

# %% [markdown]
# ## Interactive calculator
# Pick a real model shape and move the sliders: its linear layers at the chosen bits and group size (fp16
# scale and zero per group, fp16 embeddings), the KV cache at that context, batch and width, and the
# activations of one decoding step.

# %%
from quantedu.course import views as memory_view

memory_view.calculator()

# %% [markdown]
# The calculator draws what this plain function returns; for example Llama-2-13B at 3 bits, group 64,
# 32k context, batch 4 (40 query heads, each with its own KV head: no GQA):

# %%
# NBVAL_CHECK_OUTPUT
shape13 = memory.model_shape("llama-2-13b")
fp = memory.footprint(shape13, memory.GroupFormat(3, 64), context=32768, batch=4)
print(shape13)
for part, nbytes in fp.items():
    print(f"{part:>26}: {nbytes / 2**30:7.3f} GiB")
print(f"{'total':>26}: {sum(fp.values()) / 2**30:7.3f} GiB")

# %% [markdown]
# ## Quiz

# %%
w7 = memory.weight_bytes(llama7, "int4-g128")
quiz = Quiz.load("memory", ids=["gqa", "naive-table-misses", "tied-embedding"], values={
    "g128_over": memory.GroupFormat(4, 128).bits_per_weight() - 4,
    "embed_head_gib": (w7["embedding"] + w7["lm_head"]) / 2**30,
    "embed_head_naive_gib": memory.naive_bytes(llama7.params()["embedding"] + llama7.params()["lm_head"], 4) / 2**30,
    "kv_mib_per_token": memory.kv_bytes_per_token(llama7) / 2**20})
quiz.show()
