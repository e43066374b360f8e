"""Notebook 03's exercises: GPTQ's ``Hinv`` (damping + Cholesky of ``H^-1``) and its inner loop over one block.

Frantar et al., "GPTQ" (arXiv:2210.17323), Algorithm 1; the steps are IST-DASLab ``gptq.py``
``fasterquant``'s, as in :mod:`quantedu.gptq`. The package quantizes a whole layer in one function, so this
module adds the two pieces as standalone functions (the reference solutions) and :func:`gptq_with`, the
outer loop of :func:`quantedu.gptq.gptq_quantize_weight` with those pieces pluggable. The tests prove that
``gptq_with`` with the reference pieces reproduces ``gptq_quantize_weight`` code for code, so a learner's
piece is graded inside the real algorithm: its codes must be the package's.

``gptq_with`` covers GPTQ without act-order, with the grid of each group chosen from the weights as updated
so far (the reference's default): each lazy-update block is one group (``block_size == group_size``), or
the whole row is one group (``group_size=-1``).
"""
from __future__ import annotations

import torch

from ..evaluate import torch_threads
from ..gptq import GPTQConfig, gptq_quantize_weight
from ..primitives import QuantConfig, choose_qparams
from .core import Exercise, case, first_difference, register
from .inputs import activations, course_weight, hessian, randn


# --- reference solutions (learner style) ------------------------------------------------------------


def gptq_hinv(H, damp_percent):
    H = H.clone()
    dead = torch.diag(H) == 0                       # inputs that never fired
    H[dead, dead] = 1
    H += damp_percent * torch.diag(H).mean() * torch.eye(H.shape[0])
    return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)


def gptq_block(W1, Hinv1, scale, zero, maxq):
    W1 = W1.clone()
    Q1, Err1 = torch.zeros_like(W1), torch.zeros_like(W1)
    for i in range(W1.shape[1]):
        w, d = W1[:, i], Hinv1[i, i]
        q = scale * (torch.clamp(torch.round(w / scale) + zero, 0, maxq) - zero)
        err = (w - q) / d
        W1[:, i:] -= err.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)   # OBS update of the rest of the block
        Q1[:, i], Err1[:, i] = q, err
    return Q1, Err1


# --- the outer loop, with pluggable pieces ------------------------------------------------------------


@torch.no_grad()
def gptq_with(W: torch.Tensor, H: torch.Tensor, config: GPTQConfig, block_fn=gptq_block, hinv_fn=gptq_hinv):
    """The dequantized GPTQ weight of ``W``, built from ``hinv_fn`` and ``block_fn``, as
    :func:`quantedu.gptq.gptq_quantize_weight` computes it (same operations, in the same order)."""
    if config.desc_act or config.static_groups:
        raise ValueError("gptq_with follows GPTQ without act-order and without static groups")
    qc = config.quant_config()
    per_row = config.group_size == -1
    if not per_row and config.block_size != config.group_size:
        raise ValueError("gptq_with needs block_size == group_size (each block is one group)")
    W, H = W.detach().clone().float(), H.detach().clone().float()
    rows, cols = W.shape
    W[:, torch.diag(H) == 0] = 0
    row_grid = QuantConfig(qc.bits, symmetric=qc.symmetric, granularity="channel")  # one group's grid per row
    with torch_threads(1):
        Hinv = torch.as_tensor(hinv_fn(H.clone(), config.damp_percent), dtype=W.dtype)
        Q = torch.zeros_like(W)
        for i1 in range(0, cols, config.block_size):
            i2 = min(i1 + config.block_size, cols)
            if per_row and i1 == 0 or not per_row:   # a group starts: its grid from the weights as updated
                s, z = choose_qparams(W if per_row else W[:, i1:i2], row_grid)
                scale, zero = s[:, 0], z[:, 0]
            Q1, Err1 = block_fn(W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2].clone(), scale, zero, qc.maxq)
            Q[:, i1:i2] = torch.as_tensor(Q1, dtype=W.dtype)
            W[:, i2:] -= torch.as_tensor(Err1, dtype=W.dtype) @ Hinv[i1:i2, i2:]
    return Q


def _codes_vs_package(W, H, config, Q, what: str) -> str | None:
    """Compare the codes of the learner-built ``Q`` with ``gptq_quantize_weight``'s, code for code."""
    res = gptq_quantize_weight(W, H, config)
    s, z = res.scales[:, res.g_idx.long()], res.zeros[:, res.g_idx.long()]
    Q = torch.as_tensor(Q).float()
    if not torch.isfinite(Q).all():
        return f"the weight GPTQ built with your {what} holds nan/inf"
    codes = torch.clamp(torch.round(Q / s + z), 0, config.quant_config().maxq)
    diff = first_difference(res.codes, codes, "code")
    if diff:
        return (f"with your {what} inside GPTQ, the codes differ from quantedu.gptq.gptq_quantize_weight: "
                f"{diff}. GPTQ is a chain of rounding decisions: one different code changes every later "
                f"update of its row.")
    return None


# --- inputs -----------------------------------------------------------------------------------------


def _worked_example():
    """Notebook 03's worked case: one row [1.4, 1.4, 3.0], 2 bits, columns 0 and 1 correlated."""
    W = torch.tensor([[1.4, 1.4, 3.0]])
    H = torch.tensor([[2.0, 1.0, 0.0], [1.0, 2.0, 0.0], [0.0, 0.0, 1.0]])
    return W, H, GPTQConfig(bits=2, group_size=-1, sym=False, damp_percent=0.0, block_size=3)


def _random_layer(rows, cols, seed, dead=()):
    W = randn(rows, cols, seed=seed)
    x = activations(4 * cols, cols, seed=seed + 1)
    x = x + 0.5 * x.roll(1, dims=1)           # neighbouring inputs correlated, as real features are
    x[:, list(dead)] = 0
    return W, hessian(x)


def _real_layer(rows=64):
    W = course_weight("blk.0.attn_q.weight", rows)
    return W, hessian(activations(1024, W.shape[1], seed=7))


def _layers(context):
    """(label, W, H, config) for the inputs both GPTQ exercises use, built lazily."""
    return [
        ("notebook 03's worked example (2 bits, one row)", _worked_example),
        ("random layer 8 x 16, 3 bits asymmetric, blocks of 8", lambda: (*_random_layer(8, 16, 0),
                                                                         GPTQConfig(3, 8, sym=False, block_size=8))),
        ("random layer 32 x 256 with two dead inputs, 4 bits symmetric, groups of 128",
         lambda: (*_random_layer(32, 256, 2, dead=(5, 77)), GPTQConfig(4, 128))),
        ("the course model: blk.0.attn_q.weight (64 rows x 576: the last group of 64 is ragged), 4 bits asym",
         lambda: (*_real_layer(), GPTQConfig(4, 128, sym=False))),
    ]


# --- 03.gptq_hinv ------------------------------------------------------------------------------------


def _hinv_slips(H, damp):
    def chol_inv(Hd):
        return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(Hd)), upper=True)

    def damped(Hd, amount):
        return Hd + amount * torch.eye(Hd.shape[0])

    fixed = H.clone()
    dead = torch.diag(fixed) == 0
    fixed[dead, dead] = 1
    mean = torch.diag(fixed).mean()
    slips = [
        (lambda: chol_inv(fixed), "you forgot damping: add damp_percent * mean(diag(H)) to the diagonal."),
        (lambda: chol_inv(damped(fixed, damp)), "damping is relative: add damp_percent * mean(diag(H)), not "
                                                "damp_percent itself."),
        (lambda: torch.linalg.inv(damped(fixed, damp * mean)), "you returned H^-1 itself; GPTQ reads the rows of "
                                                                "its upper Cholesky factor."),
        (lambda: chol_inv(damped(fixed, damp * mean)).T, "that is the lower Cholesky factor: use upper=True."),
        (lambda: torch.linalg.cholesky(torch.linalg.inv(damped(fixed, damp * mean)), upper=True),
         "torch.linalg.inv loses precision on an ill-conditioned H (activations with outlier channels): invert "
         "through the Cholesky factor, torch.cholesky_inverse(torch.linalg.cholesky(H)), as the reference does."),
        (lambda: chol_inv(damped(H, damp * torch.diag(H).mean())), "a dead input (a zero on the diagonal of H: an "
                                                                   "input that never fired) must get H[i, i] = 1 "
                                                                   "before damping."),
    ]
    for make, cause in slips:
        try:
            yield cause, make()
        except RuntimeError:  # e.g. not positive definite without damping
            continue


def _hinv_case(label, make):
    @case(label)
    def run(hinv_fn):
        W, H, config = make()
        exp = gptq_hinv(H, config.damp_percent)
        try:
            got = hinv_fn(H.clone(), config.damp_percent)
        except torch.linalg.LinAlgError as exc:
            return (f"your code raised LinAlgError ({str(exc).split('(')[0].strip()}): H must be made positive "
                    f"definite first: H[i, i] = 1 for every dead input (a zero on the diagonal), then damping.")
        if not isinstance(got, torch.Tensor):
            return f"gptq_hinv must return a tensor, got {type(got).__name__}"
        diff = first_difference(exp, got, "Hinv", rtol=1e-4, atol=1e-5 * float(exp.abs().max()))
        if diff:
            cause = next((c for c, v in _hinv_slips(H, config.damp_percent)
                          if v.shape == got.shape and torch.allclose(v, got.float(), rtol=1e-4, atol=1e-6)), "")
            return f"{diff}." + (f" Likely cause: {cause}" if cause else "")
        return _codes_vs_package(W, H, config, gptq_with(W, H, config, hinv_fn=hinv_fn), "Hinv")
    return run


register(Exercise(
    id="03.gptq_hinv",
    title="GPTQ's Hinv: damping and the Cholesky factor of H^-1",
    statement="""\
Write `gptq_hinv(H, damp_percent)`: give every dead input (a zero on the diagonal of `H`) `H[i, i] = 1`,
add `damp_percent * mean(diag(H))` to the diagonal, and return the **upper** Cholesky factor of `H^-1`, whose
row `i` GPTQ reads when it quantizes column `i`.""",
    reference="`quantedu.gptq.gptq_quantize_weight` (run with your Hinv inside, code for code)",
    imports="import torch\n\nfrom quantedu.exercises import check, hint",
    stubs=('''\
def gptq_hinv(H, damp_percent):
    """Upper Cholesky factor of (H with dead inputs fixed + damping)^-1."""
    ...  # YOUR CODE
''',),
    solution=(gptq_hinv,),
    cases=lambda context: [_hinv_case(label, make) for label, make in _layers(context)],
    hints=(
        "Work on a copy: H = H.clone(). Dead inputs: dead = torch.diag(H) == 0; H[dead, dead] = 1.",
        "Damping: H += damp_percent * torch.diag(H).mean() * torch.eye(H.shape[0]).",
        "torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True).",
    ),
))


# --- 03.gptq_block -----------------------------------------------------------------------------------


def _block_slip(W1, Hinv1, scale, zero, maxq, feedback=True, divide=True, row=True):
    """The inner loop with one classic slip switched on (for the diagnosis only)."""
    W1 = W1.clone()
    Q1, Err1 = torch.zeros_like(W1), torch.zeros_like(W1)
    for i in range(W1.shape[1]):
        w, d = W1[:, i], Hinv1[i, i]
        q = scale * (torch.clamp(torch.round(w / scale) + zero, 0, maxq) - zero)
        err = (w - q) / d if divide else w - q
        if feedback:
            W1[:, i:] -= err.unsqueeze(1) @ (Hinv1[i, i:] if row else Hinv1[i:, i]).unsqueeze(0)
        Q1[:, i], Err1[:, i] = q, err
    return Q1, Err1


BLOCK_SLIPS = (
    ({"feedback": False}, "you never update the columns still to quantize: after column i, subtract "
                          "err * Hinv1[i, i:] from W1[:, i:] (that is all GPTQ adds to RTN)."),
    ({"divide": False}, "the error must be divided by Hinv1[i, i]: err = (w - q) / Hinv1[i, i]."),
    ({"row": False}, "use row i of the upper-triangular Hinv1, Hinv1[i, i:], not column i."),
)


def _block_inputs(W, H, config):
    """The first block's arguments, as the outer loop passes them."""
    qc = config.quant_config()
    B = W.shape[1] if config.group_size == -1 else config.block_size
    Hinv = gptq_hinv(H, config.damp_percent)
    W = W.clone()
    W[:, torch.diag(H) == 0] = 0
    s, z = choose_qparams(W[:, :B], QuantConfig(qc.bits, symmetric=qc.symmetric, granularity="channel"))
    return W[:, :B].clone(), Hinv[:B, :B].clone(), s[:, 0], z[:, 0], qc.maxq


def _block_case(label, make):
    @case(label)
    def run(block_fn):
        W, H, config = make()
        args = _block_inputs(W, H, config)
        out = block_fn(*(a.clone() if isinstance(a, torch.Tensor) else a for a in args))
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            return "gptq_block must return (Q1, Err1)"
        exp_q, exp_err = gptq_block(*args)
        got_q, got_err = (torch.as_tensor(t).float() for t in out)
        scale, zero, maxq = args[2], args[3], args[4]
        diff = first_difference(exp_q, got_q, "Q1", rtol=1e-5, atol=1e-6)
        if diff:
            codes = torch.clamp(torch.round(exp_q / scale[:, None] + zero[:, None]), 0, maxq)
            if not torch.equal(codes, exp_q) and torch.equal(got_q, codes):
                return f"{diff}. Q1 must hold the dequantized values scale * (q - zero), not the codes q."
            found = [cause for flags, cause in BLOCK_SLIPS
                     if torch.allclose(_block_slip(*args, **flags)[0], got_q, rtol=1e-5, atol=1e-6)]
            return f"{diff}." + (f" Likely cause: {' Or: '.join(found)}" if found else "")
        diff = first_difference(exp_err, got_err, "Err1", rtol=1e-4, atol=1e-5)
        if diff:
            if not got_err.any():
                return f"{diff}. Err1[:, i] must hold err of column i: the caller pushes it to the later blocks."
            if torch.allclose(_block_slip(*args, divide=False)[1], got_err, rtol=1e-5, atol=1e-6):
                return f"{diff}. Likely cause: {BLOCK_SLIPS[1][1]}"
            return f"{diff}."
        return _codes_vs_package(W, H, config, gptq_with(W, H, config, block_fn=block_fn), "block loop")
    return run


register(Exercise(
    id="03.gptq_block",
    title="GPTQ's inner loop over one block of columns",
    statement="""\
Write `gptq_block(W1, Hinv1, scale, zero, maxq)`: quantize the columns of one block left to right. For column
`i`: round it on each row's grid (`scale`, `zero`: one per row; codes in `[0, maxq]`), compute the scaled
error `err = (w - q) / Hinv1[i, i]` and push it onto the block's columns not yet quantized with row `i` of
`Hinv1` (the OBS update). Return `(Q1, Err1)`: the dequantized block and every column's `err` (the caller
applies `Err1 @ Hinv[block, later]` to the later blocks: the lazy batch update). The checker runs your loop
inside GPTQ on a real layer and compares the codes with `quantedu.gptq`'s.""",
    reference="`quantedu.gptq.gptq_quantize_weight` (run with your block loop inside, code for code)",
    imports="import torch\n\nfrom quantedu.exercises import check, hint",
    stubs=('''\
def gptq_block(W1, Hinv1, scale, zero, maxq):
    """(Q1, Err1) of one block: W1 (rows, B) as updated so far, Hinv1 (B, B), scale/zero (rows,)."""
    ...  # YOUR CODE
''',),
    solution=(gptq_block,),
    cases=lambda context: [_block_case(label, make) for label, make in _layers(context)],
    hints=(
        "Loop i over the block's columns; w = W1[:, i] (the weights as updated so far), d = Hinv1[i, i].",
        "q = scale * (torch.clamp(torch.round(w / scale) + zero, 0, maxq) - zero); err = (w - q) / d.",
        "W1[:, i:] -= err.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0); keep q in Q1[:, i] and err in Err1[:, i].",
        "Codes must match the package exactly: use exactly these operations (e.g. scale * (q - zero), not "
        "scale * q - scale * zero), as float rounding decides ties.",
    ),
))
