# %% [markdown]
# # 07 · The comparison table, re-measured, and a selection guide
#
# Quantization guides like to end with one table: FP16 vs GPTQ-4bit vs AWQ-4bit vs GGUF Q4_K_M vs GGUF Q5_K_M, with
# memory, tokens/s, perplexity and quantization time, measured once on someone else's GPU and a 7B model. This
# notebook measures that table **here**, on the course model and your hardware, with the formats notebooks 08 and 09
# added (MXFP4 and NVFP4 in llama.cpp, SmoothQuant W8A8 in vLLM), then tests the post's five rules and builds a
# decision helper from what was measured, and nothing else.
#
# How each kind of number is measured:
#
# * **Quality, every row alike**: against this model's own baseline on the same 4 windows of 512 tokens (`"eval"`,
#   notebook 00): perplexity, its change in % with a 95% interval, mean **KL divergence** ± and **same top token** ±,
#   and the verdict of the one rule (`quantedu.verdict`: "better" only when the paired interval excludes zero).
#   llama.cpp rows use llama.cpp's own logits over the whole vocabulary; vLLM rows are explained where they are
#   measured.
# * **Speed only from a real kernel**, one thread per engine: llama.cpp for GGUF files, vLLM for its checkpoints.
#   Where no engine ran a format here, the cell says "n/a on this hardware".
# * **Memory**: the weights the engine loads.
#
# Everything is cached, so a second run takes seconds; the first takes a few minutes on a 2-core laptop.

# %% [markdown]
# ## Parameters
# `FAST = True` (a CPU) calibrates GPTQ, AWQ and the importance matrix on 12 sequences of 256 tokens: 3,072 tokens,
# twice the widest layer's 1,536 inputs (`down_proj`), the least the course accepts (notebook 03). `FAST = False` (a
# GPU) uses 64 x 512.

# %%
from quantedu.course import fast_default, parameter

MODEL = parameter("MODEL", "auto")  # or "smollm2-135m", a hub id, a local path (env: QUANTEDU_MODEL)
FAST = fast_default()              # True on a CPU, False on a GPU (env: QUANTEDU_FAST)
CALIB = (12, 256) if FAST else (64, 512)  # calibration: sequences x tokens (GPTQ, AWQ, imatrix alike)
GROUP = 64                                # 576-wide rows: 64 divides them, 128 does not

# %%
import math
import textwrap
import time

import matplotlib.pyplot as plt
from IPython.display import display

from quantedu import calibration
from quantedu.awq import AWQConfig
from quantedu.course import checkpoints, comparison, findings, guide, seed_check, start
from quantedu.course.figures import benchmark as figures
from quantedu.gptq import GPTQConfig

session = start(MODEL, verbose=False)
name = ("the CI test model (random weights)" if not session.real_model else
        "SmolLM2-135M-Instruct (the offline copy)" if session.is_offline_file else session.model_name)
print(f"model: {name}, {session.model.num_parameters() / 1e6:.0f}M parameters, {session.dtype_name} on "
      f"{session.device.type}; every row below is this model, quantized")
t_start = time.perf_counter()

# %% [markdown]
# ## 1. The llama.cpp rows
# llama.cpp's own quantizer makes each file from this model's GGUF (timed), then llama.cpp runs the baseline's very
# token windows with `logits_all=True`: its full next-token distribution at every position, turned into
# log-probabilities and compared with the baseline's in torch (`quantedu.engines.llama_cpp.quality.measure`).
# Decode speed: 64 tokens, one thread. Where llama.cpp's own tools are built, `llama-server -np 8` also serves 8
# requests at once.
# The first row is the baseline itself (KL divergence 0 by definition). Besides the post's Q4_K_M and Q5_K_M, one
# file for its "extreme compression" rule: IQ4_XS, quantized with an importance matrix (notebook 05) from the
# calibration tokens of section 2. Then the two FP4 files of notebook 08, written by the course's own quantizers
# (bytes equal to ggml's): MXFP4 and NVFP4 on every linear layer of the blocks (their blocks of 32 and 64 divide
# the rows of 576, so nothing falls back). Q4_K_M and IQ4_XS are also scored on the held-out text; 8 requests at
# once are timed for F16 and Q4_K_M (the post's CPU pick), the cells of the others say "not measured".

# %%
from quantedu.gguf.imatrix import compute_imatrix

t0 = time.perf_counter()
imatrix = compute_imatrix(session.model, session.calibration(*CALIB))
row = {"baseline": comparison.baseline_row(session)}
for mix in ("F16", "Q4_K_M", "Q5_K_M"):
    row[mix] = comparison.gguf_row(session, mix, heldout=mix == "Q4_K_M", many=mix != "Q5_K_M")
row["IQ4_XS"] = comparison.gguf_row(session, "IQ4_XS", imatrix, heldout=True, many=False)
for qtype in ("MXFP4", "NVFP4"):
    row[qtype] = comparison.fp4_row(session, qtype)
print(f"baseline and 6 GGUF rows: {time.perf_counter() - t0:.0f} s (cached after the first run)")

# %% [markdown]
# ## 2. GPTQ and AWQ, like with like
# Both get the **same calibration tokens**, the **same grid** (4 bits, asymmetric: a zero point per group, AWQ's
# usual grid) and the **same group size**, and each is timed on one thread. Both are written in the same
# checkpoint format (compressed-tensors, what llm-compressor writes), which vLLM serves with the same kernel, so
# the only difference left is the algorithm. AWQ scores its 20 candidate scales on the first 4 sequences
# (`search_samples`, its costly part); its statistics and its clipping search use all the tokens. A third run,
# GPTQ in activation order (the post's pick "for accuracy"), uses static groups: the form vLLM can serve.
#
# One more vLLM checkpoint quantizes the activations too (notebook 09): SmoothQuant (alpha 0.5, on the same
# calibration tokens) then W8A8, int8 weights per channel and int8 activations per token, which vLLM runs with its
# int8 CPU kernels. Twice the weight bits of the 4-bit rows: compare it with them on size, quality and speed.
#
# The checkpoints go to the cache (`quantedu.course.checkpoints`), keyed by model, settings and code: notebooks
# 03 and 04 with the same settings reuse them.

# %%
print(calibration.budget(session.model, session.calibration(*CALIB)))
configs = {"GPTQ": GPTQConfig(bits=4, group_size=GROUP, sym=False),
           "AWQ": AWQConfig(bits=4, group_size=GROUP, sym=False, search_samples=4),
           "act-order": GPTQConfig(bits=4, group_size=GROUP, sym=False, desc_act=True, static_groups=True)}
ckpt = {name: checkpoints.quantize(session, cfg, *CALIB) for name, cfg in configs.items()}
ckpt["W8A8"] = checkpoints.smoothquant_w8a8(session, 0.5, *CALIB)
for c in ckpt.values():
    print(f"{c.label}: {c.calibration}, {c.wall_s:.0f} s on {c.threads or 'all'} thread(s)")
row["BF16"] = comparison.dense_row(session)
for name, c in ckpt.items():
    row[name] = comparison.checkpoint_row(session, c, heldout=name in ("GPTQ", "AWQ"))
rows = list(row.values())

# %% [markdown]
# ## 3. vLLM serves them
# vLLM runs the unquantized model (bf16 on a CPU, fp16 on a GPU), the three 4-bit checkpoints and the W8A8 one with
# its own kernels: `CPUWNA16LinearKernel` and `CPUInt8ScaledMMLinearKernel` on this CPU, Marlin and CUTLASS's int8
# GEMM on a recent GPU. Its speed: one request, and 8 at once
# (continuous batching), one thread. A tiny checkpoint with dynamic act-order (`desc_act: true`, what the post
# recommends) asks vLLM whether it serves that form at all.
#
# **Its quality, honestly.** A KL divergence needs the whole next-token distribution, and vLLM returns only the
# top few log-probabilities of a prompt. So the KLD of a vLLM row is computed in torch **on the exact checkpoint vLLM
# serves** (read back from its files by the package's own reader), and vLLM's **own** log-probability of every
# scored token is checked against torch's on that checkpoint: their perplexities must agree within 1% (vLLM's bf16
# kernels against torch's fp32). A row outside it would say so. Without a vLLM environment (a Colab CPU runtime,
# `pip install quantedu` alone) these rows keep their torch quality and show "n/a on this hardware" for speed.

# %%
t0 = time.perf_counter()
served = comparison.add_vllm(rows, session)
if "missing" in served:
    print(f"vLLM: {served['missing']}\n  -> speed of the BF16, GPTQ, AWQ and W8A8 rows: {comparison.NA}")
else:
    print(f"vLLM {served['vllm']} on {served['device']}: {time.perf_counter() - t0:.0f} s (cached after the first run)")
    for r in rows:
        if r.served and "ppl_ratio" in r.served:
            print(f"  {r.variant:34s} {r.kernel:34s} vLLM vs torch perplexity {100 * r.served['ppl_ratio']:+.2f}% "
                  f"({'within' if r.served['ok'] else 'OUTSIDE'} {comparison.SERVED_TOLERANCE:.0%})")
    print(f"  dynamic act-order (desc_act: true): " + ("served" if served["act_order"]["served"] else
                                                        f"refused: {served['act_order']['why']}"))

# %% [markdown]
# ## 4. The table
# Quality columns first (rounded to what their noise allows; "verdict" is the rule against the baseline), then
# what the engine loads and how fast it ran.

# %%
shown = comparison.table(rows)
display(shown)

# %%
fig, ax = plt.subplots(figsize=(8, 4.2))
figures.plot_size_vs_kld(rows, ax=ax)
plt.show()

# %% [markdown]
# **Takeaway:** at about the same size, the formats differ in quality by much more than their error bars, and the
# hollow markers (the same files on the standard library's code instead of help pages) show which ones learned the
# calibration text: a calibrated row that rises more than its uncalibrated neighbours has fitted its calibration data.

# %%
hw = "gpu" if served.get("hardware") == "gpu" else "cpu"
fig, ax = plt.subplots(figsize=(8, 3.6))
figures.plot_speed(rows, hw, comparison.CLIENTS, ax=ax)
plt.show()
timed_rows = sorted([r for r in rows if math.isfinite(r.tok_s(hw))], key=lambda r: r.memory_mb)
print("one request, tok/s (median and range of 3 timings), smallest first:")
for r in timed_rows:
    print(f"   {r.variant:28s} {r.memory_mb:6.0f} MB  {comparison.speed_cell(r, hw, 1)}")


def clearly_slower(a, b):
    """a slower than b beyond the guide's 15% margin (guide.SPEED_TIE) and below b's slowest timing."""
    return a.tok_s(hw) < guide.SPEED_TIE * b.tok_s(hw) and max(a.tok_s_range(hw) or [a.tok_s(hw)]) < min(
        b.tok_s_range(hw) or [b.tok_s(hw)])


slower = [(a, b) for a in timed_rows for b in timed_rows if a.memory_mb < b.memory_mb and clearly_slower(a, b)]
print("smaller yet clearly slower: " + ("; ".join(f"{a.variant} vs {b.variant}" for a, b in slower)
                                        or "none: here fewer bytes never decoded slower"))

# %% [markdown]
# **Takeaway:** one request decodes by reading every weight once per token, so fewer bytes have less to read; but
# each engine's kernel reads its format at its own pace, and the lines above say whether size alone ordered the
# speeds here (a pair counts only beyond 15%, the noise of a shared machine, and outside both rows' repeated
# timings). With many requests at once, batching (vLLM's continuous batching, `llama-server`'s slots) multiplies
# throughput, and the ranking can change: ask how many users before picking an engine (notebook 06).

# %% [markdown]
# ## 5. Side by side with the post's numbers
# The post quoted an RTX 4090 table for a 7B model. Its numbers ship with the package (quoted, not measured).

# %%
seed = guide.seed_benchmark()
print(seed[["variant", "vram_gb", "gen_tok_s", "ppl", "quant_time", "model", "hardware"]].to_string(index=False))
print(f"({seed.source.iloc[0]})")

# %% [markdown]
# ## 6. What differs, and why
# Each reason below is computed from the rows (`quantedu.course.findings`); comparisons of quality go through the
# rule.

# %%
roles = {"baseline": row["baseline"], "f16": row["F16"], "q4_k_m": row["Q4_K_M"], "q5_k_m": row["Q5_K_M"],
         "iq4_xs": row["IQ4_XS"], "bf16": row["BF16"], "gptq": row["GPTQ"], "awq": row["AWQ"],
         "act_order": row["act-order"], "mxfp4": row["MXFP4"], "nvfp4": row["NVFP4"], "w8a8": row["W8A8"]}
measured = seed_check.Measured(roles, served, session.model)
budget = calibration.budget(session.model, session.calibration(*CALIB))
for line in findings.differences(measured, session.is_offline_file, comparison.SERVED_TOLERANCE, budget):
    print(textwrap.fill(line, 116, initial_indent="* ", subsequent_indent="  "))

# %% [markdown]
# ## 7. The post's five rules, tested here
# Each rule gets a verdict from this run: **holds here**, **does not hold here**, **a tie at this much text** (the
# verdict rule cannot separate what the post compares) or **cannot be tested here** (with the reason). A claim about
# a K-quant type is tested only on matrices that got that type.

# %%
for v in seed_check.rule_verdicts(measured).itertuples():
    print(f"\n{v.rule}. {v.situation} -> {v.advice}\n" + textwrap.fill(f"{v.verdict.upper()}: {v.evidence}", 116,
                                                                      initial_indent="   ", subsequent_indent="   "))

# %%
pairs = [(row["AWQ"], row["GPTQ"]), (row["act-order"], row["GPTQ"]), (row["Q5_K_M"], row["Q4_K_M"]),
         (row["IQ4_XS"], row["Q4_K_M"]), (row["NVFP4"], row["MXFP4"]), (row["W8A8"], row["GPTQ"])]
figures.plot_verdicts(rows, pairs)
plt.tight_layout()
plt.show()

# %% [markdown]
# **Takeaway:** every verdict above is one of these intervals. A bar that crosses zero is a tie at this much text,
# however far apart the two means look in the table; one that clears zero is a difference this text can show.

# %% [markdown]
# ### The post's three quiz questions, answered with this run's numbers

# %%
for qa in seed_check.quiz_answers(measured, configs["AWQ"]):
    print(f"Q: {qa['question']}\n" + textwrap.fill(f"the post: {qa['the post']}", 116, initial_indent="   ",
                                                  subsequent_indent="   ") + "\n" + textwrap.fill(
        f"measured: {qa['measured here']}", 116, initial_indent="   ", subsequent_indent="   ") + "\n")

# %% [markdown]
# ## 8. The decision helper
# `quantedu.course.guide.recommend` keeps the measured rows that fit your memory budget, whose perplexity change is
# *credibly* within your accuracy need (the upper end of its interval), that were **measured on your hardware with
# your number of users**; it ranks them by measured speed (within 15% is a tie), then by size. It recommends nothing
# it did not measure: for a GPU this run never saw, it points to the planner.

# %%
table = guide.frame(rows)
dense_mb = row["BF16"].memory_mb
for hw, users, mb, acc in [("cpu", "one", math.inf, "moderate"), ("cpu", "many", math.inf, "moderate"),
                           ("cpu", "one", 0.5 * dense_mb, "high"), ("gpu", "many", math.inf, "moderate")]:
    limit = "no memory limit" if mb == math.inf else f"memory budget {mb:.0f} MB"
    print(f"--- {hw.upper()}, {users} user{'s' * (users == 'many')}, {limit}, accuracy '{acc}'")
    print(guide.recommend(table, hw, users, mb, acc))

# %% [markdown]
# For a real GPU, the planner (`quantedu plan`, notebook 01's byte counts under tensor parallelism) says what fits
# before anything is measured. One GPU of 24 GB and a Llama-3.1-8B in 4-bit weights:

# %%
from quantedu.plan import plan

print("\n".join(str(plan("llama-3.1-8b", gpus=1, gpu_memory_gb=24, context=8192, batch=8)).splitlines()[:12]))

# %%
guide.decision_widget(table);

# %% [exercise 07.pick_format]
# %% [markdown]
# ## Final quiz
# Questions across the whole course; the measured ones use this run's numbers.

# %%
from quantedu.course.quiz import Quiz

q4, q5 = row["Q4_K_M"], row["Q5_K_M"]
kv = q5.report.verdict(q4.report, metric="kld")
cov = q4.coverage
ids = ["int4-bytes", "ptq-vs-qat", "gptq-core", "awq-core", "kquant-names", "fake-quant-speed", "pick-engine",
       "q5-vs-q4-tie" if kv.tie else "q5-vs-q4-called"]
quiz = Quiz.load("final", ids=ids, values={
    "q4_kld": q4.report.kld.mean, "q5_kld": q5.report.kld.mean, "tokens": kv.interval.tokens,
    "need": kv.tokens_needed, "winner": kv.winner or "", "fallback": cov["fell_back"], "n_matrices": cov["matrices"]})
if hw == "cpu" and "missing" not in served:  # the quiz's engine question rests on this measurement
    session.claim(q4.tok_s("cpu") > row["GPTQ"].tok_s("cpu"), "one request decodes faster in llama.cpp's Q4_K_M "
                  "than in vLLM's GPTQ kernel on this CPU")
quiz.show()

# %% [markdown]
# ## The re-measured table, for your notes
# The whole run took the seconds below (most of it only the first time: the rest comes from the cache).

# %%
print(f"{len(table)} rows measured; this run: {time.perf_counter() - t_start:.0f} s")
