"""Write (and read back) a W8A8 model as a compressed-tensors ``int-quantized`` checkpoint, the layout
llm-compressor writes for its ``W8A8`` scheme and vLLM serves with its int8 kernels (on a CPU:
``CompressedTensorsW8A8Int8`` -> oneDNN).

Per quantized layer (a :class:`quantedu.w8a8.W8A8Linear`):

* ``<name>.weight``: int8 ``(out, in)``, the signed codes (``w ~= weight * weight_scale``);
* ``<name>.weight_scale``: ``(out, 1)`` in the checkpoint dtype (bf16), one scale per output channel;
* ``<name>.input_scale``: ``(1,)`` fp32, only for static per-tensor activations (dynamic per-token
  activations have no tensor: their scales are computed at run time).

``config.json`` carries ``quantization_config`` with ``quant_method: compressed-tensors``, ``format:
int-quantized``, one config group targeting ``Linear`` with 8-bit symmetric ``channel`` weights and 8-bit
symmetric ``token``/dynamic (or ``tensor``/static) input activations, and ``ignore`` listing the linear
layers left in 16 bits (``lm_head``). Everything else (embeddings, norms, a head) is stored in bf16.
A model smoothed by :mod:`quantedu.smoothquant` or rotated offline by :mod:`quantedu.rotation` is an
ordinary Llama with other weights, so it is written the same way; an online rotation is not (vLLM's
Llama has no place for it) and is refused.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..artifacts import check_target
from .write import _base_state_dict, _write
from ..w8a8 import W8A8Linear, w8a8_layers

__all__ = ["FORMAT", "w8a8_quantization_config", "w8a8_state_dict", "save_w8a8", "load_w8a8"]

FORMAT = "int-quantized"


def _scheme(activations: str) -> dict:
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    weights = QuantizationArgs(num_bits=8, type="int", symmetric=True, strategy="channel", dynamic=False)
    inputs = QuantizationArgs(num_bits=8, type="int", symmetric=True,
                              strategy="token" if activations == "dynamic" else "tensor",
                              dynamic=activations == "dynamic")
    return QuantizationScheme(targets=["Linear"], weights=weights, input_activations=inputs, format=FORMAT)


def w8a8_quantization_config(activations: str, ignore: list[str]) -> dict:
    """The ``quantization_config`` of a W8A8 checkpoint (``activations``: ``"dynamic"`` or ``"static"``)."""
    from compressed_tensors.quantization import QuantizationConfig

    cfg = QuantizationConfig(config_groups={"group_0": _scheme(activations)}, format=FORMAT,
                             quantization_status="compressed", ignore=sorted(ignore))
    return cfg.model_dump(exclude_none=False)


def _layers(model: nn.Module) -> tuple[dict[str, W8A8Linear], str]:
    layers = w8a8_layers(model)
    if not layers:
        raise ValueError("the model has no W8A8 layers: run quantedu.w8a8.quantize_model_w8a8(model) first")
    kinds = {m.activations for m in layers.values()}
    if len(kinds) > 1:
        raise ValueError("some layers have static and some dynamic activation scales; a checkpoint holds one "
                         "scheme: quantize the whole model with one activations= setting")
    online = [n for n, m in model.named_modules() if type(m).__name__ == "OnlineHadamardMLP"]
    if online:
        raise ValueError(f"{online[0]} rotates down_proj's input at run time (rotate_model(online_down=True)); "
                         "vLLM's Llama has no such step, so the checkpoint would compute another function. "
                         "Rotate with online_down=False to export.")
    return layers, kinds.pop()


def w8a8_state_dict(model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> dict[str, torch.Tensor]:
    """The tensors of the checkpoint: int8 codes and scales of the W8A8 layers, the rest in ``dtype``."""
    layers, _ = _layers(model)
    sd = _base_state_dict(model, {}, dtype)
    for name, layer in layers.items():
        for buf in ("qweight", "weight_scale", "input_scale"):
            sd.pop(f"{name}.{buf}", None)
        sd[f"{name}.weight"] = layer.qweight.detach().cpu().contiguous()
        sd[f"{name}.weight_scale"] = layer.weight_scale.detach().cpu().to(dtype).contiguous()
        if layer.input_scale is not None:
            sd[f"{name}.input_scale"] = layer.input_scale.detach().cpu().float().contiguous()
        if layer.bias is not None:
            sd[f"{name}.bias"] = layer.bias.detach().cpu().to(dtype).contiguous()
    return sd


def save_w8a8(model: nn.Module, path, tokenizer=None, dtype: torch.dtype = torch.bfloat16) -> Path:
    """Write ``model`` (after :func:`quantedu.w8a8.quantize_model_w8a8`) as a compressed-tensors W8A8
    checkpoint vLLM serves: ``vllm serve PATH`` or ``quantedu.engines.vllm.vllm_perplexity(PATH, windows)``.

    The weight scales were rounded to bf16 when the layers were made (``scale_dtype``), so storing them in
    bf16 loses nothing. Written atomically; an existing folder is replaced only if quantedu wrote it."""
    check_target(path)
    layers, activations = _layers(model)
    for name, layer in layers.items():
        if not torch.equal(layer.weight_scale.to(dtype).float(), layer.weight_scale.float()):
            raise ValueError(f"{name}: its weight scales are not representable in {dtype}; quantize with "
                             f"quantize_model_w8a8(..., scale_dtype={dtype}) so codes and stored scales agree")
    ignore = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    sd = w8a8_state_dict(model, dtype)
    return _write(path, model, sd, w8a8_quantization_config(activations, ignore), tokenizer, dtype=dtype)


@torch.no_grad()
def load_w8a8(path, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Read a W8A8 checkpoint (ours or llm-compressor's ``int-quantized``) into a transformers model whose
    quantized layers are :class:`~quantedu.w8a8.W8A8Linear`: the torch emulation of exactly the bytes
    vLLM serves. ``dtype``: of the unquantized tensors and of the activations."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    raw = json.loads((path / "config.json").read_text())
    qcfg = raw.get("quantization_config") or {}
    if qcfg.get("format") != FORMAT:
        raise ValueError(f"{path} is not a compressed-tensors '{FORMAT}' checkpoint (format: {qcfg.get('format')!r})")
    config = AutoConfig.from_pretrained(path)
    if hasattr(config, "quantization_config"):  # build plain nn.Linear layers; this function swaps them itself
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    sd: dict[str, torch.Tensor] = {}
    for f in sorted(path.glob("*.safetensors")):
        sd.update(load_file(str(f)))
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and sd.get(f"{name}.weight") is not None \
                and sd[f"{name}.weight"].dtype == torch.int8:
            layer = W8A8Linear(sd.pop(f"{name}.weight"), sd.pop(f"{name}.weight_scale").float(),
                               sd.pop(f"{name}.bias", None), sd.pop(f"{name}.input_scale", None))
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, layer)
    sd = {k: v for k, v in sd.items() if not k.endswith(("weight_zero_point", "input_zero_point"))}
    missing, unexpected = model.load_state_dict({k: v.to(dtype) for k, v in sd.items()}, strict=False)
    missing = [k for k in missing if not k.endswith((".qweight", ".weight_scale", ".input_scale"))]
    if config.tie_word_embeddings:
        model.tie_weights()
        missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise ValueError(f"{path}: tensors missing {missing[:5]} / not in the model {unexpected[:5]}")
    return model
