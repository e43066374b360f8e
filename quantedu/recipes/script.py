"""The llm-compressor script a recipe writes (:mod:`quantedu.recipes`): a template filled with the learner's choice.

The script stands alone (it imports llm-compressor, transformers and datasets, never quantedu), so it runs on
the learner's GPU machine. The calibration pitfalls the course teaches are handled in it, not left to the reader:

* **no empty rows**: wikitext-2's train split has one row per line and about a third are empty (plus many
  `` = Heading = `` lines); a row-per-sample dataset truncated to ``SEQ_LEN`` gives short, padded or empty
  samples. The script drops empty rows, joins the rest and cuts ``NUM_SAMPLES`` windows of exactly ``SEQ_LEN``
  tokens at seeded random, non-overlapping places;
* **enough tokens**: GPTQ's Hessian ``H = 2 X^T X`` of a layer is full rank only when it has seen at least as
  many tokens as the layer has input columns (notebook 03), so the writer refuses fewer than the widest input
  (``down_proj``'s) and the script checks the text really holds them;
* it never writes over an existing folder, and prints one ``RECIPE-RESULT {json}`` line (time, GPU peak).
"""
from __future__ import annotations

from string import Template

LLMCOMPRESSOR_VERSION = "0.14.0.1"   # what pyproject's `reference` extra and constraints.txt install

_SCRIPT = Template('''"""$title

Written by quantedu's recipe writer for llm-compressor $version (see plan.txt for the memory it needs):

    pip install "llmcompressor==$version"
    python quantize.py                                        # writes ./$save_name
    python quantize.py --calibration-text calibration.txt     # only the cleaned calibration text (llama-imatrix)
"""
import argparse
import json
import random
import sys
import time
from pathlib import Path

MODEL_ID = $model
SAVE_DIR = Path(__file__).resolve().parent / $save_name_repr
DATASET = $dataset  # "wikitext", "pydoc" (Python's own help text: offline) or a text file
NUM_SAMPLES = $n_samples
SEQ_LEN = $seq_len
# GPTQ's H = 2 X^T X is full rank only from at least as many tokens as a layer has input columns
MIN_TOKENS = $min_tokens


def calibration_rows():
    """The calibration text as rows, empty ones dropped (wikitext-2's train split: about a third are empty)."""
    if DATASET == "wikitext":
        from datasets import load_dataset
        rows = load_dataset("Salesforce/wikitext", "wikitext-2-raw-v1", split="train")["text"]
    elif DATASET == "pydoc":
        from pydoc_data.topics import topics
        rows = list(topics.values())
    else:
        rows = Path(DATASET).read_text(encoding="utf-8").split("\\n\\n")
    return [row for row in rows if row.strip()]


def calibration_set(tokenizer):
    """NUM_SAMPLES windows of exactly SEQ_LEN tokens from the joined rows, at seeded random, non-overlapping places."""
    ids = tokenizer("\\n\\n".join(calibration_rows()), add_special_tokens=False, verbose=False)["input_ids"]
    bos = tokenizer.bos_token_id
    prefix = [bos] if bos is not None and tokenizer("a")["input_ids"][:1] == [bos] else []  # as the model saw text
    width = SEQ_LEN - len(prefix)
    n_windows = len(ids) // width
    if n_windows < NUM_SAMPLES or NUM_SAMPLES * SEQ_LEN < MIN_TOKENS:
        sys.exit(f"the calibration text holds {len(ids)} tokens: {n_windows} windows of {SEQ_LEN}, for "
                 f"NUM_SAMPLES={NUM_SAMPLES} (and at least {MIN_TOKENS} tokens). Lower NUM_SAMPLES or SEQ_LEN, "
                 f"or use a bigger DATASET.")
    starts = sorted(random.Random(0).sample(range(n_windows), NUM_SAMPLES))
    windows = [prefix + ids[s * width:(s + 1) * width] for s in starts]
    from datasets import Dataset
    return Dataset.from_dict({"input_ids": windows, "attention_mask": [[1] * SEQ_LEN for _ in windows]})


def recipe():
$recipe_body


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calibration-text", metavar="FILE", help="write the cleaned calibration text and stop")
    args = parser.parse_args()
    if args.calibration_text:
        Path(args.calibration_text).write_text("\\n\\n".join(calibration_rows()), encoding="utf-8")
        return
    if SAVE_DIR.exists() and any(SAVE_DIR.iterdir()):
        sys.exit(f"{SAVE_DIR} already exists: move it away first (this script never writes over a folder)")
    import torch
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(MODEL_ID)
    # in CPU RAM: the sequential pipeline moves one decoder layer at a time to the GPU
    model = AutoModelForCausalLM.from_pretrained(MODEL_ID, dtype="auto")
    start = time.perf_counter()
    oneshot(model=model, recipe=recipe()$data_args)
    seconds = time.perf_counter() - start
    model.save_pretrained(SAVE_DIR, save_compressed=True)
    tokenizer.save_pretrained(SAVE_DIR)
    peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
    print("RECIPE-RESULT " + json.dumps({"seconds": seconds, "peak_gpu_bytes": peak, "save_dir": str(SAVE_DIR)}))


if __name__ == "__main__":
    main()
''')

_IGNORE = 'ignore=["lm_head"]'  # the head stays in 16 bits, as the course's exports keep it


def recipe_body(method: str, weights: dict | None, preset: str | None) -> str:
    """The body of the script's ``recipe()``: the modifiers of llm-compressor 0.14 for ``method``."""
    quant = (f'config_groups={{"group_0": {{"targets": ["Linear"], "weights": {weights!r}}}}}' if weights
             else f'scheme="{preset}"')
    lines = {
        "gptq": ["from llmcompressor.modifiers.quantization import GPTQModifier",
                 f'return [GPTQModifier(targets="Linear", {_IGNORE}, {quant})]'],
        "awq": ["from llmcompressor.modifiers.quantization import QuantizationModifier",
                "from llmcompressor.modifiers.transform.awq import AWQModifier",
                "# AWQ only rescales channels; the QuantizationModifier after it rounds the rescaled weights",
                f'return [AWQModifier(), QuantizationModifier(targets="Linear", {_IGNORE}, {quant})]'],
        "w8a8": ["from llmcompressor.modifiers.quantization import GPTQModifier",
                 "from llmcompressor.modifiers.transform import SmoothQuantModifier",
                 "# SmoothQuant moves activation outliers into the weights, so int8 activations lose less",
                 f'return [SmoothQuantModifier(smoothing_strength=0.8), GPTQModifier(targets="Linear", {_IGNORE}, '
                 f'{quant})]'],
        "rtn": ["from llmcompressor.modifiers.quantization import QuantizationModifier",
                f'return [QuantizationModifier(targets="Linear", {_IGNORE}, {quant})]'],
    }[method]
    return "\n".join("    " + ln for ln in lines)


def render(*, title: str, model: str, save_name: str, dataset: str, n_samples: int, seq_len: int,
           min_tokens: int, method: str, weights: dict | None, preset: str | None, data_free: bool) -> str:
    """The whole script (``data_free``: FP8 dynamic needs no calibration data, so ``oneshot`` gets none)."""
    # the windows are already at random places: no shuffling, so a second run calibrates on the same order
    data_args = "" if data_free else ", dataset=calibration_set(tokenizer), num_calibration_samples=NUM_SAMPLES,\n" \
                                     "            max_seq_length=SEQ_LEN, shuffle_calibration_samples=False"
    return _SCRIPT.substitute(title=title, version=LLMCOMPRESSOR_VERSION, model=repr(model), save_name=save_name,
                              save_name_repr=repr(save_name), dataset=repr(dataset), n_samples=n_samples,
                              seq_len=seq_len, min_tokens=min_tokens, recipe_body=recipe_body(method, weights, preset),
                              data_args=data_args)
