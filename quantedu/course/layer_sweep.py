"""Notebook 03's knob sweep on single layers: GPTQ's settings scored on held-out text, token by token, with
the verdict rule (:mod:`quantedu.verdict`) deciding which setting wins and which are a tie.

A setting is a function ``(W, H) -> Q`` (a GPTQ config, RTN, ...). For each of a few real layers it quantizes
the weight with the Hessian of the calibration text, then measures the relative output error of every token
of held-out text (:func:`quantedu.gptq.output_error`); the layers' errors are averaged token by token, so two
settings are compared on the same tokens, paired, as two models are.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ..gptq import output_error
from ..verdict import Verdict, verdict

WHAT = "relative output error"


def sweep(weights: dict[str, torch.Tensor], hessians: dict[str, torch.Tensor], inputs: dict[str, torch.Tensor],
          settings: dict[str, Callable], n_windows: int) -> dict[str, np.ndarray]:
    """``{setting: per-token error (n_windows, tokens per window)}``, the mean over the layers of
    :func:`~quantedu.gptq.output_error` on ``inputs`` (held-out, the same tokens for every layer)."""
    if not weights or set(weights) != set(hessians) or set(weights) != set(inputs):
        raise ValueError("weights, hessians and inputs must name the same layers")
    tokens = {x.shape[0] for x in inputs.values()}
    if len(tokens) != 1 or next(iter(tokens)) % n_windows:
        raise ValueError(f"every layer's inputs must be the same {n_windows} windows of tokens; got {sorted(tokens)} rows")
    out = {}
    for label, quantize in settings.items():
        errs = [output_error(W, quantize(W, hessians[n]), inputs[n]) for n, W in weights.items()]
        out[label] = torch.stack(errs).mean(0).reshape(n_windows, -1).double().numpy()
    return out


def best_and_ties(errors: dict[str, np.ndarray], labels) -> tuple[str, dict[str, Verdict]]:
    """The setting with the lowest mean error among ``labels``, and the rule's verdict of every other one
    against it (``v.tie``: within the noise of this much text)."""
    labels = list(labels)
    best = min(labels, key=lambda k: errors[k].mean())
    return best, {k: verdict(errors[k] - errors[best], k, best, WHAT) for k in labels if k != best}



def damping_sweep(W: torch.Tensor, H_samples: torch.Tensor, X: torch.Tensor, sizes, damps, config,
                  n_windows: int) -> dict[tuple[int, float], np.ndarray]:
    """GPTQ with every damping in ``damps`` on a Hessian of the first ``n`` calibration samples for every ``n`` in
    ``sizes`` (``H_samples``: per-sample Hessians, :func:`quantedu.gptq.layer_hessians` with ``per_sample=True``):
    ``{(n, damp): per-token relative output error on X, (n_windows, tokens)}``."""
    import dataclasses

    from ..gptq import gptq_quantize_weight
    if max(sizes) > H_samples.shape[0]:
        raise ValueError(f"sizes go up to {max(sizes)} samples but only {H_samples.shape[0]} Hessians were given")
    out = {}
    for n in sizes:
        H = H_samples[:n].mean(0)
        for d in damps:
            Q = gptq_quantize_weight(W, H, dataclasses.replace(config, damp_percent=d)).weight
            out[n, d] = output_error(W, Q, X).reshape(n_windows, -1).double().numpy()
    return out


__all__ = ["WHAT", "sweep", "best_and_ties", "damping_sweep"]
