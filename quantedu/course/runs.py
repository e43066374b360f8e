"""Quantized copies of the session's model, made once and cached: what notebooks 03, 04 and 07 compare.

>>> gptq = runs.quantize(session, "gptq", GPTQConfig(4, 64, sym=False), calib, purposes=("eval", "heldout"))
>>> gptq.report("heldout").verdict(rtn.report("heldout"))          # the one rule, A vs B
>>> runs.table([rtn, gptq, awq])                                    # quality + calibration + time per run

A run is keyed by what made it (method, config, calibration tokens, the session's model and dtype, the code
of the algorithm: :func:`quantedu.artifacts.code_fingerprint`), so notebook 04 reuses the GPTQ run notebook
03 made with the same settings, and a second execution of a notebook reuses both. The cache holds the
quantized layers' integer codes, scales and zero points (the weights are rebuilt from them, bit for bit, and
stored as well only where they are not), the other parameters the method changed (AWQ's folded norms), and
the wall and CPU seconds the quantization took when it ran, with ``session.quant_threads`` torch threads.
Reports (:class:`~quantedu.evaluate.QualityReport`) are cached per window set. Libraries' runs that are not
the course's own (llm-compressor, AutoAWQ) come in through :func:`external`; ``blocks=k`` quantizes only the
first ``k`` decoder blocks (:func:`with_blocks`: the rest of the model stays as it was), where a library is
too slow on a CPU for the whole model.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import artifacts
from ..runtime import timed, torch_threads

METHODS = ("rtn", "gptq", "awq")
_FORMAT = 1  # bump when the stored layout changes
_LAYER_FIELDS = ("weight", "codes", "scales", "zeros", "g_idx", "perm", "row_losses", "awq_scale", "clip_ratio")


def model_id(model) -> str:
    """What identifies a model's weights in a cache key: its checkpoint name, dtype, config and a digest of
    its first parameter (a random test model has no name)."""
    first = next(model.parameters()).detach().float().flatten()[:4096].cpu().numpy().tobytes()
    config = model.config.to_json_string() if hasattr(model, "config") else ""
    name = str(getattr(model, "name_or_path", "") or "")
    return hashlib.sha256(name.encode() + config.encode() + first).hexdigest()[:16] + f"-{next(model.parameters()).dtype}"


def tokens_digest(batches: torch.Tensor) -> str:
    return hashlib.sha256(batches.cpu().numpy().tobytes() + str(tuple(batches.shape)).encode()).hexdigest()[:16]


def _code(method: str) -> str:
    import importlib

    from .. import calibration, primitives, rtn
    mods = [calibration, primitives, rtn, importlib.import_module(__name__)]
    if method != "rtn":
        mods.append(importlib.import_module(f"quantedu.{method}"))
    return artifacts.code_fingerprint(*mods)


@dataclass(eq=False)
class Run:
    """One quantized model: its name (the tables' label), how it was made, how long that took, its quality
    reports per window set, and the model itself (rebuilt from the cache when asked for after :meth:`release`)."""

    name: str
    method: str
    config: object
    session: object = field(repr=False)
    batches: torch.Tensor | None = field(default=None, repr=False)
    wall_s: float = math.nan
    cpu_s: float = math.nan
    key: str | None = None  # None: not cached (a library's run, see external())
    blocks: int | None = None
    diagnostics: dict = field(default_factory=dict, repr=False)  # AWQ's alphas, GPTQ's losses, per layer
    _model: object = field(default=None, repr=False)
    _layers: dict | None = field(default=None, repr=False)
    _reports: dict = field(default_factory=dict, repr=False)

    @property
    def tokens(self) -> int:
        """Calibration tokens (0 for RTN)."""
        return 0 if self.batches is None else self.batches.numel()

    @property
    def calibration(self) -> str:
        return "none" if self.batches is None else f"{self.batches.shape[0]} x {self.batches.shape[1]}"

    @property
    def model(self):
        if self._model is None:
            self._model, self._layers = _rebuild(self)
        return self._model

    @property
    def layers(self) -> dict:
        """``{name: QuantizedLayer}`` (codes, scales, zeros, g_idx: what an export writes)."""
        if self._layers is None:
            self._model, self._layers = _rebuild(self)
        return self._layers

    def release(self) -> "Run":
        """Drop the model from memory (reports stay; :attr:`model` rebuilds it from the cache)."""
        self._model, self._layers = None, None
        return self

    def report(self, purpose: str = "eval"):
        """The run against the session's baseline on a window set (:data:`quantedu.course.session.WINDOWS`),
        computed once (and cached with the run)."""
        if purpose not in self._reports:
            self._reports[purpose] = _report(self, purpose)
        return self._reports[purpose]


def quantize(session, method: str, config, batches: torch.Tensor | None = None, name: str | None = None,
             purposes=(), blocks: int | None = None, keep: bool = False) -> Run:
    """Quantize a copy of ``session.model`` with ``method`` (``"rtn"``, ``"gptq"``, ``"awq"``) and ``config``
    (a ``GPTQConfig``/``AWQConfig``; for RTN any config with ``quant_config()``), calibrated on ``batches``
    (token ids ``(n_samples, seq_len)``; none for RTN), timed with ``session.quant_threads`` threads, cached.

    ``purposes``: window sets to report on now (then the model is released unless ``keep``). ``blocks``: only
    the first ``blocks`` decoder blocks (calibrated as in the whole model; the other blocks stay unquantized).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "rtn" and batches is not None:
        raise ValueError("RTN uses no calibration data: leave batches out")
    if method != "rtn":
        from ..calibration import check_batches
        if batches is None:
            raise ValueError(f"{method.upper()} needs calibration batches (n_samples, seq_len), e.g. "
                             "session.calibration(12, 256)")
        batches = check_batches(batches).cpu()
    if not hasattr(config, "quant_config"):
        raise TypeError(f"config must be a GPTQConfig/AWQConfig (with quant_config()), got {type(config).__name__}")
    label = f"{method.upper()} {config.quant_config().label()}" if method == "rtn" else config.label()
    run = Run(name or label + (f", blocks 0-{blocks - 1}" if blocks else ""), method, config, session, batches,
              blocks=blocks)
    if method == "rtn":  # a second: not worth a cache entry (its reports are cached)
        run.key = artifacts.cache_key("rtn", model_id(session.model), repr(config), blocks, _FORMAT, _code("rtn"))
        if purposes and all(_report_cached(run, p) for p in purposes):
            run._reports = {p: _report(run, p) for p in purposes}
            return run
        run._model, run._layers = _quantize(run)
    else:
        run.key = artifacts.cache_key(method, model_id(session.model), repr(config), tokens_digest(batches), blocks,
                                      _FORMAT, _code(method))
        folder = artifacts.cached_dir("runs", run.key, lambda tmp: _save(run, tmp), meta={"run": run.name})
        meta = json.loads((folder / "run.json").read_text())
        run.wall_s, run.cpu_s, run.diagnostics = meta["wall_s"], meta["cpu_s"], meta["diagnostics"]
    for p in purposes:
        run.report(p)
    if purposes and not keep:
        run.release()
    return run


def external(session, name: str, model, wall_s: float = math.nan, cpu_s: float = math.nan,
             batches: torch.Tensor | None = None, purposes=()) -> Run:
    """A model quantized elsewhere (llm-compressor, AutoAWQ, optimum) as a :class:`Run`, to sit in the same
    tables and verdicts (not cached: its library caches its own output)."""
    run = Run(name, "external", None, session, batches, wall_s, cpu_s, _model=model)
    for p in purposes:
        run.report(p)
    return run


# --- making, storing and rebuilding a run ----------------------------------------------------------------


def _quantize(run: Run):
    """``(model, layers)``: a copy of the session's model (or of its first ``blocks`` blocks, swapped back into a
    full copy) quantized by the run's method; sets the run's seconds and diagnostics."""
    from ..calibration import decoder_layers
    target = copy.deepcopy(run.session.model) if run.blocks is None else truncated_model(run.session.model, run.blocks)
    qc = run.config.quant_config()

    def go():
        if run.method == "rtn":
            from ..rtn import quantize_model_rtn
            quantize_model_rtn(target, qc, progress=False)
            return None
        if run.method == "gptq":
            from ..gptq import gptq_quantize_model
            return gptq_quantize_model(target, run.batches, run.config, progress=False)
        from ..awq import awq_quantize_model
        return awq_quantize_model(target, run.batches, run.config, progress=False)

    with torch_threads(run.session.quant_threads):
        layers, run.wall_s, run.cpu_s = timed(go)
    layers = layers or {}
    run.diagnostics = {n: {k: v for k, v in (("loss", l.loss), ("awq_alpha", l.awq_alpha)) if v is not None}
                       for n, l in layers.items()}
    model = target if run.blocks is None else with_blocks(run.session.model, target)
    if run.blocks is not None:
        decoder_layers(model)  # the same layout: the names of the layers hold
    return model, layers


def _save(run: Run, folder: Path) -> None:
    from safetensors.torch import save_file
    model, layers = _quantize(run)
    base = dict(run.session.model.state_dict())
    tensors, scalars = {}, {}
    for name, layer in layers.items():
        w = model.get_submodule(name).weight.detach()
        for f in _LAYER_FIELDS:
            t = getattr(layer, f)
            if t is None or (f == "weight" and torch.equal(layer.dequantized(torch.float32).to(w.dtype), w)):
                continue  # the weight is rebuilt from the codes when that gives it exactly
            tensors[f"{name}::{f}"] = (w if f == "weight" else t).detach().cpu().clone().contiguous()
        scalars[name] = {"config": dataclasses.asdict(layer.config), "loss": layer.loss,
                         "awq_alpha": layer.awq_alpha, "awq_losses": layer.awq_losses}
    quantized = {f"{n}.weight" for n in layers}
    for k, v in model.state_dict().items():  # what else the method changed (AWQ: the norms it folded into)
        if k not in quantized and not torch.equal(v, base[k]):
            tensors[f"model::{k}"] = v.detach().cpu().contiguous()
    save_file(tensors, str(folder / "tensors.safetensors"))
    (folder / "run.json").write_text(json.dumps({"name": run.name, "wall_s": run.wall_s, "cpu_s": run.cpu_s,
                                                 "layers": scalars, "diagnostics": run.diagnostics}))
    run._model, run._layers = model, layers


def _rebuild(run: Run):
    if run.key is None:
        raise RuntimeError(f"{run.name} was not made by runs.quantize and was released: nothing to rebuild it from")
    if run.method == "rtn":
        return _quantize(run)
    from safetensors.torch import load_file

    from ..checks import InPlaceGuard
    from ..primitives import QuantConfig, QuantizedLayer
    folder = artifacts.entry_dir("runs", run.key)
    tensors = load_file(str(folder / "tensors.safetensors"))
    meta = json.loads((folder / "run.json").read_text())
    model = copy.deepcopy(run.session.model)
    layers = {}
    with torch.no_grad():
        for name, s in meta["layers"].items():
            fields = {f: tensors.get(f"{name}::{f}") for f in _LAYER_FIELDS}
            param = model.get_submodule(name).weight
            layer = QuantizedLayer(**{**fields, "weight": None}, config=QuantConfig(**s["config"]), loss=s["loss"],
                                   awq_alpha=s["awq_alpha"],
                                   awq_losses=None if s["awq_losses"] is None else tuple(s["awq_losses"]))
            weight = fields["weight"] if fields["weight"] is not None else \
                layer.dequantized(torch.float32).to(param.dtype)
            param.copy_(weight)
            layers[name] = dataclasses.replace(layer, weight=weight)
        own = model.state_dict()  # tensors that share storage with the model's parameters and buffers
        for k, v in tensors.items():
            if k.startswith("model::"):
                own[k.removeprefix("model::")].copy_(v)
    setattr(model, InPlaceGuard.ATTR, run.name)
    return model, layers


# --- reports -----------------------------------------------------------------------------------------------


def _report_key(run: Run, purpose: str) -> str:
    windows = run.session.baseline(purpose).windows
    return artifacts.cache_key("report", run.key, purpose, tokens_digest(windows), _FORMAT)


def _report_cached(run: Run, purpose: str) -> bool:
    return artifacts.is_complete(artifacts.entry_dir("reports", _report_key(run, purpose)))


def _report(run: Run, purpose: str):
    from ..evaluate import QualityReport
    baseline = run.session.baseline(purpose)
    if run.key is None:
        return baseline.compare(run.model, run.name, run.session.tokenizer)

    def build(tmp: Path) -> None:
        r = baseline.compare(run.model, run.name, run.session.tokenizer)
        np.savez(tmp / "per_token.npz", **r.per_token)
        (tmp / "report.json").write_text(json.dumps({"seconds": r.seconds, "seq_len": r.seq_len,
                                                     "score_from": r.score_from}))

    folder = artifacts.cached_dir("reports", _report_key(run, purpose), build)
    meta = json.loads((folder / "report.json").read_text())
    with np.load(folder / "per_token.npz") as z:
        per_token = {k: z[k] for k in z.files}
    return QualityReport(run.name, baseline.name, meta["seq_len"], meta["score_from"], baseline.id, meta["seconds"],
                         per_token)


# --- tables ------------------------------------------------------------------------------------------------


def baselines(session, purposes=("eval", "heldout")) -> str:
    """One line per window set: its windows, its source and the session model's perplexity on them (the
    baseline every "% over baseline" of the notebook refers to)."""
    from . import session as session_module
    lines = []
    for purpose in purposes:
        b = session.baseline(purpose)
        ppl = math.exp(-b.logprobs.gather(-1, b.targets.unsqueeze(-1)).double().mean().item())
        lines.append(f"{purpose:8s} {b.windows.shape[0]} x {b.windows.shape[1]} tokens of "
                     f"{session_module.WINDOWS[purpose][0]}: {session.dtype_name} perplexity {ppl:.2f}")
    return "\n".join(lines)


def table(runs, purpose: str = "eval"):
    """:func:`~quantedu.course.views.quality_table` of the runs on one window set, with how each was made:
    calibration (samples x tokens) and the seconds its quantization took (wall / CPU)."""
    from .views import quality_table
    df = quality_table([r.report(purpose) for r in runs])
    df["calibration"] = [r.calibration for r in runs]
    df["quantize s (wall / CPU)"] = [("-" if math.isnan(r.wall_s) else f"{r.wall_s:.0f} / " +
                                      ("-" if math.isnan(r.cpu_s) else f"{r.cpu_s:.0f}")) for r in runs]
    return df


def domain_table(runs, purposes=("eval", "heldout")):
    """In-domain vs out-of-domain: for each run, "% over baseline" (95% interval), mean KLD and same top token
    on each window set side by side (columns grouped by window set)."""
    import pandas as pd

    from .views import quality_table
    keep = ["vs baseline", "mean KLD", "same top token"]
    return pd.concat({p: quality_table([r.report(p) for r in runs], verdicts=False)[keep] for p in purposes}, axis=1)


# --- a few blocks only (libraries too slow for the whole model on a CPU) -----------------------------------


def truncated_model(model, blocks: int):
    """A copy of ``model`` with only its first ``blocks`` decoder blocks (the same modules, copied)."""
    from ..calibration import decoder_layers
    n = len(decoder_layers(model))
    if isinstance(blocks, bool) or not isinstance(blocks, int) or not 1 <= blocks <= n:
        raise ValueError(f"blocks must be a whole number from 1 to {n} (the model's decoder blocks), got {blocks!r}")
    memo = {id(b): None for b in decoder_layers(model)[blocks:]}  # deep-copy all but the blocks left out
    small = copy.deepcopy(model, memo)
    small.model.layers = torch.nn.ModuleList(list(small.model.layers)[:blocks])
    small.config = copy.deepcopy(model.config)
    small.config.num_hidden_layers = blocks
    for attr in ("layer_types",):  # per-layer lists in newer configs
        if isinstance(getattr(small.config, attr, None), list):
            setattr(small.config, attr, getattr(small.config, attr)[:blocks])
    return small


def truncated_checkpoint(session, blocks: int) -> Path:
    """The session model's first ``blocks`` blocks saved as a checkpoint folder (with the tokenizer), cached:
    what a library that loads from disk (AutoAWQ, optimum) quantizes."""
    key = artifacts.cache_key("first-blocks", model_id(session.model), blocks, _FORMAT)

    def build(tmp: Path) -> None:
        from .session import no_bars
        with no_bars():  # transformers' "Writing model shards" bar
            truncated_model(session.model, blocks).save_pretrained(tmp / "model")
            session.tokenizer.save_pretrained(tmp / "model")

    return artifacts.cached_dir("models", key, build, meta={"blocks": blocks}) / "model"


def with_blocks(model, small):
    """A copy of ``model`` whose first blocks are ``small``'s (a truncated model, quantized): the whole model
    with only those blocks quantized, so its quality is measured on the real task."""
    from ..calibration import decoder_layers
    full, part = copy.deepcopy(model), decoder_layers(small)
    if len(part) > len(decoder_layers(full)):
        raise ValueError(f"the small model has {len(part)} blocks, the model only {len(decoder_layers(full))}")
    with torch.no_grad():
        for i, block in enumerate(part):
            target = decoder_layers(full)[i]
            state = {k: v for k, v in block.state_dict().items() if k in target.state_dict()}
            missing = set(target.state_dict()) - set(state)
            if missing:
                raise ValueError(f"block {i} of the small model lacks {sorted(missing)[:3]}: not the same architecture")
            target.load_state_dict({k: v.to(target.state_dict()[k].dtype) for k, v in state.items()})
    return full


def identical_weights(a, b) -> list[tuple[int, int]]:
    """Per decoder block, ``(equal, total)``: how many linear-layer weights are equal in models ``a`` and ``b``
    (the same codes, where both are quantized on the same grid), out of how many."""
    from ..calibration import decoder_layers, linear_layers
    counts = []
    for ba, bb in zip(decoder_layers(a), decoder_layers(b)):
        la, lb = linear_layers(ba), dict(bb.named_modules())
        same = sum(int((la[n].weight == lb[n].weight.to(la[n].weight.dtype)).sum()) for n in la)
        counts.append((same, sum(m.weight.numel() for m in la.values())))
    return counts


__all__ = ["METHODS", "Run", "quantize", "external", "baselines", "table", "domain_table", "truncated_model", "truncated_checkpoint",
           "with_blocks", "identical_weights", "model_id", "tokens_digest"]
