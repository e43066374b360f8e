"""Calibration plumbing shared by GPTQ, AWQ and the importance matrix.

Layer-wise methods see a model one decoder block at a time: capture what enters the first block,
then for each block (1) observe the inputs of its linear layers, (2) change the block, (3) run it to
produce the next block's inputs. ``sequential_blocks`` does exactly that, keeping one block's
inputs in memory, in the order of the GPTQ reference (``llama.py``'s ``llama_sequential``).

Which inputs feed block ``i+1`` is a real choice:

* ``quantized_inputs=True`` (default, what GPTQ's reference and llm-compressor do): block ``i+1``
  is calibrated on the outputs of the already-quantized block ``i``, so it can compensate for the
  error that earlier blocks introduced.
* ``quantized_inputs=False``: every block sees the outputs of the full-precision model, so each
  block's problem is independent of the others (what the original AWQ code does).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm


class _StopForward(Exception):
    """Raised by the capture hook: nothing after the first block needs to run."""


def decoder_layers(model) -> nn.ModuleList:
    """The list of decoder blocks of a causal LM (Llama, Mistral, Qwen, ... keep them at model.model.layers)."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise TypeError(
            f"{type(model).__name__} does not keep its decoder blocks at model.model.layers; "
            "the layer-wise methods support Llama-style causal LMs"
        )
    return layers


def first_tensor(out):
    """The hidden states of a block's or an attention module's output (a tensor, or a tuple led by it)."""
    return out[0] if isinstance(out, (tuple, list)) else out


SHAPE = "token ids of shape (n_samples, seq_len) with n_samples >= 1 and seq_len >= 1"


def check_batches(batches, vocab_size: int | None = None) -> torch.Tensor:
    """Calibration token ids as a 2-D integer tensor, or a ValueError saying what is expected.

    Accepts a ``(n_samples, seq_len)`` tensor, or a non-empty list of equal-length rows (tensors or
    lists of ints), e.g. ``data.calibration_batches(tokenizer, n_samples=32, seq_len=512)``.
    """
    if isinstance(batches, (list, tuple)):
        if not batches:
            raise ValueError(f"no calibration batches (an empty list); expected {SHAPE}, "
                             "e.g. quantedu.data.calibration_batches(tokenizer, 32, 512)")
        rows = [torch.as_tensor(r) for r in batches]
        shapes = {tuple(r.shape[1:]) if r.dim() == 2 else tuple(r.shape) for r in rows}
        if len(shapes) > 1 or len({r.dim() for r in rows}) > 1 or rows[0].dim() not in (1, 2):
            raise ValueError(f"calibration rows must all be 1-D (or all 2-D) and of equal length, got shapes "
                             f"{sorted({tuple(r.shape) for r in rows})}; expected {SHAPE}")
        batches = torch.stack(rows) if rows[0].dim() == 1 else torch.cat(rows)
    if not isinstance(batches, torch.Tensor):
        raise TypeError(f"expected {SHAPE} (a torch.Tensor), got {type(batches).__name__}")
    if batches.dim() != 2 or batches.shape[0] < 1 or batches.shape[1] < 1:
        hint = "; for a single row use ids.unsqueeze(0)" if batches.dim() == 1 and batches.numel() else ""
        raise ValueError(f"expected {SHAPE}, got shape {tuple(batches.shape)}{hint}")
    if batches.is_floating_point() or batches.is_complex() or batches.dtype == torch.bool:
        raise ValueError(f"expected integer token ids, got dtype {batches.dtype} (tokenize the text first)")
    low, high = int(batches.min()), int(batches.max())
    if low < 0 or (vocab_size is not None and high >= vocab_size):
        vocab = f"0..{vocab_size - 1}" if vocab_size else "non-negative ids"
        raise ValueError(f"token ids span {low}..{high} but the model's vocabulary is {vocab}: "
                         "were these batches made with another model's tokenizer?")
    return batches.long()


def _vocab_size(model) -> int | None:
    try:
        return model.get_input_embeddings().num_embeddings
    except (AttributeError, NotImplementedError):
        return None


@torch.no_grad()
def capture_block_inputs(model, batches: torch.Tensor) -> tuple[list[torch.Tensor], dict]:
    """Hidden states entering block 0 for each calibration row, and the keyword arguments
    (position embeddings, attention mask, ...) that every block is called with.

    All rows have the same length, so one set of keyword arguments serves them all.
    """
    layers = decoder_layers(model)
    batches = check_batches(batches, _vocab_size(model))
    device = next(model.parameters()).device
    inputs: list[torch.Tensor] = []
    shared_kwargs: dict = {}

    def hook(_module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        inputs.append(hidden.detach())
        if not shared_kwargs:
            shared_kwargs.update({k: v for k, v in kwargs.items() if k != "hidden_states"})
        raise _StopForward

    handle = layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for row in batches:
            try:
                model(row.unsqueeze(0).to(device), use_cache=False)
            except _StopForward:
                pass
    finally:
        handle.remove()
    shared_kwargs["use_cache"] = False
    shared_kwargs.pop("past_key_values", None)
    shared_kwargs.pop("past_key_value", None)
    return inputs, shared_kwargs


@torch.no_grad()
def run_block(block: nn.Module, inputs: list[torch.Tensor], kwargs: dict) -> list[torch.Tensor]:
    """Outputs of one decoder block for each input."""
    return [first_tensor(block(x, **kwargs)) for x in inputs]


def linear_layers(module: nn.Module) -> dict[str, nn.Linear]:
    """The nn.Linear layers inside ``module`` by their relative names (e.g. ``self_attn.q_proj``)."""
    return {name: m for name, m in module.named_modules() if isinstance(m, nn.Linear)}


@contextmanager
def observe_linear_inputs(module: nn.Module, callback: Callable[[str, torch.Tensor], None], names=None):
    """Call ``callback(name, x)`` with the 2-D input ``(tokens, in_features)`` of each linear layer
    of ``module`` every time it runs (for Hessians, activation statistics, importance matrices)."""
    handles = []
    for name, layer in linear_layers(module).items():
        if names is not None and name not in names:
            continue

        def hook(_m, args, _out, name=name):
            x = args[0].detach()
            callback(name, x.reshape(-1, x.shape[-1]))

        handles.append(layer.register_forward_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _to(obj, device):
    """Move tensors (also inside tuples/dicts, e.g. position embeddings) to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, (tuple, list)):
        return type(obj)(_to(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj


@torch.no_grad()
def sequential_blocks(
    model,
    batches: torch.Tensor,
    process_block: Callable[[int, nn.Module, list[torch.Tensor], dict], None],
    quantized_inputs: bool = True,
    desc: str = "blocks",
    device: str | torch.device | None = None,
    progress: bool = True,
) -> None:
    """Run ``process_block(index, block, inputs, kwargs)`` on every decoder block in order: the one
    calibration walk of GPTQ, AWQ and block-wise QAT.

    ``process_block`` changes the block in place (e.g. replaces its weights by quantized ones);
    the next block's inputs are then the outputs of the changed block, or of the original block
    when ``quantized_inputs=False``. ``device``: move each block there (with its inputs) while it is
    processed, then back, so only one block has to fit (None: the model stays where it is).
    """
    inputs, kwargs = capture_block_inputs(model, batches)
    if device is not None:
        device = torch.device(device)
        inputs, kwargs = _to(inputs, device), _to(kwargs, device)
    for index, block in enumerate(tqdm(decoder_layers(model), desc=desc, disable=not progress)):
        home = next(block.parameters()).device
        if device is not None:
            block.to(device)
        original_outputs = None if quantized_inputs else run_block(block, inputs, kwargs)
        process_block(index, block, inputs, kwargs)
        inputs = run_block(block, inputs, kwargs) if quantized_inputs else original_outputs
        if device is not None:
            block.to(home)


# --- is the calibration enough? ---------------------------------------------------------------------

FACTOR = 2  # calibration tokens per input of the widest linear layer

@dataclass(frozen=True)
class CalibrationBudget:
    """Calibration tokens against the widest linear input they have to describe.

    A layer with ``d`` inputs is calibrated through ``X X^T`` (GPTQ's Hessian, AWQ's and the imatrix's
    statistics), a ``d x d`` matrix of rank at most the number of tokens: with fewer than ``d`` tokens it is
    singular (only GPTQ's damping keeps it invertible), and with about ``d`` it is still dominated by
    noise. The course asks for at least ``FACTOR = 2`` tokens per input of the widest layer.
    """

    tokens: int
    widest_input: int
    widest_layer: str
    minimum: int

    @property
    def enough(self) -> bool:
        return self.tokens >= self.minimum

    def __str__(self) -> str:
        verdict = "enough" if self.enough else "too few: results are inconclusive"
        return (f"{self.tokens:,} calibration tokens for {self.widest_layer} ({self.widest_input:,} inputs, "
                f"the widest): {verdict} (minimum {self.minimum:,} = {FACTOR} x inputs)")


def budget(model, batches) -> CalibrationBudget:
    """Calibration tokens (``n_samples * seq_len`` of ``batches``; every linear layer sees them all) against
    the widest input of a linear layer in the decoder blocks; ``.minimum`` is ``FACTOR x`` that width."""
    batches = check_batches(batches)
    name, width = max(((f"{i}.{n}", m.in_features) for i, block in enumerate(decoder_layers(model))
                       for n, m in linear_layers(block).items()), key=lambda item: item[1])
    kind = name.split(".", 1)[1]
    return CalibrationBudget(batches.numel(), width, kind, FACTOR * width)


STRICT_ENV = "QUANTEDU_STRICT_CALIBRATION"  # set (CI's notebook runs): starved calibration is an error
_INCONCLUSIVE: list[str] = []  # reasons a notebook gave for calibrating short on purpose (innermost last)


class CalibrationBudgetError(ValueError):
    """Too few calibration tokens for the widest layer, where a result on them would be presented as one."""


@contextmanager
def inconclusive(reason: str):
    """Calibrate short on purpose (a lesson about starvation, a sweep that only ranks settings): inside, a
    starved run prints that its result is inconclusive, and why, instead of warning (or failing under
    ``QUANTEDU_STRICT_CALIBRATION``)."""
    _INCONCLUSIVE.append(reason)
    try:
        yield
    finally:
        _INCONCLUSIVE.pop()


def warn_if_starved(model, batches, method: str) -> CalibrationBudget:
    """``budget(model, batches)``; when it is not enough: inside :func:`inconclusive`, a printed line saying
    the result is inconclusive; else a ``UserWarning`` (a :class:`CalibrationBudgetError` when
    ``QUANTEDU_STRICT_CALIBRATION`` is set, as CI sets it for the notebooks)."""
    import os
    import warnings
    b = budget(model, batches)
    if b.enough:
        return b
    if _INCONCLUSIVE:
        print(f"{method}: {b} - {_INCONCLUSIVE[-1]}")
        return b
    message = (f"{method}: {b}. Use more calibration samples or longer ones (e.g. {-(-b.minimum // 512)} x 512 "
               "tokens) before comparing methods, or say why not with quantedu.calibration.inconclusive(reason).")
    if os.environ.get(STRICT_ENV):
        raise CalibrationBudgetError(message)
    warnings.warn(message, UserWarning, stacklevel=3)
    return b


def samples_needed(model, seq_len: int, at_least: int = 1) -> int:
    """How many calibration windows of ``seq_len`` tokens reach :func:`budget`'s minimum for ``model`` (at
    least ``at_least``): the course model's down_proj (1,536 inputs) needs 3,072 tokens, 12 windows of 256."""
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"seq_len must be a positive number of tokens, got {seq_len!r}")
    return max(at_least, -(-budget(model, torch.zeros(1, 1, dtype=torch.long)).minimum // seq_len))


@torch.no_grad()
def layer_inputs(model, batches, names) -> dict[str, torch.Tensor]:
    """The inputs ``(tokens, in_features)`` (float32, CPU) of the named linear layers (full names, e.g.
    ``model.layers.3.mlp.down_proj``) over every row of ``batches``, in token order: row ``r``'s tokens are
    rows ``r * seq_len`` to ``(r + 1) * seq_len - 1``. For measuring a layer on held-out text, token by token."""
    batches = check_batches(batches, _vocab_size(model))
    names = set(names)
    unknown = names - set(linear_layers(model))
    if unknown:
        raise ValueError(f"no linear layer named {sorted(unknown)[0]!r} in the model; names look like "
                         f"{next(iter(linear_layers(model)))!r}")
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    device = next(model.parameters()).device
    with observe_linear_inputs(model, lambda n, x: seen[n].append(x.float().cpu()), names=names):
        for row in batches:
            model(row.unsqueeze(0).to(device), use_cache=False)
    return {n: torch.cat(xs) for n, xs in seen.items()}
