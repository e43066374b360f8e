"""Read the course's exports back: every layout :mod:`quantedu.export` writes, dequantized by our own code.

This is the torch side of every "same weights, same perplexity" check: an engine (vLLM, transformers'
compressed-tensors loader) runs the file with its kernels, and :func:`load_quantized_model` builds a plain
transformers model whose linear weights are ``scales * (codes - zeros)`` read from the very same file.

* GPTQ (``quant_method: "gptq"``): ``qweight`` packed along the input dimension, ``qzeros`` along the
  output dimension storing ``zero - 1`` (``checkpoint_format: "gptq"``, v1) or the zero itself (``"gptq_v2"``).
* AWQ GEMM (``quant_method: "awq"``): ``qweight``/``qzeros`` packed along the output dimension in
  AutoAWQ's interleaved nibble order, zeros stored as they are.
* compressed-tensors ``pack-quantized``: ``weight_packed`` (dense bitstream along the input dimension),
  ``weight_scale``, ``weight_zero_point`` (asymmetric only, packed along the output dimension).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..primitives import QuantConfig, QuantizedLayer, dequantize, group_index
from .packing import unpack_awq, unpack_bitstream, unpack_int32

__all__ = ["load_gptq_weights", "load_awq_layers", "load_awq_weights", "load_compressed_tensors_weights",
           "load_quantized_weights", "load_quantized_model", "load_gptq_model", "loaded_bytes"]

_QUANT_SUFFIXES = (".qweight", ".qzeros", ".scales", ".g_idx", ".weight_packed", ".weight_scale",
                   ".weight_zero_point", ".weight_shape")


def _read(path):
    from safetensors.torch import load_file

    path = Path(path)
    qc = json.loads((path / "config.json").read_text()).get("quantization_config")
    if not qc:
        raise ValueError(f"{path}: config.json has no quantization_config (not a quantized export)")
    return qc, load_file(str(path / "model.safetensors"))


def _grid(bits: int, group_size: int, sym: bool, cols: int) -> QuantConfig:
    if group_size in (-1, None) or group_size >= cols:
        return QuantConfig(bits=bits, symmetric=sym, granularity="channel")
    return QuantConfig(bits=bits, group_size=group_size, symmetric=sym)


def load_gptq_weights(path) -> dict[str, torch.Tensor]:
    """Unpack a GPTQ (v1 or v2) checkpoint into dequantized ``{layer_name: weight}`` (float32)."""
    qc, sd = _read(path)
    bits, g = qc["bits"], qc["group_size"]
    # transformers' GPTQConfig: ``format`` (what optimum 2.x / GPTQModel write), overridden by the legacy
    # ``checkpoint_format`` (AutoGPTQ's, the course's). optimum's save_pretrained path writes "format": "gptq_v2".
    fmt = qc.get("checkpoint_format") or qc.get("format") or "gptq"
    offset = 1 if str(fmt).lower() == "gptq" else 0
    out = {}
    for key in [k for k in sd if k.endswith(".qweight")]:
        name = key[: -len(".qweight")]
        codes = unpack_int32(sd[key], bits, dim=0).t()
        zeros = unpack_int32(sd[f"{name}.qzeros"], bits, dim=1).t().float() + offset
        scales = sd[f"{name}.scales"].t().float()
        config = _grid(bits, g, qc["sym"], codes.shape[1])
        out[name] = dequantize(codes, scales, zeros, config, g_idx=sd[f"{name}.g_idx"].long())
    return out


def load_awq_layers(path) -> dict[str, QuantizedLayer]:
    """An AutoAWQ GEMM checkpoint's layers as the records the algorithms return (:class:`QuantizedLayer`:
    ``codes`` uint8 ``(rows, cols)``, ``scales``/``zeros`` float32 ``(rows, n_groups)``, natural ``g_idx``,
    the grid's ``config``, and ``weight`` dequantized): what :func:`quantedu.export.save_awq` wrote."""
    qc, sd = _read(path)
    if qc.get("quant_method") != "awq" or str(qc.get("version", "gemm")).lower() != "gemm":
        raise ValueError(f"{path}: not an AWQ GEMM checkpoint ({qc.get('quant_method')}, {qc.get('version')})")
    bits = qc.get("bits", qc.get("w_bit", 4))
    g = qc.get("group_size", qc.get("q_group_size", -1))
    out = {}
    for key in [k for k in sd if k.endswith(".qweight")]:
        name = key[: -len(".qweight")]
        codes = unpack_awq(sd[key]).t().contiguous()  # (rows, cols)
        config = _grid(bits, g, False, codes.shape[1])
        zeros, scales = unpack_awq(sd[f"{name}.qzeros"]).t().float(), sd[f"{name}.scales"].t().float()
        out[name] = QuantizedLayer(weight=dequantize(codes, scales, zeros, config), codes=codes, scales=scales,
                                   zeros=zeros, g_idx=group_index(codes.shape[1], config).to(torch.int32),
                                   config=config)
    return out


def load_awq_weights(path) -> dict[str, torch.Tensor]:
    """Unpack an AutoAWQ GEMM checkpoint into dequantized ``{layer_name: weight}`` (float32)."""
    return {name: layer.weight for name, layer in load_awq_layers(path).items()}


def load_compressed_tensors_weights(path) -> dict[str, torch.Tensor]:
    """Unpack a compressed-tensors ``pack-quantized`` checkpoint into ``{layer_name: weight}`` (float32)."""
    qc, sd = _read(path)
    (scheme,) = qc["config_groups"].values()
    args = scheme["weights"]
    bits, sym = args["num_bits"], args["symmetric"]
    g = args.get("group_size") if args.get("strategy") == "group" else -1
    out = {}
    for key in [k for k in sd if k.endswith(".weight_packed")]:
        name = key[: -len(".weight_packed")]
        rows, cols = (int(v) for v in sd[f"{name}.weight_shape"])
        codes = unpack_bitstream(sd[key], bits, dim=1, length=cols)
        scales = sd[f"{name}.weight_scale"].float()
        if sym:
            zeros = torch.full_like(scales, float(2 ** (bits - 1)))
        else:
            zeros = unpack_bitstream(sd[f"{name}.weight_zero_point"], bits, dim=0, length=rows).float()
        out[name] = dequantize(codes, scales, zeros, _grid(bits, g, sym, cols))
    return out


def load_quantized_weights(path) -> dict[str, torch.Tensor]:
    """Dequantized weights of any export this package writes (GPTQ v1/v2, AWQ GEMM, compressed-tensors)."""
    qc, _ = _read(path)
    method = qc.get("quant_method")
    readers = {"gptq": load_gptq_weights, "awq": load_awq_weights,
               "compressed-tensors": load_compressed_tensors_weights}
    if method not in readers:
        raise ValueError(f"{path}: quant_method {method!r} is not one of the course's layouts {sorted(readers)}")
    return readers[method](path)


def load_quantized_model(path, dtype=torch.float32):
    """A plain transformers model with the export's weights dequantized from the file (our reader, no kernels)."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    config = AutoConfig.from_pretrained(path)
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in load_file(str(path / "model.safetensors")).items()
          if not k.endswith(_QUANT_SUFFIXES)}
    sd.update({f"{name}.weight": w.to(dtype) for name, w in load_quantized_weights(path).items()})
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [m for m in missing if not (m == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise ValueError(f"checkpoint does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if config.tie_word_embeddings:
        model.tie_weights()
    return model.eval()


def load_gptq_model(path, dtype=torch.float32):
    """A plain transformers model with a GPTQ checkpoint's weights dequantized (kept name; any layout works)."""
    return load_quantized_model(path, dtype)


def loaded_bytes(model, dtype: str = "bfloat16") -> float:
    """Bytes of the weights an engine loads from a checkpoint folder: every safetensors tensor, floating ones in
    ``dtype`` (vLLM casts them), packed integer ones as stored; NaN for a hub id (nothing on disk to read)."""
    import math

    from safetensors import safe_open
    folder = Path(str(model))
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    if not files:
        return math.nan
    width = {"bfloat16": 2, "float16": 2, "half": 2, "float32": 4}.get(dtype, 2)
    sizes = {"I32": 4, "I64": 8, "U8": 1, "I8": 1, "I16": 2, "U32": 4, "BOOL": 1}
    total = 0
    for f in files:
        with safe_open(str(f), "pt") as st:
            for key in st.keys():
                t = st.get_slice(key)
                total += math.prod(t.get_shape()) * sizes.get(t.get_dtype(), width)
    return total
