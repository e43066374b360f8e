# %% [markdown]
# # 07 · The comparison table, re-measured, and a selection guide
#
# Quantization guides like to end with one table: FP16 vs GPTQ-4bit vs AWQ-4bit vs GGUF Q4_K_M vs
# GGUF Q5_K_M, with memory, tokens/s, perplexity and quantization time, usually measured once on
# someone else's GPU and a 7B model. This notebook measures that table **here**, on the course model and
# your hardware, every cell from a real run, and then turns it into a decision helper.
#
# Two rules for the numbers:
#
# * **tokens/s only from a real kernel**: llama.cpp for the GGUF files, **vLLM** for FP16, GPTQ and AWQ (its
#   CPU backend on this machine, `make vllm`; its CUDA kernels on a GPU). A GPTQ/AWQ model with dequantized
#   weights in transformers runs ordinary fp32 matmuls, so its speed says nothing about the format: a cell
#   reads "n/a on this hardware" only where no engine could run that format here.
# * memory: the GGUF file for llama.cpp; the weights vLLM loads for FP16, GPTQ and AWQ.
# * perplexity, memory and quantization time come from the same runs and are cached, so a second run of
#   the notebook takes seconds.

# %% [markdown]
# ## Parameters
# `FAST = True` calibrates GPTQ and AWQ on a few short sequences (minutes on a busy 2-core CPU);
# `FAST = False` uses 32 x 512 tokens, the usual setting.

# %%
from quantedu.course import fast_default, parameter

MODEL = parameter("MODEL", "auto")  # or "smollm2-135m", a hub id, a local path (env: QUANTEDU_MODEL)
FAST = fast_default()              # True on a CPU, False on a GPU (env: QUANTEDU_FAST)
N_WINDOWS, SEQ_LEN = 4, 512                      # perplexity: windows x tokens of the evaluation text
CALIB = (4, 256) if FAST else (32, 512)          # GPTQ/AWQ calibration: samples x tokens
GROUP_SIZE = 64                                  # 576-wide rows: 64 divides them, 128 does not

# %%
import math
import time

import matplotlib.pyplot as plt
import pandas as pd

from quantedu.course import comparison, guide
from quantedu.engines import vllm
from quantedu.engines.llama_cpp import bindings as llama
from quantedu.course import start
from quantedu.data import evaluation_text
from quantedu.gguf.io import contents

session = start(MODEL)
text = evaluation_text(session.corpus)
GGUF_SRC = session.gguf_source()  # every row is this one model: llama.cpp's files start from its GGUF
print(f"model: {session.model.name_or_path} ({session.dtype_name}); GGUF source: {GGUF_SRC.name}")

# %% [markdown]
# ## One check before the table
# The GGUF rows measure perplexity with llama.cpp's logits, the GPTQ/AWQ rows with transformers. Both
# must give the same number for the same weights: the model in transformers against its F16 GGUF file in
# llama.cpp.

# %%
ppl_hf, ppl_llama = comparison.fp16_agreement(session, text, N_WINDOWS, SEQ_LEN)
print(f"transformers {session.dtype_name}: {ppl_hf:.4f}   llama.cpp F16: {ppl_llama:.4f}   "
      f"difference {100 * abs(ppl_llama / ppl_hf - 1):.3f}%")
assert abs(ppl_llama / ppl_hf - 1) < 0.01

# %% [markdown]
# ## The measurements
# GGUF rows: llama.cpp's quantizer makes the file from the model's GGUF (timed), then llama.cpp
# measures perplexity and decode speed (1 thread). GPTQ/AWQ rows: the course's own implementations
# (notebooks 03 and 04), 4 bits, groups of 64, exported in fp16 to the formats vLLM loads.

# %%
t0 = time.perf_counter()
rows = [comparison.gguf_row(mix, text, N_WINDOWS, SEQ_LEN, src=GGUF_SRC) for mix in ("F16", "Q4_K_M", "Q5_K_M")]
print(f"GGUF rows: {time.perf_counter() - t0:.0f} s (cached after the first run)")

# %%
t0 = time.perf_counter()
for method in ("gptq", "awq"):
    row = comparison.torch_row(method, session, n_samples=CALIB[0], seq_len=CALIB[1], group_size=GROUP_SIZE,
                               n_windows=N_WINDOWS, eval_len=SEQ_LEN)
    print(f"{row['label']}: calibrated on {row['calibration']}, export in {row['export']}")
    rows.append(row)
print(f"GPTQ/AWQ rows: {time.perf_counter() - t0:.0f} s (cached after the first run)")

# %% [markdown]
# ## Tokens/s and memory from vLLM
# vLLM serves the FP16 model and the two exports (GPTQ v1, AutoAWQ GEMM) with its real kernels: on this CPU
# `CPUWNA16LinearKernel` for the 4-bit weights (bf16 activations), on an Ampere+ GPU Marlin. Each row: one
# vLLM server, one warm-up request, then 4 single requests of 64 tokens; the median decode speed is the
# row's tokens/s (on a CPU bound to **1 thread**, like the llama.cpp rows). Memory is the weights vLLM
# loads: its own "Model loading took" figure where it prints one (GPU), else the checkpoint's tensors in the
# dtype it serves (packed 4-bit words + bf16 scales and embeddings). Cached after the first run.

# %%
try:
    VLLM = vllm.probe()
except vllm.MissingVLLMError as exc:
    VLLM = None
    print(f"Skipped: {exc}\nFP16/GPTQ/AWQ tokens/s stay 'n/a on this hardware'.")
if VLLM:
    t0 = time.perf_counter()
    comparison.add_vllm(rows, session)
    print(f"vLLM {VLLM['vllm']} on {VLLM['device']}: {time.perf_counter() - t0:.0f} s (cached after the first run)")
    for r in rows:
        if r.get("engine") == "vllm":
            speed = r.get("cpu_tok_s") if VLLM["device"] == "cpu" else r.get("gpu_tok_s")
            print(f"  {r['variant']:10s} {r['kernel']:24s} {speed:6.1f} tokens/s, {r['memory_mb']:6.1f} MB loaded")
    fp16 = next(r for r in rows if r["variant"] == "FP16")
    print(f"  (llama.cpp's F16 file: {fp16['llama_cpp_tok_s']:.1f} tokens/s, {fp16['llama_cpp_mb']:.1f} MB)")

# %%
table = comparison.table(rows)
comparison.display_table(table)

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
for _, r in table.iterrows():
    axes[0].scatter(r.memory_mb, r.ppl, s=60)
    axes[0].annotate(r.variant, (r.memory_mb, r.ppl), textcoords="offset points", xytext=(5, 5), fontsize=8)
axes[0].set(xlabel="weights (MB)", ylabel="perplexity (lower is better)", title="memory vs quality")
speed = table.dropna(subset=["cpu_tok_s"])
engines = [f"{v} ({e})" for v, e in zip(speed.variant, speed.get("engine", ["?"] * len(speed)))]
axes[1].barh(engines, speed.cpu_tok_s)
axes[1].set(xlabel="decode tokens/s (1 thread)", title="speed with a real kernel on this CPU")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Side by side with the original course's numbers
# The original course text quoted an RTX 4090 table for a 7B model. Those numbers ship with the package
# (a column `source` says they are quoted, not measured); here they are next to ours.

# %%
seed = guide.seed_benchmark()
print(seed.to_string(index=False))

# %% [markdown]
# ## What differs, and why
# The next cell puts numbers on the reasons; they are computed from the table above.

# %%
import torch

from quantedu import memory
from quantedu.gguf import mixes

by = table.set_index("variant")
fp16 = by.loc["FP16"]
q4 = by.loc["GGUF Q4_K_M"]
cfg = session.model.config
shape = memory.model_shape(session.model)
seed7 = memory.model_shape("llama-2-7b")  # the seed's "7B": the same ratio on a 7B shape, computed
embed_mb = cfg.vocab_size * cfg.hidden_size * 2 / 1e6
q4_7b = memory.weight_bytes(seed7, "Q4_K", embed_spec="fp16")["total"] / memory.weight_bytes(seed7, "fp16")["total"]
print(f"* Model size: {shape.n_params() / 1e6:.0f}M parameters instead of the seed's 7B. FP16 weights are "
      f"{fp16.memory_mb:.0f} MB, and the token embedding alone ({cfg.vocab_size} x {cfg.hidden_size}) is "
      f"{embed_mb:.0f} MB of them in fp16. A 4-bit file keeps {q4.memory_mb / fp16.memory_mb:.0%} of the FP16 "
      f"size here; on Llama-2-7B's shape Q4_K weights with an fp16 embedding keep {q4_7b:.0%}: embeddings and "
      f"norms weigh more in a small model.")
f16_llama = fp16.get("llama_cpp_tok_s")
f16_llama = fp16.cpu_tok_s if f16_llama is None or f16_llama != f16_llama else f16_llama
hardware = torch.cuda.get_device_name() if torch.cuda.is_available() else "one CPU thread per engine"
print(f"* Hardware: {hardware} here, an RTX 4090 in the seed. In llama.cpp Q4_K_M decodes at {q4.cpu_tok_s:.0f} "
      f"tokens/s vs {f16_llama:.0f} for F16: x{q4.cpu_tok_s / f16_llama:.2f}. Decode reads every weight "
      f"once per token, so fewer bytes per weight help, but each type's kernel has its own cost too.")
if by.get("engine") is not None and (by.engine == "vllm").any():
    g, a = by.loc["GPTQ-4bit"], by.loc["AWQ-4bit"]
    print(f"* In vLLM (1 thread): FP16 {fp16.cpu_tok_s:.0f}, GPTQ {g.cpu_tok_s:.0f}, AWQ {a.cpu_tok_s:.0f} tokens/s "
          f"with kernels {g.kernel} / {a.kernel}; weights loaded {fp16.memory_mb:.0f} / {g.memory_mb:.0f} / "
          f"{a.memory_mb:.0f} MB.")
q5 = by.loc["GGUF Q5_K_M"]
print(f"* Baseline: Q4_K_M perplexity {q4.ppl:.2f} vs FP16 {fp16.ppl:.2f} (+{100 * (q4.ppl / fp16.ppl - 1):.1f}%), "
      f"Q5_K_M {q5.ppl:.2f}: " + ("Q5_K_M is worse than Q4_K_M here. " if q5.ppl > q4.ppl else "") +
      ("The offline model's weights were already Q4_1, and no K-quant lines up with that grid, so more bits need "
       "not mean a smaller error." if session.is_offline_file else "the weights are this model's own."))
types = contents(llama.gguf_file("Q4_K_M")).type_counts().tensors.to_dict() if session.is_offline_file else {}
not256 = [n for n in (cfg.hidden_size, cfg.intermediate_size) if n % 256]
print(f"* Row widths {cfg.hidden_size} / {cfg.intermediate_size}: "
      + (f"{' and '.join(map(str, not256))} not a multiple of 256, so llama.cpp falls back from K-quants for "
         "those tensors" if not256 else "multiples of 256, so every tensor gets its K-quant")
      + (f". Tensors per type inside the 'Q4_K_M' file: {types} (notebook 05)." if types else "."))
print(f"* GPTQ/AWQ calibrated on {CALIB[0]} x {CALIB[1]} tokens (FAST={FAST}); quantization times "
      f"(GPTQ {by.loc['GPTQ-4bit'].quant_s:.0f} s, AWQ {by.loc['AWQ-4bit'].quant_s:.0f} s, llama.cpp "
      f"{q4.quant_s:.0f} s) are from a shared 2-core CPU, not a GPU: compare them with each other only.")

# %% [markdown]
# ## Five common rules of thumb, tested on this table
# Guides usually end with recommendations like these. Each verdict below is computed from the table, so
# it can change with the model, the hardware or `FAST`.

# %%
gptq, awq, q5 = by.loc["GPTQ-4bit"], by.loc["AWQ-4bit"], by.loc["GGUF Q5_K_M"]
rules = [
    ("On a CPU, serve GGUF with llama.cpp (GPTQ/AWQ need a GPU kernel)",
     guide.recommend(table, "cpu", accuracy="any").engine == "llama.cpp",
     "no GPTQ/AWQ kernel ran on this CPU" if table[table.format.isin(["gptq", "awq"])].cpu_tok_s.isna().all()
     else f"the advice, yes (Q4_K_M in llama.cpp {q4.cpu_tok_s:.0f} tokens/s); its reason, no: vLLM's CPU kernels "
          f"ran GPTQ at {gptq.cpu_tok_s:.0f} and AWQ at {awq.cpu_tok_s:.0f} tokens/s (1 thread each)"),
    ("Q4_K_M keeps quality close to FP16 (within 10% perplexity) at under half the memory",
     q4.ppl / fp16.ppl - 1 <= 0.10 and q4.memory_mb < 0.5 * fp16.memory_mb,
     f"+{100 * (q4.ppl / fp16.ppl - 1):.1f}% perplexity, {q4.memory_mb / fp16.memory_mb:.0%} of the memory"),
    ("Q5_K_M is more accurate than Q4_K_M, for a little more memory",
     q5.ppl < q4.ppl and q5.memory_mb > q4.memory_mb,
     f"Q5_K_M {q5.ppl:.2f} vs Q4_K_M {q4.ppl:.2f}, {q5.memory_mb:.0f} vs {q4.memory_mb:.0f} MB"),
    ("AWQ is more accurate than GPTQ at 4 bits",
     awq.ppl < gptq.ppl, f"AWQ {awq.ppl:.2f} ({awq.get('label', '?')}) vs GPTQ {gptq.ppl:.2f} ({gptq.get('label', '?')})"
     + ("; not like with like: the grids differ, see notebook 04 for both on one grid"
        if str(awq.get("label", "")).split()[2:3] != str(gptq.get("label", "")).split()[2:3] else "")),
    ("AWQ quantizes faster than GPTQ",
     awq.quant_s < gptq.quant_s, f"AWQ {awq.quant_s:.0f} s vs GPTQ {gptq.quant_s:.0f} s"),
]
verdicts = pd.DataFrame([{"rule": r, "holds here": "yes" if ok else "NO", "evidence": e} for r, ok, e in rules])
print(verdicts.to_string(index=False))

# %% [markdown]
# Where a rule fails, look for one of the reasons above: the Q4_1 baseline (orderings of GGUF types can
# invert), tiny calibration sets (`FAST`), or the CPU (AWQ's grid search runs many more forward passes
# than GPTQ's single pass per block, which a GPU hides and a 2-core CPU does not).
#
# ## The comparison post's selection guide, rule by rule
# The post this course answers ends with five rules (quoted in `data/seed_rules.csv`). Each one below gets a
# verdict computed by `quantedu.course.seed_check` from this run's measurements: **holds here**, **does not hold
# here** (with the number), or **cannot be tested here** (with the reason). Two rules need rows the table
# lacks, measured now with the table's settings: GPTQ in activation order (`desc_act=True`, the post's pick
# "for accuracy") and IQ4_XS quantized with an importance matrix (`compute_imatrix`, notebook 05), beside Q2_K
# with the same imatrix, the smallest file llama.cpp makes. A perplexity is called lower only when it is lower
# on both halves of the evaluation text, where the rows have halves (the GPTQ/AWQ rows).

# %%
from quantedu.course import seed_check
from quantedu.engines import vllm_probe
from quantedu.gguf.imatrix import compute_imatrix

t0 = time.perf_counter()
act_order = comparison.torch_row("gptq", session, n_samples=CALIB[0], seq_len=CALIB[1], group_size=GROUP_SIZE,
                                 n_windows=N_WINDOWS, eval_len=SEQ_LEN, desc_act=True)
imatrix = compute_imatrix(session.model, session.calibration(*CALIB))
im_rows = [comparison.gguf_row(mix, text, N_WINDOWS, SEQ_LEN, src=GGUF_SRC, imatrix=imatrix) for mix in ("IQ4_XS", "Q2_K")]
formats = vllm_probe.served_formats(VLLM["python"], VLLM) if VLLM else None
print(f"extra rows: {time.perf_counter() - t0:.0f} s (cached after the first run)")
for r in [act_order, *im_rows]:
    print(f"  {r['variant']:22s} {r['memory_mb']:6.1f} MB  perplexity {r['ppl']:.2f}")
measured = seed_check.Measured(table, act_order, tuple(im_rows), formats, VLLM["device"] if VLLM else None,
                               shape=session.model)
verdicts = seed_check.rule_verdicts(measured)
for v in verdicts.itertuples():
    print(f"\n{v.rule}. {v.situation} -> {v.advice}\n   {v.verdict.upper()}: {v.evidence}")

# %% [markdown]
# ### The post's three quiz questions, answered with this run's numbers

# %%
for qa in seed_check.quiz_answers(measured):
    print(f"Q: {qa['question']}\n   the post: {qa['the post']}\n   measured: {qa['measured here']}\n")

# %% [markdown]
# ## The decision helper
# `quantedu.course.guide.recommend` filters the measured rows by what the hardware and engine can run, your
# memory budget and the perplexity increase you accept, and ranks the rest by measured speed, then
# accuracy, then size. The widget below calls the same function.

# %%
for hw, budget, acc in [("cpu", math.inf, "high"), ("cpu", 0.6 * fp16.memory_mb, "moderate"),
                        ("gpu", 0.6 * fp16.memory_mb, "moderate"), ("cpu", 10, "any")]:
    print(f"--- hardware={hw}, memory budget={budget:.0f} MB, accuracy={acc}")
    print(guide.recommend(table, hw, budget, acc))

# %%
guide.decision_widget(table);

# %% [exercise 07.pick_format]
# %% [markdown]
# ## Final quiz
# Questions across the whole course.

# %%
from quantedu.course.quiz import Quiz

infos = mixes.shape_tensor_infos(shape)
plan = mixes.assign_types(infos, "Q4_K_M", shape.layers, shape.heads, shape.kv_heads)
matrices = [i for i in infos if i.name.startswith("blk.") and len(i.shape) == 2]
quiz = Quiz.load("final", values={"q4_ppl": q4.ppl, "q5_ppl": q5.ppl, "fp16_ppl": fp16.ppl, "hidden": cfg.hidden_size,
                                  "fallback": sum(not plan[i.name].name.endswith("_K") for i in matrices),
                                  "n_matrices": len(matrices)})
quiz.show()

# %% [markdown]
# ## The re-measured table
# For the record (and for your notes): the table this run measured.

# %%
print(comparison.display_table(table).to_string())
