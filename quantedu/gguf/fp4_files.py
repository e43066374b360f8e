"""A model as an MXFP4 / NVFP4 GGUF file that llama.cpp runs, written by the course's own quantizers.

llama.cpp has no "MXFP4 mix" for dense models (``llama-quantize``'s ``MXFP4_MOE`` converts MoE experts only), so
the plan here is explicit: every 2-D weight of the transformer blocks takes the FP4 type when its row length is a
multiple of the block (32 for MXFP4, 64 for NVFP4), the embedding / output matrix takes ``other`` (Q8_0, what the
Q4_0 / Q4_K / IQ4_NL mixes give it on the course model), norms stay F32. A block weight whose rows do not fit falls
back, and the fallbacks are counted: llama.cpp itself demotes MXFP4 to F16 (``tensor_type_fallback``) and has no
fallback for NVFP4 (it throws); we demote NVFP4 to MXFP4 when 32 divides the row, else F16.

GGUF's NVFP4 has no per-tensor scale in its blocks (llama.cpp can multiply a separate ``<tensor>.scale`` after the
matmul; we do not write one: on the course model the NVFP4 error with and without NVIDIA's per-tensor scale is
the same to 3 digits, :func:`quantedu.microscaling.scale_rounding_effect`).

llama.cpp's side (its own ``llama-quantize`` writing the same file, ggml's C dequantizer reading ours) is in
:mod:`quantedu.engines.llama_cpp.fp4`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import layout

FP4_TYPES = ("MXFP4", "NVFP4")


@dataclass
class FP4File:
    """What :func:`write_fp4_gguf` wrote: the file, the type of every tensor, the fallbacks and the sizes."""

    path: Path
    qtype: str
    types: dict[str, str]
    fallbacks: dict[str, str] = field(default_factory=dict)  # {tensor: "TYPE (why)"}
    sizes: dict = field(default_factory=dict)  # gguf.io.bits_summary: file_MiB, bits_per_weight, ...

    @property
    def n_fallbacks(self) -> int:
        return len(self.fallbacks)

    def summary(self) -> str:
        s = self.sizes
        lines = [f"{self.path.name}: {self.qtype} on the linear layers, {s.get('file_MiB', 0):.1f} MiB, "
                 f"{s.get('linear_bits_per_weight', 0):.3f} bits/weight in the linear layers "
                 f"({s.get('bits_per_weight', 0):.3f} overall), {self.n_fallbacks} fallback(s)"]
        lines += [f"  fallback: {name} -> {why}" for name, why in self.fallbacks.items()]
        return "\n".join(lines)


def _fallback(qtype: str, n_per_row: int) -> str:
    for t in ({"NVFP4": ("MXFP4",)}.get(qtype, ())):
        if n_per_row % layout(t).block_size == 0:
            return t
    return "F16"


def fp4_types(tensors: dict[str, np.ndarray], qtype: str = "MXFP4", other: str = "Q8_0") -> tuple[dict, dict]:
    """``(types, fallbacks)`` for GGUF-named ``tensors`` (``gguf.io.model_tensors``): see the module docstring."""
    qtype = qtype.upper()
    if qtype not in FP4_TYPES:
        raise ValueError(f"qtype must be one of {FP4_TYPES}, got {qtype!r}")
    block = layout(qtype).block_size
    types, fallbacks = {}, {}
    for name, w in tensors.items():
        n_per_row = w.shape[-1]
        if w.ndim < 2:
            types[name] = "F32"
        elif not name.startswith("blk."):
            types[name] = other if n_per_row % layout(other).block_size == 0 else "F16"
        elif n_per_row % block == 0:
            types[name] = qtype
        else:
            types[name] = _fallback(qtype, n_per_row)
            fallbacks[name] = f"{types[name]} (rows of {n_per_row} are not a multiple of {block})"
    return types, fallbacks


def write_fp4_gguf(model, path, qtype: str = "MXFP4", other: str = "Q8_0", reference_gguf=None,
                   overwrite: bool = False, verbose: bool = False) -> FP4File:
    """Write ``model`` (a Llama-architecture transformers model) as a GGUF file with its linear layers in ``qtype``
    (:func:`quantedu.gguf.io.write_gguf` with an explicit type per tensor). Prints the fallbacks if ``verbose``."""
    from .io import bits_summary, model_tensors, write_gguf

    types, fallbacks = fp4_types(model_tensors(model), qtype, other)
    write_gguf(model, path, types=types, reference_gguf=reference_gguf, overwrite=overwrite)
    out = FP4File(Path(path), qtype.upper(), types, fallbacks, bits_summary(path))
    if verbose:
        print(out.summary())
    return out


def weights_digest(tensors: dict[str, np.ndarray]) -> str:
    """A short digest of GGUF-named tensors (``gguf.io.model_tensors``): a cache key that changes with any weight."""
    import hashlib
    h = hashlib.sha256()
    for name, w in tensors.items():
        h.update(name.encode())
        h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()[:16]


def fp4_gguf(model, qtype: str = "MXFP4", other: str = "Q8_0") -> FP4File:
    """The cached GGUF of ``model`` with its linear layers in ``qtype`` (what notebook 08 measures in llama.cpp
    beside Q4_0 / IQ4_NL / Q4_K). The cache key holds a digest of the weights and of this code, so a model changed
    in place, or newer quantizers, never get an old file."""
    from quantedu import artifacts

    from . import fp4, io
    tensors = io.model_tensors(model)
    label = Path(str(getattr(model.config, "_name_or_path", "") or "model")).name or "model"
    key = artifacts.cache_key(label, qtype.upper(), other, weights_digest(tensors),
                              artifacts.code_fingerprint(fp4, io.write_gguf, fp4_types))
    fname = f"{label}.{qtype.upper()}.gguf"
    folder = artifacts.cached_dir("gguf-fp4", key, lambda tmp: write_fp4_gguf(model, tmp / fname, qtype, other),
                                  meta={"model": label, "qtype": qtype})
    types, fallbacks = fp4_types(tensors, qtype, other)
    return FP4File(folder / fname, qtype.upper(), types, fallbacks, io.bits_summary(folder / fname))
