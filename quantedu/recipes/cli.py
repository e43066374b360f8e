"""``quantedu plan`` and ``quantedu recipe``: the planner and the recipe writer on the command line.

    quantedu plan llama-3.1-70b --gpus 4 --gpu-memory 80 --context 8192 --batch 8 --scheme w4a16
    quantedu recipe meta-llama/Llama-3.1-70B-Instruct --method gptq --gpus 4 --gpu-memory 80 --out recipe-70b
"""
from __future__ import annotations

import sys


def _serving(p) -> None:
    p.add_argument("--gpus", type=int, default=1, help="GPUs (vLLM: the tensor-parallel size)")
    p.add_argument("--gpu-memory", type=float, default=24.0, metavar="GB", help="memory of one GPU (GiB; default 24)")
    p.add_argument("--context", type=int, default=4096, help="tokens per sequence (default 4096)")
    p.add_argument("--batch", type=int, default=1, help="sequences served at once (default 1)")


def _group(text: str):
    text = text.lower()
    return text if text == "auto" else None if text in ("none", "channel") else int(text)


def add_parsers(sub) -> None:
    """Add the ``plan`` and ``recipe`` sub-commands to the ``quantedu`` parser."""
    from ..plan import SCHEME_HELP

    p = sub.add_parser("plan", help="what fits on which GPUs: weights, KV cache and activations per GPU")
    p.add_argument("model", metavar="MODEL_OR_SHAPE", help="a preset (llama-3.1-8b, llama-3.1-70b, llama-2-13b, "
                   "smollm2-135m, ...), a hub id named like one, or a config.json / checkpoint folder")
    _serving(p)
    p.add_argument("--scheme", default="w4a16", help=SCHEME_HELP)
    p.add_argument("--kv-bits", type=int, default=16, help="bits per KV-cache value (16, or 8 for an fp8 KV cache)")
    r = sub.add_parser("recipe", help="write a runnable llm-compressor script, vLLM / llama.cpp commands and a client")
    r.add_argument("model", help="hub id or local checkpoint folder to quantize")
    r.add_argument("--method", default="gptq", help="gptq, awq, w8a8, fp8 or nvfp4")
    r.add_argument("--bits", type=int, help="weight bits (gptq/awq: 4 or 8)")
    r.add_argument("--group", type=_group, default="auto", help="group size, or 'channel' (default: the method's)")
    r.add_argument("--asym", action="store_true", help="asymmetric weights (a zero point per group)")
    r.add_argument("--activation-bits", type=int, help="nvfp4: 4 (default) or 16")
    r.add_argument("--dataset", default="wikitext", help="wikitext, pydoc (offline) or a text file")
    r.add_argument("--samples", type=int, default=512, help="calibration samples (default 512)")
    r.add_argument("--seq-len", type=int, default=2048, help="tokens per calibration sample (default 2048)")
    r.add_argument("--gguf-mix", default="Q4_K_M", help="llama-quantize type for the GGUF path (default Q4_K_M)")
    _serving(r)
    r.add_argument("--out", required=True, metavar="DIR", help="folder to write (a new one, or one quantedu wrote)")


def run(args) -> int:
    """Run ``plan`` or ``recipe``; a refused choice prints its reason and returns 2."""
    from .. import plan as planner
    from .. import recipes
    from ..artifacts import TargetExistsError

    serving = dict(gpus=args.gpus, gpu_memory_gb=args.gpu_memory, context=args.context, batch=args.batch)
    try:
        if args.command == "plan":
            print(planner.plan(args.model, scheme=args.scheme, kv_bits=args.kv_bits, **serving))
            return 0
        r = recipes.recipe(args.model, method=args.method, bits=args.bits, group_size=args.group,
                           symmetric=False if args.asym else None, activation_bits=args.activation_bits,
                           dataset=args.dataset, n_samples=args.samples, seq_len=args.seq_len,
                           gguf_mix=args.gguf_mix, **serving)
        written = recipes.write(r, args.out)
    except (ValueError, TypeError, TargetExistsError) as exc:
        print(f"quantedu {args.command}: {exc}", file=sys.stderr)
        return 2
    print(recipes.plans(r)["vllm"])
    print(f"\nwrote {args.out}: " + ", ".join(written))
    return 0
