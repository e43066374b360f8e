"""Save weight-only quantized models in the checkpoint formats that inference engines load.

Input is generic, so GPTQ, AWQ and RTN share it: for each quantized ``nn.Linear`` (by its name in
``model.named_modules()``) an object with ``codes`` (uint8 ``(rows, cols)``, unsigned, in
``[0, 2**bits-1]``), ``scales`` and ``zeros`` (``(rows, n_groups)``, integer-valued zeros) and
``g_idx`` (``(cols,)`` group of every input column), plus the :class:`~quantedu.primitives.QuantConfig`
they were made with. The dequantized weight is ``scales[:, g_idx] * (codes - zeros[:, g_idx])``.

Three layouts:

* **compressed-tensors ``pack-quantized``** (what llm-compressor writes; transformers loads it through
  the ``compressed-tensors`` package, vLLM serves it). Per layer ``weight_packed`` (int32, the codes as a
  dense little-endian bitstream along the input dimension, ``(rows, ceil(cols*bits/32))``),
  ``weight_scale`` ``(rows, n_groups)``, ``weight_shape``, and for asymmetric schemes
  ``weight_zero_point`` packed the same way along the *output* dimension. Codes are stored as
  ``signed + 2**(bits-1)``, which is exactly our unsigned code. compressed-tensors 0.19 has no
  ``g_idx``: only the natural column->group map (no act-order, or act-order with static groups).
* **GPTQ** (AutoGPTQ / GPTQModel / optimum, ``checkpoint_format="gptq"``, a.k.a. v1): ``qweight``
  int32 ``(cols*bits/32, rows)`` packed along the input dimension, ``qzeros`` int32
  ``(n_groups, rows*bits/32)`` storing ``zero - 1`` (the v1 convention: kernels add the 1 back),
  ``scales`` ``(n_groups, rows)`` in the model dtype, ``g_idx`` int32 ``(cols,)``. Any ``g_idx``;
  ``desc_act`` in the config says whether it is permuted (see :func:`save_gptq`).
* **AWQ GEMM** (AutoAWQ's ``WQLinear_GEMM``, ``quant_method: "awq"``, ``version: "gemm"``):
  ``qweight`` int32 ``(cols, rows/8)`` packed along the *output* dimension in AutoAWQ's interleaved
  order (nibble ``i`` of a word holds output ``8w + AWQ_PACK_ORDER[i]``, :mod:`.packing`), ``qzeros`` int32
  ``(n_groups, rows/8)`` packed the same way, the zero point itself (no ``- 1``), ``scales``
  ``(n_groups, rows)`` fp16. 4 bits only, natural groups only (AWQ never permutes). See :func:`save_awq`.

All are written into a temporary folder and renamed into place (:func:`quantedu.artifacts.atomic_path`):
an existing folder is replaced only when it is a previous export of this package, never a folder of
yours (that is refused before any work is done). Layers are checked against the config before
anything is written (shapes, group count, code range, NaN), so a mismatch is an error, not a file.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from ..artifacts import atomic_path, check_target
from .packing import pack_awq, pack_bitstream, pack_int32
from ..primitives import QuantConfig, WeightOnlyConfig, group_index

__all__ = ["save_compressed_tensors", "save_gptq", "save_awq", "gptq_state_dict", "awq_state_dict"]

def _check(name: str, q, config: QuantConfig, layer: nn.Linear) -> None:
    """The layer record agrees with ``config`` and the model: checked before a byte is written."""
    rows, cols = layer.weight.shape
    if config.granularity == "tensor":
        raise ValueError("per-tensor weight quantization is not exported; use per-channel or groups")
    if tuple(q.codes.shape) != (rows, cols):
        raise ValueError(f"{name}: codes have shape {tuple(q.codes.shape)}, the layer's weight {(rows, cols)}")
    if int(q.codes.min()) < 0 or int(q.codes.max()) > config.maxq:
        raise ValueError(f"{name}: codes outside [0, {config.maxq}]; were they made with {config.label()}?")
    n_groups = config.n_groups(cols)
    for what in ("scales", "zeros"):
        t = getattr(q, what)
        if tuple(t.shape) != (rows, n_groups):
            raise ValueError(
                f"{name}: {what} have shape {tuple(t.shape)} but {config.label()} on {cols} columns needs "
                f"{(rows, n_groups)}: the layers were quantized with another group size than this config says. "
                "Pass the config they were made with (e.g. gptq_config.quant_config()).")
        if not torch.isfinite(t).all():
            raise ValueError(f"{name}: {what} contain NaN or inf; the layer was quantized from bad weights")
    if tuple(q.g_idx.shape) != (cols,) or int(q.g_idx.min()) < 0 or int(q.g_idx.max()) >= n_groups:
        raise ValueError(f"{name}: g_idx must map each of the {cols} columns to a group in [0, {n_groups}); "
                         f"got shape {tuple(q.g_idx.shape)}, max {int(q.g_idx.max())}")
    if (q.scales <= 0).any():
        raise ValueError(f"{name}: scales must be positive")


def _checked_layers(model: nn.Module, quantized: dict, config: QuantConfig):
    """``(name, record, nn.Linear)`` of each quantized layer, its record checked against ``config`` first."""
    linears = _linear_modules(model)
    for name, q in quantized.items():
        _check(name, q, config, linears[name])
        yield name, q, linears[name]


def _linear_modules(model: nn.Module) -> dict[str, nn.Linear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}


def _settings(config) -> tuple[QuantConfig, dict]:
    """The weight grid and the GPTQ-specific settings of an algorithm config (or a plain QuantConfig)."""
    if isinstance(config, QuantConfig):
        return config, {"desc_act": False, "static_groups": False, "damp_percent": 0.01}
    if not isinstance(config, WeightOnlyConfig):
        raise TypeError(f"config must be the algorithm's config (GPTQConfig, AWQConfig) or a QuantConfig, "
                        f"got {type(config).__name__}")
    return config.quant_config(), {"desc_act": getattr(config, "desc_act", False),
                                   "static_groups": getattr(config, "static_groups", False),
                                   "damp_percent": getattr(config, "damp_percent", 0.01)}


def _base_state_dict(model: nn.Module, quantized: dict, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Unquantized tensors, with tied duplicates dropped (safetensors refuses shared storage)."""
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if dtype is not None:
        sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
    if getattr(model.config, "tie_word_embeddings", False):
        sd.pop("lm_head.weight", None)
    for name in quantized:
        sd.pop(f"{name}.weight")
    return sd


def _start(model: nn.Module, quantized: dict, path, config: QuantConfig) -> dict[str, nn.Linear]:
    """Refuse a target we may not write and layers that are not the model's, before any work."""
    config, _ = _settings(config)
    check_target(path)
    if not quantized:
        raise ValueError("no quantized layers were given: pass the dict that gptq_quantize_model / "
                         "awq_quantize_model returned ({layer name: record})")
    linears = _linear_modules(model)
    missing = sorted(set(quantized) - set(linears))
    if missing:
        raise KeyError(f"not linear layers of this model: {missing[:5]}")
    for name, q in quantized.items():
        _check(name, q, config, linears[name])
    return linears


def _write(path, model, state_dict, quantization_config: dict, tokenizer, dtype: torch.dtype | None = None) -> Path:
    from safetensors.torch import save_file

    config = copy.deepcopy(model.config)
    config.quantization_config = quantization_config
    if dtype is not None:  # the dtype of the stored unquantized tensors
        config.dtype = dtype
    with atomic_path(path) as tmp:
        tmp.mkdir(parents=True)
        config.save_pretrained(tmp)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(tmp)
        save_file(state_dict, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return Path(path)


def save_compressed_tensors(model: nn.Module, quantized: dict, config, path, tokenizer=None) -> Path:
    """Write ``model`` with the ``quantized`` layers as a compressed-tensors ``pack-quantized`` checkpoint.

    ``config``: the algorithm's config (``GPTQConfig``, ``AWQConfig``) or the ``QuantConfig`` of the
    records. A GPTQ config with act-order and static groups is recorded as ``actorder: "static"``
    (metadata only: the stored layout is the natural order either way).
    Reload with ``AutoModelForCausalLM.from_pretrained(path)`` (needs ``compressed-tensors``).
    """
    from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, QuantizationScheme

    config, extra = _settings(config)
    actorder = "static" if extra["desc_act"] and extra["static_groups"] else None
    linears = _start(model, quantized, path, config)
    sd = _base_state_dict(model, quantized)
    for name, q in quantized.items():
        layer = linears[name]
        rows, cols = layer.weight.shape
        if config.granularity == "group" and cols % config.group_size:
            raise ValueError(
                f"{name}: {cols} input columns are not a multiple of group_size={config.group_size}, and "
                "compressed-tensors refuses a ragged last group. Use save_gptq(), or a group size dividing "
                f"{cols} (e.g. 32 or 64 for 576)."
            )
        natural = group_index(cols, config).to(q.g_idx.device)
        if not torch.equal(q.g_idx.long(), natural):
            raise ValueError(
                f"{name}: its g_idx is permuted (act-order without static groups); compressed-tensors "
                "has no g_idx. Use save_gptq(), or quantize with desc_act=True, static_groups=True."
            )
        dtype = layer.weight.dtype
        sd[f"{name}.weight_packed"] = pack_bitstream(q.codes, config.bits, dim=1)
        sd[f"{name}.weight_scale"] = q.scales.to(dtype).clone()
        sd[f"{name}.weight_shape"] = torch.tensor([rows, cols])
        if not config.symmetric:
            sd[f"{name}.weight_zero_point"] = pack_bitstream(q.zeros.round().to(torch.uint8), config.bits, dim=0)
    strategy = "group" if config.granularity == "group" else "channel"
    args = QuantizationArgs(
        num_bits=config.bits, type="int", symmetric=config.symmetric, strategy=strategy,
        group_size=config.group_size if strategy == "group" else None, actorder=actorder, dynamic=False,
    )
    qcfg = QuantizationConfig(
        config_groups={"group_0": QuantizationScheme(targets=["Linear"], weights=args, format="pack-quantized")},
        format="pack-quantized", quantization_status="compressed",
        ignore=sorted(n for n in linears if n not in quantized),
    )
    return _write(path, model, sd, qcfg.model_dump(exclude_none=False), tokenizer)


def gptq_state_dict(model: nn.Module, quantized: dict, config, checkpoint_format: str = "gptq",
                    dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a GPTQ-layout checkpoint: packed ``quantized`` layers, every other tensor as is.

    ``dtype``: of the scales and the unquantized tensors (default: each layer's own dtype);
    ``checkpoint_format``: ``"gptq"`` (v1) stores ``zero - 1``, ``"gptq_v2"`` the zero point itself.
    """
    if checkpoint_format not in ("gptq", "gptq_v2"):
        raise ValueError(f"checkpoint_format must be 'gptq' (v1) or 'gptq_v2', got {checkpoint_format!r}")
    offset = 1 if checkpoint_format == "gptq" else 0
    config, _ = _settings(config)
    if config.bits not in (2, 3, 4, 8):
        raise ValueError(f"the GPTQ layout packs 2, 3, 4 or 8 bits, not {config.bits}")
    sd = _base_state_dict(model, quantized, dtype)
    for name, q, layer in _checked_layers(model, quantized, config):
        rows, cols = layer.weight.shape
        if (cols * config.bits) % 32 or (rows * config.bits) % 32:
            raise ValueError(f"{name}: {rows}x{cols} does not pack into whole int32 words at {config.bits} bits")
        # v1 stores zero - 1 (an AutoGPTQ quirk its kernels undo); a zero of 0 would wrap, so refuse it.
        if int(q.zeros.min()) < offset:
            raise ValueError(f"{name}: a zero point of 0 cannot be stored as zero - 1 in the GPTQ v1 layout; "
                             "pass checkpoint_format='gptq_v2'")
        sd[f"{name}.qweight"] = pack_int32(q.codes.t(), config.bits, dim=0).contiguous()
        sd[f"{name}.qzeros"] = pack_int32((q.zeros.round() - offset).to(torch.uint8).t(), config.bits, dim=1).contiguous()
        sd[f"{name}.scales"] = q.scales.t().to(dtype or layer.weight.dtype).contiguous()
        sd[f"{name}.g_idx"] = q.g_idx.to(torch.int32).clone()
    return sd


def save_gptq(model: nn.Module, quantized: dict, config, path, tokenizer=None,
              checkpoint_format: str = "gptq") -> Path:
    """Write the GPTQ checkpoint layout: ``qweight``/``qzeros``/``scales``/``g_idx`` + ``quantization_config``.

    ``config``: the algorithm's config (``GPTQConfig`` gives ``desc_act``/``static_groups``/
    ``damp_percent``; ``AWQConfig``) or the records' ``QuantConfig``. ``checkpoint_format="gptq"`` (v1,
    what AutoGPTQ/optimum/transformers expect) stores ``zero - 1``; ``"gptq_v2"`` (GPTQModel's own)
    stores the zero point itself, so a zero of 0 (asymmetric groups with no negative weight) survives.

    ``desc_act`` is written from the layers, not copied from the config: ``true`` only when some
    ``g_idx`` is permuted (dynamic act-order). Act-order with ``static_groups=True`` is stored in the
    natural order with ``desc_act: false`` (and ``static_groups: true`` as a note): the same weights,
    and the form vLLM loads. (vLLM's GPTQ loader reads neither ``g_idx`` nor, for symmetric
    checkpoints, ``qzeros``; it refuses ``desc_act: true`` and asymmetric GPTQ.)

    transformers loads it only through GPTQModel (``gptqmodel``); :func:`load_gptq_model` reads it here.
    """
    qc, extra = _settings(config)
    if checkpoint_format not in ("gptq", "gptq_v2"):
        raise ValueError(f"checkpoint_format must be 'gptq' (v1) or 'gptq_v2', got {checkpoint_format!r}")
    linears = _start(model, quantized, path, qc)
    # desc_act tells a loader that g_idx is permuted. Act-order with static groups keeps every group
    # contiguous in the original column order (g_idx is the natural one), so it is stored as desc_act:
    # false, which vLLM serves; vLLM >= 0.2x refuses every desc_act: true checkpoint.
    extra["desc_act"] = any(not torch.equal(q.g_idx.long().cpu(), group_index(linears[n].in_features, qc))
                            for n, q in quantized.items())
    sd = gptq_state_dict(model, quantized, qc, checkpoint_format)
    qcfg = {
        "quant_method": "gptq", "checkpoint_format": checkpoint_format, "bits": qc.bits,
        "group_size": qc.group_size if qc.granularity == "group" else -1,
        "sym": qc.symmetric, **extra, "true_sequential": False, "pack_dtype": "int32",
        "modules_in_block_to_quantize": None,
    }
    return _write(path, model, sd, qcfg, tokenizer)


def awq_state_dict(model: nn.Module, quantized: dict, config, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """The tensors of an AutoAWQ GEMM checkpoint: packed ``quantized`` layers, every other tensor in ``dtype``."""
    config, _ = _settings(config)
    if config.bits != 4:
        raise ValueError(f"the AWQ GEMM layout stores 4-bit codes only, not {config.bits} (use save_gptq or "
                         "save_compressed_tensors)")
    sd = _base_state_dict(model, quantized, dtype)
    for name, q, layer in _checked_layers(model, quantized, config):
        rows, cols = layer.weight.shape
        if rows % 8:
            raise ValueError(f"{name}: {rows} output rows do not pack 8 per int32 word (AWQ packs along outputs)")
        if config.granularity == "group" and cols % config.group_size:
            raise ValueError(f"{name}: {cols} input columns are not a multiple of group_size={config.group_size}; "
                             "the AWQ layout has no ragged last group (use save_gptq)")
        if not torch.equal(q.g_idx.long().cpu(), group_index(cols, config)):
            raise ValueError(f"{name}: its g_idx is permuted (act-order); the AWQ layout has none. Use save_gptq().")
        sd[f"{name}.qweight"] = pack_awq(q.codes.t())
        sd[f"{name}.qzeros"] = pack_awq(q.zeros.round().to(torch.uint8).t())
        sd[f"{name}.scales"] = q.scales.t().to(dtype).contiguous()
    return sd


def save_awq(model: nn.Module, quantized: dict, config, path, tokenizer=None) -> Path:
    """Write AutoAWQ's GEMM checkpoint (``quant_method: "awq"``, ``version: "gemm"``), 4 bits, fp16.

    What ``vllm serve PATH`` (or the seed's ``--quantization awq``) loads as AWQ: on a CPU through
    ``AutoAWQMarlinLinearMethod`` -> ``CPUWNA16LinearKernel``, on an Ampere+ GPU through Marlin.
    ``config``: the ``AWQConfig`` (or any config / ``QuantConfig``) the records were made with; symmetric
    records are stored with their zero point 8 (the layout always has ``zero_point: true``).
    Read it back with :func:`load_awq_weights` / :func:`load_quantized_model`.
    """
    qc, _ = _settings(config)
    linears = _start(model, quantized, path, qc)
    sd = awq_state_dict(model, quantized, qc)
    qcfg = {"quant_method": "awq", "version": "gemm", "bits": 4, "zero_point": True,
            "group_size": qc.group_size if qc.granularity == "group" else -1,
            "modules_to_not_convert": sorted(n for n in linears if n not in quantized) or None}
    return _write(path, model, sd, qcfg, tokenizer, dtype=torch.float16)

