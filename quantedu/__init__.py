"""quantedu: the companion package of the LLM quantization course.

The algorithms, each a short module at the top: :mod:`~quantedu.primitives` (``choose_qparams`` / ``quantize``
/ ``dequantize``, the :class:`~quantedu.primitives.QuantizedLayer` record every algorithm returns),
:mod:`~quantedu.rtn`, :mod:`~quantedu.gptq`, :mod:`~quantedu.awq`, :mod:`~quantedu.qat`, the GGUF block
formats in :mod:`~quantedu.gguf`, and the basics they share: :mod:`~quantedu.calibration` (the one
calibration walk), :mod:`~quantedu.evaluate` (the one way to measure quality), :mod:`~quantedu.memory` (the
byte counts), :mod:`~quantedu.number_formats`, :mod:`~quantedu.models`, :mod:`~quantedu.data`,
:mod:`~quantedu.runtime`, :mod:`~quantedu.checks`, :mod:`~quantedu.artifacts` (every write, the cache),
:mod:`~quantedu.testmodel`.

The plumbing, in subpackages named by their role: :mod:`quantedu.export` (checkpoints engines load),
:mod:`quantedu.engines` (llama.cpp, vLLM, llm-compressor, the seed's libraries, servers and load),
:mod:`quantedu.course` (notebook sessions, quizzes, the comparison table and guide) and
:mod:`quantedu.exercises` (the graded exercises).
"""
__version__ = "0.1.0"
