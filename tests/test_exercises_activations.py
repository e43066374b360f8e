"""Notebook 09's exercises: learner-style wrong implementations, each with the diagnosis it must get.

``WRONG`` is added to tests/test_exercises.py's list, whose tests run every entry (the mistake fails, its
message names the cause) and require at least three per exercise. (No model load: seconds.)"""
import math

import torch

from quantedu.exercises import FAILED, grade
from quantedu.exercises.activations import fold_rotation, hadamard


# --- 09.per_token_int8 ------------------------------------------------------------------------------------


def _per_token(reduce="row", divisor=127, rounding="round", signed=False, zero_guard=True):
    def quantize(x):
        if reduce == "tensor":
            absmax = x.abs().max().reshape(1, 1)
        elif reduce == "column":
            absmax = x.abs().amax(dim=0, keepdim=True)
        else:
            absmax = (x.amax(dim=1, keepdim=True) if signed else x.abs().amax(dim=1, keepdim=True))
        scale = absmax / divisor
        if zero_guard:
            scale = torch.where(scale == 0, torch.ones_like(scale), scale)
        y = x / scale
        y = {"round": torch.round, "floor": torch.floor, "cast": lambda v: v}[rounding](y)
        return torch.clamp(y, -128, 127).to(torch.int8), scale
    return quantize


# --- 09.smoothquant_scales --------------------------------------------------------------------------------


def _sq(stat="absmax", weights="all", w_dim=0, swap=False):
    def scales(x, ws, alpha):
        xs = {"absmax": x.abs().amax(0), "mean": x.abs().mean(0), "max": x.amax(0).clamp(min=0)}[stat]
        used = ws if weights == "all" else ws[:1]
        w = torch.stack([W.abs().amax(w_dim) for W in used]).amax(0)
        a = 1 - alpha if swap else alpha
        return (xs.pow(a) / w.pow(1 - a)).clamp(min=1e-5)
    return scales


# --- 09.hadamard_fold -------------------------------------------------------------------------------------


def _hadamard(norm="sqrt"):
    def make(n):
        H = torch.ones(1, 1)
        while H.shape[0] < n:
            H = torch.cat([torch.cat([H, H], 1), torch.cat([H, -H], 1)], 0)
        return {"sqrt": H / math.sqrt(n), "none": H, "n": H / n}[norm]
    return make


def _fold(first_side="QT_left", second_side="Q_right", bias=True, no_grad=True):
    def fold(first, second, Q):
        def body():
            W1, W2 = first.weight.clone(), second.weight.clone()
            first.weight.copy_({"QT_left": Q.T @ W1, "Q_left": Q @ W1, "right": W1 @ Q}[first_side])
            if bias and first.bias is not None:
                first.bias.copy_(first.bias @ Q)
            second.weight.copy_({"Q_right": W2 @ Q, "QT_right": W2 @ Q.T}[second_side])
        if no_grad:
            with torch.no_grad():
                body()
        else:
            body()
    return fold


WRONG = [
    ("09.per_token_int8", (_per_token(reduce="tensor"),), "one scale for the whole tensor"),
    ("09.per_token_int8", (_per_token(reduce="column"),), "one scale per channel"),
    ("09.per_token_int8", (_per_token(divisor=128),), "divided the largest magnitude by 128"),
    ("09.per_token_int8", (_per_token(divisor=127.5),), "by 127.5"),
    ("09.per_token_int8", (_per_token(rounding="cast"),), "truncates toward zero"),
    ("09.per_token_int8", (_per_token(rounding="floor"),), "floor(x / scale)"),
    ("09.per_token_int8", (_per_token(signed=True),), "not max x"),
    ("09.per_token_int8", (_per_token(zero_guard=False),), "0 / 0 = NaN"),
    ("09.smoothquant_scales", (_sq(stat="mean"),), "not the mean"),
    ("09.smoothquant_scales", (_sq(stat="max"),), "take the absolute value"),
    ("09.smoothquant_scales", (_sq(swap=True),), "yours are swapped"),
    ("09.smoothquant_scales", (_sq(weights="first"),), "first layer only"),
    ("09.smoothquant_scales", (_sq(w_dim=1),), "you took the rows"),
    ("09.hadamard_fold", (_hadamard(norm="none"), fold_rotation), "divide by sqrt(n)"),
    ("09.hadamard_fold", (_hadamard(norm="n"), fold_rotation), "You divided by n"),
    ("09.hadamard_fold", (hadamard, _fold(first_side="Q_left")), "Q is not symmetric"),
    ("09.hadamard_fold", (hadamard, _fold(first_side="right")), "mix its rows"),
    ("09.hadamard_fold", (hadamard, _fold(second_side="QT_right")), "take Q itself"),
    ("09.hadamard_fold", (hadamard, _fold(bias=False)), "rotate it too (b @ Q)"),
    ("09.hadamard_fold", (hadamard, _fold(no_grad=False)), "torch.no_grad()"),
]


def test_a_wrong_fold_that_still_preserves_the_function_on_symmetric_q_is_caught():
    """With a plain (symmetric) Hadamard, Q @ W and Q.T @ W are the same: the checker's Q has random signs."""
    res = grade("09.hadamard_fold", hadamard, _fold(first_side="Q_left", second_side="QT_right"))
    assert res.status == FAILED and "Q is not symmetric" in res.message
