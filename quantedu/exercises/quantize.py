"""Notebook 02's exercises: asymmetric quantization of one group, and the straight-through estimator.

* ``02.asym_quantize`` is checked against :func:`quantedu.primitives.choose_qparams`, :func:`~quantedu.
  primitives.quantize` and :func:`~quantedu.primitives.dequantize` (per-channel on a one-row weight: one
  group). The conventions are GPTQ's (IST-DASLab ``quant.py``): the range ``[min(w, 0), max(w, 0)]`` is
  mapped onto the codes ``0 .. 2**bits - 1``, ``scale = (max - min) / (2**bits - 1)``, integer
  ``zero = round(-min / scale)``, ``q = clamp(round(w / scale) + zero)``, ``w_hat = scale * (q - zero)``.
* ``02.round_ste`` is checked against :func:`quantedu.qat.round_ste` (Bengio et al. 2013, "Estimating or
  propagating gradients through stochastic neurons"): forward values and the gradients reaching both
  the weight and the scale of a fake-quantized product.
"""
from __future__ import annotations

import torch

from .. import qat
from ..primitives import QuantConfig, choose_qparams, dequantize, quantize
from .core import Exercise, case, first_difference, fmt, register
from .inputs import course_weight, randn


# --- reference solutions (learner style) ------------------------------------------------------------


def asym_quantize(w, bits):
    maxq = 2**bits - 1
    lo = torch.clamp(w.min(), max=0)   # the grid must contain 0 exactly
    hi = torch.clamp(w.max(), min=0)
    span = hi - lo
    if span == 0:                      # a group of zeros: any scale represents it
        span = torch.ones_like(span)
    scale = span / maxq
    zero = torch.round(-lo / scale)
    q = torch.clamp(torch.round(w / scale) + zero, 0, maxq)
    return q, scale, zero


def asym_dequantize(q, scale, zero):
    return scale * (q - zero)


class RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad_output):
        return grad_output             # round treated as the identity: the gradient passes straight through


# --- 02.asym_quantize --------------------------------------------------------------------------------


def _package(w: torch.Tensor, bits: int):
    cfg = QuantConfig(bits, symmetric=False, granularity="channel")
    scale, zero = choose_qparams(w[None], cfg)
    q = quantize(w[None], scale, zero, cfg)[0]
    return q.double(), float(scale), float(zero), cfg


def _num(x):
    return float(x.item() if hasattr(x, "item") else x)


def _quantize_case(label: str, make, bits: int):
    @case(f"{label} ({bits} bits)")
    def run(quant, dequant):
        w = make()
        q_exp, s_exp, z_exp, cfg = _package(w, bits)
        maxq = cfg.maxq
        out = quant(w.clone(), bits)
        if not isinstance(out, (tuple, list)) or len(out) != 3:
            return "asym_quantize must return three things: (q, scale, zero)"
        q, s, z = out
        q = torch.as_tensor(q).detach().double()
        s, z = _num(s), _num(z)
        if q.shape != w.shape:
            return f"q must have the shape of w {tuple(w.shape)}, got {tuple(q.shape)}"
        if not torch.isfinite(q).all() or s != s:
            hint = " A group of zeros has max == min: use scale 1 (any scale represents it)." if not w.any() else ""
            return f"your codes or scale are not finite (nan/inf): scale {fmt(s)}.{hint}"
        if (q != q.round()).any():
            return "your codes are not integers: round w / scale (then add the integer zero point)."
        if q.min() < 0 or q.max() > maxq:
            return (f"codes must lie in [0, {maxq}], yours reach [{fmt(q.min())}, {fmt(q.max())}]: clamp after "
                    f"adding the zero point (round(w/scale) + zero can overshoot by one).")
        if w.any() and abs(s - s_exp) > 1e-6 * abs(s_exp):
            lo, hi = float(w.min()), float(w.max())
            causes = [(s_exp * maxq / (maxq + 1), f"{bits} bits give 2**bits - 1 = {maxq} steps between the "
                                                  f"{maxq + 1} levels: divide the range by {maxq}."),
                      ((hi - lo) / maxq, "the range must include 0 (use min(w.min(), 0) and max(w.max(), 0)), "
                                         "so that 0.0 stays exactly representable."),
                      (max(abs(lo), abs(hi)) / (maxq / 2), "that is the symmetric (absmax) scale; asymmetric "
                                                         "uses max - min.")]
            cause = next((c for v, c in causes if abs(s - v) <= 1e-6 * abs(v)), "")
            return f"scale: expected {fmt(s_exp)}, got {fmt(s)}." + (f" Likely cause: {cause}" if cause else "")
        if w.any() and z != z_exp:
            cause = " Likely cause: your zero point is off by one." if abs(z - z_exp) == 1 else ""
            lo = min(float(w.min()), 0.0)
            if z == torch.floor(torch.tensor(-lo / s_exp)).item() or z == torch.ceil(torch.tensor(-lo / s_exp)).item():
                cause += " Round it: zero = round(-min / scale), not floor/ceil/int()."
            if z != round(z):
                cause = " Likely cause: the zero point must be an integer: zero = round(-min / scale)."
            return f"zero point: expected {fmt(z_exp)}, got {fmt(z)}.{cause}"
        diff = first_difference(q_exp, q, "code")
        if diff:
            x = w.double() / s_exp
            causes = [(torch.clamp(torch.floor(x) + z_exp, 0, maxq), "you rounded with floor; round to nearest."),
                      (torch.clamp(torch.trunc(x) + z_exp, 0, maxq), "you truncated (int() / .to(int) rounds "
                                                                     "toward zero); round to nearest."),
                      (torch.clamp(torch.round((w.double() - min(float(w.min()), 0.0)) / s_exp), 0, maxq),
                       "you computed round((w - min) / scale); with an integer zero point the codes are "
                       "round(w / scale) + zero.")]
            found = [c for v, c in causes if torch.equal(v, q)]
            return f"{diff}." + (f" Likely cause: {' Or: '.join(found)}" if found else "")
        w_hat = dequant(torch.as_tensor(q_exp).clone(), torch.tensor(s_exp), torch.tensor(z_exp))
        w_ref = dequantize(q_exp[None], torch.tensor([[s_exp]]), torch.tensor([[z_exp]]), cfg, dtype=torch.float64)[0]
        diff = first_difference(w_ref, w_hat, "dequantized value", rtol=1e-6, atol=1e-9)
        if diff:
            cause = " Likely cause: dequantize is scale * (q - zero), not scale * q - zero." if torch.allclose(
                torch.as_tensor(w_hat).double(), s_exp * q_exp - z_exp) else ""
            return diff + "." + cause
        return None
    return run


def _quantize_cases(context):
    t = torch.tensor
    return [
        _quantize_case("hand-made: a group that straddles 0", lambda: t([-1.3, -0.35, 0.0, 0.2, 0.55, 0.8, 2.0]), 3),
        _quantize_case("hand-made: all weights positive", lambda: t([0.5, 1.0, 1.5, 2.25, 3.0]), 3),
        _quantize_case("hand-made: round(w/scale) + zero overshoots the top code",
                       lambda: t([-0.75, -0.2, 0.3, 0.75]), 2),
        _quantize_case("hand-made: a group of zeros", lambda: torch.zeros(8), 4),
        _quantize_case("random normal group of 128", lambda: randn(128, seed=0), 4),
        _quantize_case("random normal group of 32", lambda: randn(32, seed=1) + 0.3, 2),
        _quantize_case("the course model: blk.0.ffn_down.weight, row 0, columns 0-127",
                       lambda: course_weight("blk.0.ffn_down.weight", 1)[0, :128], 3),
    ]


register(Exercise(
    id="02.asym_quantize",
    title="asymmetric quantization of one group",
    statement="""\
Write `asym_quantize(w, bits)` for one group `w` (a 1-D float tensor): return the integer codes `q` in
`[0, 2**bits - 1]`, the group's `scale` and its **integer** zero point `zero`, mapping the range
`[min(w, 0), max(w, 0)]` onto the codes. Then `asym_dequantize(q, scale, zero)`: the real values the codes
stand for.""",
    reference="`quantedu.primitives` (`choose_qparams`, `quantize`, `dequantize`)",
    imports="import torch\n\nfrom quantedu.exercises import check, hint",
    stubs=('''\
def asym_quantize(w, bits):
    """(q, scale, zero) of one group w: codes in [0, 2**bits - 1], float scale, integer zero point."""
    ...  # YOUR CODE
''', '''\
def asym_dequantize(q, scale, zero):
    """The values the codes q stand for."""
    ...  # YOUR CODE
'''),
    solution=(asym_quantize, asym_dequantize),
    cases=_quantize_cases,
    hints=(
        "lo = min(w.min(), 0) and hi = max(w.max(), 0): the grid must contain 0 exactly.",
        "scale = (hi - lo) / (2**bits - 1); zero = round(-lo / scale) is an integer.",
        "q = clamp(round(w / scale) + zero, 0, 2**bits - 1); dequantize: scale * (q - zero).",
        "A group of zeros has hi == lo: use a span of 1 so nothing divides by zero.",
    ),
))


# --- 02.round_ste ------------------------------------------------------------------------------------


def _ste_cases(context):
    def forward(cls, x):
        return cls.apply(x)

    @case("hand-made: forward of [0.4, 1.6, -0.5, 2.5, -1.2] (halves round to even, like torch.round)")
    def values(cls):
        if not (isinstance(cls, type) and issubclass(cls, torch.autograd.Function)):
            return f"pass the class itself (a torch.autograd.Function subclass), got {type(cls).__name__}"
        x = torch.tensor([0.4, 1.6, -0.5, 2.5, -1.2])
        y = forward(cls, x.clone())
        diff = first_difference(qat.round_ste(x), y, "forward value", rtol=1e-6, atol=1e-6)
        if diff and torch.equal(torch.as_tensor(y), torch.floor(x)):
            return diff + ". Likely cause: you used floor; the forward is torch.round."
        if diff and torch.equal(torch.as_tensor(y), x):
            return diff + ". Likely cause: your forward does not round."
        return diff and diff + "."

    def grads(cls, upstream):
        x = torch.tensor([0.4, 1.6, -0.5, 2.5, -1.2], requires_grad=True)
        (forward(cls, x) * upstream).sum().backward()
        return x.grad

    @case("hand-made: the gradient of sum(round(x)) (all ones)")
    def ones(cls):
        g = grads(cls, torch.ones(5))
        if g is None:
            return "x received no gradient: backward must return grad_output (one gradient per input of forward)."
        diff = first_difference(torch.ones(5), g, "gradient")
        if diff and not torch.as_tensor(g).any():
            return diff + ". Likely cause: round's true gradient is 0 almost everywhere; the STE passes the " \
                          "upstream gradient straight through instead."
        return diff and diff + "."

    @case("random upstream gradients (a loss that is not a plain sum)")
    def upstream(cls):
        up = randn(5, seed=3)
        g = grads(cls, up)
        if g is None:
            return "x received no gradient: backward must return grad_output."
        diff = first_difference(up, g, "gradient", rtol=1e-6)
        if diff and torch.equal(torch.as_tensor(g), torch.ones(5)):
            return diff + ". Likely cause: you returned ones; return grad_output (the chain rule needs it)."
        if diff and torch.equal(torch.as_tensor(g), torch.round(up)):
            return diff + ". Likely cause: you rounded the gradient; only the forward rounds."
        return diff and diff + "."

    @case("the course model: fake-quantized blk.0.attn_q row, gradients reaching the weights and the scale")
    def chain(cls):
        w0 = course_weight("blk.0.attn_q.weight", 1)[0, :64].clone()
        target = randn(64, seed=4) * w0.std()
        out = {}
        for name, fn in (("package", qat.round_ste), ("yours", lambda v: forward(cls, v))):
            w = w0.clone().requires_grad_(True)
            s = (w0.abs().max() / 7).clone().requires_grad_(True)
            loss = ((s * torch.clamp(fn(w / s), -8, 7) - target) ** 2).sum()
            loss.backward()
            out[name] = (w.grad, s.grad)
        if out["yours"][0] is None or out["yours"][1] is None:
            return "no gradient reached the weight or the scale: backward must return grad_output."
        return (first_difference(out["package"][0], out["yours"][0], "weight gradient", rtol=1e-5, atol=1e-8)
                or first_difference(out["package"][1], out["yours"][1], "scale gradient", rtol=1e-5, atol=1e-8))

    return [values, ones, upstream, chain]


register(Exercise(
    id="02.round_ste",
    title="the straight-through estimator as an autograd Function",
    statement="""\
Write `RoundSTE`, a `torch.autograd.Function` whose forward rounds (`torch.round`) and whose backward
treats rounding as the identity, so `RoundSTE.apply(w / s)` lets gradients reach the weights and the scale
of a fake-quantized layer.""",
    reference="`quantedu.qat.round_ste`",
    imports="import torch\n\nfrom quantedu.exercises import check, hint",
    stubs=('''\
class RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ...  # YOUR CODE

    @staticmethod
    def backward(ctx, grad_output):
        ...  # YOUR CODE
''',),
    solution=(RoundSTE,),
    cases=_ste_cases,
    hints=(
        "forward(ctx, x) returns torch.round(x); nothing needs saving in ctx.",
        "backward(ctx, grad_output) returns one gradient per input of forward: here just grad_output.",
        "Not torch.ones_like(grad_output): the gradient arriving from the loss must be passed on unchanged.",
    ),
))
