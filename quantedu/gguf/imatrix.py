"""Importance matrix ("imatrix") from calibration activations, as llama.cpp's ``llama-imatrix`` defines it.

For every linear layer ``y = W x`` inside the transformer blocks, ``llama-imatrix`` accumulates, over all
calibration tokens, the square of each input feature: ``in_sum2[j] += x[j]^2`` and ``counts += 1``
per token (tools/imatrix/imatrix.cpp, ``IMatrixCollector::collect_imatrix``). ``llama-quantize`` then
uses ``in_sum2 / counts`` - the mean of squared inputs per input column - as the weight of column ``j``
in every quantization error it minimizes (the ``quant_weights`` of ggml-quants.c). Columns that see
large activations matter more.

Only tensors named ``blk.*`` are collected (``output.weight`` only with ``--process-output``); entries
are keyed by GGUF tensor name. Our version watches the ``nn.Linear`` inputs of a transformers model
with :func:`quantedu.calibration.observe_linear_inputs` (the hooks GPTQ's Hessians and AWQ's statistics
use too) and maps HF module names to GGUF names with gguf-py's tensor name map.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..calibration import observe_linear_inputs


def gguf_tensor_names(model) -> dict[str, str]:
    """HF module name -> GGUF tensor name (``model.layers.3.mlp.down_proj`` -> ``blk.3.ffn_down.weight``)."""
    import gguf
    arch_name = getattr(model.config, "model_type", "llama")
    arch = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}.get(arch_name, gguf.MODEL_ARCH.LLAMA)
    tmap = gguf.get_tensor_name_map(arch, model.config.num_hidden_layers)
    out = {}
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            g = tmap.get_name(name)
            if g is not None:
                out[name] = f"{g}.weight"
    return out


class ImatrixCollector:
    """Input hooks that accumulate ``sum x^2`` per input column and the token count.

    >>> with ImatrixCollector(model) as col:
    ...     for batch in batches: model(batch)
    >>> imatrix = col.result()   # {"blk.0.attn_q.weight": float32[576], ...}
    """

    def __init__(self, model, include_output: bool = False):
        self.model = model
        names = gguf_tensor_names(model)
        self.names = {k: v for k, v in names.items()
                      if v.startswith("blk.") or (include_output and v == "output.weight")}
        self.sum2: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def _add(self, hf_name: str, x: torch.Tensor) -> None:
        gname = self.names[hf_name]
        x = x.float()
        s = (x * x).sum(dim=0)
        if gname in self.sum2:
            self.sum2[gname] += s
        else:
            self.sum2[gname] = s.clone()
        self.counts[gname] = self.counts.get(gname, 0) + x.shape[0]

    def __enter__(self):
        self._watch = observe_linear_inputs(self.model, self._add, names=set(self.names))
        self._watch.__enter__()
        return self

    def __exit__(self, *exc):
        self._watch.__exit__(*exc)

    def result(self) -> dict[str, np.ndarray]:
        """``in_sum2 / counts`` per GGUF tensor name (float32 numpy arrays)."""
        if not self.sum2:
            raise RuntimeError("no activations were collected: run the model on calibration batches inside "
                               "`with ImatrixCollector(model):` first")
        return {k: (v / self.counts[k]).cpu().numpy().astype(np.float32) for k, v in self.sum2.items()}


@torch.no_grad()
def compute_imatrix(model, batches, include_output: bool = False) -> dict[str, np.ndarray]:
    """Run ``model`` on ``batches`` and return the imatrix.

    ``batches``: a ``(n_samples, seq)`` token tensor (as ``quantedu.data.calibration_batches`` returns;
    run one sample at a time) or an iterable of ``(batch, seq)`` tensors.
    """
    model.eval()
    device = next(model.parameters()).device
    if isinstance(batches, torch.Tensor) and batches.dim() == 2:
        from ..calibration import warn_if_starved
        warn_if_starved(model, batches, "importance matrix")  # fewer than 2 tokens per input: inconclusive
    if isinstance(batches, torch.Tensor):
        batches = batches.reshape(-1, batches.shape[-1]).split(1) if batches.dim() > 1 else [batches[None]]
    with ImatrixCollector(model, include_output) as col:
        for b in batches:
            model(b.reshape(-1, b.shape[-1]).to(device))
    return col.result()


def imatrix_digest(imatrix: dict[str, np.ndarray]) -> str:
    """A short hash of an imatrix, for cache keys of files quantized with it."""
    import hashlib
    return hashlib.sha256(b"".join(k.encode() + imatrix[k].tobytes() for k in sorted(imatrix))).hexdigest()[:12]
