"""Notebook 04's exercises: AWQ's scale search over alpha, and folding the scales into the norm.

Lin et al., "AWQ" (arXiv:2306.00978), Section 3.2; mit-han-lab/llm-awq ``auto_scale.py``
(``_search_module_scale``, ``scale_ln_fcs``). Checked against :func:`quantedu.awq.search_scale` (with
:func:`quantedu.awq.candidate_scales`) and :func:`quantedu.awq.fold_scales`. The search is scored on the
mean squared error of the group's concatenated outputs ``x @ W_i^T``, the AWQ loss of a group of linear
layers that read the same input.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .. import awq
from ..primitives import QuantConfig, fake_quantize
from .core import Exercise, case, first_difference, fmt, register
from .inputs import activations, course_tensor, course_weight, randn


# --- reference solutions (learner style) ------------------------------------------------------------


def awq_search(weights, x, bits, group_size, n_grid):
    qc = QuantConfig(bits, group_size)                # asymmetric, integer zero points
    s_x = x.abs().mean(0)                             # mean |activation| per input channel
    reference = torch.cat([x @ W.T for W in weights], 1)
    best_err, best_s, best_alpha = float("inf"), None, None
    for i in range(n_grid):
        alpha = i / n_grid
        s = s_x.pow(alpha).clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()            # centred on 1
        out = torch.cat([x @ (fake_quantize(W * s, qc) / s).T for W in weights], 1)
        err = (out - reference).pow(2).mean().item()
        if err < best_err:
            best_err, best_s, best_alpha = err, s, alpha
    return best_s, best_alpha


@torch.no_grad()
def fold_into_norm(norm, linears, s):
    norm.weight.div_(s)                               # the norm's output is divided by s ...
    if getattr(norm, "bias", None) is not None:
        norm.bias.div_(s)
    for layer in linears:
        layer.weight.mul_(s.view(1, -1))              # ... and every layer's input channels multiplied by s


# --- 04.awq_search -----------------------------------------------------------------------------------


def _package_search(weights, x, bits, group_size, n_grid):
    layers = [nn.Linear(W.shape[1], W.shape[0], bias=False) for W in weights]
    for layer, W in zip(layers, weights):
        layer.weight.data = W.clone()
    ref = torch.cat([layer(x) for layer in layers], 1)

    def loss():
        return float((torch.cat([layer(x) for layer in layers], 1) - ref).pow(2).mean())

    cfg = awq.AWQConfig(bits=bits, group_size=group_size, n_grid=n_grid)
    s, alpha, history = awq.search_scale(layers, awq.activation_scale(x), loss, cfg)
    return s, alpha, history, cfg


_EXPECTED: dict[str, tuple] = {}  # the package's answer per input (inputs are deterministic): computed once


def _search_case(label, make, bits, group_size, n_grid):
    @case(f"{label} ({bits} bits, groups of {group_size}, {n_grid}-point grid)")
    def run(search):
        weights, x = make()
        if label not in _EXPECTED:
            _EXPECTED[label] = _package_search(weights, x, bits, group_size, n_grid)
        s_exp, a_exp, history, cfg = _EXPECTED[label]
        out = search([W.clone() for W in weights], x.clone(), bits, group_size, n_grid)
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            return "awq_search must return (s, alpha)"
        s, alpha = torch.as_tensor(out[0]).float(), float(out[1])
        ratios = cfg.ratios()
        if not any(abs(alpha - r) < 1e-6 for r in ratios):
            return (f"alpha {fmt(alpha)} is not on the grid: alphas are i / n_grid for i < n_grid "
                    f"({fmt(ratios[0])}, {fmt(ratios[1])}, ..., {fmt(ratios[-1])}).")
        k = min(range(len(ratios)), key=lambda i: abs(ratios[i] - alpha))
        alpha = ratios[k]  # e.g. a float32 tensor's 0.4000000059604645
        x_mean = awq.activation_scale(x)
        if s.shape != s_exp.shape:
            return f"s must hold one scale per input channel, shape {tuple(s_exp.shape)}; got {tuple(s.shape)}"
        own = awq.candidate_scales(x_mean, alpha)
        if not torch.allclose(s, own, rtol=1e-5, atol=1e-7):
            ratio = s / own
            if torch.allclose(ratio, ratio.mean().expand_as(ratio), rtol=1e-4):
                return (f"your s at alpha {fmt(alpha)} is the package's times {fmt(ratio.mean())}: normalize it so "
                        f"that sqrt(max(s) * min(s)) == 1.")
            if torch.allclose(s, awq.candidate_scales(x.abs().amax(0), alpha), rtol=1e-5):
                return "s_x is the mean |x| of each input channel over the tokens, not the max."
            diff = first_difference(own, s, f"s at alpha {fmt(alpha)}", rtol=1e-5, atol=1e-7)
            return f"{diff}. s = mean|x| ** alpha per input channel (clamped at 1e-4), then normalized."
        best = min(history)
        if alpha != a_exp and history[k] > best * (1 + 1e-4):
            table = ", ".join(f"{fmt(r)}: {h:.3g}" for r, h in zip(ratios, history))
            cause = (" alpha = 0 is plain RTN: did you forget to divide the quantized W * s by s, or score the "
                     "weights instead of the outputs x @ W.T?") if alpha == 0 else ""
            return (f"alpha: expected {fmt(a_exp)}, got {fmt(alpha)}, whose output error is {history[k]:.4g} vs "
                    f"{best:.4g} (the package's error per alpha: {table}).{cause}")
        return None
    return run


def _toy():
    x = randn(64, 32, seed=10)
    x[:, 3] *= 25                                        # one salient input channel
    return [randn(16, 32, seed=11), randn(8, 32, seed=12)], x


def _random():
    return [randn(64, 128, seed=13), randn(48, 128, seed=14)], activations(256, 128, seed=15)


def _real():
    return ([course_weight("blk.0.ffn_gate.weight", 64), course_weight("blk.0.ffn_up.weight", 64)],
            activations(128, 576, seed=16, outliers=6))


register(Exercise(
    id="04.awq_search",
    title="AWQ's scale search over alpha",
    statement="""\
Write `awq_search(weights, x, bits, group_size, n_grid)` for a group of linear layers (their weights, each
`(out, in)`) that read the same input `x` `(tokens, in)`. For `alpha` in `0, 1/n_grid, ..., (n_grid-1)/n_grid`:
`s = mean|x| ** alpha` per input channel, normalized so that `sqrt(max(s) * min(s)) == 1`; quantize every
`W * s` (use `quantedu.primitives.fake_quantize` with `QuantConfig(bits, group_size)`), divide by `s`, and
score the mean squared error of all the layers' outputs `x @ W.T` against the full-precision ones. Return
`(s, alpha)` of the smallest error.""",
    reference="`quantedu.awq.search_scale` and `quantedu.awq.candidate_scales`",
    imports="import torch\n\nfrom quantedu.exercises import check, hint\nfrom quantedu.primitives import QuantConfig, "
            "fake_quantize",
    stubs=('''\
def awq_search(weights, x, bits, group_size, n_grid):
    """(best s, best alpha) of AWQ's grid search for layers that share the input x."""
    ...  # YOUR CODE
''',),
    solution=(awq_search,),
    cases=lambda context: [
        _search_case("hand-made: two layers, one salient input channel", _toy, 3, 32, 10),
        _search_case("random layers, activations with outlier channels", _random, 3, 64, 20),
        _search_case("the course model: blk.0.ffn_gate and ffn_up (first 64 rows each)", _real, 4, 128, 20),
    ],
    hints=(
        "s_x = x.abs().mean(0); the full-precision outputs: torch.cat([x @ W.T for W in weights], 1).",
        "For each alpha: s = s_x.pow(alpha).clamp(min=1e-4); s = s / (s.max() * s.min()).sqrt().",
        "Quantized outputs: x @ (fake_quantize(W * s, QuantConfig(bits, group_size)) / s).T for each W; keep the "
        "alpha whose mean squared error is smallest (the first one on a tie).",
    ),
))


# --- 04.awq_fold -------------------------------------------------------------------------------------


def _fold_case(label, make):
    @case(label)
    def run(fold):
        norm, linears, s, x = make()
        before = [layer(norm(x)) for layer in linears]
        ref_norm, ref_linears = copy.deepcopy(norm), copy.deepcopy(linears)
        awq.fold_scales(ref_norm, ref_linears, s.clone())
        w0 = norm.weight.detach().clone()
        originals = [layer.weight.detach().clone() for layer in linears]
        try:
            fold(norm, linears, s.clone())
        except RuntimeError as exc:
            if "leaf Variable that requires grad" in str(exc):
                return ("modifying a parameter in place needs torch.no_grad() (decorate the function with "
                        "@torch.no_grad() or wrap the body in `with torch.no_grad():`).")
            if "size of tensor" in str(exc) or "must match" in str(exc):
                return (f"your code raised {exc}. s has one value per input channel: scale the columns, "
                        f"W * s.view(1, -1).")
            raise
        with torch.no_grad():
            after = [layer(norm(x)) for layer in linears]
            if torch.allclose(norm.weight, w0 * s):
                return "the norm's output must be divided by s (you multiplied its weight)."
            for name, ref, got in (("norm weight", ref_norm.weight, norm.weight),
                                   ("norm bias", getattr(ref_norm, "bias", None), getattr(norm, "bias", None))):
                if ref is not None and not torch.allclose(ref, got, rtol=1e-6, atol=1e-9):
                    extra = " The bias is part of the norm's output: divide it by s too." if name == "norm bias" else ""
                    return f"{first_difference(ref, got, name, rtol=1e-6, atol=1e-9)}.{extra}"
            for k, (ref, got, w) in enumerate(zip(ref_linears, linears, originals)):
                if torch.allclose(got.weight, ref.weight, rtol=1e-6, atol=1e-9):
                    continue
                if torch.equal(got.weight, w):
                    return f"layer {k} was not scaled: multiply the input channels of every layer by s."
                if w.shape[0] == s.numel() and torch.allclose(got.weight, w * s.view(-1, 1), rtol=1e-6):
                    return f"layer {k}: you scaled its output rows; s belongs to the input channels (columns)."
                return f"layer {k}: {first_difference(ref.weight, got.weight, 'weight', rtol=1e-6, atol=1e-9)}."
            for k, (out0, out1) in enumerate(zip(before, after)):
                diff = first_difference(out0, out1, f"output of layer {k}", rtol=1e-4, atol=1e-5)
                if diff:
                    return f"the block no longer computes the same function: {diff}."
        return None
    return run


def _rms(weight):
    norm = nn.RMSNorm(weight.numel(), eps=1e-5)
    norm.weight.data = weight.clone()
    return norm


def _linear(W):
    layer = nn.Linear(W.shape[1], W.shape[0], bias=False)
    layer.weight.data = W.clone()
    return layer


def _fold_toy():
    return (_rms(torch.tensor([1.0, 2.0, 3.0, 4.0])), [_linear(randn(3, 4, seed=20))],
            torch.tensor([1.0, 2.0, 0.5, 4.0]), randn(5, 4, seed=21))


def _fold_layernorm():
    norm = nn.LayerNorm(64)
    norm.weight.data, norm.bias.data = 1 + 0.1 * randn(64, seed=22), 0.1 * randn(64, seed=23)
    s = awq.candidate_scales(activations(128, 64, seed=24).abs().mean(0), 0.5)
    layers = [_linear(randn(rows, 64, seed=25 + k)) for k, rows in enumerate((64, 32, 32))]
    return norm, layers, s, randn(16, 64, seed=28)


def _fold_real():
    norm = _rms(torch.from_numpy(course_tensor("blk.0.ffn_norm.weight")[0]))
    s = awq.candidate_scales(activations(256, 576, seed=29, outliers=6).abs().mean(0), 0.4)
    layers = [_linear(course_weight(f"blk.0.ffn_{name}.weight", 256)) for name in ("gate", "up")]
    return norm, layers, s, activations(32, 576, seed=30)


register(Exercise(
    id="04.awq_fold",
    title="folding AWQ's scales into the preceding norm",
    statement="""\
Write `fold_into_norm(norm, linears, s)`: change the modules **in place** so that the norm's output is divided
by `s` (its weight, and its bias if it has one) and every linear layer reading it multiplies its input
channels by `s`. The function the block computes must not change (that is what makes AWQ free at inference).""",
    reference="`quantedu.awq.fold_scales`, and the block's outputs before and after",
    imports="import torch\n\nfrom quantedu.exercises import check, hint",
    stubs=('''\
def fold_into_norm(norm, linears, s):
    """Divide the norm's output by s; multiply the input channels of every layer in linears by s."""
    ...  # YOUR CODE
''',),
    solution=(fold_into_norm,),
    cases=lambda context: [
        _fold_case("hand-made: RMSNorm of 4 channels, one layer", _fold_toy),
        _fold_case("LayerNorm with a bias, q/k/v of different widths (GQA)", _fold_layernorm),
        _fold_case("the course model: blk.0 ffn_norm, ffn_gate and ffn_up (256 rows each)", _fold_real),
    ],
    hints=(
        "Parameters changed in place need torch.no_grad(): decorate the function with @torch.no_grad().",
        "norm.weight.div_(s), and norm.bias.div_(s) when the norm has a bias.",
        "For each layer: layer.weight.mul_(s.view(1, -1)): the columns of a weight are its input channels.",
    ),
))
