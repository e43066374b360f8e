"""Write FP4 / FP8 weight-quantized models as compressed-tensors checkpoints (what llm-compressor writes and vLLM
and transformers load): the schemes MXFP4A16, NVFP4A16 and FP8_DYNAMIC (weights; activations stay dynamic).

Per quantized ``nn.Linear`` (compressed-tensors 0.19, ``compressors/{nvfp4,mxfp4}/base.py`` and ``float-quantized``):

===========  ========================  =====================================================================
scheme       format                    tensors
===========  ========================  =====================================================================
MXFP4A16     ``mxfp4-pack-quantized``  ``weight_packed`` uint8 ``(rows, cols/2)``: E2M1 codes, column ``2i`` in the
                                       low nibble and ``2i+1`` in the high one; ``weight_scale`` uint8 E8M0 codes
                                       ``(rows, cols/32)``
NVFP4A16     ``nvfp4-pack-quantized``  ``weight_packed`` as above; ``weight_scale`` float8_e4m3fn ``(rows, cols/16)``;
                                       ``weight_global_scale`` float32 ``(1,)``: value = E2M1 * scale / global
FP8_DYNAMIC  ``float-quantized``       ``weight`` float8_e4m3fn ``(rows, cols)``; ``weight_scale`` float32 ``(rows, 1)``
===========  ========================  =====================================================================

(ggml's MXFP4 blocks pair column ``j`` with ``j + 16`` instead, :mod:`quantedu.gguf.fp4`: same codes, other bytes.)
llm-compressor gives q/k/v and gate/up one shared NVFP4 global scale (vLLM fuses those matmuls);
:func:`fused_tensor_amax` reproduces that, and :func:`quantize_model_fp` uses it.
The checkpoint stores codes and scales, so any scale rounding (:mod:`quantedu.microscaling`) or a GPTQ result
on the FP4 grid reloads exactly; ``tests/test_export_fp.py`` reloads them with transformers.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .. import fp
from .. import microscaling as ms
from ..artifacts import check_target
from .write import _base_state_dict, _write

SCHEMES = {"MXFP4A16": ms.FP4Config("mxfp4"), "NVFP4A16": ms.FP4Config("nvfp4"), "FP8_DYNAMIC": "e4m3"}
FORMATS = {"MXFP4A16": "mxfp4-pack-quantized", "NVFP4A16": "nvfp4-pack-quantized", "FP8_DYNAMIC": "float-quantized"}
FUSED = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))  # llm-compressor's FUSED_LAYER_NAMES (dense)


def _scheme(scheme: str) -> str:
    key = str(scheme).upper()
    if key not in SCHEMES:
        raise ValueError(f"scheme must be one of {list(SCHEMES)}, got {scheme!r}")
    return key


def fused_tensor_amax(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{linear name: amax}`` where q/k/v (and gate/up) of one block share the largest of their amaxes."""
    out = {}
    for parent_name, parent in model.named_modules():
        for group in FUSED:
            if all(isinstance(getattr(parent, n, None), nn.Linear) for n in group):
                amax = max(getattr(parent, n).weight.detach().float().abs().amax() for n in group)
                out.update({f"{parent_name}.{n}": amax for n in group})
    return out


def quantize_model_fp(model: nn.Module, scheme: str = "NVFP4A16", config: ms.FP4Config | None = None,
                      ignore=("lm_head",), fuse_global_scales: bool = True) -> tuple[dict, list[str]]:
    """Round-to-nearest FP4/FP8 records of every ``nn.Linear`` (the model is not changed).

    Returns ``(records, skipped)``: ``{name: FP4Weight | FP8Weight}`` and the linear layers left in full precision
    (ignored ones, and those whose columns the group size does not divide). ``config`` overrides the scheme's
    FP4 settings (e.g. ``scale_rounding="round"`` to equal llm-compressor's MXFP4)."""
    key = _scheme(scheme)
    cfg = config or SCHEMES[key]
    amax = fused_tensor_amax(model) if key == "NVFP4A16" and fuse_global_scales else {}
    records, skipped = {}, []
    for name, m in model.named_modules():
        if not isinstance(m, nn.Linear):
            continue
        w = m.weight.detach()
        if name in ignore or name.split(".")[-1] in ignore or (key != "FP8_DYNAMIC" and w.shape[1] % cfg.group_size):
            skipped.append(name)
        elif key == "FP8_DYNAMIC":
            records[name] = fp.fp8_quantize(w, cfg, "channel")
        else:
            records[name] = ms.quantize_fp4(w, cfg, tensor_amax=amax.get(name))
    return records, skipped


def pack_fp4(codes: torch.Tensor) -> torch.Tensor:
    """E2M1 codes ``(rows, cols)`` -> compressed-tensors' ``weight_packed`` ``(rows, cols/2)``."""
    return (codes[:, 0::2] | (codes[:, 1::2] << 4)).contiguous()


def _tensors(name: str, rec, key: str, layer: nn.Linear) -> dict[str, torch.Tensor]:
    rows, cols = layer.weight.shape
    if tuple(rec.codes.shape) != (rows, cols):
        raise ValueError(f"{name}: codes have shape {tuple(rec.codes.shape)}, the layer's weight {(rows, cols)}")
    if key == "FP8_DYNAMIC":
        if not isinstance(rec, fp.FP8Weight) or rec.fmt != "e4m3" or rec.scale.shape != (rows, 1):
            raise ValueError(f"{name}: FP8_DYNAMIC stores per-channel E4M3 weights (fp8_quantize(w, 'e4m3', "
                             "'channel')); got another record")
        return {"weight": rec.codes.view(torch.float8_e4m3fn), "weight_scale": rec.scale.to(layer.weight.dtype)}
    want = SCHEMES[key].fmt
    if not isinstance(rec, ms.FP4Weight) or rec.config.fmt != want or rec.config.group_size != SCHEMES[key].group_size:
        raise ValueError(f"{name}: {key} needs {want} records with groups of {SCHEMES[key].group_size} "
                         "(microscaling.quantize_fp4); got another record")
    if key == "NVFP4A16" and rec.config.scale_rounding == "ggml":
        raise ValueError(f"{name}: ggml's UE4M3 scale rounding is for GGUF; compressed-tensors reads E4M3 scales "
                         "(use scale_rounding='nearest_even' or 'up')")
    out = {"weight_packed": pack_fp4(rec.codes), "weight_scale": rec.scale_codes}
    if key == "NVFP4A16":
        out["weight_scale"] = rec.scale_codes.view(torch.float8_e4m3fn)
        out["weight_global_scale"] = rec.global_scale.float().reshape(1)
    return out


def save_fp_checkpoint(model: nn.Module, records: dict, path, scheme: str = "NVFP4A16", tokenizer=None) -> Path:
    """Write ``model`` with the ``records`` (from :func:`quantize_model_fp`, or GPTQ on an FP grid) as a
    compressed-tensors checkpoint of ``scheme``. Reload with ``AutoModelForCausalLM.from_pretrained(path,
    quantization_config=CompressedTensorsConfig(dequantize=True))`` (weights come back in the model's dtype;
    NVFP4 in bfloat16, see the module docstring of the test)."""
    from compressed_tensors.quantization import QuantizationConfig, preset_name_to_scheme

    key = _scheme(scheme)
    check_target(path)
    if not records:
        raise ValueError("no quantized layers were given: pass the records quantize_model_fp returned")
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    missing = sorted(set(records) - set(linears))
    if missing:
        raise KeyError(f"not linear layers of this model: {missing[:5]}")
    parts = {name: _tensors(name, rec, key, linears[name]) for name, rec in records.items()}  # checks first
    sd = _base_state_dict(model, records)
    for name, tensors in parts.items():
        sd.update({f"{name}.{k}": v.contiguous() for k, v in tensors.items()})
    qscheme = preset_name_to_scheme(key, ["Linear"])
    qscheme.format = FORMATS[key]
    qcfg = QuantizationConfig(config_groups={"group_0": qscheme}, format=FORMATS[key],
                              quantization_status="compressed", ignore=sorted(n for n in linears if n not in records))
    return _write(path, model, sd, qcfg.model_dump(exclude_none=False), tokenizer)


def load_fp_checkpoint(path, dtype=torch.float32):
    """transformers + compressed-tensors reload of a checkpoint, dequantized to plain ``nn.Linear`` weights."""
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype,
                                                quantization_config=CompressedTensorsConfig(dequantize=True)).eval()
