"""llm-compressor, the reference the course's GPTQ and AWQ are checked against, run one way everywhere.

Notebooks 03/04, ``benchmarks/bench_gptq.py``/``bench_awq.py`` and the tests call llm-compressor's
``oneshot`` through :func:`run_oneshot` on the same token-id calibration batches the course's own
algorithms use (``(n_samples, seq_len)``, no shuffling, every row used), with recipes built from the
course's configs (:func:`gptq_recipe`, :func:`awq_recipe`), so "the same settings" means the same
objects. On a machine without an accelerator llm-compressor 0.14's AWQ pipeline pins cached
activations ("Cannot access accelerator device when none is available"); :func:`run_oneshot` makes
``IntermediatesCache.pin_memory`` a no-op for the duration of the call there, and restores it.
"""
from __future__ import annotations

import time
from contextlib import contextmanager

import torch

INSTALL = "pip install 'llmcompressor==0.14.0.1'   (the course's [reference] extra; make setup installs it)"


def available() -> bool:
    import importlib.util
    return importlib.util.find_spec("llmcompressor") is not None


def scheme(bits: int, group_size: int, sym: bool):
    """The compressed-tensors weight scheme of an integer ``bits`` grid with groups of ``group_size``
    (``-1``: one group per output channel)."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    strategy = "channel" if group_size == -1 else "group"
    return QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(
        num_bits=bits, type="int", symmetric=sym, strategy=strategy,
        group_size=None if group_size == -1 else group_size))


def gptq_recipe(config) -> list:
    """llm-compressor's GPTQModifier with a ``quantedu.gptq.GPTQConfig``'s settings."""
    from llmcompressor.modifiers.gptq import GPTQModifier
    actorder = ("static" if config.static_groups else "group") if config.desc_act else None
    return [GPTQModifier(config_groups={"group_0": scheme(config.bits, config.group_size, config.sym)},
                         ignore=["lm_head"], actorder=actorder, dampening_frac=config.damp_percent,
                         block_size=config.block_size)]


def awq_recipe(config, **awq_kwargs) -> list:
    """AWQModifier (scale search) + QuantizationModifier (rounding) with a ``quantedu.awq.AWQConfig``'s grid."""
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from llmcompressor.modifiers.transform.awq import AWQModifier
    return [AWQModifier(**awq_kwargs),
            QuantizationModifier(config_groups={"group_0": scheme(config.bits, config.group_size, config.sym)},
                                 ignore=["lm_head"])]


@contextmanager
def _cpu_patch():
    from llmcompressor.pipelines.cache import IntermediatesCache
    if torch.cuda.is_available():
        yield
        return
    original = IntermediatesCache.pin_memory
    IntermediatesCache.pin_memory = lambda self, *a, **k: None
    try:
        yield
    finally:
        IntermediatesCache.pin_memory = original


def run_oneshot(model, batches: torch.Tensor, recipe, tokenizer=None, **oneshot_kwargs) -> float:
    """``oneshot(model, recipe)`` calibrated on exactly ``batches``; returns the wall seconds it took."""
    from datasets import Dataset
    from llmcompressor import oneshot

    from ..calibration import warn_if_starved
    warn_if_starved(model, batches, "llm-compressor")  # the same budget as the course's own methods
    data = Dataset.from_dict({"input_ids": batches.tolist(), "attention_mask": torch.ones_like(batches).tolist()})
    kwargs = {"num_calibration_samples": len(batches), "max_seq_length": batches.shape[1],
              "shuffle_calibration_samples": False, **oneshot_kwargs}
    with _cpu_patch():
        t0 = time.perf_counter()
        oneshot(model=model, dataset=data, recipe=recipe, processor=tokenizer, **kwargs)
        return time.perf_counter() - t0


@torch.no_grad()
def bake_weights(model) -> int:
    """Write into each quantized layer's ``weight`` the weight its forward uses, and return how many layers.

    After ``QuantizationModifier`` (AWQ's rounding step) llm-compressor keeps the original weights and quantizes
    them inside every forward call (GPTQModifier writes its result into ``weight`` itself). Baked, the state dict
    alone carries the quantization: what :func:`quantedu.course.runs.with_blocks` copies into another model.
    Baking twice changes nothing: the weights are already on their grid."""
    from compressed_tensors.quantization.lifecycle.forward import forward_quantize
    baked = 0
    for module in model.modules():
        scheme = getattr(module, "quantization_scheme", None)
        if scheme is None or scheme.weights is None or not hasattr(module, "weight_scale"):
            continue
        module.weight.data = forward_quantize(module, module.weight, "weight", scheme.weights).to(module.weight.dtype)
        baked += 1
    return baked
