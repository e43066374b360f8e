"""llama.cpp's side of the course's MXFP4 / NVFP4 GGUF files (:mod:`quantedu.gguf.fp4_files`).

* :func:`llama_quantize_fp4`: llama.cpp's own FP4 file, ``llama-quantize --tensor-type <kind>=<fp4>`` over the seven
  linear kinds (there is no dense FP4 mix: ``MXFP4_MOE`` converts MoE experts only). ``tests/test_gguf_fp4.py``
  shows it writes the same bytes as :func:`quantedu.gguf.fp4_files.write_fp4_gguf`.
* :func:`compare_with_ggml`: ggml's C dequantizer (``to_float`` of libggml-base) against ours on a file's tensors.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...gguf import dequantize
from . import ggml
from .locate import binary
from .tools import run_tool

LINEAR_KINDS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


def llama_quantize_fp4(src, dst, qtype: str = "MXFP4", other: str = "Q8_0", nthread: int = 1) -> Path:
    """``llama-quantize --allow-requantize --tensor-type attn_q=<qtype> ... SRC DST <other>``: the linear layers in
    ``qtype``, everything else as the ``other`` mix puts it. llama.cpp demotes an MXFP4 tensor whose rows do not
    fit to F16 and refuses such an NVFP4 tensor (no fallback defined). Written atomically."""
    from quantedu.artifacts import atomic_path

    overrides = [a for kind in LINEAR_KINDS for a in ("--tensor-type", f"{kind}={qtype.lower()}")]
    with atomic_path(Path(dst)) as tmp:
        run_tool([binary("llama-quantize"), "--allow-requantize", *overrides, src, tmp, other.upper(), nthread])
    return Path(dst)


def compare_with_ggml(path, types=("MXFP4", "NVFP4")) -> dict[str, bool]:
    """For every tensor of ``types`` in the GGUF file at ``path``: does ggml's C dequantizer give the same float32
    bits as :func:`quantedu.gguf.dequantize` on the file's bytes?"""
    from quantedu.gguf.io import open_gguf

    out = {}
    for t in open_gguf(path).tensors:
        if t.tensor_type.name in types:
            data = np.asarray(t.data).reshape(int(t.shape[1]), -1)
            ours = dequantize(data, t.tensor_type.name)
            theirs = ggml.dequantize(data, t.tensor_type.name)
            out[t.name] = bool(np.array_equal(ours.view(np.uint32), theirs.view(np.uint32)))
    return out
