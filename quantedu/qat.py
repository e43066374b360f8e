"""Quantization-aware training: fake quantization, the straight-through estimator, learned scales.

PTQ (RTN, GPTQ, AWQ) picks quantized weights once, without training. QAT keeps training the model
*through* the quantizer, so the loss can steer the weights and the quantization parameters:

* **fake quantization**: every forward uses ``s * (clamp(round(w / s) + z, 0, 2**b - 1) - z)``,
  exactly the values a quantized checkpoint would hold (``quantedu.primitives``' grid);
* **straight-through estimator** (Bengio et al. 2013): ``round`` has zero gradient almost everywhere,
  so the backward pass treats it as the identity (``x + (round(x) - x).detach()``); weights clamped
  outside the grid get no gradient;
* **learned step size** (LSQ, Esser et al. 2020, "Learned Step Size Quantization"): the per-group
  scale ``s`` is a parameter too. Through the STE its gradient is ``round(w/s) - w/s`` inside the
  range and the clamp bound outside, as in the paper. LSQ scales that gradient by
  ``1/sqrt(n * Qmax)``; with Adam a constant gradient scale cancels, so here ``s`` is learned in log
  space instead, which makes one learning rate fit layers whose scales differ by orders of magnitude.
  Zero points stay the integer ones RTN chose (as GPTQ/AWQ checkpoints store them).

The loss is distillation from the same model without fake quantization (``loss="kd"``: KL between
the full-precision and the quantized next-token distributions, as LLM-QAT, Liu et al. 2023) or plain
next-token cross-entropy (``loss="ce"``). Distillation measures only what quantization lost: with
cross-entropy on text of the evaluation's domain, some of the gain would be fine-tuning, not QAT.

Two ways to run it (``QATPlan.mode``):

* ``"e2e"``: end-to-end, the whole model at once, loss on the logits (LLM-QAT style);
* ``"blockwise"``: one decoder block at a time, in order, each trained to reproduce the
  full-precision block's output on the inputs the already-quantized earlier blocks produce (MSE),
  like the Block-AP phase of EfficientQAT (Chen et al. 2024). A step costs one block's forward and
  backward instead of the whole model's (and no 49k-way softmax), so a small CPU can afford it.

Full QAT trains all weights for thousands of steps on GPUs: LLM-QAT distils on ~100k self-generated
sequences of up to 1,024 tokens, on the order of 10^8 tokens (:data:`FULL_QAT_TOKENS`). :func:`plan`
picks what fits the hardware at hand: block-wise with short sequences and a few steps per block on a
CPU, end-to-end on a GPU.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .primitives import QuantConfig, choose_qparams, group_index, mse_clip_search


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """``round(x)`` forward, identity backward (the straight-through estimator)."""
    return x + (torch.round(x) - x).detach()


class FakeQuantLinear(nn.Module):
    """An ``nn.Linear`` whose weight is fake-quantized in every forward, with a learned scale per group."""

    def __init__(self, linear: nn.Linear, config: QuantConfig, train_weight: bool = False,
                 mse_clip: bool = False):
        super().__init__()
        w = linear.weight.detach()
        self.config = config
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = nn.Parameter(w.clone(), requires_grad=train_weight)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        wf = w.float()
        ratio = mse_clip_search(wf, config) if mse_clip else 1.0
        scale, zero = choose_qparams(wf, config, ratio)
        self.log_scale = nn.Parameter(scale.log())
        self.register_buffer("zero", zero)
        self.register_buffer("g_idx", group_index(w.shape[1], config, device=w.device))
        # The teacher (full-precision) weight; shared storage when the weight is frozen.
        self.register_buffer("w_fp", w.clone() if train_weight else w, persistent=False)
        self.quantize = True

    def quantized_weight(self) -> torch.Tensor:
        s = self.log_scale.exp()[:, self.g_idx]  # (rows, 1 or n_groups) -> every column
        z = self.zero[:, self.g_idx]
        q = torch.clamp(round_ste(self.weight / s) + z, 0, self.config.maxq)
        return s * (q - z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.quantized_weight() if self.quantize else self.w_fp
        return F.linear(x, w.to(x.dtype), self.bias)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, {self.config.label()}, train_weight={self.weight.requires_grad}"


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def prepare_qat(model: nn.Module, config: QuantConfig, train_weights: str | int = "none",
                skip=("lm_head",), mse_clip: bool = False) -> list[str]:
    """Swap every linear layer (except ``skip``) for a :class:`FakeQuantLinear`; freeze everything else.

    ``train_weights``: ``"none"`` (scales only), ``"all"``, or an int ``k``: the weights of the last
    ``k`` decoder blocks train too. Returns the names of the swapped layers.
    """
    from .rtn import skip_pattern

    for p in model.parameters():
        p.requires_grad_(False)
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and skip_pattern(n, skip) is None]
    n_blocks = 1 + max((_block_of(n) for n, _ in linears), default=-1)
    for name, m in linears:
        if train_weights == "all":
            train = True
        elif train_weights == "none":
            train = False
        else:
            train = _block_of(name) >= n_blocks - int(train_weights)
        _set(model, name, FakeQuantLinear(m, config, train_weight=train, mse_clip=mse_clip))
    return [n for n, _ in linears]


def _block_of(name: str) -> int:
    parts = name.split(".")
    for a, b in zip(parts, parts[1:]):
        if a in ("layers", "h", "blocks") and b.isdigit():
            return int(b)
    return -1


def fake_quant_layers(model: nn.Module) -> list[FakeQuantLinear]:
    return [m for m in model.modules() if isinstance(m, FakeQuantLinear)]


def set_quantize(model: nn.Module, enabled: bool) -> None:
    for m in fake_quant_layers(model):
        m.quantize = enabled


def qat_loss(model: nn.Module, ids: torch.Tensor, loss: str = "kd") -> torch.Tensor:
    """Loss of the fake-quantized model on a batch of token ids ``(batch, seq)``."""
    if loss == "ce":
        logits = model(ids, use_cache=False).logits.float()
        return F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    if loss != "kd":
        raise ValueError(f"loss must be 'kd' or 'ce', got {loss!r}")
    with torch.no_grad():
        set_quantize(model, False)
        try:
            teacher = model(ids, use_cache=False).logits.float().log_softmax(-1)
        finally:
            set_quantize(model, True)
    student = model(ids, use_cache=False).logits.float().log_softmax(-1)
    return F.kl_div(student.flatten(0, 1), teacher.flatten(0, 1), log_target=True, reduction="batchmean")


def make_optimizer(model: nn.Module, lr_scale: float = 1e-2, lr_weight: float = 1e-5) -> torch.optim.Optimizer:
    """Adam: log-scales at ``lr_scale`` (a relative change per step), trained weights at ``lr_weight``."""
    scales = [m.log_scale for m in fake_quant_layers(model)]
    weights = [m.weight for m in fake_quant_layers(model) if m.weight.requires_grad]
    groups = [{"params": scales, "lr": lr_scale}]
    if weights:
        groups.append({"params": weights, "lr": lr_weight})
    return torch.optim.Adam(groups)


def qat_step(model: nn.Module, ids: torch.Tensor, optimizer: torch.optim.Optimizer, loss: str = "kd") -> float:
    """One optimisation step; returns the loss before the step."""
    optimizer.zero_grad(set_to_none=True)
    value = qat_loss(model, ids, loss)
    value.backward()
    optimizer.step()
    return value.item()


@torch.no_grad()
def convert(model: nn.Module) -> list[str]:
    """Replace every FakeQuantLinear by a plain ``nn.Linear`` holding its quantized weight (for evaluation)."""
    names = [n for n, m in model.named_modules() if isinstance(m, FakeQuantLinear)]
    for name in names:
        m = model.get_submodule(name)
        lin = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None,
                        device=m.weight.device, dtype=m.weight.dtype)
        lin.weight.copy_(m.quantized_weight())
        if m.bias is not None:
            lin.bias.copy_(m.bias)
        _set(model, name, lin)
    for p in model.parameters():
        p.requires_grad_(False)
    return names


@dataclass
class QATPlan:
    """What a QAT run trains, on how much data, for how long."""

    mode: str = "e2e"  # or "blockwise"
    steps: int = 30  # e2e: optimizer steps; blockwise: steps per block
    batch_size: int = 4
    seq_len: int = 64
    n_samples: int = 32
    train_weights: str | int = 2
    lr_scale: float = 1e-2
    lr_weight: float = 1e-5
    loss: str | None = None  # e2e: "kd" (default) or "ce" (qat_loss); blockwise: the block output's "mse"
    max_seconds: float | None = None  # stop early (and say so) when the wall-clock budget is spent

    def __post_init__(self):
        allowed = {"e2e": ("kd", "ce"), "blockwise": ("mse",)}
        if self.mode not in allowed:
            raise ValueError(f"QATPlan.mode must be 'e2e' or 'blockwise', got {self.mode!r}")
        if self.loss is None:
            self.loss = allowed[self.mode][0]
        if self.loss not in allowed[self.mode]:
            raise ValueError(f"a {self.mode} QAT plan trains with loss in {allowed[self.mode]}, got {self.loss!r}: "
                             "blockwise QAT matches each block's output (mse); end-to-end uses kd or ce")

    @property
    def tokens(self) -> int:
        """Tokens through the trained part per block (blockwise) or through the model (e2e)."""
        return self.steps * self.batch_size * self.seq_len


def plan(device: torch.device | str | None = None, budget: str = "notebook") -> QATPlan:
    """A QAT plan that fits ``device``: small on a CPU, larger (all weights, longer sequences) on a GPU."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        if budget == "notebook":
            return QATPlan(steps=300, batch_size=8, seq_len=512, n_samples=256, train_weights="all")
        return QATPlan(steps=2000, batch_size=16, seq_len=1024, n_samples=2048, train_weights="all")
    return QATPlan(mode="blockwise", steps=4, batch_size=4, seq_len=128, n_samples=8, train_weights="all",
                   lr_scale=2e-2, lr_weight=2e-5, max_seconds=None)


def train_qat(model: nn.Module, calibration: torch.Tensor, config: QuantConfig, qat_plan: QATPlan | None = None,
              seed: int = 0, progress: bool = True, mse_clip: bool = False) -> dict:
    """Prepare, train and convert ``model`` in place. ``calibration``: token ids ``(n, >= seq_len)``.

    Returns a record with the plan, the loss curve, the steps done and the wall time.
    """
    p = qat_plan or plan(next(model.parameters()).device)
    if calibration.dim() != 2 or calibration.shape[1] < p.seq_len:
        raise ValueError(f"calibration must be (n_samples, >= {p.seq_len}) token ids, got {tuple(calibration.shape)}")
    device = next(model.parameters()).device
    data = calibration[: p.n_samples, : p.seq_len].to(device)
    if p.mode == "blockwise":
        return _train_blockwise(model, data, config, p, seed, progress, mse_clip)
    if p.mode != "e2e":
        raise ValueError(f"QATPlan.mode must be 'e2e' or 'blockwise', got {p.mode!r}")
    was_training = model.training
    model.train()
    prepare_qat(model, config, p.train_weights, mse_clip=mse_clip)
    opt = make_optimizer(model, p.lr_scale, p.lr_weight)
    gen = torch.Generator().manual_seed(seed)
    losses, t0, steps = [], time.perf_counter(), 0
    bar = tqdm(range(p.steps), desc=f"QAT {config.label()}", disable=not progress, leave=False)
    for _ in bar:
        rows = torch.randint(0, len(data), (p.batch_size,), generator=gen)
        losses.append(qat_step(model, data[rows], opt, p.loss))
        steps += 1
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if p.max_seconds is not None and time.perf_counter() - t0 > p.max_seconds:
            print(f"QAT stopped after {steps}/{p.steps} steps: the {p.max_seconds:.0f} s budget is spent")
            break
    convert(model)
    model.train(was_training)
    return {"plan": p, "losses": losses, "steps": steps, "seconds": time.perf_counter() - t0,
            "tokens": steps * p.batch_size * p.seq_len}


def _train_blockwise(model, data, config, p: QATPlan, seed: int, progress: bool, mse_clip: bool) -> dict:
    """Block by block: fake-quantize one block, train it to match its full-precision output, convert."""
    from .calibration import first_tensor, decoder_layers, run_block, sequential_blocks

    n_blocks = len(decoder_layers(model))
    gen = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    per_block: list[dict] = []
    t0 = time.perf_counter()

    def process(index, block, inputs, kwargs):
        targets = torch.cat(run_block(block, inputs, kwargs))  # the fp block on the quantized inputs
        X = torch.cat(inputs)
        probe = slice(0, min(2, len(X)))  # a fixed pair of samples to report the error before/after
        if p.train_weights == "all" or p.train_weights == "none":
            train = p.train_weights
        else:
            train = "all" if index >= n_blocks - int(p.train_weights) else "none"
        with torch.enable_grad():
            prepare_qat(block, config, train, skip=(), mse_clip=mse_clip)
            with torch.no_grad():  # the starting point: RTN scales
                before = F.mse_loss(first_tensor(block(X[probe], **kwargs)).float(), targets[probe].float()).item()
            opt = make_optimizer(block, p.lr_scale, p.lr_weight)
            block_losses = []
            order = torch.empty(0, dtype=torch.long)  # epochs of shuffled windows: each seen once before any twice
            for _ in range(p.steps):
                if len(order) < min(p.batch_size, len(X)):
                    order = torch.cat([order, torch.randperm(len(X), generator=gen)])
                rows, order = order[:min(p.batch_size, len(X))], order[min(p.batch_size, len(X)):]
                loss = F.mse_loss(first_tensor(block(X[rows], **kwargs)).float(), targets[rows].float())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                block_losses.append(loss.item())
        convert(block)
        with torch.no_grad():
            after = F.mse_loss(first_tensor(block(X[probe], **kwargs)).float(), targets[probe].float()).item()
        per_block.append({"block": index, "mse before": before, "mse after": after})
        losses.extend(block_losses)

    sequential_blocks(model, data, process, quantized_inputs=True, desc=f"QAT blocks {config.label()}",
                      progress=progress)
    for prm in model.parameters():
        prm.requires_grad_(False)
    steps = p.steps * n_blocks
    return {"plan": p, "losses": losses, "per_block": per_block, "steps": steps,
            "seconds": time.perf_counter() - t0, "tokens": steps * min(p.batch_size, len(data)) * p.seq_len}


FULL_QAT_TOKENS = 1e8  # LLM-QAT (Liu et al. 2023): ~100k generated sequences of up to 1,024 tokens


def full_qat_cost(n_params: float, tokens: float = FULL_QAT_TOKENS, flops_per_s: float = 5e13) -> dict:
    """Order of magnitude of a full QAT run: ~6 FLOPs per parameter per token (forward + backward),
    plus one forward of the teacher (2 FLOPs) for distillation. ``flops_per_s`` is sustained throughput."""
    flops = 8 * n_params * tokens
    return {"FLOPs": flops, "hours": flops / flops_per_s / 3600, "tokens": tokens}


def summary_line(r: dict) -> str:
    """One line about a :func:`train_qat` run."""
    if "per_block" in r:
        first = sum(b["mse before"] for b in r["per_block"])
        after = sum(b["mse after"] for b in r["per_block"])
        p = r["plan"]
        seen = min(p.n_samples, p.steps * p.batch_size)
        return (f"block-wise: {p.steps} steps x {len(r['per_block'])} blocks, {p.batch_size} x {p.seq_len} tokens per "
                f"step (each block sees {seen} of the {p.n_samples} calibration windows), in {r['seconds']:.0f} s;\n"
                f"summed block output MSE {first:.4g} with RTN scales -> {after:.4g} after training")
    return (f"{r['steps']} steps x {r['plan'].batch_size} x {r['plan'].seq_len} tokens = {r['tokens']:,} tokens "
            f"in {r['seconds']:.0f} s; loss {r['losses'][0]:.4f} -> {min(r['losses'][-3:]):.4f}")
