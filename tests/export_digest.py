"""Digests of the course's exports on a fixed problem: the proof that a refactor changed no byte.

``export_digests()`` quantizes the first two decoder blocks of the course model (fixed calibration)
with GPTQ (sym, asym, act-order with static groups) and AWQ, writes every checkpoint format the
package has (compressed-tensors, GPTQ v1 and v2, AWQ GEMM), and returns ``{export name: sha256 of its tensors + quantization_config}``.
``tests/data/export_digests.json`` holds the digests the package gave when they were last regenerated on
purpose (``python tests/export_digest.py --write``); ``tests/test_export_digests.py`` compares.
"""
from __future__ import annotations

import copy
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import torch

DIGESTS = Path(__file__).resolve().parent / "data" / "export_digests.json"


def _digest(path: Path) -> str:
    """sha256 over the safetensors bytes and the quantization_config (config.json also stores versions)."""
    h = hashlib.sha256((path / "model.safetensors").read_bytes())
    qc = json.loads((path / "config.json").read_text())["quantization_config"]
    h.update(json.dumps(qc, sort_keys=True).encode())
    return h.hexdigest()


def _problem():
    from quantedu.data import calibration_batches
    from quantedu.models import load_model
    model, tok = load_model("smollm2-135m", device="cpu", verbose=False)
    model.model.layers = model.model.layers[:2]
    model.config.num_hidden_layers = 2
    calib = calibration_batches(tok, n_samples=2, seq_len=64, seed=0, corpus="pydoc")
    return model, tok, calib


def export_digests() -> dict[str, str]:
    from quantedu import awq
    from quantedu import export
    from quantedu.gptq import GPTQConfig, gptq_quantize_model

    base, _tok, calib = _problem()
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, cfg in {"gptq-sym-g64": GPTQConfig(4, 64, sym=True),
                          "gptq-asym-g64": GPTQConfig(4, 64, sym=False),
                          "gptq-actorder-static-g64": GPTQConfig(4, 64, sym=True, desc_act=True, static_groups=True)}.items():
            model = copy.deepcopy(base)
            layers = gptq_quantize_model(model, calib, cfg, progress=False)
            out[f"{name}.compressed-tensors"] = _digest(_save_ct(export, model, layers, cfg, tmp / f"{name}-ct"))
            out[f"{name}.gptq"] = _digest(_save_gptq(export, model, layers, cfg, tmp / f"{name}-v1", "gptq"))
            out[f"{name}.gptq_v2"] = _digest(_save_gptq(export, model, layers, cfg, tmp / f"{name}-v2", "gptq_v2"))
        model = copy.deepcopy(base)
        acfg = awq.AWQConfig(bits=4, group_size=64, n_grid=4, clip_grid=4)
        layers = awq.awq_quantize_model(model, calib, acfg)
        out["awq-asym-g64.compressed-tensors"] = _digest(_save_ct(export, model, layers, acfg, tmp / "awq-ct"))
        if hasattr(export, "save_awq"):  # AutoAWQ's GEMM layout, since issue 12
            out["awq-asym-g64.awq"] = _digest(export.save_awq(model, layers, acfg, tmp / "awq-gemm"))
    return out


def _save_ct(export, model, layers, cfg, path):
    import inspect
    if "actorder" in inspect.signature(export.save_compressed_tensors).parameters:  # before issue 11
        return export.save_compressed_tensors(model, layers, cfg.quant_config(), path,
                                              actorder="static" if getattr(cfg, "desc_act", False) else None)
    return export.save_compressed_tensors(model, layers, cfg, path)


def _save_gptq(export, model, layers, cfg, path, fmt):
    import inspect
    params = inspect.signature(export.save_gptq).parameters
    if "desc_act" in params:  # the loose-argument signature, before issue 11
        return export.save_gptq(model, layers, cfg.quant_config(), path, desc_act=cfg.desc_act,
                                static_groups=cfg.static_groups, damp_percent=cfg.damp_percent,
                                checkpoint_format=fmt)
    return export.save_gptq(model, layers, cfg, path, checkpoint_format=fmt)


if __name__ == "__main__":
    torch.manual_seed(0)
    digests = export_digests()
    print(json.dumps(digests, indent=1))
    if "--write" in sys.argv:
        DIGESTS.write_text(json.dumps(digests, indent=1, sort_keys=True) + "\n")
        print(f"wrote {DIGESTS}")
