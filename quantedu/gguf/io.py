"""Write and read GGUF files: a transformers model -> GGUF with any per-tensor type mix, and :func:`contents` (what a file holds).

Writing follows what llama.cpp's ``convert_hf_to_gguf.py`` does for a Llama-architecture model:
HF module names become GGUF tensor names (gguf-py's tensor name map), ``q_proj``/``k_proj`` rows are
permuted back to llama.cpp's rotary layout (``LlamaModel.permute``), tied embeddings are stored once as
``token_embd.weight``, 1-D tensors (norms) stay F32. Hyper-parameters (widths, heads, layers, rope,
norm epsilon) come from the model being written; the tokenizer vocabulary/merges and chat template
are copied from a reference GGUF (the file the model came from), which must have the model's vocabulary.
Tensors are quantized with our own :mod:`quantedu.gguf` quantizers. Files are written to a temporary
sibling and renamed into place, so an interrupted kernel never leaves a half-written ``.gguf``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader, GGUFValueType, GGUFWriter

from . import quantize as _quantize
from .header import GGUFError, read_header
from .imatrix import gguf_tensor_names
from .layouts import LAYOUTS
from .mixes import TensorInfo, assign_types

FLOAT_TYPES = {T.F32: np.float32, T.F16: np.float16}
SKIP_KEYS = {"general.architecture", "general.file_type", "general.quantization_version", "GGUF.version",
             "GGUF.tensor_count", "GGUF.kv_count"}


def open_gguf(path) -> GGUFReader:
    """``GGUFReader`` with a clear error for a missing, truncated or corrupt file."""
    path = Path(path)
    if not path.is_file():
        raise GGUFError(f"{path} does not exist")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise GGUFError(f"{path} is not a GGUF file (starts with {magic!r}, expected b'GGUF')")
    try:
        reader = GGUFReader(path)
    except Exception as exc:  # gguf-py raises assorted ValueError/IndexError/struct errors on bad data
        raise GGUFError(f"{path} is truncated or corrupt ({type(exc).__name__}: {exc}); "
                        f"re-create it (downloads and writes can be interrupted)") from None
    size = path.stat().st_size
    for t in reader.tensors:
        if t.data_offset + t.n_bytes > size or t.data.nbytes != t.n_bytes:
            raise GGUFError(f"{path} is truncated: tensor {t.name} ends at byte {t.data_offset + t.n_bytes:,} "
                            f"but the file has {size:,} bytes; re-create it")
    return reader


def tensor_table(path):
    """The tensor table (name, type, shape, bytes, bits per weight, offset) from the header alone
    (:func:`quantedu.gguf.header.read_header`: instant, where ``GGUFReader`` decodes the whole vocabulary)."""
    import pandas as pd

    rows = read_header(path, values=False)[1]
    return pd.DataFrame([{**r, "ndim": len(r["shape"])} for r in rows])


def read_metadata(reader: GGUFReader) -> dict[str, tuple]:
    """``{key: (value, type, sub_type)}`` of every key-value field."""
    out = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or not field.types:
            continue
        sub = field.types[-1] if field.types[0] == GGUFValueType.ARRAY else None
        out[key] = (field.contents(), field.types[0], sub)
    return out


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF -> llama.cpp row order of q/k projections (convert_hf_to_gguf ``LlamaModel.permute``)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def tensor_names(model) -> dict[str, str]:
    """HF state-dict name -> GGUF tensor name, for every tensor a GGUF file of ``model`` holds (a tied
    ``lm_head`` is stored once, as ``token_embd``)."""
    cfg = model.config
    names = gguf_tensor_names(model)
    import gguf as _g
    tmap = _g.get_tensor_name_map(_g.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    tied = getattr(cfg, "tie_word_embeddings", False)
    out = {}
    for hf_name in model.state_dict():
        base, _, suffix = hf_name.rpartition(".")
        if tied and hf_name.startswith("lm_head"):
            continue
        g = names.get(base)
        if g is None:
            mapped = tmap.get_name(base)
            if mapped is None:
                continue
            g = f"{mapped}.{suffix}"
        elif suffix != "weight":
            g = g.replace(".weight", f".{suffix}")
        out[hf_name] = g
    return out


def _qk_heads(model, gguf_name: str) -> int | None:
    """Heads of a q/k projection, whose rows llama.cpp stores permuted (:func:`permute_qk`); None otherwise."""
    cfg = model.config
    if gguf_name.endswith("attn_q.weight"):
        return cfg.num_attention_heads
    if gguf_name.endswith("attn_k.weight"):
        return cfg.num_key_value_heads
    return None


def model_tensors(model) -> dict[str, np.ndarray]:
    """GGUF name -> float32 numpy tensor (GGUF row-major: ``(rows, n_per_row)``), in llama.cpp's order."""
    state = model.state_dict()
    out = {}
    for hf_name, g in tensor_names(model).items():
        w = state[hf_name].detach().float().cpu().numpy()
        heads = _qk_heads(model, g)
        out[g] = np.ascontiguousarray(permute_qk(w, heads) if heads else w)
    return out


def read_weights_into(model, path):
    """Copy every tensor of the GGUF file at ``path``, dequantized, into ``model`` (in place; returned): the
    weights a quantized file holds, in torch, for comparing them with the model they came from on the same
    tokens. The inverse of :func:`write_gguf` (q/k rows un-permuted); the file must be of this model's shapes."""
    import torch

    from . import dequantize
    reader, names = open_gguf(path), tensor_names(model)
    tensors = {t.name: t for t in reader.tensors}
    missing = sorted(set(names.values()) - set(tensors))
    if missing:
        raise ValueError(f"{path} lacks {len(missing)} of this model's tensors (e.g. {missing[0]}): "
                         "a GGUF file of another model? Read a file written from this model.")
    state = model.state_dict()
    with torch.no_grad():
        for hf_name, g in names.items():
            t, target = tensors[g], state[hf_name]
            shape = tuple(int(n) for n in reversed(t.shape))  # GGUF lists the row length first
            if t.tensor_type in FLOAT_TYPES:
                w = np.asarray(t.data, dtype=np.float32).reshape(shape)
            else:
                w = dequantize(np.asarray(t.data).reshape(shape[0], -1), t.tensor_type)
            heads = _qk_heads(model, g)
            if heads:  # undo permute_qk: (heads, half, 2, cols) -> (heads, 2, half, cols)
                w = w.reshape(heads, -1, 2, w.shape[-1]).swapaxes(1, 2).reshape(w.shape)
            if tuple(w.shape) != tuple(target.shape):
                raise ValueError(f"{g} is {tuple(w.shape)} in {path} but {tuple(target.shape)} in the model")
            target.copy_(torch.tensor(w))  # a copy: the file's arrays are read-only memory maps
    return model


def plan_types(tensors: dict[str, np.ndarray], types, model_config=None, has_imatrix=False) -> dict[str, T]:
    """Resolve ``types``: a mix name (``"Q4_K_M"``), a single type for every quantizable matrix
    (``"Q8_0"``, ``"F16"``) or an explicit ``{name: type}`` dict."""
    infos = [TensorInfo(n, tuple(reversed(w.shape)), T.F32) for n, w in tensors.items()]
    if isinstance(types, dict):
        return {i.name: T[types[i.name].upper()] if isinstance(types.get(i.name), str) else types.get(i.name, T.F32)
                for i in infos}
    name = str(types).upper()
    if name in ("F32", "F16", "BF16"):
        return {i.name: (T[name] if len(i.shape) > 1 else T.F32) for i in infos}
    from .mixes import DEFAULT_TYPE
    if name in DEFAULT_TYPE:
        cfg = model_config
        return assign_types(infos, name, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads,
                            has_imatrix=has_imatrix)
    raise ValueError(f"types must be a mix name, F32/F16/BF16, or a dict; got {types!r}")


def _rope_theta(cfg) -> float | None:
    theta = getattr(cfg, "rope_theta", None)
    params = getattr(cfg, "rope_parameters", None) or {}
    return float(theta if theta is not None else params.get("rope_theta", 10000.0))


def model_metadata(cfg, arch: str = "llama") -> dict[str, tuple]:
    """The hyper-parameter keys llama.cpp reads for ``arch``, from the model's own config.

    (``convert_hf_to_gguf.py`` ``Model.set_gguf_parameters``.) Copying them from another file would
    describe another model: a 64-wide model written as 576-wide, which llama.cpp refuses to load.
    """
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    u32, f32 = GGUFValueType.UINT32, GGUFValueType.FLOAT32
    values = {
        "context_length": (cfg.max_position_embeddings, u32), "embedding_length": (cfg.hidden_size, u32),
        "block_count": (cfg.num_hidden_layers, u32), "feed_forward_length": (cfg.intermediate_size, u32),
        "attention.head_count": (cfg.num_attention_heads, u32),
        "attention.head_count_kv": (getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads, u32),
        "rope.dimension_count": (head_dim, u32), "rope.freq_base": (_rope_theta(cfg), f32),
        "attention.layer_norm_rms_epsilon": (float(cfg.rms_norm_eps), f32), "vocab_size": (cfg.vocab_size, u32),
    }
    return {f"{arch}.{k}": (v, t, None) for k, (v, t) in values.items()}


def _metadata_for(model, ref: GGUFReader, ref_path) -> tuple[str, dict]:
    meta = read_metadata(ref)
    arch = meta.get("general.architecture", ("llama",))[0]
    if getattr(model.config, "model_type", "llama") != "llama":
        raise ValueError(f"write_gguf writes Llama-architecture models; this one is {model.config.model_type!r}. "
                         "Use llama.cpp's convert_hf_to_gguf.py for other architectures.")
    tokens = meta.get("tokenizer.ggml.tokens", ([],))[0]
    if tokens and len(tokens) != model.config.vocab_size:
        raise ValueError(
            f"the reference GGUF {ref_path} has a {len(tokens)}-token vocabulary but the model has "
            f"vocab_size={model.config.vocab_size}: its tokenizer would not fit. Pass reference_gguf= a GGUF "
            "made from this model's tokenizer (e.g. by llama.cpp's convert_hf_to_gguf.py).")
    meta = {k: v for k, v in meta.items() if not k.startswith(f"{arch}.")}
    meta.update(model_metadata(model.config, arch))
    return arch, meta


def _encode(w: np.ndarray, qtype: T, imatrix: np.ndarray | None):
    if qtype == T.F32:
        return w.astype(np.float32), None
    if qtype == T.F16:
        return w.astype(np.float16), None
    if qtype == T.BF16:
        from gguf import quants
        return quants.quantize(w, T.BF16), T.BF16
    if qtype not in LAYOUTS:
        raise ValueError(f"cannot write type {qtype.name}")
    return _quantize(w, qtype, imatrix), qtype


def write_gguf(model, path, types="F16", reference_gguf=None, imatrix: dict | None = None,
               file_type: int | None = None, overwrite: bool = False) -> dict[str, T]:
    """Write ``model`` as a GGUF file at ``path`` and return the type chosen for every tensor.

    ``types``: see :func:`plan_types`. ``reference_gguf``: the GGUF whose metadata (tokenizer, chat
    template, hyper-parameters) to copy - by default the offline course model's file. ``imatrix``:
    ``{gguf tensor name: importance per column}`` used by every quantizer that has an imatrix path.
    An existing file at ``path`` is replaced only if this package wrote it or ``overwrite=True``; a
    folder there is refused.
    """
    from quantedu.artifacts import atomic_path, check_target
    from quantedu.models import offline_gguf_path
    check_target(path, overwrite)
    ref_path = reference_gguf or offline_gguf_path()
    arch, meta = _metadata_for(model, open_gguf(ref_path), ref_path)
    tensors = model_tensors(model)
    plan = plan_types(tensors, types, model.config, has_imatrix=imatrix is not None)
    path = Path(path)
    with atomic_path(path, overwrite=overwrite) as tmp:
        writer = GGUFWriter(str(tmp), arch)
        for key, (val, vtype, sub) in meta.items():
            if key not in SKIP_KEYS:
                writer.add_key_value(key, val, vtype, sub_type=sub)
        if file_type is not None:
            writer.add_file_type(file_type)
        writer.add_quantization_version(2)
        for name, w in tensors.items():
            data, raw = _encode(w, plan[name], (imatrix or {}).get(name))
            writer.add_tensor(name, data, raw_dtype=raw)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return plan


def bits_summary(path) -> dict:
    """File size and effective bits per weight (all tensors / linear layers) from :func:`tensor_table`."""
    t = tensor_table(path)
    lin = t[t["name"].str.startswith("blk.") & (t["ndim"] == 2)]
    return {"file_MiB": os.path.getsize(path) / 2**20,
            "bits_per_weight": float(8 * t["bytes"].sum() / t["n_params"].sum()),
            "linear_bits_per_weight": float(8 * lin["bytes"].sum() / lin["n_params"].sum()),
            "types": {k: int(v) for k, v in t["type"].value_counts().items()}}


@dataclass
class GGUFContents:
    """What :func:`contents` returns: metadata, the tensor table and the effective bits per weight."""

    path: Path
    metadata: "object"  # DataFrame: key, type, value (long arrays shortened)
    tensors: "object"  # DataFrame: name, type, shape, n_params, bytes, bits_per_weight
    file_bytes: int

    @property
    def bits_per_weight(self) -> float:
        """All tensor bytes * 8 / all parameters (norms and embeddings included)."""
        return 8 * self.tensors["bytes"].sum() / self.tensors["n_params"].sum()

    @property
    def linear_bits_per_weight(self) -> float:
        """The same over the transformer blocks' 2-D matrices only (what a mix name is about)."""
        lin = self.tensors[self.tensors["name"].str.startswith("blk.") & (self.tensors["ndim"] == 2)]
        return 8 * lin["bytes"].sum() / lin["n_params"].sum()

    def type_counts(self):
        return self.tensors.groupby("type").agg(tensors=("name", "size"), bytes=("bytes", "sum"))

    def __repr__(self):
        return (f"GGUF {self.path.name}: {len(self.tensors)} tensors, {self.file_bytes / 2**20:.1f} MiB, "
                f"{self.bits_per_weight:.3f} bits/weight ({self.linear_bits_per_weight:.3f} in the linear layers)")


def _short(v):
    if isinstance(v, list):
        return f"[{len(v)} items: {', '.join(map(repr, v[:3]))}, ...]" if len(v) > 3 else repr(v)
    if isinstance(v, str) and len(v) > 80:
        return v[:77] + "..."
    return v


def contents(path) -> GGUFContents:
    """Metadata and per-tensor type/shape/bytes of a GGUF file, plus effective bits per weight."""
    import pandas as pd
    path = Path(path)
    reader = open_gguf(path)
    meta = read_metadata(reader)
    mdf = pd.DataFrame([{"key": k, "type": v[1].name + (f"[{v[2].name}]" if v[2] is not None else ""),
                         "value": _short(v[0])} for k, v in meta.items()])
    rows = []
    for t in reader.tensors:
        shape = tuple(int(s) for s in t.shape)
        rows.append({"name": t.name, "type": t.tensor_type.name, "shape": shape, "ndim": len(shape),
                     "n_params": int(t.n_elements), "bytes": int(t.n_bytes),
                     "bits_per_weight": 8 * int(t.n_bytes) / int(t.n_elements), "offset": int(t.data_offset)})
    return GGUFContents(path, mdf, pd.DataFrame(rows), os.path.getsize(path))
