"""The comparison post's own Python, run as written: optimum's ``GPTQQuantizer`` and AutoAWQ, and AutoGPTQ's import.

These libraries live in an interpreter of their own, ``.venv-seed`` (``make seed-libs``, pinned in
``constraints-seed.txt``): GPTQModel 7.7, which optimum 2.3 quantizes with, needs transformers >= 5.20.2 while
the course pins 5.17. :func:`seed_python` finds it (``QUANTEDU_SEED_PYTHON``, then ``.venv-seed/bin/python``
beside the package or in the working folder); each call runs ``_seed_worker.py`` there as a subprocess, JSON in
and out, and the course reads what it wrote with its own loaders (:func:`load`).

* :func:`probe`: each library's version, whether it imports, the real error of those that do not (AutoGPTQ
  0.7.1: ``from transformers.modeling_utils import no_init_weights``, gone in transformers 5), the requirements
  it declares that the environment lacks, and the lines of its source that refuse to run without CUDA.
* :func:`run_optimum_gptq`: the seed's ``GPTQQuantizer(bits=4, group_size=128, desc_act=True, damp_percent=0.01,
  dataset=...)``, ``quantize_model``, ``save_pretrained``. As written (``fix=False``) optimum refuses it: its
  ``act_group_aware`` defaults to True, which GPTQModel's ``QuantizeConfig`` (gptqmodel/quantization/config.py)
  rejects with ``desc_act=True``; the fix is ``act_group_aware=False``. On the course model (576 columns) the
  quantization then runs, but packing into GPTQModel's default CPU kernel, ``TorchCpuAvx512Linear``, refuses the
  ragged last group (``in_features: 576 must be divisible by group_size: 128``, gptqmodel/nn_modules/qlinear/
  __init__.py): ``backend="torch"`` (``TorchLinear``) takes it, or a group size dividing 576 (64). The seed's
  ``save_pretrained`` stores GPTQModel's internal ``gptq_v2`` layout (``"format": "gptq_v2"``: ``quantize_model``
  switches to it, ``post_init_model`` converts to it, optimum/gptq/quantizer.py) and the whole calibration set in
  ``config.json``. optimum's own ``quantizer.save()`` converts the tensors to v1 but leaves ``"format":
  "gptq_v2"`` in ``config.json`` (only ``quantize_config.json`` says ``gptq``), so its readers misread every
  zero point by one step: ``save="quantizer.save"`` writes that checkpoint.
* :func:`run_autoawq`: the seed's ``AutoAWQForCausalLM.from_pretrained`` + ``quantize(tokenizer, quant_config=
  {"zero_point": True, "q_group_size": 128, "w_bit": 4, "version": "GEMM"})`` + ``save_quantized``, calibrated
  on the course's text instead of the hub's pile-val. On the course model it stops at once: 128 does not divide
  576 (``pseudo_quantize_tensor`` asserts it, awq/quantize/quantizer.py; AutoAWQ has no ragged group), so
  ``group_size=64``. As shipped it then returns, on a CPU, a broken model: the scale search
  (``AwqQuantizer._compute_best_scale``, awq/quantize/quantizer.py) backs the weights up with ``v.cpu()``, which on
  a CPU is the same tensor, then scales them in place; ``fix=True`` recompiles that method with the one line
  changed to ``.detach().clone()`` (``_seed_worker.patch_awq_backup``).

Calibration is the course's own (:func:`quantedu.data.calibration_batches` on the offline corpus, pydoc). Runs
take minutes on a CPU, so results are cached (``quantedu.artifacts``, kind ``seed-libs``, keyed by the model,
the settings, the environment's versions and this code); ``out_dir`` writes a run folder of yours instead.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from .. import artifacts
from .server import MissingPackageError
from .sidecar import SideEnv

ENV_VAR = "QUANTEDU_SEED_PYTHON"
VENV = ".venv-seed"
WORKER = Path(__file__).with_name("_seed_worker.py")
INSTALL = ("make seed-libs   (creates .venv-seed: optimum 2.3 + GPTQModel 7.7, AutoAWQ 0.2.9, AutoGPTQ 0.7.1, "
           "pinned in constraints-seed.txt; a couple of minutes)")
SEED_GPTQ = "GPTQQuantizer(bits=4, group_size={g}, desc_act=True, damp_percent=0.01, dataset=<{n} {what}>)"
SEED_AWQ = 'quant_config={{"zero_point": True, "q_group_size": {g}, "w_bit": 4, "version": "GEMM"}}'
LIBRARY = {"gptq": "optimum + GPTQModel", "awq": "AutoAWQ"}
_ROOT = Path(__file__).resolve().parents[2]  # the checkout that holds .venv-*


class SeedLibsError(RuntimeError):
    """The seed-libraries worker could not do what was asked (its log's tail is in the message)."""


class MissingSeedLibsError(SeedLibsError, MissingPackageError):
    """No ``.venv-seed`` here: the message says how to make it."""


# ------------------------------------------------------------------------------------ interpreter

SIDE = SideEnv("seed-libraries", VENV, ENV_VAR, INSTALL, WORKER, error=SeedLibsError, missing=MissingSeedLibsError,
               roots=(_ROOT,), environ={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                                        "PYTHONWARNINGS": "ignore::DeprecationWarning"})


def seed_python() -> str | None:
    """The interpreter of the seed-libraries environment, or None (search order: module docstring)."""
    return SIDE.python()


def unavailable_reason() -> str | None:
    """Why `make seed-libs` installed nothing on this platform (``.venv-seed/UNAVAILABLE``), or None."""
    return SIDE.unavailable_reason()


def require_python() -> str:
    """:func:`seed_python`, or :class:`MissingSeedLibsError` saying what to do."""
    python = seed_python()
    if python is None:
        why = unavailable_reason()
        raise MissingSeedLibsError(f"the seed-libraries environment is not available: {why}" if why else
                                   f"the seed-libraries environment (.venv-seed) was not found. Run:\n    {INSTALL}\n"
                                   f"(or set {ENV_VAR} to the python of an environment with optimum and autoawq)")
    return python


def _call(command: str, job: dict | None, timeout: float, python: str | None = None) -> dict:
    return SIDE.call(python or require_python(), command, job, timeout)


_PROBES: dict[str, dict] = {}


def probe(python: str | None = None, timeout: float = 300.0) -> dict:
    """Each library of the environment (``["libraries"][dist]``): version, ``imports``, the real ``error`` and
    ``where`` it was raised, ``unmet_requirements``, ``cuda_gates``; measured once per process."""
    python = python or require_python()
    if python not in _PROBES:
        _PROBES[python] = _call("probe", None, timeout, python)
    return json.loads(json.dumps(_PROBES[python]))


def status() -> dict:
    """What ``quantedu doctor`` prints: the environment and each library's state, or why there is none.
    The probe is cached per installed environment (its distributions) and worker code: seconds once."""
    try:
        python = require_python()
        key = artifacts.cache_key("probe", python, _digest(_versions(python)),
                                  artifacts.code_fingerprint(WORKER.read_text()))
        try:
            return {"usable": True, **artifacts.cached_json("seed-libs", key, lambda: probe(python))}
        except OSError:  # an unusable cache (doctor reports it): measure without it
            return {"usable": True, **probe(python)}
    except SeedLibsError as exc:
        return {"usable": False, "why": str(exc).splitlines()[0], "install": INSTALL}


# ------------------------------------------------------------------------------------------- runs

def _versions(python: str) -> list[str]:
    """The environment's installed distributions (names of its dist-info folders): part of every cache key."""
    venv = Path(python).parent.parent
    return sorted(p.name for p in venv.glob("lib/python*/site-packages/*.dist-info")) or [python]


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj).encode()).hexdigest()[:16]


def _calibration(model_dir: Path, n_samples: int, seq_len: int, as_text: bool, calibration=None):
    """The course's calibration windows (pydoc corpus, seed 0) as token-id lists, or decoded to texts."""
    if calibration is not None:
        return calibration if isinstance(calibration, list) and isinstance(calibration[0], str) else \
            [[int(t) for t in row] for row in (calibration.tolist() if hasattr(calibration, "tolist") else calibration)]
    from transformers import AutoTokenizer

    from ..data import calibration_batches
    tok = AutoTokenizer.from_pretrained(model_dir)
    windows = calibration_batches(tok, n_samples, seq_len, seed=0, corpus="pydoc")
    return [tok.decode(w, clean_up_tokenization_spaces=False) for w in windows] if as_text else windows.tolist()


def _run_library(kind: str, model_dir, out_dir, job: dict, timeout: float) -> dict:
    python = require_python()
    model_dir = Path(model_dir) if model_dir is not None else _offline()
    weights = model_dir / "model.safetensors"
    stat = weights.stat() if weights.is_file() else None
    job = {**job, "model": str(model_dir.resolve())}

    def build(folder: Path) -> None:
        run = {**job, "out": str(folder / "model")}
        if run.pop("dump", False):
            run["dump"] = str(folder / "library-weights.safetensors")
        result = _call(kind, run, timeout, python)
        result.update(python=python, library=LIBRARY[kind], model_dir=job["model"])
        (folder / "result.json").write_text(json.dumps(result, indent=1))

    if out_dir is None:
        key = artifacts.cache_key(kind, model_dir.name, job["model"], stat and [stat.st_size, stat.st_mtime_ns],
                                  _digest(job), _versions(python),
                                  artifacts.code_fingerprint(sys.modules[__name__], WORKER.read_text()))
        folder = artifacts.cached_dir("seed-libs", key, build, meta={"library": kind, "model": job["model"]})
    else:
        with artifacts.atomic_path(out_dir) as tmp:
            tmp.mkdir(parents=True)
            build(tmp)
        folder = Path(out_dir)
    result = json.loads((folder / "result.json").read_text())
    model = folder / "model"
    result["run_dir"] = str(folder)
    result["out"] = str(model) if (model / "config.json").is_file() else None
    dump = folder / "library-weights.safetensors"
    result["library_weights"] = str(dump) if dump.is_file() else None
    return result


def _offline() -> Path:
    from ..models import offline_checkpoint
    return offline_checkpoint()


def run_optimum_gptq(model_dir=None, out_dir=None, n_samples: int = 4, seq_len: int = 128, fix: bool = True,
                     group_size: int = 128, calibration=None, eval_windows=None, save: str = "save_pretrained",
                     backend: str | None = None, dump_weights: bool = False, timeout: float = 3600.0) -> dict:
    """The seed's optimum GPTQ snippet on ``model_dir`` (default: the course model's fp32 checkpoint).

    ``fix=False``: as written; ``fix=True``: plus ``act_group_aware=False``. Calibration: ``n_samples``
    windows of ``seq_len`` tokens of the course's calibration text, given to optimum as texts (the form its docs
    and the seed use), or ``calibration`` (token ids ``(n, L)`` or a list of texts). ``eval_windows`` ``(n, L)``:
    also score them through GPTQModel's own kernels (``library_ppl``). ``save``: ``"save_pretrained"`` (the
    seed's) or ``"quantizer.save"`` (optimum's). ``backend``: GPTQModel's kernel (optimum's ``backend=``; default
    ``auto``, which on a CPU picks ``TorchCpuAvx512Linear``, and that refuses a ragged last group: 576 columns in
    groups of 128; ``"torch"`` takes it). ``dump_weights``: write GPTQModel's dequantized weights too.

    Returns ``{"ok", "error", "stage", "where", "wall_s", "quantize_s", "out" (the checkpoint folder), "kernel",
    "library_ppl", "call", ...}``; ``ok`` is False with optimum's real ``error`` when it refuses.
    """
    require_python()  # before any work: no environment, no run
    model_dir = Path(model_dir) if model_dir is not None else _offline()
    calib = _calibration(model_dir, n_samples, seq_len, True, calibration)
    if save not in ("save_pretrained", "quantizer.save"):
        raise ValueError(f"save must be 'save_pretrained' (the seed's) or 'quantizer.save' (optimum's), got {save!r}")
    job = {"calibration": calib, "group_size": group_size, "fix": bool(fix), "save": save, "dump": dump_weights,
           "windows": _windows(eval_windows), "backend": backend}
    result = _run_library("gptq", model_dir, out_dir, job, timeout)
    what = "texts" if isinstance(calib[0], str) else "token windows"
    result["call"] = (SEED_GPTQ.format(g=group_size, n=len(calib), what=what)
                      + (" + act_group_aware=False" if fix else "") + (f" + backend={backend!r}" if backend else ""))
    return result


def run_autoawq(model_dir=None, out_dir=None, n_samples: int = 4, seq_len: int = 128, fix: bool = True,
                group_size: int = 128, calibration=None, eval_windows=None, dump_weights: bool = False,
                timeout: float = 3600.0) -> dict:
    """The seed's AutoAWQ snippet on ``model_dir`` (default: the course model's fp32 checkpoint).

    ``fix=False``: as shipped (on a CPU: a broken model); ``fix=True``: with the weight backup fixed (``patch``
    in the result says which line of AutoAWQ's source was changed). Calibration: the course's ``n_samples`` x
    ``seq_len`` token windows (AutoAWQ's ``calib_data`` as token ids: it re-splits texts into its own blocks),
    or ``calibration``. ``eval_windows``, ``dump_weights``: as in :func:`run_optimum_gptq` (AutoAWQ's
    ``WQLinear_GEMM`` and ``dequantize_gemm``). Returns the same keys as :func:`run_optimum_gptq`.
    """
    require_python()
    model_dir = Path(model_dir) if model_dir is not None else _offline()
    calib = _calibration(model_dir, n_samples, seq_len, False, calibration)
    job = {"calibration": calib, "group_size": group_size, "fix": bool(fix), "dump": dump_weights,
           "windows": _windows(eval_windows)}
    result = _run_library("awq", model_dir, out_dir, job, timeout)
    result["call"] = SEED_AWQ.format(g=group_size) + (" + weight backup .detach().clone()" if fix else "")
    return result


def _windows(windows):
    if windows is None:
        return None
    return [[int(t) for t in row] for row in (windows.tolist() if hasattr(windows, "tolist") else windows)]


def load(result: dict, dtype=None):
    """The checkpoint a run wrote, as a plain transformers model dequantized by the course's own reader
    (:func:`quantedu.export.read.load_quantized_model`); raises with the library's error when it wrote none."""
    import torch

    from ..export.read import load_quantized_model
    if not result.get("out"):
        raise SeedLibsError(f"{result.get('library')} wrote no checkpoint: {first_line(result)}")
    return load_quantized_model(result["out"], dtype or torch.float32)


def first_line(result: dict) -> str:
    """The first line of a run's error (``"ok"`` when it ran)."""
    return (result.get("error") or "ok").strip().splitlines()[0]


__all__ = ["ENV_VAR", "INSTALL", "SeedLibsError", "MissingSeedLibsError", "seed_python", "unavailable_reason",
           "require_python", "probe", "status", "run_optimum_gptq", "run_autoawq", "load", "first_line"]
