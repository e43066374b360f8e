"""Notebook 09's exercises: per-token int8 activations, SmoothQuant's scales, and one Hadamard rotation folded
into a pair of linear layers.

Checked against :func:`quantedu.w8a8.quantize_per_token`, :func:`quantedu.smoothquant.smoothquant_scales`,
:func:`quantedu.rotation.hadamard` and :func:`quantedu.rotation.fold_rotation`.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

from .. import rotation, smoothquant, w8a8
from .core import Exercise, case, first_difference, register
from .inputs import activations, course_weight, randn


# --- reference solutions (learner style) ------------------------------------------------------------


def quantize_per_token(x):
    absmax = x.abs().amax(dim=1, keepdim=True)        # one scale per token (row)
    scale = absmax / 127                              # the largest magnitude lands on code 127
    scale[scale == 0] = 1.0                           # a token of zeros: any scale represents it
    q = torch.clamp(torch.round(x / scale), -128, 127).to(torch.int8)
    return q, scale


def smoothquant_scales(x, weights, alpha):
    x_max = x.abs().amax(dim=0)                                         # max |X_j| over tokens
    w_max = torch.stack([W.abs().amax(dim=0) for W in weights]).amax(dim=0)  # max |W_j| over every row
    return (x_max.pow(alpha) / w_max.pow(1 - alpha)).clamp(min=1e-5)


def hadamard(n):
    H = torch.ones(1, 1)
    while H.shape[0] < n:
        H = torch.cat([torch.cat([H, H], 1), torch.cat([H, -H], 1)], 0)
    return H / math.sqrt(n)                           # orthonormal: H @ H.T == I


@torch.no_grad()
def fold_rotation(first, second, Q):
    first.weight.copy_(Q.T @ first.weight)            # first now writes y Q (its rows mix) ...
    if first.bias is not None:
        first.bias.copy_(first.bias @ Q)
    second.weight.copy_(second.weight @ Q)            # ... and second reads it back (its columns mix)


# --- 09.per_token_int8 -------------------------------------------------------------------------------


def _per_token_case(label, make):
    @case(label)
    def run(learner):
        x = make()
        q_exp, s_exp = w8a8.quantize_per_token(x)
        out = learner(x.clone())
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            return "quantize_per_token must return (q, scale)"
        q, s = torch.as_tensor(out[0]), torch.as_tensor(out[1]).float()
        if q.shape != x.shape:
            return f"q must have the shape of x, {tuple(x.shape)}; got {tuple(q.shape)}"
        if s.numel() == 1 and x.shape[0] > 1:
            return ("you returned one scale for the whole tensor (per-tensor): per token means one scale per row, "
                    "x.abs().amax(dim=1, keepdim=True) / 127.")
        if s.numel() == x.shape[1] and (s.numel() != x.shape[0] or (s.dim() == 2 and s.shape[0] == 1)):
            return ("you returned one scale per channel (column, amax over dim=0): per token means one per row "
                    "(amax over dim=1).")
        if s.numel() != x.shape[0]:
            return f"scale must hold one value per token: shape ({x.shape[0]}, 1); got {tuple(s.shape)}"
        s = s.reshape(-1, 1)
        if not torch.isfinite(s).all() or not torch.isfinite(q.float()).all():
            return ("a token of zeros gives scale 0 and 0 / 0 = NaN: give such a token any positive scale (1.0) "
                    "so that its codes are 0.")
        zero = (x == 0).all(dim=1)
        live = ~zero
        diff = first_difference(s_exp[live], s[live], "scale of token", rtol=1e-6)
        if diff:
            ratio = (s[live] / s_exp[live]).mean()
            for bad, what in ((127 / 128, "128"), (127 / 255, "255"), (127 / 127.5, "127.5")):
                if abs(float(ratio) - bad) < 1e-4:
                    return (f"{diff}. You divided the largest magnitude by {what}; divide by 127, the largest "
                            f"int8 code, so the largest |x| of each token maps to +-127.")
            signed = x.amax(dim=1, keepdim=True)[live] / 127
            if torch.allclose(s[live], signed, rtol=1e-6):
                return f"{diff}. The scale comes from max |x| (x.abs().amax), not max x: a token's largest magnitude can be negative."
            return f"{diff}. scale = max_j |x_tj| / 127 for every token t."
        if (q[zero] != 0).any():
            return "a token of zeros must quantize to codes 0."
        if (s[zero] <= 0).any():
            return ("a token of zeros got scale 0, so x / scale is 0 / 0 = NaN (the int8 cast hides it, differently "
                    "on different machines): give such a token scale 1.")
        if q.is_floating_point() and not torch.equal(q, q.round()):
            return "q must hold integer codes (round, then clamp to [-128, 127])."
        q = q.to(torch.int64)
        bad = q != q_exp.to(torch.int64)
        if bad.any():
            idx = tuple(int(i) for i in bad.nonzero()[0])
            ratio = float(x[idx]) / float(s_exp[idx[0]])
            r, got = (x.double() / s_exp.double())[bad], q[bad]
            cause = ""
            if torch.equal(got, r.trunc().long()):
                cause = " Casting to int8 truncates toward zero: torch.round(x / scale) first."
            elif torch.equal(got, r.floor().long()):
                cause = " That is floor(x / scale): round to nearest instead."
            return (f"code at token {idx[0]}, channel {idx[1]}: x / scale = {ratio:.4f}, expected {int(q_exp[idx])}, "
                    f"got {int(q[idx])} ({int(bad.sum())} codes differ).{cause}")
        return None
    return run


def _hand_made():
    return torch.tensor([[0.5, -1.0, 0.25, 2.0, 0.3], [-8.0, 1.0, 3.3, 0.1, -0.7], [0.0, 0.0, 0.0, 0.0, 0.0],
                         [1.0, -3.0, 2.0, 0.6, 0.05]])


def _outliers():
    return activations(256, 576, seed=40, outliers=6)


def _bf16():
    return activations(64, 128, seed=41).to(torch.bfloat16).float()


register(Exercise(
    id="09.per_token_int8",
    title="dynamic per-token int8 activations",
    statement="""\
Write `quantize_per_token(x)` for activations `x` of shape `(tokens, features)`: every token (row) gets its own
scale `s_t = max_j |x_tj| / 127`, and its codes are `round(x / s_t)` clamped to `[-128, 127]`, as int8.
A token of zeros gets scale 1. Return `(q, scale)` with `scale` of shape `(tokens, 1)`. This is what vLLM does
to the input of every W8A8 layer, at run time, token by token.""",
    reference="`quantedu.w8a8.quantize_per_token` (vLLM's `dynamic_scaled_int8_quant`)",
    imports="import torch\n\nfrom quantedu.exercises import check, hint",
    stubs=('''\
def quantize_per_token(x):
    """(int8 codes, per-token scales (tokens, 1)) of activations x (tokens, features)."""
    ...  # YOUR CODE
''',),
    solution=(quantize_per_token,),
    cases=lambda context: [
        _per_token_case("hand-made: 4 tokens x 5 channels, one negative maximum, one token of zeros", _hand_made),
        _per_token_case("activations with outlier channels (256 tokens x 576)", _outliers),
        _per_token_case("bf16-valued activations (64 x 128)", _bf16),
    ],
    hints=(
        "absmax = x.abs().amax(dim=1, keepdim=True): one value per row, kept as a column for broadcasting.",
        "scale = absmax / 127, with scale[scale == 0] = 1.0 for tokens of zeros.",
        "q = torch.clamp(torch.round(x / scale), -128, 127).to(torch.int8): round before the cast (a cast truncates).",
    ),
))


# --- 09.smoothquant_scales --------------------------------------------------------------------------


def _scales_case(label, make, alpha):
    @case(f"{label}, alpha = {alpha}")
    def run(learner):
        x, weights = make()
        expected = smoothquant.smoothquant_scales(x.abs().amax(0), weights, alpha)
        got = learner(x.clone(), [W.clone() for W in weights], alpha)
        got = torch.as_tensor(got).float()
        if got.shape != expected.shape:
            return f"s must hold one scale per input channel, shape {tuple(expected.shape)}; got {tuple(got.shape)}"
        diff = first_difference(expected, got, "s", rtol=1e-5, atol=1e-7)
        if not diff:
            return None
        w_all = torch.stack([W.abs().amax(0) for W in weights]).amax(0)

        def s(xs, ws, a=alpha):
            return (xs.pow(a) / ws.pow(1 - a)).clamp(min=1e-5)
        causes = [
            ("max|X_j| is the largest |activation| of each channel over the tokens, not the mean (AWQ's statistic).",
             s(x.abs().mean(0), w_all)),
            ("max|X_j|: take the absolute value before the maximum (a channel's largest value can be negative).",
             s(x.amax(0).clamp(min=0), w_all)),
            ("alpha is the exponent of the activations and 1 - alpha that of the weights; yours are swapped.",
             s(x.abs().amax(0), w_all, 1 - alpha)),
            ("max|W_j| is over the rows of EVERY layer that reads x (q, k and v together): combine their column "
             "maxima; you used the first layer only.", s(x.abs().amax(0), weights[0].abs().amax(0))),
        ]
        if all(W.shape[0] == W.shape[1] for W in weights):
            causes.append(("max|W_j| is per input channel j, a column of W (amax over dim=0); you took the rows.",
                           s(x.abs().amax(0), torch.stack([W.abs().amax(1) for W in weights]).amax(0))))
        for cause, predicted in causes:
            if torch.allclose(got, predicted, rtol=1e-5, atol=1e-7):
                return f"{diff}. Likely cause: {cause}"
        return f"{diff}. s_j = max_t |x_tj| ** alpha / max_rows |W_j| ** (1 - alpha), clamped at 1e-5."
    return run


def _toy_sq():
    x = randn(32, 8, seed=50)
    x[:, 2] *= 30                                      # an outlier channel
    x[:, 5] = -x[:, 5].abs() * 4                       # a channel whose largest magnitude is negative
    return x, [randn(8, 8, seed=51), 3 * randn(8, 8, seed=52)]


def _qkv():
    x = activations(128, 64, seed=53, outliers=3)
    return x, [randn(64, 64, seed=54), randn(32, 64, seed=55), 0.5 * randn(32, 64, seed=56)]


def _real_sq():
    return (activations(256, 576, seed=57, outliers=6),
            [course_weight(f"blk.0.attn_{n}.weight", 64) for n in ("q", "k", "v")])


register(Exercise(
    id="09.smoothquant_scales",
    title="SmoothQuant's migration scales",
    statement="""\
Write `smoothquant_scales(x, weights, alpha)`: `x` are calibration activations `(tokens, in)` entering a group of
linear layers (their weights `(out, in)`, e.g. q, k and v, all reading `x`). For each input channel `j`:
`s_j = max|X_j| ** alpha / max|W_j| ** (1 - alpha)`, with `max|X_j|` over the tokens and `max|W_j|` over the rows
of all the layers; clamp the result at `1e-5`. Dividing channel `j` of `x` by `s_j` and multiplying column `j` of
every weight by `s_j` leaves the outputs unchanged and moves part of the activation outliers into the weights.""",
    reference="`quantedu.smoothquant.smoothquant_scales`",
    imports="import torch\n\nfrom quantedu.exercises import check, hint",
    stubs=('''\
def smoothquant_scales(x, weights, alpha):
    """SmoothQuant's per-channel scales s (in_features,) for activations x and the layers reading them."""
    ...  # YOUR CODE
''',),
    solution=(smoothquant_scales,),
    cases=lambda context: [
        _scales_case("hand-made: 8 channels, an outlier and a negative channel, two square layers", _toy_sq, 0.5),
        _scales_case("q/k/v of different heights (GQA), outlier channels", _qkv, 0.8),
        _scales_case("the course model: blk.0 attn_q/k/v (64 rows each)", _real_sq, 0.5),
    ],
    hints=(
        "x.abs().amax(dim=0) is max|X_j|: one value per input channel.",
        "For the weights: torch.stack([W.abs().amax(dim=0) for W in weights]).amax(dim=0) (columns are input channels).",
        "s = (x_max ** alpha / w_max ** (1 - alpha)).clamp(min=1e-5).",
    ),
))


# --- 09.hadamard_fold --------------------------------------------------------------------------------


def _fold_case(label, n_in, n_mid, n_out, bias, seed):
    @case(label)
    def run(make_hadamard, fold):
        for n in (1, 2, 8, n_mid):
            H = torch.as_tensor(make_hadamard(n)).double()
            diff = first_difference(rotation.hadamard(n), H, f"hadamard({n})", rtol=1e-6, atol=1e-9)
            if diff:
                if H.shape == (n, n) and torch.allclose(H, rotation.hadamard(n) * math.sqrt(n)):
                    return f"{diff}. Normalize it: divide by sqrt(n), so that H @ H.T is the identity."
                if H.shape == (n, n) and torch.allclose(H, rotation.hadamard(n) / math.sqrt(n)):
                    return f"{diff}. You divided by n; the orthonormal Hadamard divides by sqrt(n)."
                return f"{diff}. Sylvester: H_1 = [[1]], H_2n = [[H, H], [H, -H]], then divide by sqrt(n)."
        signs = torch.randint(0, 2, (n_mid,), generator=torch.Generator().manual_seed(seed)) * 2.0 - 1
        Q = signs.view(-1, 1) * rotation.hadamard(n_mid).float()   # randomized Hadamard: orthogonal, NOT symmetric
        torch.manual_seed(seed)
        first, second = nn.Linear(n_in, n_mid, bias=bias), nn.Linear(n_mid, n_out, bias=False)
        if n_in == 576:
            first.weight.data = course_weight("blk.0.ffn_up.weight", n_mid)
        x = randn(16, n_in, seed=seed + 1)
        with torch.no_grad():
            before = second(first(x))
        ref_first, ref_second = copy.deepcopy(first), copy.deepcopy(second)
        rotation.fold_rotation(ref_first, ref_second, Q.clone())
        w1, w2 = first.weight.detach().clone(), second.weight.detach().clone()
        try:
            fold(first, second, Q.clone())
        except RuntimeError as exc:
            if "leaf Variable that requires grad" in str(exc):
                return ("changing a parameter in place needs torch.no_grad() (decorate fold_rotation with "
                        "@torch.no_grad()).")
            raise
        with torch.no_grad():
            if torch.allclose(first.weight, Q @ w1, atol=1e-5):
                return "the first layer's rows must be mixed by Q.T (Q.T @ W): Q is not symmetric, Q @ W is another matrix."
            if first.weight.shape == w1.shape and n_in == n_mid and torch.allclose(first.weight, w1 @ Q, atol=1e-5):
                return "the rotated space is the first layer's OUTPUT: mix its rows (Q.T @ W), not its columns."
            if torch.allclose(second.weight, w2 @ Q.T, atol=1e-5):
                return "the second layer's columns take Q itself (W @ Q), not Q.T: it undoes what the first layer did."
            if torch.allclose(second.weight, Q.T @ w2, atol=1e-5) if w2.shape[0] == n_mid else False:
                return "the second layer reads the rotated space: mix its columns (W @ Q), not its rows."
            if bias and torch.allclose(first.weight, ref_first.weight, atol=1e-5) and \
                    not torch.allclose(first.bias, ref_first.bias, atol=1e-5):
                return "the bias is part of the first layer's output: rotate it too (b @ Q)."
            for what, ref, got in (("first layer weight", ref_first.weight, first.weight),
                                   ("second layer weight", ref_second.weight, second.weight)):
                diff = first_difference(ref, got, what, rtol=1e-5, atol=1e-6)
                if diff:
                    return f"{diff}."
            diff = first_difference(before, second(first(x)), "output of the pair", rtol=1e-4, atol=1e-4)
            if diff:
                return f"the pair no longer computes the same function: {diff}."
        return None
    return run


register(Exercise(
    id="09.hadamard_fold",
    title="a Hadamard rotation folded into a pair of linear layers",
    statement="""\
Write `hadamard(n)`: the orthonormal Sylvester Hadamard matrix of order `n` (a power of two): `H_1 = [[1]]`,
`H_2n = [[H, H], [H, -H]]`, divided by `sqrt(n)` at the end, so that `H @ H.T` is the identity.
Then write `fold_rotation(first, second, Q)` for two `nn.Linear` layers where `second` reads what `first` writes and
`Q` is any orthogonal matrix (the checker passes a Hadamard with random signs, which is *not* symmetric): change the
weights **in place** so that `first` writes `y @ Q` instead of `y` (its bias too) and `second` undoes it, leaving
`second(first(x))` unchanged. This is how QuaRot/SpinQuant rotate a model for free.""",
    reference="`quantedu.rotation.hadamard` and `quantedu.rotation.fold_rotation`",
    imports="import math\n\nimport torch\n\nfrom quantedu.exercises import check, hint",
    stubs=('''\
def hadamard(n):
    """The orthonormal Sylvester Hadamard matrix of order n (a power of two)."""
    ...  # YOUR CODE
''', '''\
def fold_rotation(first, second, Q):
    """Rotate the space between two linear layers by the orthogonal Q, in place."""
    ...  # YOUR CODE
'''),
    solution=(hadamard, fold_rotation),
    cases=lambda context: [
        _fold_case("hand-made: 8 -> 8 -> 4, with a bias", 8, 8, 4, True, 60),
        _fold_case("64 -> 64 -> 32, no bias", 64, 64, 32, False, 61),
        _fold_case("the course model: blk.0 ffn_up (64 rows) -> a 64 -> 48 layer", 576, 64, 48, False, 62),
    ],
    hints=(
        "hadamard: start from torch.ones(1, 1) and double it with torch.cat until it has n rows; divide by math.sqrt(n).",
        "first writes y Q: y = x W1^T, so y Q = x (Q^T W1)^T: first.weight <- Q.T @ first.weight, bias <- bias @ Q.",
        "second reads y Q and must give the old output: second.weight <- second.weight @ Q (inside torch.no_grad()).",
    ),
))
