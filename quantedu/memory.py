"""Memory math: bytes of weights, KV cache and activations, with the overhead real formats carry.

"A 7B model in 4 bits needs 3.5 GB" counts only the codes. A real checkpoint also stores

* per-group parameters: GPTQ/AWQ keep an fp16 scale and a packed ``bits``-bit zero point per group
  (4-bit, group 128: ``4 + (16 + 4) / 128 = 4.15625`` bits per weight);
* GGUF block formats: the bits per weight follow from the block struct (``quantedu.gguf.layouts``,
  computed from ggml-common.h's field list);
* embeddings, the LM head and norms, which quantizers leave in 16 bits;

and inference needs a KV cache, ``2 * layers * kv_heads * head_dim * bytes`` per token (GQA shares
K/V heads, so ``kv_heads < heads`` shrinks it), plus transient activations.

Everything is computed from a model's shape, which comes from a transformers config (hub id, local
path, offline model) or from the hyperparameters of a known model (``PRESETS``, values of the
models' published config.json files).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

GIB = 2**30

# Hyperparameters from each model's config.json (the values are configuration, not results).
PRESETS = {
    "llama-2-7b": dict(hidden=4096, layers=32, heads=32, kv_heads=32, head_dim=128, intermediate=11008,
                       vocab=32000, tied=False),
    "llama-2-70b": dict(hidden=8192, layers=80, heads=64, kv_heads=8, head_dim=128, intermediate=28672,
                        vocab=32000, tied=False),
    "llama-3-8b": dict(hidden=4096, layers=32, heads=32, kv_heads=8, head_dim=128, intermediate=14336,
                       vocab=128256, tied=False),
    "llama-2-13b": dict(hidden=5120, layers=40, heads=40, kv_heads=40, head_dim=128, intermediate=13824,
                        vocab=32000, tied=False),
    "llama-3-70b": dict(hidden=8192, layers=80, heads=64, kv_heads=8, head_dim=128, intermediate=28672,
                        vocab=128256, tied=False),
    "smollm2-135m": dict(hidden=576, layers=30, heads=9, kv_heads=3, head_dim=64, intermediate=1536,
                         vocab=49152, tied=True),
}
# Llama 3.1 kept Llama 3's shapes (it changed the RoPE scaling and the context length)
PRESETS.update({"llama-3.1-8b": PRESETS["llama-3-8b"], "llama-3.1-70b": PRESETS["llama-3-70b"]})


@dataclass(frozen=True)
class ModelShape:
    """The numbers memory depends on, for a Llama-style decoder (GQA attention + gated MLP)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool = False
    name: str = "model"

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(out_features, in_features) of the linear layers of one decoder block."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        h, i = self.hidden, self.intermediate
        return {"q_proj": (q, h), "k_proj": (kv, h), "v_proj": (kv, h), "o_proj": (h, q),
                "gate_proj": (i, h), "up_proj": (i, h), "down_proj": (h, i)}

    def params(self) -> dict[str, int]:
        linear = self.layers * sum(r * c for r, c in self.linear_shapes().values())
        embed = self.vocab * self.hidden
        return {"linear": linear, "embedding": embed, "lm_head": 0 if self.tied else embed,
                "norms": (2 * self.layers + 1) * self.hidden}

    def n_params(self) -> int:
        return sum(self.params().values())


def shape_from_config(config, name: str = "model") -> ModelShape:
    """A :class:`ModelShape` from a transformers config (object or dict)."""
    c = config if isinstance(config, dict) else config.to_dict()
    missing = [k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                           "vocab_size") if k not in c]
    if missing:
        raise ValueError(f"config lacks {missing}: memory math needs a Llama-style decoder config")
    heads = c["num_attention_heads"]
    return ModelShape(
        hidden=c["hidden_size"], layers=c["num_hidden_layers"], heads=heads,
        kv_heads=c.get("num_key_value_heads") or heads,
        head_dim=c.get("head_dim") or c["hidden_size"] // heads,
        intermediate=c["intermediate_size"], vocab=c["vocab_size"],
        tied=bool(c.get("tie_word_embeddings", False)), name=c.get("_name_or_path") or name,
    )


def model_shape(source) -> ModelShape:
    """Shape of ``source``: a ModelShape, a preset name, a transformers config or model, a dict,
    a path to a checkpoint folder / config.json, or a hub id (uses the local hub cache first)."""
    if isinstance(source, ModelShape):
        return source
    if isinstance(source, str) and source.lower() in PRESETS:
        return ModelShape(**PRESETS[source.lower()], name=source.lower())
    if hasattr(source, "config") and hasattr(source, "parameters"):  # a model
        return shape_from_config(source.config)
    if isinstance(source, dict) or hasattr(source, "to_dict"):
        return shape_from_config(source)
    if isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        if path.is_file():
            return shape_from_config(json.loads(path.read_text()), name=path.parent.name)
        from transformers import AutoConfig

        try:
            return shape_from_config(AutoConfig.from_pretrained(str(source), local_files_only=True), str(source))
        except OSError:
            pass
        try:
            return shape_from_config(AutoConfig.from_pretrained(str(source)), str(source))
        except OSError as exc:
            raise ValueError(
                f"could not read a config for {source!r} ({exc.__class__.__name__}). Offline, use a preset "
                f"({', '.join(PRESETS)}), a local checkpoint folder, or a loaded model."
            ) from exc
    raise TypeError(f"cannot get a model shape from {type(source).__name__}")


def llama_like(n_params: float, gqa: int = 1, vocab: int = 32000) -> ModelShape:
    """A Llama-shaped model of about ``n_params`` parameters (for the calculator's slider).

    Llama uses head_dim 128, ``layers = hidden / 128`` up to 13B and an MLP of ~8/3 hidden, so a
    block has ``~12 hidden**2`` weights: solve ``12 hidden**3 / 128 + 2 vocab hidden = n_params``.
    """
    hidden = 128
    while True:  # the smallest multiple of 128 whose parameter count reaches n_params
        cand = ModelShape(hidden, max(1, hidden // 128), hidden // 128, max(1, hidden // 128 // gqa), 128,
                          256 * math.ceil(8 * hidden / 3 / 256), vocab, False, f"~{n_params / 1e9:g}B")
        if cand.n_params() >= n_params or hidden > 65536:
            return cand
        hidden += 128


# --- weight formats ---------------------------------------------------------------------------------

FLOAT_BITS = {"fp32": 32, "fp16": 16, "bf16": 16, "fp8": 8}


@dataclass(frozen=True)
class GroupFormat:
    """Integer codes with one scale (and zero point) per ``group_size`` weights of a row (GPTQ/AWQ).

    ``group_size=None`` means one group per output row (per-channel). ``zero_bits=0`` for symmetric
    formats; GPTQ/AWQ pack asymmetric zero points at ``bits`` bits, so ``zero_bits=None`` means ``bits``.
    """

    bits: int
    group_size: int | None = 128
    scale_bits: int = 16
    zero_bits: int | None = None

    @property
    def name(self) -> str:
        return f"int{self.bits}-" + (f"g{self.group_size}" if self.group_size else "channel")

    def zbits(self) -> int:
        return self.bits if self.zero_bits is None else self.zero_bits

    def bits_per_weight(self, cols: int | None = None) -> float:
        """Average bits per weight; with ``cols`` a ragged last group is counted as a whole group."""
        per_group = self.scale_bits + self.zbits()
        if cols is None:
            return self.bits + (per_group / self.group_size if self.group_size else 0.0)
        n_groups = math.ceil(cols / self.group_size) if self.group_size else 1
        return self.bits + per_group * n_groups / cols

    def tensor_bytes(self, rows: int, cols: int) -> float:
        n_groups = math.ceil(cols / self.group_size) if self.group_size else 1
        return rows * (cols * self.bits + n_groups * (self.scale_bits + self.zbits())) / 8


@dataclass(frozen=True)
class FloatFormat:
    """Every weight in ``bits`` bits, no overhead (fp32, fp16, bf16, fp8)."""

    name: str
    bits: int

    def bits_per_weight(self, cols: int | None = None) -> float:
        return float(self.bits)

    def tensor_bytes(self, rows: int, cols: int) -> float:
        return rows * cols * self.bits / 8


@dataclass(frozen=True)
class BlockFormat:
    """A GGUF block type: whole blocks of ``block_size`` weights per row (``quantedu.gguf.layouts``)."""

    layout: object  # quantedu.gguf.layouts.BlockLayout

    @property
    def name(self) -> str:
        return self.layout.name

    @property
    def bits(self) -> int:  # the width in the name: Q4_K, IQ4_NL, MXFP4, NVFP4 -> 4
        return int(re.search(r"\d+", self.name).group(0))

    def bits_per_weight(self, cols: int | None = None) -> float:
        return self.layout.bits_per_weight

    def tensor_bytes(self, rows: int, cols: int) -> float:
        return rows * self.layout.row_size(cols)


def weight_format(spec) -> FloatFormat | GroupFormat | BlockFormat:
    """Parse a format: ``"fp16"``, ``"int4-g128"``, ``"int8-channel"``, ``"int4"`` (= g128), a GGUF type
    name such as ``"Q4_K"``, or a format object. Every format answers ``bits`` (the advertised width),
    ``bits_per_weight(cols)`` and ``tensor_bytes(rows, cols)``."""
    if isinstance(spec, (FloatFormat, GroupFormat, BlockFormat)):
        return spec
    if hasattr(spec, "row_size"):
        return BlockFormat(spec)
    s = str(spec)
    if s.lower() in FLOAT_BITS:
        return FloatFormat(s.lower(), FLOAT_BITS[s.lower()])
    if s.lower().startswith("int"):
        head, _, gran = s.lower().partition("-")
        bits = int(head[3:])
        if gran in ("", "g128"):
            return GroupFormat(bits, 128)
        if gran == "channel":
            return GroupFormat(bits, None)
        if gran.startswith("g") and gran[1:].isdigit():
            return GroupFormat(bits, int(gran[1:]))
    try:
        from .gguf.layouts import layout

        return BlockFormat(layout(s))
    except KeyError as exc:
        raise ValueError(
            f"unknown weight format {spec!r}: use fp32/fp16/bf16/fp8, int<bits>-g<group>, int<bits>-channel, "
            f"or a GGUF type such as Q4_0, Q4_K, Q6_K, MXFP4, NVFP4"
        ) from exc


def bits_per_weight(spec, cols: int | None = None) -> float:
    """Average bits per weight of ``spec`` (with ``cols``: a ragged last group counted whole)."""
    return weight_format(spec).bits_per_weight(cols)


def nominal_bits(spec) -> int:
    """The bit width a format is advertised with (fp16 -> 16, int4-g128 -> 4, Q4_K -> 4)."""
    return weight_format(spec).bits


def tensor_bytes(rows: int, cols: int, spec) -> float:
    """Bytes of a ``(rows, cols)`` weight stored in ``spec``."""
    return weight_format(spec).tensor_bytes(rows, cols)


def weight_bytes(source, spec="fp16", embed_spec="fp16", quantize_embeddings: bool = False) -> dict:
    """Bytes of a model's weights: linear layers in ``spec``; embeddings, head and norms in ``embed_spec``.

    A tied head shares the embedding's storage and is counted once.
    """
    shape = model_shape(source)
    p = shape.params()
    linear = shape.layers * sum(tensor_bytes(r, c, spec) for r, c in shape.linear_shapes().values())
    emb_fmt = spec if quantize_embeddings else embed_spec
    embed = tensor_bytes(shape.vocab, shape.hidden, emb_fmt)
    out = {"linear": linear, "embedding": embed, "lm_head": 0.0 if shape.tied else embed,
           "norms": p["norms"] * bits_per_weight(embed_spec) / 8}
    out["total"] = sum(out.values())
    return out


def naive_bytes(n_params: float, bits: float) -> float:
    """The back-of-the-envelope number: every parameter at ``bits`` bits, nothing else."""
    return n_params * bits / 8


# --- KV cache and activations ------------------------------------------------------------------------


def kv_bytes_per_token(source, dtype_bits: int = 16) -> float:
    """K and V of every layer for one token: ``2 * layers * kv_heads * head_dim * bytes``."""
    s = model_shape(source)
    return 2 * s.layers * s.kv_heads * s.head_dim * dtype_bits / 8


def kv_cache_bytes(source, context: int, batch: int = 1, dtype_bits: int = 16) -> float:
    return kv_bytes_per_token(source, dtype_bits) * context * batch


def activation_bytes(source, batch: int = 1, seq_len: int = 1, dtype_bits: int = 16,
                     attention: str = "sdpa", logits: str = "last") -> float:
    """Peak transient memory of one forward pass over ``seq_len`` new tokens (an estimate).

    Live at the peak of a block: the residual stream (input + output), plus the larger of the
    attention part (q, k, v, output; with ``attention="eager"`` also the ``heads * seq * seq`` fp32
    score matrix) and the MLP part (gate, up, their product). Plus fp32 logits for the last position
    (generation) or for ``logits="all"`` positions (training/perplexity). Weights and KV cache not included.
    """
    s = model_shape(source)
    b = dtype_bits / 8
    tokens = batch * seq_len
    residual = 2 * tokens * s.hidden * b
    attn = tokens * (2 * s.heads + 2 * s.kv_heads) * s.head_dim * b
    if attention == "eager":
        attn += batch * s.heads * seq_len * seq_len * 4
    mlp = 3 * tokens * s.intermediate * b
    n_logits = tokens if logits == "all" else batch
    return residual + max(attn, mlp) + n_logits * s.vocab * 4


def footprint(source, spec="int4-g128", context: int = 8192, batch: int = 1, kv_bits: int = 16,
              act_bits: int = 16, embed_spec="fp16") -> dict:
    """Inference memory by component (bytes): the plain function behind the calculator."""
    w = weight_bytes(source, spec, embed_spec)
    return {
        "linear weights": w["linear"],
        "embeddings + head + norms": w["embedding"] + w["lm_head"] + w["norms"],
        "KV cache": kv_cache_bytes(source, context, batch, kv_bits),
        "activations": activation_bytes(source, batch, 1, act_bits),
    }


def naive_table(models=(("7B", 7e9), ("70B", 70e9)), formats=(("FP32", 32), ("FP16", 16), ("INT8", 8),
                                                            ("INT4", 4))):
    """The naive table (parameters x bits / 8) in GB = 1e9 bytes, as the seed course printed it."""
    import pandas as pd

    return pd.DataFrame({f: {m: naive_bytes(n, b) / 1e9 for m, n in models} for f, b in formats})


def corrected_table(source, formats=("fp16", "int8-channel", "int4-g128", "int4-g32", "Q4_K", "Q6_K"),
                    context: int = 8192, batch: int = 1):
    """What a real checkpoint of ``source`` needs per format (GiB): weights with overhead, KV cache."""
    import pandas as pd

    shape = model_shape(source)
    rows = []
    for spec in formats:
        w = weight_bytes(shape, spec)
        nominal = nominal_bits(spec)
        kv = kv_cache_bytes(shape, context, batch)
        rows.append({
            "format": spec,
            "naive GiB (params x nominal bits)": naive_bytes(shape.n_params(), nominal) / GIB,
            "linear bits/weight": bits_per_weight(spec, shape.hidden),
            "weights GiB": w["total"] / GIB,
            f"KV cache GiB ({context} ctx, batch {batch})": kv / GIB,
            "total GiB": (w["total"] + kv) / GIB,
        })
    return pd.DataFrame(rows).set_index("format")


# --- measured bytes ----------------------------------------------------------------------------------


def measured_tensor_bytes(model) -> dict:
    """Bytes of the model's parameters as stored, each storage once (a tied head is free)."""
    seen, out = set(), {"parameters": 0, "buffers": 0}
    for kind, tensors in (("parameters", model.parameters()), ("buffers", model.buffers())):
        for t in tensors:
            key = t.untyped_storage().data_ptr()
            if key not in seen:
                seen.add(key)
                out[kind] += t.numel() * t.element_size()
    return out


def gguf_file_bytes(path) -> dict:
    """Predicted tensor bytes of a GGUF file from the block layouts, against the file's real size."""
    import gguf

    from .gguf.layouts import LAYOUTS

    reader = gguf.GGUFReader(str(path))
    by_type: dict[str, float] = {}
    for t in reader.tensors:
        cols = int(t.shape[0])  # gguf lists the row length first
        rows = int(t.n_elements) // cols
        qt = gguf.GGMLQuantizationType(t.tensor_type)
        if qt in LAYOUTS:
            nbytes = rows * LAYOUTS[qt].row_size(cols)
        else:
            nbytes = rows * cols * gguf.GGML_QUANT_SIZES[qt][1]  # F32/F16: one element per "block"
        by_type[qt.name] = by_type.get(qt.name, 0) + nbytes
        if nbytes != int(t.n_bytes):
            raise AssertionError(f"{t.name}: layout predicts {nbytes} bytes, the file holds {t.n_bytes}")
    tensors = sum(by_type.values())
    size = Path(path).stat().st_size
    return {"file": size, "tensors": tensors, "metadata + alignment": size - tensors, "by_type": by_type}
