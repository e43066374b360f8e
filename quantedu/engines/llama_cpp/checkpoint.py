"""The Hugging Face folder to give ``convert_hf_to_gguf.py`` for a course model: its own, or one whose
``tokenizer.json`` is rebuilt from a GGUF file's vocabulary (the course's offline checkpoint)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .files import read_header


# llama.cpp pre-tokenizer name -> the Hugging Face pre-tokenizer that splits text the same way
def _pre_tokenizer(name: str):
    from tokenizers import pre_tokenizers as pt
    byte_level = pt.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    if name == "smollm":  # digits one by one, then GPT-2's regex (llama-vocab.cpp LLAMA_VOCAB_PRE_TYPE_SMOLLM)
        return pt.Sequence([pt.Digits(individual_digits=True), byte_level])
    if name in ("gpt2", "gpt-2", "default"):
        return byte_level
    raise ValueError(f"no Hugging Face equivalent written here for llama.cpp pre-tokenizer {name!r}")


def checkpoint_with_gguf_tokenizer(checkpoint, gguf_file, out_dir, model_name: str | None = None) -> Path:
    """A Hugging Face folder for ``convert_hf_to_gguf.py``: ``checkpoint``'s weights and config, and a
    ``tokenizer.json`` rebuilt from ``gguf_file``'s vocabulary (byte-level BPE, its merges, its control
    tokens, its pre-tokenizer), as a hub download would have it.

    Why: the course's fp32 checkpoint was made by transformers' GGUF loader, whose tokenizer.json has
    ``byte_fallback: true`` and a ``Sequence`` decoder. The converter reads that as a SentencePiece-style
    Llama vocabulary (``tokenizer.ggml.model = llama``), and llama.cpp then crashes loading the file. The
    weights are linked, not copied. ``model_name`` names the folder (the converter's ``general.name``).
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    meta = read_header(gguf_file)[0]
    if meta.get("tokenizer.ggml.model") != "gpt2":
        raise ValueError(f"{gguf_file}: only byte-level BPE vocabularies (tokenizer.ggml.model = gpt2) are rebuilt")
    tokens = list(meta["tokenizer.ggml.tokens"])
    types = list(meta["tokenizer.ggml.token_type"])
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, byte_fallback=False))
    tok.pre_tokenizer = _pre_tokenizer(meta.get("tokenizer.ggml.pre", "default"))
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                            for i, t in enumerate(types) if t == 3])  # 3 = CONTROL
    folder = out_dir / (model_name or checkpoint.name)
    folder.mkdir(parents=True, exist_ok=True)
    for f in checkpoint.iterdir():
        if f.name in ("config.json", "generation_config.json"):
            shutil.copy2(f, folder / f.name)
        elif f.suffix == ".safetensors" or f.name.endswith(".safetensors.index.json"):
            target = folder / f.name
            target.unlink(missing_ok=True)
            os.symlink(f.resolve(), target)
    tok.save(str(folder / "tokenizer.json"))

    def special(key):
        i = meta.get(f"tokenizer.ggml.{key}_token_id")
        return None if i is None else tokens[int(i)]
    arch = meta.get("general.architecture", "llama")
    config = {"tokenizer_class": "GPT2Tokenizer", "add_prefix_space": False, "clean_up_tokenization_spaces": False,
              "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
              "bos_token": special("bos"), "eos_token": special("eos"), "unk_token": special("unknown"),
              "pad_token": special("padding"), "model_max_length": int(meta.get(f"{arch}.context_length", 8192))}
    if "tokenizer.chat_template" in meta:
        config["chat_template"] = meta["tokenizer.chat_template"]
    (folder / "tokenizer_config.json").write_text(json.dumps({k: v for k, v in config.items() if v is not None},
                                                             indent=1))
    return folder


def _tokenizer_from_gguf_loader(folder: Path) -> bool:
    """Whether ``folder``'s tokenizer.json is transformers' reconstruction from a GGUF file (byte-level
    pre-tokenizer but ``byte_fallback: true``): the combination convert_hf_to_gguf.py misreads."""
    try:
        tj = json.loads((folder / "tokenizer.json").read_text())
    except (OSError, ValueError):
        return False
    pre = json.dumps(tj.get("pre_tokenizer") or {})
    return tj.get("model", {}).get("type") == "BPE" and bool(tj["model"].get("byte_fallback")) and "ByteLevel" in pre


def convertible_checkpoint(model, out_dir, reference_gguf=None) -> tuple[Path, str]:
    """The Hugging Face folder to give ``convert_hf_to_gguf.py`` for a loaded course model, and why.

    The folder the model was loaded from (``config._name_or_path``: the course's cached fp32 checkpoint, a
    local folder, or a hub snapshot). If its tokenizer is transformers' reconstruction from a GGUF file (the
    course's offline checkpoint, and the CI test model that copies it), a sibling folder with the same weights
    and the tokenizer rebuilt from ``reference_gguf`` (default: the shipped file) is made in ``out_dir``.
    """
    from ...models import offline_gguf_path
    src = str(getattr(model.config, "_name_or_path", "") or getattr(model, "name_or_path", ""))
    folder = Path(src).expanduser()
    if not folder.is_dir():
        try:
            from huggingface_hub import snapshot_download
            folder = Path(snapshot_download(src, local_files_only=True))
        except Exception as exc:  # noqa: BLE001 - any failure means: no local folder to convert
            raise FileNotFoundError(f"no local checkpoint folder for {src!r} to convert ({exc})") from exc
    if not _tokenizer_from_gguf_loader(folder):
        return folder, "its own tokenizer files"
    ref = Path(reference_gguf or offline_gguf_path())
    name = "SmolLM2-135M-Instruct" if "smollm2" in str(folder).lower() else folder.name
    return (checkpoint_with_gguf_tokenizer(folder, ref, out_dir, model_name=name),
            f"the weights of {folder.name}, tokenizer.json rebuilt from {ref.name}'s vocabulary")
