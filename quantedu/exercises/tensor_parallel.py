"""Notebook 10's exercise: the bytes of one GPU's weights under vLLM's tensor parallelism.

Checked against :func:`quantedu.plan.rank_shape` (vLLM's sharding rules) and :func:`quantedu.memory.weight_bytes`.
The diagnoses recompute the bytes with one classic slip (the whole model divided by the GPUs, norms split,
embedding replicated, vocabulary not padded, KV heads split below one, the MLP left whole) and name the slip
whose number equals the learner's.
"""
from __future__ import annotations

import math
from dataclasses import replace

from .. import memory
from .. import plan as planner
from .core import Exercise, case, likely_cause, register

TINY = memory.ModelShape(hidden=96, layers=2, heads=4, kv_heads=2, head_dim=24, intermediate=160, vocab=1000,
                         tied=False, name="tiny")


# --- reference solution (learner style; shown in the solution notebooks) ------------------------------


def rank_weight_bytes(shape, tp):
    h, d = shape.hidden, shape.head_dim
    heads = shape.heads // tp                       # column-parallel q, row-parallel o: whole heads per GPU
    kv = max(1, shape.kv_heads // tp)               # fewer KV heads than GPUs: each GPU keeps one whole head
    mlp = shape.intermediate // tp                  # gate/up split their rows, down its columns
    per_layer = 2 * heads * d * h + 2 * kv * d * h + 3 * mlp * h
    vocab = 64 * math.ceil(shape.vocab / 64) // tp  # vocab-parallel: padded to 64 rows, then split
    embed = vocab * h * (1 if shape.tied else 2)    # embedding, and the LM head unless tied
    norms = (2 * shape.layers + 1) * h              # replicated on every GPU
    return 2 * (shape.layers * per_layer + embed + norms)  # bf16: 2 bytes


# --- 10.rank_weights ----------------------------------------------------------------------------------


def _bytes(shape) -> float:
    return memory.weight_bytes(shape, "bf16", embed_spec="bf16")["total"]


def _slips(shape, tp):
    rank = planner.rank_shape(shape, tp)
    padded = replace(shape, vocab=64 * math.ceil(shape.vocab / 64))
    rank_w = memory.weight_bytes(rank, "bf16")
    return [
        ("the norm weights are replicated, not split: every GPU holds all of them.",
         _bytes(rank) - rank_w["norms"] + rank_w["norms"] / tp),
        ("not every tensor splits evenly: dividing the whole model by the GPUs splits the norms (replicated) and "
         "forgets the vocabulary's padding to 64 rows.", _bytes(shape) / tp),
        ("not every tensor splits: dividing the whole model by the GPUs also splits the norms (replicated).",
         _bytes(padded) / tp),
        ("the embedding (and LM head) are vocab-parallel: each GPU keeps vocab / tp rows, not all of them.",
         _bytes(replace(rank, vocab=padded.vocab))),
        ("vLLM pads the vocabulary to a multiple of 64 rows before it splits it: 64 * ceil(vocab / 64) / tp.",
         _bytes(replace(rank, vocab=shape.vocab / tp))),
        ("with fewer KV heads than GPUs, each GPU keeps one whole KV head (replicated), never a fraction.",
         _bytes(replace(rank, kv_heads=shape.kv_heads / tp))),
        ("the MLP splits too: gate/up by rows, down by columns (intermediate / tp on each GPU).",
         _bytes(replace(rank, intermediate=shape.intermediate))),
        ("attention splits by heads: q/k/v by output rows, o by input columns (heads / tp on each GPU).",
         _bytes(replace(rank, heads=shape.heads, kv_heads=shape.kv_heads))),
        ("the LM head is tied to the embedding here: count that matrix once.",
         _bytes(rank) + memory.tensor_bytes(rank.vocab, rank.hidden, "bf16") if shape.tied else math.nan),
        ("bf16 is 2 bytes per weight.", _bytes(rank) / 2),
        ("that is bits, not bytes.", _bytes(rank) * 8),
        ("that is the whole model on one GPU: each GPU holds a 1/tp slice of most matrices.", _bytes(padded)),
        ("you left out the norm weights (2 per block and a final one, replicated).", _bytes(rank) - rank_w["norms"]),
    ]


def _case(label, shape, tp):
    @case(f"{label}, --tensor-parallel-size {tp}")
    def run(fn):
        got = fn(shape, tp)
        exp = _bytes(planner.rank_shape(shape, tp))
        if not isinstance(got, (int, float)) and not hasattr(got, "item"):
            return f"expected a number of bytes, got {type(got).__name__}"
        if math.isclose(float(got), exp, rel_tol=1e-12):
            return None
        return f"expected {exp:,.0f} bytes, got {float(got):,.0f}." + likely_cause(got, _slips(shape, tp))
    return run


register(Exercise(
    id="10.rank_weights",
    title="weights per GPU under tensor parallelism",
    statement="""\
Write `rank_weight_bytes(shape, tp)`: the bytes of bf16 weights that ONE GPU holds when vLLM serves a
Llama-style model with `--tensor-parallel-size tp`. vLLM's rules: `q/k/v/gate/up` are column-parallel (their
output rows split, whole heads per GPU), `o/down` row-parallel (their input columns split); with fewer KV
heads than GPUs each GPU keeps one whole KV head; the embedding and the LM head (unless tied) are
vocab-parallel, the vocabulary first padded to a multiple of 64 rows; the norms are replicated. `shape` is a
`quantedu.memory.ModelShape` (`hidden`, `layers`, `heads`, `kv_heads`, `head_dim`, `intermediate`, `vocab`,
`tied`); `tp` divides the heads.""",
    reference="`quantedu.memory.weight_bytes(quantedu.plan.rank_shape(shape, tp), 'bf16')`",
    imports="import math\n\nfrom quantedu.exercises import check, hint",
    stubs=('''\
def rank_weight_bytes(shape, tp):
    """Bytes of one GPU's bf16 weights under tensor parallelism of tp."""
    ...  # YOUR CODE
''',),
    solution=(rank_weight_bytes,),
    cases=lambda context: [
        _case("hand-made tiny model (vocabulary 1000: padded to 1024, untied head)", TINY, 2),
        _case("llama-3.1-8b (8 KV heads, 128256 vocabulary)", memory.model_shape("llama-3.1-8b"), 2),
        _case("llama-3.1-70b", memory.model_shape("llama-3.1-70b"), 4),
        _case("llama-3.1-70b (8 KV heads on 16 GPUs: replicated)", memory.model_shape("llama-3.1-70b"), 16),
        _case("smollm2-135m (the course model: 9 heads, tied head)", memory.model_shape("smollm2-135m"), 3),
    ],
    hints=(
        "One GPU is a Llama with heads / tp heads, max(1, kv_heads / tp) KV heads and intermediate / tp MLP width; "
        "hidden, head_dim and layers do not change.",
        "Per block: q and o are heads*head_dim x hidden each, k and v kv_heads*head_dim x hidden each, gate, up and "
        "down intermediate x hidden each.",
        "Embedding rows: 64 * math.ceil(vocab / 64) // tp (twice if not tied); norms (2 * layers + 1) * hidden, "
        "whole; then 2 bytes per weight.",
    ),
))
