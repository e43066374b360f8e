"""Per-tensor type assignment of llama.cpp's quantization "mixes" (Q4_K_M, Q3_K_S, ...).

A name like ``Q4_K_M`` is not one bit width: it is a *recipe* that picks a GGML type for every tensor.
This module follows ``llama_tensor_get_type`` / ``llama_tensor_get_type_impl`` / ``tensor_type_fallback``
in llama.cpp's src/llama-quant.cpp for dense (non-MoE, non-Falcon, non-70B) models:

1. tensors that are not 2-D ``*.weight`` matrices (norms, biases) are not quantized;
2. the output matrix - or ``token_embd`` when the embeddings are tied - gets Q6_K, or Q8_0 when its
   rows are not a multiple of the default type's block size;
3. ``attn_v`` and ``ffn_down`` get more bits on some layers (``use_more_bits``: the first and last
   eighth of the layers and every third layer in between), ``attn_output`` too in the Q2/Q3 mixes;
4. a type whose block (256 for K-quants) does not divide the row length falls back to a 32-block type:
   Q4_K->Q5_0, Q5_K->Q5_1, Q6_K->Q8_0, Q2_K/Q3_K->Q4_0, IQ4_XS->IQ4_NL (F16 if even that does not fit).

Layer indices are counters (``i_attention_wv``, ``i_ffn_down``) over the tensors in llama.cpp's loader
order: by block number, then by name (``weight_name_comparer``) - not the order of the input file.
"""
from __future__ import annotations

import math

import re
from dataclasses import dataclass

from gguf import GGMLQuantizationType as T
from gguf import LlamaFileType as FT

from .layouts import LAYOUTS

BLOCK = {t: lay.block_size for t, lay in LAYOUTS.items()}

# the mixes' default type (llama_ftype_get_default_type)
DEFAULT_TYPE = {
    "Q4_0": T.Q4_0, "Q4_1": T.Q4_1, "Q5_0": T.Q5_0, "Q5_1": T.Q5_1, "Q8_0": T.Q8_0,
    "Q2_K": T.Q2_K, "Q3_K_S": T.Q3_K, "Q3_K_M": T.Q3_K, "Q3_K_L": T.Q3_K,
    "Q4_K_S": T.Q4_K, "Q4_K_M": T.Q4_K, "Q5_K_S": T.Q5_K, "Q5_K_M": T.Q5_K, "Q6_K": T.Q6_K,
    "IQ4_NL": T.IQ4_NL, "IQ4_XS": T.IQ4_XS,
}
MIXES = tuple(DEFAULT_TYPE)

# the llama_ftype number llama_model_quantize takes for each mix (gguf-py's LlamaFileType)
FTYPE = {name: int(FT[f"MOSTLY_{name}"]) for name in MIXES}

# tensor_type_fallback: rows not a multiple of 256
FALLBACK = {T.Q2_K: T.Q4_0, T.Q3_K: T.Q4_0, T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0, T.IQ4_XS: T.IQ4_NL}


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    """The layers that get a bigger type in the _M mixes: first/last eighth and every third between."""
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


def _rule(mix, category, i, n, n_gqa, has_imatrix):
    """``llama_tensor_get_type_impl`` for one tensor; ``None`` = keep the default type."""
    if category == "attn_v":
        if mix == "Q2_K":
            return T.Q4_K if n_gqa >= 4 else T.Q3_K
        if mix == "Q3_K_M":
            return T.Q5_K if i < 2 else T.Q4_K
        if mix == "Q3_K_L":
            return T.Q5_K
        if mix in ("IQ4_NL", "IQ4_XS") and n_gqa >= 4:
            return T.Q5_K
        if mix in ("Q4_K_M", "Q5_K_M") and use_more_bits(i, n):
            return T.Q6_K
        if mix == "Q4_K_S" and i < 4:
            return T.Q5_K
    elif category == "ffn_down":
        if mix == "Q2_K":
            return T.Q3_K
        if mix == "Q3_K_M":
            return T.Q5_K if i < n // 16 else T.Q4_K
        if mix == "Q3_K_L":
            return T.Q5_K
        if mix == "Q4_K_M":
            return T.Q6_K if use_more_bits(i, n) else None
        if mix in ("IQ4_NL", "IQ4_XS") and i < n // 8 and not has_imatrix:
            return T.Q5_K
        if mix == "Q5_K_M" and use_more_bits(i, n):
            return T.Q6_K
        if mix == "Q4_K_S" and i < n // 8:
            return T.Q5_K
        if mix in ("Q4_0", "Q5_0") and has_imatrix and i < n // 8:
            return T.Q4_1 if mix == "Q4_0" else T.Q5_1
    elif category == "attn_output":
        return {"Q2_K": T.Q3_K, "Q3_K_M": T.Q4_K, "Q3_K_L": T.Q5_K}.get(mix)
    return None


def _fallback(qtype: T, n_cols: int) -> T:
    if n_cols % BLOCK.get(qtype, 1) == 0:
        return qtype
    fb = FALLBACK.get(qtype, qtype)
    return fb if n_cols % BLOCK.get(fb, 1) == 0 else T.F16


def _category(name: str) -> str:
    if name == "output.weight":
        return "output"
    if name == "token_embd.weight":
        return "token_embd"
    for cat in ("attn_v", "attn_k", "attn_q", "attn_output"):
        if f"{cat}.weight" in name:
            return cat
    for cat in ("ffn_up", "ffn_gate", "ffn_down"):
        if cat in name:
            return cat
    return "other"


def loader_order(t) -> tuple[int, str]:
    """llama-model-loader's ``weight_name_comparer``: block number (-1 outside blocks), then name."""
    name = t.name if hasattr(t, "name") else str(t)
    m = re.match(r"blk\.(\d+)\.", name)
    return (int(m.group(1)) if m else -1, name)


@dataclass(frozen=True)
class TensorInfo:
    """What the recipe needs to know about a tensor: GGUF name, shape (GGUF order: ne[0] = row length
    first), and its current type (kept for tensors that are not quantized)."""

    name: str
    shape: tuple[int, ...]
    dtype: T = T.F32


def should_quantize(t: TensorInfo) -> bool:
    """``tensor_allows_quantization`` for a dense llama-like model: 2-D ``*.weight``, not a norm."""
    return len([d for d in t.shape if d > 1]) >= 2 and t.name.endswith("weight") and "_norm.weight" not in t.name


def assign_types(tensors: list[TensorInfo], mix: str, n_layer: int, n_head: int, n_head_kv: int,
                 has_imatrix: bool = False, fallback: bool = True) -> dict[str, T]:
    """GGML type of every tensor under ``mix`` (e.g. ``"Q4_K_M"``), as ``llama_model_quantize`` picks it.

    The layer counters follow llama.cpp's tensor order (:func:`loader_order`), whatever order
    ``tensors`` come in. ``fallback=False``: the type the recipe asks for, before a row length that its
    block does not divide replaces it (:func:`mix_counts` compares the two).
    """
    mix = mix.upper()
    if mix not in DEFAULT_TYPE:
        raise ValueError(f"unknown mix {mix!r}; known: {', '.join(MIXES)}")
    default = DEFAULT_TYPE[mix]
    n_gqa = n_head // max(1, n_head_kv)
    tied = not any(t.name == "output.weight" for t in tensors)
    i_attn_v = i_ffn_down = 0
    out = {}
    for t in sorted(tensors, key=loader_order):
        if not should_quantize(t):
            out[t.name] = t.dtype
            continue
        n_cols = t.shape[0]
        cat = _category(t.name)
        new = default
        if cat == "output" or (tied and cat == "token_embd"):
            if n_cols % BLOCK[default]:
                new = T.Q8_0
            elif default != T.Q8_0:
                new = T.Q6_K
        elif cat == "attn_v":
            new = _rule(mix, cat, i_attn_v, n_layer, n_gqa, has_imatrix) or default
            i_attn_v += 1
        elif cat == "ffn_down":
            new = _rule(mix, cat, i_ffn_down, n_layer, n_gqa, has_imatrix) or default
            i_ffn_down += 1
        else:
            new = _rule(mix, cat, 0, n_layer, n_gqa, has_imatrix) or default
        out[t.name] = _fallback(new, n_cols) if fallback else new
    return out


_GGUF_NAME = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
              "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}


def shape_tensor_infos(shape) -> list[TensorInfo]:
    """The tensor table a GGUF of a Llama-style model of ``shape`` (``quantedu.memory.ModelShape``) has,
    in F32, so a mix can be planned for a model that is not on disk (e.g. Llama-2-7B's 4096-wide rows)."""
    infos = [TensorInfo("token_embd.weight", (shape.hidden, shape.vocab), T.F32)]
    if not shape.tied:
        infos.append(TensorInfo("output.weight", (shape.hidden, shape.vocab), T.F32))
    for i in range(shape.layers):
        for hf, (rows, cols) in shape.linear_shapes().items():
            infos.append(TensorInfo(f"blk.{i}.{_GGUF_NAME[hf]}.weight", (cols, rows), T.F32))
        infos += [TensorInfo(f"blk.{i}.attn_norm.weight", (shape.hidden,), T.F32),
                  TensorInfo(f"blk.{i}.ffn_norm.weight", (shape.hidden,), T.F32)]
    return infos + [TensorInfo("output_norm.weight", (shape.hidden,), T.F32)]


def plan_bits_per_weight(infos: list[TensorInfo], plan: dict[str, T], linear_only: bool = True) -> float:
    """Bits per weight of a planned mix: over the blocks' 2-D matrices (what a mix name is about), or
    over every tensor (``linear_only=False``: embeddings, output and norms included)."""
    keep = [i for i in infos if not linear_only or (i.name.startswith("blk.") and len(i.shape) == 2)]
    n_el = lambda i: math.prod(i.shape)  # noqa: E731
    nbytes = sum((n_el(i) // i.shape[0]) * LAYOUTS[plan[i.name]].row_size(i.shape[0]) if plan[i.name] in LAYOUTS
                 else n_el(i) * (2 if plan[i.name] in (T.F16, T.BF16) else 4) for i in keep)
    return 8 * nbytes / sum(n_el(i) for i in keep)


@dataclass(frozen=True)
class MixCounts:
    """What a mix really gives the matrices of a model's blocks: how many got the type the recipe asked for,
    how many fell back to another (rows not a multiple of its block), and the bits per weight that result."""

    mix: str
    matrices: int
    got: dict[str, int]          # type asked for and kept -> matrices
    fell_back: dict[str, int]    # "Q4_K->Q5_0" -> matrices
    bits_per_weight: float       # over the blocks' matrices (plan_bits_per_weight)

    @property
    def n_got(self) -> int:
        return sum(self.got.values())

    @property
    def n_fell_back(self) -> int:
        return sum(self.fell_back.values())

    def __str__(self) -> str:
        got = ", ".join(f"{t} x{n}" for t, n in self.got.items()) or "none"
        back = f"; fell back: {', '.join(f'{k} x{n}' for k, n in self.fell_back.items())}" if self.fell_back else ""
        return (f"{self.mix}: {self.n_got} of {self.matrices} matrices kept the types the mix asks for ({got}){back}; "
                f"{self.bits_per_weight:.2f} bits/weight")


def mix_counts(tensors: list[TensorInfo], mix: str, n_layer: int, n_head: int, n_head_kv: int,
               has_imatrix: bool = False) -> MixCounts:
    """Count, over the blocks' 2-D matrices, the types ``mix`` asks for and the fallbacks the row lengths force
    (a model whose rows are 576 wide gives most of its matrices a 32-block type instead of a K-quant)."""
    from collections import Counter
    args = (tensors, mix, n_layer, n_head, n_head_kv, has_imatrix)
    asked, plan = assign_types(*args, fallback=False), assign_types(*args)
    blocks = [t for t in tensors if t.name.startswith("blk.") and should_quantize(t)]
    got = Counter(plan[t.name].name for t in blocks if plan[t.name] == asked[t.name])
    back = Counter(f"{asked[t.name].name}->{plan[t.name].name}" for t in blocks if plan[t.name] != asked[t.name])
    return MixCounts(mix.upper(), len(blocks), dict(got.most_common()), dict(back.most_common()),
                     plan_bits_per_weight(tensors, plan))


def type_coverage(model, mix: str, tensors=None) -> dict:
    """How many of the blocks' matrices got ``mix``'s named type (``Q4_K`` for ``Q4_K_M``; the type itself for a
    single-type file such as ``MXFP4``), another K-quant, or fell back to another type because their rows are not
    a multiple of its block; and the bits per weight of those matrices. From a file's tensor table when given
    (``tensors``: ``quantedu.gguf.io.contents(path).tensors``), else planned by :func:`assign_types` for
    ``model``'s shape."""
    from ..memory import model_shape
    named = DEFAULT_TYPE[mix.upper()].name if mix.upper() in DEFAULT_TYPE else mix.upper()
    if tensors is not None:
        t = tensors
        linear = [n.startswith("blk.") and should_quantize(TensorInfo(n, tuple(s)))
                  for n, s in zip(t["name"], t["shape"])]
        t = t[linear]
        types, bits = list(t.type), float(8 * t.bytes.sum() / t.n_params.sum())
    else:
        shape = model_shape(model)
        infos = shape_tensor_infos(shape)
        plan = assign_types(infos, mix, shape.layers, shape.heads, shape.kv_heads)
        types = [plan[i.name].name for i in infos if i.name.startswith("blk.") and len(i.shape) == 2]
        bits = plan_bits_per_weight(infos, plan)
    k_family = {t.name for t, lay in LAYOUTS.items() if lay.block_size == 256}
    got = sum(t == named for t in types)
    other_k = sum(t in k_family and t != named for t in types)
    return {"type": named, "matrices": len(types), "got": got, "other_kquant": other_k,
            "fell_back": len(types) - got - other_k, "bits_per_weight": bits,
            "types": {t: types.count(t) for t in sorted(set(types))}}
