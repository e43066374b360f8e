"""quantedu: the companion package of the LLM quantization course.

The algorithms, each a short module at the top: :mod:`~quantedu.primitives` (``choose_qparams`` / ``quantize``
/ ``dequantize``, the :class:`~quantedu.primitives.QuantizedLayer` record every algorithm returns),
:mod:`~quantedu.rtn`, :mod:`~quantedu.gptq`, :mod:`~quantedu.awq`, :mod:`~quantedu.qat`, the GGUF block
formats in :mod:`~quantedu.gguf`; floating-point formats in :mod:`~quantedu.fp` (FP8, E2M1, E8M0, UE4M3),
:mod:`~quantedu.microscaling` (MXFP4, NVFP4) and :mod:`~quantedu.fp_grids` (those grids inside GPTQ);
activations and rotations in :mod:`~quantedu.w8a8`, :mod:`~quantedu.smoothquant` and :mod:`~quantedu.rotation`;
and the basics they share: :mod:`~quantedu.calibration` (the one calibration walk), :mod:`~quantedu.evaluate`
(the one way to measure quality) and :mod:`~quantedu.verdict` (the one rule that calls a winner),
:mod:`~quantedu.memory` (the byte counts), :mod:`~quantedu.schemes` and :mod:`~quantedu.plan` (serving
schemes, and what fits on N GPUs), :mod:`~quantedu.number_formats`, :mod:`~quantedu.models`,
:mod:`~quantedu.data`, :mod:`~quantedu.runtime`, :mod:`~quantedu.checks`, :mod:`~quantedu.artifacts` (every
write, the cache), :mod:`~quantedu.testmodel`.

The plumbing, in subpackages named by their role: :mod:`quantedu.export` (checkpoints engines load),
:mod:`quantedu.engines` (llama.cpp, vLLM, llm-compressor, the seed's libraries, servers and load),
:mod:`quantedu.course` (notebook sessions, quizzes, the comparison table and guide),
:mod:`quantedu.recipes` (runnable quantize-and-serve recipes for real GPUs) and :mod:`quantedu.exercises`
(the graded exercises). ``quantedu`` on the command line: :mod:`quantedu.cli`.
"""
__version__ = "0.1.0"
