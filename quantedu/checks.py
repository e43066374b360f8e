"""Input checks every algorithm runs once at its entry, so bad data is an error with an address.

A NaN or inf in a weight silently poisons a whole group (its scale becomes NaN) in RTN, GPTQ and
every GGUF block type, and some of ggml's quantizers silently replace it instead: neither is a result.
"""
from __future__ import annotations

import numpy as np


class NonFiniteError(ValueError):
    """A tensor holds NaN or inf; the message names the tensor, the row and the column."""


def require_finite(x, what: str = "weight") -> None:
    """Raise :class:`NonFiniteError` naming the first NaN/inf of ``x`` (torch tensor or numpy array)."""
    try:
        import torch
        if isinstance(x, torch.Tensor):
            bad = ~torch.isfinite(x)
            if not bool(bad.any()):
                return
            idx = tuple(int(i) for i in bad.nonzero()[0])
            value = float(x[idx])
            count = int(bad.sum())
            _raise(what, idx, value, count, tuple(x.shape))
            return
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    arr = np.asarray(x)
    if not np.issubdtype(arr.dtype, np.floating):
        return
    bad = ~np.isfinite(arr)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        _raise(what, idx, float(arr[idx]), int(bad.sum()), arr.shape)


def _raise(what, idx, value, count, shape):
    where = f"row {idx[0]}, column {idx[1]}" if len(idx) == 2 else f"index {idx}"
    raise NonFiniteError(
        f"{what} {tuple(shape)} holds {count} non-finite value(s) (first: {value} at {where}). "
        "Quantizing it would give NaN scales or silently changed values; find where it came from "
        "(an overflow in fp16, a diverged training step) and fix or clip it first.")


class ModelStateError(RuntimeError):
    """A model is already (or half) quantized in place; the message says to reload it or use a copy."""


def check_linear_weights(model, names=None) -> None:
    """Every ``nn.Linear`` weight (or those named) is finite: checked before anything is changed."""
    from torch import nn
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and (names is None or name in names):
            require_finite(m.weight.detach(), f"{name}.weight")


class InPlaceGuard:
    """Guard an in-place quantizer: refuse a model already quantized in place, and mark a model that a
    failure left half-changed, so the next attempt says so instead of rounding rounded weights.

    >>> with InPlaceGuard(model, "GPTQ W4 g128"):
    ...     quantize every layer
    """

    ATTR = "quantedu_quantized"

    def __init__(self, model, label: str):
        self.model, self.label = model, label

    def __enter__(self):
        state = getattr(self.model, self.ATTR, None)
        if state:
            raise ModelStateError(
                f"this model was already quantized in place ({state}); quantizing it again would round "
                "weights that are already rounded. Reload it, or quantize a copy: copy.deepcopy(model).")
        check_linear_weights(self.model)  # a NaN found half-way would leave the model half-quantized
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            setattr(self.model, self.ATTR, self.label)
            return False
        setattr(self.model, self.ATTR, f"interrupted during {self.label}: some layers are changed")
        if isinstance(exc, Exception):
            exc.add_note(f"quantedu: {self.label} stopped part-way, so this model is now partly quantized; "
                         "reload it (or start again from a copy) before using it.")
        return False
