"""The course's MXFP4A16 / NVFP4A16 / FP8_DYNAMIC weights equal llm-compressor 0.14's, and the course's exporter
(quantedu.export.fp) writes compressed-tensors checkpoints that transformers + compressed-tensors reload to them.

llm-compressor runs on a tiny Llama (seconds) whose linear weights are slices of the course model's real weights.
What llm-compressor does, read in compressed-tensors 0.19 (``quantization/utils/helpers.py``, ``mxfp_utils.py``,
``lifecycle/forward_helpers.py``) and llm-compressor (``observers/``), and what the course does the same way:

* weights are observed by min-max (``memoryless_minmax``): the scale comes from the group's ``amax``;
* FP8_DYNAMIC: ``scale = amax / 448`` per output row (float32 for a float32 weight), ``clamp(w / scale, +-448)``
  cast to float8_e4m3fn (round to nearest even);
* NVFP4A16: ``g = 448 * 6 / amax`` per tensor, computed as ``amax.reciprocal() * 2688`` (torch's Python-number /
  tensor), shared by q/k/v and by gate/up (the max of their amaxes: vLLM fuses them); group scale
  ``e4m3(g * amax / 6)``; ``w / (scale / g)`` clamped to +-6 and rounded to E2M1 (ties to even);
* MXFP4A16: the E8M0 exponent is ``floor(log2(amax rounded to one mantissa bit, halves up)) - 2`` - our
  ``scale_rounding="round"``. The course's default is OCP's ``"floor"``: the only differences are the groups whose
  amax has a mantissa >= 1.75, whose exponent is one higher in llm-compressor (asserted element by element).

Where the two could still differ, and why it does not show here: a group whose scale rounds to 0 gets 0.125 (an
"eps") in compressed-tensors and code 0 with us; every weight of such a group is below 2**-10 * 6 / g and rounds
to 0 either way (none occurs in these weights). Reloaded FP4 weights come back in bfloat16 (compressed-tensors
unpacks E2M1 to bfloat16): MXFP4 values are exact there, NVFP4 values equal ours rounded to bfloat16.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from quantedu import microscaling as ms
from quantedu.export import fp as export_fp

SCHEMES = ("MXFP4A16", "NVFP4A16", "FP8_DYNAMIC")
REAL = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
        "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny Llama whose linear weights are blocks of the course model's (layer i of the tiny one <- layer 7i of
    SmolLM2), saved (llm-compressor's oneshot reads the config from disk)."""
    from helpers import offline_gguf, require_module

    from quantedu.exercises.inputs import course_tensor
    from quantedu.testmodel import tiny_llama
    require_module("llmcompressor")
    offline_gguf()
    model = tiny_llama(seed=3)
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, torch.nn.Linear) and name.split(".")[-1] in REAL:
                layer = int(name.split(".")[2])
                w = course_tensor(f"blk.{7 * layer}.{REAL[name.split('.')[-1]]}.weight")
                m.weight.copy_(torch.from_numpy(w[:m.weight.shape[0], :m.weight.shape[1]]))
    path = tmp_path_factory.mktemp("fp-base")
    model.save_pretrained(path)
    return path


def _load(path):
    from transformers import LlamaForCausalLM
    return LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def llmcompressor_out(base, tmp_path_factory):
    """``oneshot(QuantizationModifier(scheme=...))`` for each scheme, saved compressed: ``{scheme: tensors}``."""
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from safetensors.torch import load_file
    out = {}
    for scheme in SCHEMES:
        model = _load(base)
        oneshot(model=model, recipe=QuantizationModifier(targets="Linear", scheme=scheme, ignore=["lm_head"]))
        path = tmp_path_factory.mktemp(scheme)
        model.save_pretrained(path, save_compressed=True)
        out[scheme] = load_file(str(path / "model.safetensors"))
    return out


def _ours(base, scheme, tmp_path, config=None):
    model = _load(base)
    records, skipped = export_fp.quantize_model_fp(model, scheme, config=config)
    path = export_fp.save_fp_checkpoint(model, records, tmp_path / scheme, scheme)
    from safetensors.torch import load_file
    return model, records, skipped, path, load_file(str(path / "model.safetensors"))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_our_checkpoint_holds_llm_compressors_tensors(base, llmcompressor_out, scheme, tmp_path):
    """Same tensor names, dtypes and bytes in both checkpoints (MXFP4 with llm-compressor's scale rounding)."""
    config = ms.FP4Config("mxfp4", scale_rounding="round") if scheme == "MXFP4A16" else None
    _, records, skipped, path, ours = _ours(base, scheme, tmp_path, config)
    theirs = llmcompressor_out[scheme]
    assert skipped == ["lm_head"] and len(records) == 14
    assert set(ours) == set(theirs)
    for key, t in theirs.items():
        assert ours[key].dtype == t.dtype, key
        assert torch.equal(ours[key].view(torch.uint8) if t.dtype.itemsize == 1 else ours[key],
                           t.view(torch.uint8) if t.dtype.itemsize == 1 else t), key
    qc = json.loads((path / "config.json").read_text())["quantization_config"]
    assert qc["format"] == export_fp.FORMATS[scheme] and qc["ignore"] == ["lm_head"]


def test_mxfp4_floor_differs_from_llm_compressor_only_where_explained(base, llmcompressor_out):
    """OCP's floor vs llm-compressor's rounding of amax: the E8M0 code is one lower exactly in the groups whose amax
    has a mantissa >= 1.75, and only the weights of those groups differ."""
    model = _load(base)
    records, _ = export_fp.quantize_model_fp(model, "MXFP4A16")  # default: floor
    theirs = llmcompressor_out["MXFP4A16"]
    n_bumped = 0
    for name, rec in records.items():
        w = model.get_submodule(name).weight.detach()
        amax = w.reshape(w.shape[0], -1, 32).abs().amax(-1)
        mantissa = 2 * torch.from_numpy(np.frexp(amax.double().numpy())[0])
        bumped = mantissa >= 1.75
        delta = theirs[f"{name}.weight_scale"].long() - rec.scale_codes.long()
        assert torch.equal(delta, bumped.long()), name
        same_codes = export_fp.pack_fp4(rec.codes) == theirs[f"{name}.weight_packed"]
        byte_group = torch.arange(same_codes.shape[1]) // 16  # 16 packed bytes per group of 32
        assert same_codes[~bumped[:, byte_group]].all(), name
        n_bumped += int(bumped.sum())
    assert n_bumped > 0


@pytest.mark.parametrize("scheme", SCHEMES)
def test_transformers_reloads_our_checkpoint_to_our_weights(base, scheme, tmp_path):
    from helpers import require_module
    require_module("compressed_tensors")
    model, records, _, path, _ = _ours(base, scheme, tmp_path)
    reloaded = export_fp.load_fp_checkpoint(path)
    for name, rec in records.items():
        got = reloaded.get_submodule(name).weight
        expected = rec.dequantize()
        if scheme == "FP8_DYNAMIC":
            assert got.dtype == torch.float32 and torch.equal(got, expected), name
        else:
            assert got.dtype == torch.bfloat16 and torch.equal(got, expected.to(torch.bfloat16)), name
            if scheme == "MXFP4A16":
                assert torch.equal(got.float(), expected), name  # E2M1 x 2**E is exact in bfloat16
    with torch.no_grad():  # the rest of the model came back unchanged
        assert torch.equal(reloaded.model.embed_tokens.weight, model.model.embed_tokens.weight)


def test_exporter_refuses_mismatched_records(base, tmp_path):
    model = _load(base)
    records, _ = export_fp.quantize_model_fp(model, "MXFP4A16")
    with pytest.raises(ValueError, match="NVFP4A16 needs nvfp4 records"):
        export_fp.save_fp_checkpoint(model, records, tmp_path / "a", "NVFP4A16")
    with pytest.raises(ValueError, match="scheme must be one of"):
        export_fp.save_fp_checkpoint(model, records, tmp_path / "b", "W4A16")
    ggml = ms.FP4Config("nvfp4", scale_rounding="ggml")
    recs, _ = export_fp.quantize_model_fp(model, "NVFP4A16", config=ggml)
    with pytest.raises(ValueError, match="ggml's UE4M3 scale rounding is for GGUF"):
        export_fp.save_fp_checkpoint(model, recs, tmp_path / "c", "NVFP4A16")
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()
