"""Round-to-nearest (RTN) over a whole model: the baseline every other method is compared with.

``replace_linear(model, fn)`` applies a weight function to every ``nn.Linear`` and reports what was
touched and why not (RTN, the RTN sweeps and QAT's conversion use it; GPTQ and AWQ walk the model
block by block instead, :mod:`quantedu.calibration`). It writes the quantizer's output (the
dequantized, "fake-quantized" weight) back into the layer, so the model keeps running with ordinary
fp32/fp16 kernels: what changes is the *values*, which is all that perplexity measures.
``rtn_layers`` returns the same rounding as :class:`~quantedu.primitives.QuantizedLayer` records,
which the exporters (:mod:`quantedu.export`) pack into checkpoints.

Tied weights: SmolLM2, like many small models, shares one tensor between the input embedding and
the LM head (``tie_word_embeddings``). Writing quantized values into ``lm_head.weight`` would silently
quantize the embedding table as well, so a tied layer is skipped and reported, unless the caller
asks to untie it (which copies the weight and costs ``vocab * hidden`` more parameters).
"""
from __future__ import annotations

import fnmatch
import time
from typing import Callable, Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from .checks import NonFiniteError, require_finite
from .primitives import QuantConfig, QuantizedLayer, mse_clip_search, quantize_weight, rtn

WeightFn = Callable[[torch.Tensor, str], torch.Tensor]


def skip_pattern(name: str, patterns: Iterable[str]) -> str | None:
    """The first pattern that names ``name``: exact name, last component(s), or a glob."""
    for p in patterns:
        if name == p or name.endswith("." + p) or fnmatch.fnmatchcase(name, p):
            return p
    return None


def _other_owners(model: nn.Module) -> dict[int, list[str]]:
    """Storage pointer -> names of every parameter that uses it (to find ties)."""
    owners: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        owners.setdefault(p.untyped_storage().data_ptr(), []).append(name)
    return owners


def replace_linear(
    model: nn.Module,
    fn: WeightFn,
    skip: Iterable[str] = ("lm_head",),
    untie: bool = False,
    progress: bool = True,
    desc: str = "quantizing",
):
    """Replace the weight of every ``nn.Linear`` by ``fn(weight, name)``, in place.

    ``skip``: names, name suffixes or glob patterns of layers to leave alone.
    A layer whose weight is shared with another parameter (tied embedding) is skipped unless
    ``untie=True``. ``fn`` may return ``None`` to decline a layer, or raise ``ValueError`` for a shape it
    cannot handle (e.g. a group size the columns do not allow): both are reported as skips.

    Returns a pandas DataFrame, one row per linear layer: ``name``, ``shape``, ``action``
    (``quantized``/``skipped``), ``reason``, ``rel_error`` (``||W' - W||^2 / ||W||^2``) and ``seconds``.
    """
    import pandas as pd

    skip = tuple(skip)
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layers to quantize")
    for name, layer in linears:  # all checked before any is changed: never a half-quantized model
        if skip_pattern(name, skip) is None:
            require_finite(layer.weight.detach(), f"{name}.weight")
    owners = _other_owners(model)
    records = []
    for name, layer in tqdm(linears, desc=desc, disable=not progress, leave=False):
        w = layer.weight
        rec = {"name": name, "shape": tuple(w.shape), "action": "skipped", "reason": "", "rel_error": float("nan"),
               "seconds": 0.0}
        records.append(rec)
        sharing = [o for o in owners.get(w.untyped_storage().data_ptr(), []) if o != f"{name}.weight"]
        hit = skip_pattern(name, skip)
        if hit is not None:
            rec["reason"] = f"skipped by name ({hit!r})" + (f"; tied to {sharing[0]}" if sharing else "")
            continue
        if sharing and not untie:
            rec["reason"] = (f"tied to {', '.join(sharing)}: quantizing it would change the embedding too "
                             "(pass untie=True to give it its own copy)")
            continue
        t0 = time.perf_counter()
        try:
            new = fn(w.detach(), name)
        except NonFiniteError:
            raise
        except ValueError as exc:
            rec["reason"] = f"quantizer refused: {exc}"
            continue
        if new is None:
            rec["reason"] = "quantizer returned None"
            continue
        if new.shape != w.shape:
            raise ValueError(f"{name}: the quantizer returned shape {tuple(new.shape)} for a weight of {tuple(w.shape)}")
        if not torch.isfinite(new).all():
            raise ValueError(f"{name}: the quantizer returned non-finite values")
        with torch.no_grad():
            ref = w.detach().float()
            err = ((new.float() - ref) ** 2).sum() / (ref**2).sum().clamp_min(1e-30)
            if sharing:  # untie: the layer gets its own parameter, the embedding keeps the original
                layer.weight = nn.Parameter(new.to(w.dtype).clone(), requires_grad=w.requires_grad)
                if getattr(getattr(model, "config", None), "tie_word_embeddings", False):
                    model.config.tie_word_embeddings = False
            else:
                w.copy_(new.to(w.dtype))
        rec.update(action="quantized", reason="", rel_error=err.item(), seconds=time.perf_counter() - t0)
    return pd.DataFrame(records)


def rtn_fn(config: QuantConfig, mse_clip: bool = False) -> WeightFn:
    """A ``replace_linear`` quantizer doing round-to-nearest at ``config`` (in fp32, cast back)."""

    def fn(w: torch.Tensor, name: str) -> torch.Tensor:
        return rtn(w.float(), config, mse_clip=mse_clip).to(w.dtype)

    return fn


def quantize_model_rtn(model: nn.Module, config: QuantConfig, mse_clip: bool = False,
                       skip: Iterable[str] = ("lm_head",), progress: bool = True):
    """Round-to-nearest every linear layer except ``skip`` (the baseline of every comparison)."""
    return replace_linear(model, rtn_fn(config, mse_clip), skip=skip, progress=progress,
                          desc=f"RTN {config.label()}")


def summary_line(report) -> str:
    """One line: how many layers were quantized/skipped, and the skip reasons."""
    q = int((report["action"] == "quantized").sum())
    skipped = report[report["action"] == "skipped"]
    reasons = "; ".join(f"{r.name}: {r.reason}" for r in skipped.itertuples()) or "none"
    return f"{q} linear layers quantized, {len(skipped)} skipped ({reasons})"


def rtn_layers(model: nn.Module, config: QuantConfig, skip: Iterable[str] = ("lm_head",),
               mse_clip: bool = False) -> dict[str, QuantizedLayer]:
    """RTN records ``{layer name: QuantizedLayer}`` of every linear layer except ``skip`` (the model is
    not changed): what :func:`quantedu.export.save_gptq` and friends store for an RTN checkpoint."""
    skip = tuple(skip)
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and skip_pattern(name, skip) is None:
            w = m.weight.detach().float()
            out[name] = quantize_weight(w, config, mse_clip_search(w, config) if mse_clip else 1.0)
    return out


def linear_weights(model: nn.Module, skip: Iterable[str] = ("lm_head",)) -> dict[str, torch.Tensor]:
    """A copy of every linear weight ``replace_linear`` would touch (to restore the model between runs)."""
    skip = tuple(skip)
    return {n: m.weight.detach().clone() for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and skip_pattern(n, skip) is None}


@torch.no_grad()
def restore_linear_weights(model: nn.Module, saved: dict[str, torch.Tensor]) -> None:
    for name, w in saved.items():
        model.get_submodule(name).weight.copy_(w)


def rtn_sweep(model: nn.Module, evaluate_fn: Callable[[nn.Module], float], bits=(8, 4, 3, 2),
              groups=(32, 128, None), symmetric: bool = False, progress: bool = True):
    """Perplexity (or any score) of RTN at every ``bits x group`` (``None`` = per-channel), restoring the
    original weights after each. Returns a DataFrame with bits, group, bits/weight and the score."""
    import pandas as pd

    from .memory import GroupFormat

    saved = linear_weights(model)
    rows = []
    try:
        for b in tqdm(bits, desc="bits", disable=not progress):
            for g in groups:
                cfg = QuantConfig(b, g or 128, symmetric, "group" if g else "channel")
                t0 = time.perf_counter()
                quantize_model_rtn(model, cfg, progress=False)
                seconds = time.perf_counter() - t0
                fmt = GroupFormat(b, g, zero_bits=0 if symmetric else None)
                rows.append({"bits": b, "group": g or "channel", "bits/weight": fmt.bits_per_weight(),
                             "label": cfg.label(), "score": evaluate_fn(model), "quantize s": seconds})
                restore_linear_weights(model, saved)
    finally:
        restore_linear_weights(model, saved)
    return pd.DataFrame(rows)
