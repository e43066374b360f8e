"""Serving schemes: how a model's linear layers are stored and run, by name (``w4a16-g128``, ``w8a8``, ``nvfp4``,
``Q4_K_M``), as :mod:`quantedu.plan` and the recipes read them. Each name maps to a :mod:`quantedu.memory` weight
format (or a GGUF mix), the activations' type, and the engine that serves it: vLLM (tensor parallel) or llama.cpp
(layer split)."""
from __future__ import annotations

import re
from dataclasses import dataclass

from .memory import FloatFormat, GroupFormat

__all__ = ["Scheme", "SCHEME_HELP", "parse_scheme"]


@dataclass(frozen=True)
class Scheme:
    """How the linear layers are stored and run: a ``memory`` weight format (or a GGUF mix name)."""

    name: str
    weights: object            # memory.FloatFormat / GroupFormat, or a GGUF mix name ("Q4_K_M")
    activations: str
    engine: str                # "vllm" (tensor parallel) or "llama.cpp" (layer split)

    @property
    def gguf(self) -> bool:
        return self.engine == "llama.cpp"


def _group(bits, group, sym=True, scale_bits=16):
    return GroupFormat(bits, group, scale_bits=scale_bits, zero_bits=0 if sym else None)


_FIXED = {  # name -> (weights, activations); per-channel scales are float32 in vLLM's int8/fp8 layers
    "fp16": (FloatFormat("fp16", 16), "fp16"), "bf16": (FloatFormat("bf16", 16), "bf16"),
    "w8a8": (_group(8, None, scale_bits=32), "int8, dynamic per token"),
    "fp8": (_group(8, None, scale_bits=32), "fp8 e4m3, dynamic per token"),
    # FP4 codes with an fp8 scale per 16 (NVFP4: 4.5 bits) or an e8m0 scale per 32 (MXFP4: 4.25 bits)
    "nvfp4": (_group(4, 16, scale_bits=8), "fp4, scale per 16"), "nvfp4a16": (_group(4, 16, scale_bits=8), "bf16"),
    "mxfp4": (_group(4, 32, scale_bits=8), "fp4, scale per 32"), "mxfp4a16": (_group(4, 32, scale_bits=8), "bf16"),
}
_WNA16 = re.compile(r"w(?P<bits>[48])a16(?P<opts>(?:-(?:g\d+|channel|asym|sym))*)")
SCHEME_HELP = ("fp16, bf16, w8a8, fp8, w4a16[-g<group>][-asym] (default group 128), w8a16[-g<group>|-channel], "
               "nvfp4, nvfp4a16, mxfp4, mxfp4a16, or a GGUF mix (Q4_K_M, Q5_K_M, Q8_0, ...)")


def parse_scheme(spec) -> Scheme:
    """Parse a scheme name (see :data:`SCHEME_HELP`)."""
    if isinstance(spec, Scheme):
        return spec
    from .gguf.mixes import MIXES

    s = str(spec).strip().lower()
    if s in _FIXED:
        weights, acts = _FIXED[s]
        return Scheme(s, weights, acts, "vllm")
    m = _WNA16.fullmatch(s)
    if m:
        opts = [o for o in m["opts"].split("-") if o]
        group = next((None if o == "channel" else int(o[1:]) for o in opts if o[0] in "gc"), 128)
        if group is not None and group < 1:
            raise ValueError(f"group size must be >= 1, got {group}")
        fmt = _group(int(m["bits"]), group, sym="asym" not in opts)
        name = f"w{m['bits']}a16-" + (f"g{group}" if group else "channel") + ("-asym" if "asym" in opts else "")
        return Scheme(name, fmt, "bf16", "vllm")
    if s.upper() in MIXES:
        return Scheme(s.upper(), s.upper(), "f32/f16 (llama.cpp)", "llama.cpp")
    raise ValueError(f"unknown scheme {spec!r}: use {SCHEME_HELP}")
