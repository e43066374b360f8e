"""Notebook 01's exercises: the bytes of a model's weights with group overhead, and the KV cache with GQA.

Checked against :func:`quantedu.memory.weight_bytes` (with :class:`quantedu.memory.GroupFormat`) and
:func:`quantedu.memory.kv_cache_bytes`. The diagnoses recompute the same quantity with one classic slip
(no scales, fractional groups, a tied head counted twice, query heads instead of KV heads, ...) and name
the slip whose number equals the learner's.
"""
from __future__ import annotations

import math

from .. import memory
from .core import Exercise, case, likely_cause, register

SHAPES = {
    "smollm2-135m (the course model: tied head, 576 columns, GQA 3:1)": "smollm2-135m",
    "llama-2-7b (untied head, no GQA)": "llama-2-7b",
    "llama-3-8b (GQA 4:1, 128k vocabulary)": "llama-3-8b",
}
TINY = memory.ModelShape(hidden=96, layers=2, heads=2, kv_heads=1, head_dim=48, intermediate=160, vocab=100,
                         tied=True, name="tiny")


# --- reference solutions (learner style; shown in the solution notebooks) --------------------------


def weight_bytes(shape, bits, group_size):
    linear = 0
    for rows, cols in shape.linear_shapes().values():
        groups = math.ceil(cols / group_size) if group_size else 1   # a ragged last group is a whole group
        linear += rows * (cols * bits + groups * (16 + bits)) / 8    # codes + fp16 scale + bits-bit zero
    embedding = shape.vocab * shape.hidden * 2                       # fp16
    head = 0 if shape.tied else embedding
    norms = (2 * shape.layers + 1) * shape.hidden * 2                # two per block and a final one, fp16
    return shape.layers * linear + embedding + head + norms


def kv_cache_bytes(shape, context, batch, dtype_bits=16):
    return 2 * shape.layers * shape.kv_heads * shape.head_dim * dtype_bits / 8 * context * batch


# --- 01.weight_bytes --------------------------------------------------------------------------------


def _weight_slips(shape, bits, g):
    fmt = memory.GroupFormat(bits, g)
    total = memory.weight_bytes(shape, fmt)
    emb = memory.tensor_bytes(shape.vocab, shape.hidden, "fp16")
    frac = shape.layers * sum(r * (c * bits + (c / g if g else 1) * (16 + bits)) / 8
                              for r, c in shape.linear_shapes().values())
    return [
        ("you left out the per-group fp16 scale and zero point (each group of a row stores 16 + bits bits).",
         memory.weight_bytes(shape, memory.GroupFormat(bits, g, scale_bits=0, zero_bits=0))["total"]),
        ("a ragged last group (576 columns in groups of 128: 4.5 groups) still stores a whole scale and zero: "
         "use math.ceil(cols / group_size).", frac + total["embedding"] + total["lm_head"] + total["norms"]),
        ("the LM head is tied to the embedding (shape.tied): it shares the storage, count it once.",
         total["total"] + emb),
        ("the LM head is not tied here (shape.tied is False): it is a second vocab x hidden fp16 matrix.",
         total["total"] - total["lm_head"]),
        ("embeddings stay in fp16; only the linear layers are quantized.",
         memory.weight_bytes(shape, fmt, quantize_embeddings=True)["total"]),
        ("the zero point is packed at `bits` bits, not 16.",
         memory.weight_bytes(shape, memory.GroupFormat(bits, g, zero_bits=16))["total"]),
        ("the scale is fp16 (16 bits), not fp32.",
         memory.weight_bytes(shape, memory.GroupFormat(bits, g, scale_bits=32))["total"]),
        ("you forgot the norm weights (2 per block + the final norm, fp16).", total["total"] - total["norms"]),
        ("you counted the linear layers of one block only: multiply by shape.layers.",
         total["total"] - total["linear"] * (1 - 1 / shape.layers)),
        ("that is bits, not bytes: divide by 8.", total["total"] * 8),
    ]


def _weight_case(label, shape, bits, g):
    @case(f"{label}, {bits} bits, " + (f"groups of {g}" if g else "per-channel (group_size=None)"))
    def run(fn):
        got = fn(shape, bits, g)
        exp = memory.weight_bytes(shape, memory.GroupFormat(bits, g))["total"]
        if not isinstance(got, (int, float)) and not hasattr(got, "item"):
            return f"expected a number of bytes, got {type(got).__name__}"
        if math.isclose(float(got), exp, rel_tol=1e-9):
            return None
        return f"expected {exp:,.0f} bytes, got {float(got):,.0f}." + likely_cause(got, _weight_slips(shape, bits, g))
    return run


def _weight_cases(context):
    cases = [_weight_case("hand-made tiny model (96 columns: groups of 64 end ragged)", TINY, 4, 64)]
    for label, name in SHAPES.items():
        shape = memory.model_shape(name)
        cases += [_weight_case(label, shape, 4, 128), _weight_case(label, shape, 3, 32)]
    cases.append(_weight_case(list(SHAPES)[0], memory.model_shape("smollm2-135m"), 8, None))
    return cases


register(Exercise(
    id="01.weight_bytes",
    title="bytes of a quantized model's weights",
    statement="""\
Write `weight_bytes(shape, bits, group_size)`: the bytes of a Llama-style model's weights when every linear
layer is stored as `bits`-bit codes plus, for every group of `group_size` weights of a row (`None`: one group
per row), an fp16 scale and a `bits`-bit zero point, as GPTQ/AWQ checkpoints do. The embedding (counted once
if the head is tied), the LM head (if not) and the norm weights stay in fp16. `shape` is a
`quantedu.memory.ModelShape`: `shape.linear_shapes()` gives `(rows, cols)` of each layer of one block, and
it has `layers`, `hidden`, `vocab`, `tied`.""",
    reference="`quantedu.memory.weight_bytes(shape, GroupFormat(bits, group_size))`",
    imports="import math\n\nfrom quantedu import memory\nfrom quantedu.exercises import check, hint",
    stubs=('''\
def weight_bytes(shape, bits, group_size):
    """Bytes of all weights: linear layers quantized with group overhead, the rest in fp16."""
    ...  # YOUR CODE
''',),
    solution=(weight_bytes,),
    cases=_weight_cases,
    hints=(
        "Per linear layer: rows * (cols * bits + groups * (16 + bits)) / 8 bytes, with groups per row.",
        "groups = math.ceil(cols / group_size): the course model's 576 columns in groups of 128 are 5 groups.",
        "Then: layers * (sum over the 7 layers of a block) + embedding (vocab * hidden * 2 bytes) + the head "
        "if not tied + norms ((2 * layers + 1) * hidden * 2 bytes).",
    ),
))


# --- 01.kv_cache -------------------------------------------------------------------------------------


def _kv_case(label, name, context, batch, dtype_bits=16):
    shape = memory.model_shape(name)

    @case(f"{label}, {context} tokens, batch {batch}, {dtype_bits}-bit cache")
    def run(fn):
        got = fn(shape, context, batch, dtype_bits)
        exp = memory.kv_cache_bytes(shape, context, batch, dtype_bits)
        if not isinstance(got, (int, float)) and not hasattr(got, "item"):
            return f"expected a number of bytes, got {type(got).__name__}"
        if math.isclose(float(got), exp, rel_tol=1e-9):
            return None
        slips = [
            (f"you cached every query head: with grouped-query attention only shape.kv_heads "
             f"({shape.kv_heads}) K/V heads are stored, shared by the {shape.heads} query heads.",
             exp * shape.heads / shape.kv_heads),
            ("keys AND values: the cache holds two tensors per layer (factor 2).", exp / 2),
            ("the batch: every sequence of the batch has its own cache.", exp / batch),
            ("every layer has its own K and V: multiply by shape.layers.", exp / shape.layers),
            ("that is bits, not bytes: divide dtype_bits by 8.", exp * 8),
            (f"the cache is stored at dtype_bits ({dtype_bits}) bits, not 16.", exp * 16 / dtype_bits),
        ]
        return f"expected {exp:,.0f} bytes, got {float(got):,.0f}." + likely_cause(got, slips)
    return run


register(Exercise(
    id="01.kv_cache",
    title="the KV cache with grouped-query attention",
    statement="""\
Write `kv_cache_bytes(shape, context, batch, dtype_bits=16)`: the bytes of the KV cache of `batch` sequences
of `context` tokens. Every layer stores a key and a value vector of `head_dim` numbers per KV head and per
token; with grouped-query attention (GQA) several query heads share one KV head (`shape.kv_heads <
shape.heads`).""",
    reference="`quantedu.memory.kv_cache_bytes`",
    imports="from quantedu import memory\nfrom quantedu.exercises import check, hint",
    stubs=('''\
def kv_cache_bytes(shape, context, batch, dtype_bits=16):
    """Bytes of the K and V of every layer, KV head and token."""
    ...  # YOUR CODE
''',),
    solution=(kv_cache_bytes,),
    cases=lambda context: [
        _kv_case("llama-2-7b (32 KV heads)", "llama-2-7b", 4096, 1),
        _kv_case("llama-3-8b (8 KV heads for 32 query heads)", "llama-3-8b", 8192, 1),
        _kv_case("smollm2-135m (3 KV heads for 9)", "smollm2-135m", 2048, 4),
        _kv_case("llama-2-70b (8 KV heads for 64)", "llama-2-70b", 32768, 2, dtype_bits=8),
    ],
    hints=(
        "Per token: 2 (K and V) x layers x kv_heads x head_dim numbers.",
        "Use shape.kv_heads, not shape.heads: that is all GQA changes.",
        "Bytes = numbers x dtype_bits / 8, times context x batch.",
    ),
))
