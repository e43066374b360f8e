"""Notebook 03's exercises: GPTQ's ``Hinv`` (damping + Cholesky of ``H^-1``) and its inner loop over one block.

Frantar et al., "GPTQ" (arXiv:2210.17323), Algorithm 1; the steps are IST-DASLab ``gptq.py``
``fasterquant``'s. :mod:`quantedu.gptq` runs them as named steps (:func:`~quantedu.gptq.hessian_inverse`,
:func:`~quantedu.gptq.gptq_block`, the lazy batch update), and :func:`~quantedu.gptq.gptq_quantize_weight`
takes a replacement for either step: a learner's piece is graded inside the real algorithm, and its codes must
be the package's, code for code.
"""
from __future__ import annotations

import torch

from ..gptq import GPTQConfig, IntGrid, gptq_quantize_weight, hessian_inverse
from .core import Exercise, case, first_difference, register
from .inputs import activations, course_weight, hessian, randn


# --- reference solutions (learner style) ------------------------------------------------------------


def gptq_hinv(H, damp_percent):
    H = H.clone()
    dead = torch.diag(H) == 0                       # inputs that never fired
    H[dead, dead] = 1
    H += damp_percent * torch.diag(H).mean() * torch.eye(H.shape[0])
    return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)


def gptq_block(W1, Hinv1, quantize):
    W1 = W1.clone()
    Q1, Err1 = torch.zeros_like(W1), torch.zeros_like(W1)
    for i in range(W1.shape[1]):
        w, d = W1[:, i], Hinv1[i, i]
        q = quantize(i, W1)                         # column i, as updated so far, on its grid
        err = (w - q) / d
        W1[:, i:] -= err.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)   # OBS update of the rest of the block
        Q1[:, i], Err1[:, i] = q, err
    return Q1, Err1


# --- the learner's piece inside the package's GPTQ ----------------------------------------------------


def _as_float(t) -> torch.Tensor:
    return torch.as_tensor(t, dtype=torch.float32)


def run_with(W, H, config, hinv_fn=None, block_fn=None):
    """:func:`quantedu.gptq.gptq_quantize_weight` with the learner's ``hinv_fn`` or ``block_fn`` in its place."""
    hinv = (lambda H_, damp: _as_float(hinv_fn(H_.clone(), damp))) if hinv_fn else None
    block = (lambda W1, Hinv1, quantize: tuple(_as_float(t) for t in block_fn(W1.clone(), Hinv1.clone(), quantize))
             ) if block_fn else None
    return gptq_quantize_weight(W, H, config, hinv_fn=hinv, block_fn=block)


def _codes_vs_package(W, H, config, what: str, **pieces) -> str | None:
    """GPTQ with the learner's piece inside vs the package alone: codes, then weights, must be the same."""
    res = gptq_quantize_weight(W, H, config)
    theirs = run_with(W, H, config, **pieces)
    if not torch.isfinite(theirs.weight).all():
        return f"the weight GPTQ built with your {what} holds nan/inf"
    diff = first_difference(res.codes, theirs.codes, "code") or first_difference(res.weight, theirs.weight,
                                                                                   "weight", rtol=1e-6)
    if diff:
        return (f"with your {what} inside GPTQ, the result differs from quantedu.gptq.gptq_quantize_weight: "
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
        return _codes_vs_package(W, H, config, "Hinv", hinv_fn=hinv_fn)
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


def _block_slip(W1, Hinv1, quantize, feedback=True, divide=True, row=True, stale=False):
    """The inner loop with one classic slip switched on (for the diagnosis only)."""
    W1, W0 = W1.clone(), W1.clone()
    Q1, Err1 = torch.zeros_like(W1), torch.zeros_like(W1)
    for i in range(W1.shape[1]):
        w, d = W1[:, i], Hinv1[i, i]
        q = quantize(i, W0 if stale else W1)
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
    ({"stale": True}, "quantize the block as you update it: call quantize(i, W1) on the W1 your loop changes, "
                      "not on a copy of the block as it came in."),
)


def _block_inputs(W, H, config):
    """The first block's arguments as the package passes them: the block (one group here), its part of Hinv,
    and ``quantize(i, W1)`` rounding column ``i`` on the block's grid (chosen from the block as it came in)."""
    B = W.shape[1] if config.group_size == -1 else config.block_size
    Hinv = hessian_inverse(H, config.damp_percent)
    W = W.clone()
    W[:, torch.diag(H) == 0] = 0
    grid = IntGrid(config.quant_config())
    params = grid.choose(W[:, :B])
    return W[:, :B].clone(), Hinv[:B, :B].clone(), lambda i, W1: grid.round(W1[:, i], params)[1]


def _block_case(label, make):
    @case(label)
    def run(block_fn):
        W, H, config = make()
        W1, Hinv1, quantize = _block_inputs(W, H, config)
        out = block_fn(W1.clone(), Hinv1.clone(), quantize)
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            return "gptq_block must return (Q1, Err1)"
        exp_q, exp_err = gptq_block(W1, Hinv1, quantize)
        got_q, got_err = (torch.as_tensor(t).float() for t in out)
        diff = first_difference(exp_q, got_q, "Q1", rtol=1e-5, atol=1e-6)
        if diff:
            found = [cause for flags, cause in BLOCK_SLIPS
                     if torch.allclose(_block_slip(W1, Hinv1, quantize, **flags)[0], got_q, rtol=1e-5, atol=1e-6)]
            return f"{diff}." + (f" Likely cause: {' Or: '.join(found)}" if found else "")
        diff = first_difference(exp_err, got_err, "Err1", rtol=1e-4, atol=1e-5)
        if diff:
            if not got_err.any():
                return f"{diff}. Err1[:, i] must hold err of column i: the caller pushes it to the later blocks."
            if torch.allclose(_block_slip(W1, Hinv1, quantize, divide=False)[1], got_err, rtol=1e-5, atol=1e-6):
                return f"{diff}. Likely cause: {BLOCK_SLIPS[1][1]}"
            return f"{diff}."
        return _codes_vs_package(W, H, config, "block loop", block_fn=block_fn)
    return run


register(Exercise(
    id="03.gptq_block",
    title="GPTQ's inner loop over one block of columns",
    statement="""\
Write `gptq_block(W1, Hinv1, quantize)`: quantize the columns of one block left to right. For column `i`:
`q = quantize(i, W1)` rounds it (as your loop has updated it so far) on its group's grid; compute the scaled
error `err = (w - q) / Hinv1[i, i]` and push it onto the block's columns not yet quantized with row `i` of
`Hinv1` (the OBS update). Return `(Q1, Err1)`: the quantized block and every column's `err` (the caller
applies `Err1 @ Hinv[block, later]` to the later blocks: the lazy batch update). The checker runs your loop
inside `quantedu.gptq` on a real layer and compares the codes with the package's own.""",
    reference="`quantedu.gptq.gptq_block` (run inside `gptq_quantize_weight`, code for code)",
    imports="import torch\n\nfrom quantedu.exercises import check, hint",
    stubs=('''\
def gptq_block(W1, Hinv1, quantize):
    """(Q1, Err1) of one block: W1 (rows, B) as updated so far, Hinv1 (B, B), quantize(i, W1) -> column i on its grid."""
    ...  # YOUR CODE
''',),
    solution=(gptq_block,),
    cases=lambda context: [_block_case(label, make) for label, make in _layers(context)],
    hints=(
        "Loop i over the block's columns; w = W1[:, i] (the weights as updated so far), d = Hinv1[i, i].",
        "q = quantize(i, W1); err = (w - q) / d. Keep q in Q1[:, i] and err in Err1[:, i].",
        "The feedback: the columns after i (in this block) absorb err along row i of Hinv1, the upper factor.",
        "Codes must match the package exactly: compute err before you change W1, and change W1 in place so the "
        "next quantize(i + 1, W1) sees the update (float rounding decides ties).",
    ),
))
