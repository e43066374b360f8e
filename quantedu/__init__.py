"""quantedu: the companion package of the LLM weight quantization course.

Modules: ``primitives`` (choose_qparams / quantize / dequantize, packing), ``models``, ``data``,
``evaluate``, ``calibration``, ``quiz``, ``artifacts``, and one module per algorithm.
"""
__version__ = "0.1.0"
