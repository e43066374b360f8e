"""Exercises: in every notebook the learner writes the core of an algorithm, and a checker grades it live.

>>> from quantedu.exercises import check, hint
>>> check("02.asym_quantize", asym_quantize, asym_dequantize)   # in a notebook cell
>>> hint("02.asym_quantize")                                     # one more hint per call

Each checker runs the learner's code on hand-made inputs that expose typical mistakes, random tensors and
a real tensor of the course model, compares the result with the package's own implementation and says
which input and which element differ, expected vs got, and the likely cause. :mod:`.core` holds the
machinery; one module per lesson holds its exercises (reference solution, inputs, diagnoses);
:mod:`.notebooks` the instructor side (``quantedu exercises --solutions`` / ``--status DIR``).
"""
from . import (awq_scales, choose_format, fp4_blocks, gguf_blocks, gptq_block, memory_math, quantize,  # noqa: F401
               serving_stream)
from .core import (FAILED, NOT_ATTEMPTED, PASSED, REGISTRY, RESULTS, SOLUTIONS_ENV, Exercise, Result, check, grade,
                   hint, is_stub)

__all__ = ["check", "grade", "hint", "is_stub", "Exercise", "Result", "REGISTRY", "RESULTS", "SOLUTIONS_ENV",
           "PASSED", "FAILED", "NOT_ATTEMPTED"]
