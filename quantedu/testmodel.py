"""A second course model for CI: a small Llama built here from a config, so every notebook is proven
on a model that is *not* the offline Q4_1 file (issue 16).

Widths are multiples of 256, so every tensor gets real K-quants (no fallbacks); it is saved in bf16
with a few layers, so a whole pass of the course is quick; its weights are a seeded random
initialisation (config.json carries ``quantedu_test_model: true``), so it proves code paths, shapes,
dtypes and "offline file" assumptions, not quality: notebooks print their quality claims for it and
assert them only for real models (``Session.real_model``). The tokenizer is the offline model's
(vocabulary 49152), so GGUF files written for it can copy that file's tokenizer metadata.

    python -m quantedu.testmodel          # builds it once (cached) and prints its path
    QUANTEDU_MODEL=$(python -m quantedu.testmodel) jupyter lab notebooks/
"""
from __future__ import annotations

import torch

from . import artifacts

CONFIG = dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=4, num_attention_heads=8,
              num_key_value_heads=2, head_dim=64, max_position_embeddings=2048, rms_norm_eps=1e-5,
              rope_theta=100000.0, tie_word_embeddings=True)
# The course model's shape (SmolLM2-135M), for a random-weight stand-in where the offline file is absent
# (the GPU check: tools/gpu_check.py).
COURSE_CONFIG = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                     num_key_value_heads=3, head_dim=64, max_position_embeddings=8192, rms_norm_eps=1e-5,
                     rope_theta=100000.0, tie_word_embeddings=True)
MARKER = "quantedu_test_model"
_VERSION = 1
# What a unit test or a probe needs: two blocks of the Llama shape in milliseconds (grouped-query attention).
TINY = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True)


def tiny_llama(seed: int = 0, varied: bool = False, **config):
    """A random-weight ``LlamaForCausalLM`` in memory (eval mode): :data:`TINY` with ``config`` overriding it.

    ``varied=True``: norm weights around 1 instead of exactly 1 and uneven input channels, as in trained
    models, so a fold into a norm or a per-channel scale that is wrong shows up in a test."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**{**TINY, **config})).eval()
    if varied:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "norm" in name:
                    p.copy_(torch.rand_like(p) + 0.5)
                elif p.dim() == 2:
                    p.mul_(1 + 4 * torch.rand(p.shape[1]))
    return model


def build(path, seed: int = 0, config: dict = CONFIG, tokenizer=None) -> None:
    """Write a random-weight Llama of ``config`` (bf16 safetensors + a tokenizer) into the folder ``path``.

    ``tokenizer``: a folder holding one (default: the offline model's, converted once and cached)."""
    from transformers import AutoTokenizer

    if tokenizer is None:
        from .models import offline_checkpoint
        tokenizer = offline_checkpoint()
    tok = AutoTokenizer.from_pretrained(tokenizer)
    model = tiny_llama(seed, **{**config, "vocab_size": len(tok), "bos_token_id": tok.bos_token_id,
                                "eos_token_id": tok.eos_token_id})
    setattr(model.config, MARKER, True)
    model = model.to(torch.bfloat16)
    model.save_pretrained(path)
    tok.save_pretrained(path)


def test_model_path():
    """The cached test model's folder (built on first use)."""
    key = artifacts.cache_key("test-llama", _VERSION, CONFIG)
    return artifacts.cached_dir("models", key, build, meta={"what": "quantedu second CI model", **CONFIG})


def is_test_model(model) -> bool:
    return bool(getattr(getattr(model, "config", None), MARKER, False))


if __name__ == "__main__":
    print(test_model_path())
