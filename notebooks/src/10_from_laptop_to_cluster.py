# %% [markdown]
# # 10 · From the laptop to the cluster
#
# The course so far quantized a 135M model on a laptop CPU. This closing lesson takes what it taught to the
# models people deploy, Llama-3.1-8B on one GPU or a 70B on four, in three steps:
#
# 1. **a plan**: what each GPU holds (weights, KV cache, activations) under vLLM's tensor parallelism or
#    llama.cpp's layer split, whether it fits and, when it does not, why; every byte from notebook 01's
#    formula;
# 2. **a recipe**: the files that do the job with the maintained tools: an llm-compressor script that
#    quantizes the checkpoint, the `vllm serve` command that serves it, the llama.cpp commands for the GGUF
#    path, and an `openai` client; every flag checked against the pinned tools' own `--help`;
# 3. **proof on the small scale**: the same recipe written for the small model and its llama.cpp path run
#    here, start to finish, with the memory llama.cpp reports set against the plan.

# %% [markdown]
# ## Parameters
# `TARGET`, `SCHEME`, `GPUS`, `GPU_MEMORY_GB`, `CONTEXT` and `BATCH` describe the deployment you plan (a
# preset shape, a hub id named like one, or a `config.json` path); `MODEL` is the small model the recipe
# runs on here.

# %%
from quantedu.course import parameter

MODEL = parameter("MODEL", "auto")  # the model the recipe runs on here (env: QUANTEDU_MODEL)
TARGET = "llama-3.1-8b"             # or "llama-3.1-70b", "llama-2-13b", a config.json path
SCHEME = "w4a16"                    # fp16, bf16, w8a8, fp8, w4a16[-g64], nvfp4a16, or a GGUF mix (Q4_K_M)
GPUS = 1
GPU_MEMORY_GB = 24                  # memory of one GPU, read as GiB (an H100 "80GB" reports 79.6 GiB)
CONTEXT = 8192                      # tokens per sequence
BATCH = 4                           # sequences served at once

# %% [markdown]
# ## 1. What one GPU holds under tensor parallelism
# `vllm serve --tensor-parallel-size N` puts a slice of **every** layer on each of N GPUs, and the GPUs
# exchange partial results twice per layer. Which way a matrix is cut decides what each GPU stores:
#
# * `q_proj`, `k_proj`, `v_proj`, `gate_proj`, `up_proj` are **column-parallel**: their output rows split,
#   so each GPU computes whole attention heads and a slice of the MLP width;
# * `o_proj`, `down_proj` are **row-parallel**: their input columns split, each GPU adds its partial sums
#   into the others' (an all-reduce);
# * the embedding and the LM head are **vocab-parallel**: the vocabulary is padded to a multiple of 64 rows,
#   then split; the norms are small and **replicated**;
# * with fewer KV heads than GPUs, a GPU cannot hold a fraction of a head: each keeps one whole KV head,
#   replicated.
#
# So one GPU holds a Llama with `heads/N` heads and `intermediate/N` MLP width. Write it.

# %% [exercise 10.rank_weights]
# %% [markdown]
# The package's version is `quantedu.plan.rank_shape` (it also refuses what vLLM refuses), and the plan's
# bytes are notebook 01's `memory.weight_bytes` of that one-GPU shape. By hand once, for the target:

# %%
# NBVAL_CHECK_OUTPUT
from dataclasses import replace

from quantedu import memory
from quantedu import plan as planner

GIB = memory.GIB
shape = planner.resolve(TARGET)[0]
by_hand = replace(shape, heads=shape.heads // 4, kv_heads=max(1, shape.kv_heads // 4),
                  intermediate=shape.intermediate // 4, vocab=-(-shape.vocab // 64) * 64 // 4)
p4 = planner.plan(TARGET, gpus=4, gpu_memory_gb=GPU_MEMORY_GB, context=CONTEXT, batch=BATCH, scheme="bf16")
assert by_hand == replace(planner.rank_shape(shape, 4), name=shape.name)
assert memory.weight_bytes(by_hand, "bf16", embed_spec="bf16")["total"] == p4.per_gpu["weights"]
whole = memory.weight_bytes(shape, "bf16")["total"]
extra = p4.per_gpu["weights"] - whole / 4
print(f"{TARGET} in bf16: {whole / GIB:.2f} GiB in all; on each of 4 GPUs {p4.per_gpu['weights'] / GIB:.2f} GiB, "
      f"a quarter plus {extra / 2**20:.2f} MiB (the norms, copied to every GPU, and any padding of the vocabulary)")

# %% [markdown]
# ## 2. The plan
# `quantedu.plan.plan(...)` (on the command line: `quantedu plan TARGET --gpus N --gpu-memory GB --context T
# --batch B --scheme S`) adds the KV cache of `CONTEXT` x `BATCH` tokens on that GPU, vLLM's activation
# workspace (an estimate: its profiling run of 2048 or 8192 tokens), the largest context that fits, and the
# GPU memory llm-compressor needs to calibrate. The budget is 90% of the GPU (vLLM's default
# `--gpu-memory-utilization`).

# %%
p = planner.plan(TARGET, gpus=GPUS, gpu_memory_gb=GPU_MEMORY_GB, context=CONTEXT, batch=BATCH, scheme=SCHEME)
print(p)

# %% [markdown]
# Change the values in the form to plan your own deployment (it prints the same plan, shorter). Run
# headless, the form starts at the parameters above.

# %%
from quantedu.course.figures import plan as plan_figures


def show_plan(**choice):
    try:
        q = planner.plan(**{"model_or_shape": choice.pop("model"), **choice})
    except ValueError as exc:  # a split vLLM refuses, a group that does not divide a width
        print(f"refused: {exc}")
        return
    print(f"{'fits' if q.fits else 'does NOT fit'}: {q.reason}")
    print("per GPU: " + ", ".join(f"{k} {v / GIB:.2f} GiB" for k, v in q.per_gpu.items())
          + f"; largest context at batch {q.batch}: {q.max_context} tokens")


plan_figures.plan_form(show_plan, model=TARGET, scheme=SCHEME, gpus=GPUS, gpu_memory_gb=GPU_MEMORY_GB,
                       context=CONTEXT, batch=BATCH)

# %% [markdown]
# **Predict first.** The 70B in W4A16 will not fit one 24 GiB GPU. Before the figure shows why:

# %%
from quantedu.course.quiz import Quiz

p70_1 = planner.plan("llama-3.1-70b", gpus=1, gpu_memory_gb=24, context=CONTEXT, batch=BATCH, scheme="w4a16")
p70_4x24 = planner.plan("llama-3.1-70b", gpus=4, gpu_memory_gb=24, context=CONTEXT, batch=BATCH, scheme="w4a16")
quiz = Quiz.load("cluster", ids=["fit-70b-1x24"], values={"w70_tp1": p70_1.per_gpu["weights"] / GIB,
                                                          "budget24": p70_1.budget / GIB,
                                                          "w70_4x24": p70_4x24.per_gpu["weights"] / GIB})
quiz.show()

# %% [markdown]
# ### What fits where
# The same question for a few deployments: the 8B in bf16 and W4A16 on one 24 GiB GPU, the 70B in W4A16 on
# one such GPU, its GGUF Q4_K_M split by llama.cpp over two and four of them, and W4A16 / bf16 on four
# 80 GiB GPUs. Each bar is the most loaded GPU; the black tick is what it may use.

# %%
import matplotlib.pyplot as plt

CHOICES = [("llama-3.1-8b", "bf16", 1, 24), ("llama-3.1-8b", "w4a16", 1, 24), ("llama-3.1-70b", "w4a16", 1, 24),
           ("llama-3.1-70b", "Q4_K_M", 2, 24), ("llama-3.1-70b", "Q4_K_M", 4, 24),
           ("llama-3.1-70b", "w4a16", 4, 80), ("llama-3.1-70b", "bf16", 4, 80)]
plans = [planner.plan(m, scheme=s, gpus=n, gpu_memory_gb=g, context=CONTEXT, batch=BATCH) for m, s, n, g in CHOICES]
ax = plan_figures.plot_plans(plans)
ax.set_title(f"memory per GPU at {CONTEXT} tokens x {BATCH} sequences")
plt.show()
for q in plans:
    if not q.fits:
        print(f"{plan_figures.label(q).replace(chr(10), ' on ')}: {q.reason}\n")

# %% [markdown]
# **Takeaway:** a plan fails for one of two reasons, and they have different cures. When the weights alone
# overflow (the 70B on one GPU), only fewer bytes per GPU help: more GPUs or fewer bits. When the KV cache
# overflows (Q4_K_M on two GPUs), a shorter context, fewer sequences, a quantized KV cache (q8_0 in llama.cpp,
# fp8 in vLLM) or more GPUs help; the reason printed under the figure names the engine's own flags.

# %% [markdown]
# ### Refused splits
# The plan is asked to put the course model on two GPUs. What will it answer?

# %%
quiz = Quiz.load("cluster", ids=["tp2-course"])
quiz.show()

# %%
# NBVAL_CHECK_OUTPUT
try:
    planner.plan("smollm2-135m", gpus=2)
except planner.PlanError as exc:
    refusal = str(exc)
    print(refusal)

# %% [markdown]
# ### GPUs buy KV-cache room
# Splitting over more GPUs divides the weights on each one, and what is freed holds KV cache, which is
# split too. Sequences of `CONTEXT` tokens that fit beside the 70B's weights, by number of 80 GiB GPUs:

# %%
rows = {s: [planner.plan("llama-3.1-70b", scheme=s, gpus=n, gpu_memory_gb=80, context=CONTEXT, batch=1)
            for n in (1, 2, 4, 8)] for s in ("bf16", "fp8", "w4a16")}
ax = plan_figures.plot_sequences_per_tp(rows)
ax.set_title("Llama-3.1-70B: concurrent sequences that fit, by GPUs")
plt.show()
fit = {s: [plan_figures.sequences_that_fit(q) for q in qs] for s, qs in rows.items()}
print("sequences that fit on 1, 2, 4, 8 GPUs: " + "; ".join(f"{s} {v}" for s, v in fit.items()))

# %% [markdown]
# **Takeaway:** in bf16 the 70B needs two 80 GiB GPUs just to load; from there each doubling of GPUs more
# than doubles the sequences served, because the weights each GPU carries halve too. Quantizing the weights
# lets the model load on fewer GPUs and leaves more of each for the KV cache, but at half the GPUs it does not
# serve as many sequences as bf16 on twice as many (the line above).

# %% [markdown]
# ### Calibrating a 70B on one GPU
# llm-compressor's sequential pipeline keeps the model in CPU memory and moves one decoder layer at a time to
# the GPU with the calibration activations; GPTQ adds a float32 Hessian per linear layer (notebook 03). So
# the GPU that calibrates a 70B needs far less than the 70B:

# %%
p70 = planner.plan("llama-3.1-70b", gpus=4, gpu_memory_gb=80, context=CONTEXT, batch=BATCH, scheme="w4a16")
c = p70.calibration
n, length = c["samples"]
print(f"Llama-3.1-70B, GPTQ, {n} x {length} calibration tokens: GPU peak {c['peak'] / GIB:.1f} GiB "
      f"({'fits' if c['peak'] <= p70.budget else 'does not fit'} one 80 GiB GPU), host RAM {c['host'] / GIB:.0f} GiB")
for part, b in c["parts"].items():
    print(f"  {part:32s}{b / GIB:6.2f} GiB")

# %% [markdown]
# ## 3. The recipe
# `quantedu.recipes.recipe(...)` checks a choice against the model's shape and the engines' rules (AWQ with
# an activation scheme, a group that does not divide a width, more GPUs than heads allow: each refused with
# what to do), and `recipes.write` puts the files in a folder, atomically. Here the 70B on four 80 GiB GPUs;
# on the command line: `quantedu recipe meta-llama/Llama-3.1-70B-Instruct --gpus 4 --gpu-memory 80 --out DIR`.

# %%
from quantedu import artifacts, recipes

r70 = recipes.recipe("llama-3.1-70b", method="gptq", gpus=4, gpu_memory_gb=80, context=CONTEXT, batch=BATCH)
folder70 = artifacts.kind_dir("recipes") / r70.save_name
written = recipes.write(r70, folder70)
print(f"written into the course cache, recipes/{r70.save_name}/:")
for name, path in written.items():
    print(f"  {name:16s}{path.stat().st_size:7d} bytes")
print("\n" + (folder70 / "serve_vllm.sh").read_text().splitlines()[-1])

# %% [markdown]
# `recipes.write` never writes over what you made: a folder that quantedu did not create is refused, and
# nothing in it changes.

# %%
import shutil
import tempfile
from pathlib import Path

mine = Path(tempfile.mkdtemp()) / "my-recipe"
mine.mkdir()
(mine / "notes.md").write_text("my notes")
try:
    recipes.write(r70, mine)
except artifacts.TargetExistsError as exc:
    print("refused: " + str(exc).replace(str(mine.resolve()), "my-recipe"))
assert (mine / "notes.md").read_text() == "my notes" and sorted(p.name for p in mine.iterdir()) == ["notes.md"]
shutil.rmtree(mine.parent)

# %% [markdown]
# ### Every flag exists in the pinned tools
# Each command of the recipe, checked against its tool's own `--help` (vLLM's `vllm serve`, `hf download`,
# llama.cpp's converter, `llama-imatrix`, `llama-quantize`, `llama-server`, as this course installs them;
# the texts are cached per tool version). A flag that a tool does not list would show here.

# %%
import pandas as pd

from quantedu.engines import recipe_check

commands = {"vllm serve": recipes.vllm_serve_command(r70), **recipes.gguf_commands(r70)}
commands.pop("calibration text")  # the written quantize.py's own option (its --help lists it)
checked = []
for step, cmd in commands.items():
    try:
        unknown = ", ".join(recipe_check.unknown_flags(cmd)) or "none"
    except Exception as exc:  # noqa: BLE001 - a tool not installed here: say which, check the others
        unknown = f"not checked: {str(exc).splitlines()[0][:60]}"
    checked.append({"step": step, "flags": " ".join(recipe_check.flags(cmd)), "unknown to the tool": unknown})
pd.DataFrame(checked).set_index("step")

# %% [markdown]
# ## 4. The recipe, run on the small model
# The same writer, for the small model on one GPU, and its llama.cpp path run here with the tools the course
# built: convert to an f16 GGUF, make the calibration text with the written `quantize.py`, an importance
# matrix from it, `llama-quantize` to Q4_K_M, then `llama-server` and the written `client.py`. First, what
# two GPUs would do with this model:

# %%
from quantedu.course import no_bars
from quantedu.engines import llama_cpp as lt
from quantedu.recipes import local

tools = lt.status()
if not tools["ok"]:  # e.g. on Colab: the rest of this section needs llama.cpp's tools
    raise SystemExit(f"llama.cpp's tools are not built here: {tools['why']}")
with no_bars():  # the first run converts the course model once (transformers draws bars)
    source = local.source_checkpoint(MODEL)
try:
    recipes.recipe(str(source), method="gptq", group_size=64, dataset="pydoc", n_samples=12, seq_len=256, gpus=2,
                   gpu_memory_gb=24, context=1024, batch=2)
    print("two GPUs: accepted (this model's heads divide by 2)")
except planner.PlanError as exc:
    print(f"two GPUs: refused. {str(exc).split(' (vLLM')[0]}")

# %%
import subprocess
import sys

from quantedu.engines.procs import free_port

small = recipes.recipe(str(source), method="gptq", group_size=64, dataset="pydoc", n_samples=12, seq_len=256,
                       gpus=1, gpu_memory_gb=24, context=1024, batch=2, gguf_mix="Q4_K_M")
folder = artifacts.kind_dir("recipes") / f"{small.save_name}-here"
recipes.write(small, folder)
steps = recipes.gguf_commands(small, port=free_port())
seconds = local.run_gguf(steps, folder)
gguf_file = folder / steps["quantize"][4]
print(f"{gguf_file.name}: {gguf_file.stat().st_size / 2**20:.1f} MiB; " +
      ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()))

# %% [markdown]
# Served by the recipe's own `llama-server` command (one thread on this shared CPU), the recipe's
# `client.py` talks to it, and llama.cpp's own account of its buffers meets the plan's for one GPU:

# %%
small_plan = planner.plan(small.model, scheme="Q4_K_M", gpus=1, gpu_memory_gb=24, context=small.context,
                          batch=small.batch)
with local.llama_server(steps, folder) as server:
    reply = subprocess.run([sys.executable, str(folder / "client.py"), f"{server.base_url}/v1"],
                           capture_output=True, text=True, timeout=300)
    reported = local.reported_buffers(server.log_tail(400))
assert reply.returncode == 0, reply.stderr[-1000:]
*answer, usage = reply.stdout.strip().splitlines()  # the reply, then "[model: N tokens, finish_reason=...]"
print(f"client.py got: {' '.join(' '.join(answer).split())[:150]!r}")
print(f"  {usage.rsplit(': ', 1)[1].rstrip(']')}")
compare = pd.DataFrame({"plan (MiB)": {k: small_plan.per_gpu[k] / 2**20 for k in ("weights", "KV cache")},
                        "llama.cpp reports (MiB)": {k: reported[k] / 2**20 for k in ("weights", "KV cache")}})
gap = (compare.iloc[:, 0] - compare.iloc[:, 1]).abs().max()
print(compare.round(2).to_string())
print(f"largest gap: {gap:.3f} MiB ({'the plan is llama.cpp' + chr(39) + 's own count' if gap < 0.01 else 'they differ'})")
print(f"compute buffer: llama.cpp {reported['compute'] / 2**20:.1f} MiB, the plan's activation estimate "
      f"{small_plan.per_gpu['activations'] / 2**20:.1f} MiB")

# %% [markdown]
# On a CPU every tensor sits in one mapped buffer, so the weights include the token embedding; on GPUs the
# plan leaves that embedding in host RAM, as llama.cpp does. The compute buffer is where the activation
# estimate is rough: llama.cpp sizes it for its worst graph.
#
# **The llm-compressor + vLLM path** is not run in this notebook: quantizing with GPTQ on this 2-core CPU and
# starting vLLM take minutes beyond its budget. The course's test suite runs that half of the same recipe end
# to end on the CI test model: `tests/test_recipe_run.py` runs the written `quantize.py`, serves the result
# with the written `vllm serve ... --tensor-parallel-size 2` (two CPU worker processes), checks that vLLM's
# perplexity equals the package's reading of the checkpoint
# (`test_vllm_perplexity_equals_the_package_reading_of_the_checkpoint`) and that the written `client.py` talks
# to it. The commands it runs are the ones checked above. On a GPU, `tools/gpu_check.py` runs a written recipe.

# %% [markdown]
# ## Quiz
# The numbers come from the plans computed above.

# %%
gguf_4x24 = planner.plan("llama-3.1-70b", gpus=4, gpu_memory_gb=24, context=CONTEXT, batch=BATCH, scheme="Q4_K_M")
quiz = Quiz.load("cluster", ids=["weights-70b-tp4", "kv-70b-tp4", "layer-split"], values={
    "w70_tp4": p70.per_gpu["weights"] / GIB, "w70_tp1": p70_1.per_gpu["weights"] / GIB,
    "total70_tp4": p70.total / GIB, "budget80": p70.budget / GIB, "kv70_tp4": p70.kv_per_token / 2**10,
    "kv70_gib": p70.per_gpu["KV cache"] / GIB, "context": CONTEXT, "batch": BATCH,
    "layers_4x24": " + ".join(map(str, gguf_4x24.layers_per_gpu)),
})
quiz.show()

# %% [markdown]
# ## Where to go next
# * **Your model**: `quantedu plan meta-llama/Llama-3.1-8B-Instruct --gpus 1 --gpu-memory 24 --context 8192`,
#   then `quantedu recipe meta-llama/Llama-3.1-8B-Instruct --method gptq --gpu-memory 24 --out my-recipe`, and
#   on the GPU machine `python quantize.py`, `sh serve_vllm.sh`, `python client.py`.
# * **Back in the course**: the bytes of the plan are notebook 01's; why GPTQ needs its calibration tokens and
#   its Hessians, notebook 03; AWQ's scales, notebook 04; what the GGUF mixes really give a model, notebook 05;
#   serving and measuring a server, notebook 06; which method to pick, notebook 07's guide.
# * **The tools' own documentation**: llm-compressor (https://docs.vllm.ai/projects/llm-compressor/), vLLM's
#   quantization and distributed serving (https://docs.vllm.ai/en/latest/features/quantization/ and
#   https://docs.vllm.ai/en/latest/serving/distributed_serving.html), llama.cpp's quantize and server READMEs
#   (https://github.com/ggml-org/llama.cpp/tree/master/tools).
