"""Checkpoints that inference engines load, written from the course's quantized layers and read back.

* :mod:`.packing`: one pack/unpack pair per layout (GPTQ's int32 words, compressed-tensors' padded bitstream,
  AutoAWQ's interleaved nibbles);
* :mod:`.write`: ``save_compressed_tensors`` (llm-compressor's format), ``save_gptq`` (v1/v2), ``save_awq``
  (AutoAWQ GEMM), from ``{layer name: QuantizedLayer}`` as GPTQ, AWQ and RTN return it;
* :mod:`.read`: every layout back to dequantized weights (``load_quantized_model``), by our own code, and the
  bytes an engine loads from a checkpoint (``loaded_bytes``);
* :mod:`.fp`: FP4 / FP8 weights (MXFP4A16, NVFP4A16, FP8_DYNAMIC) as compressed-tensors checkpoints.
"""
from .read import (load_awq_layers, load_awq_weights, load_compressed_tensors_weights, load_gptq_model,
                   load_gptq_weights, load_quantized_model, load_quantized_weights, loaded_bytes)
from .write import awq_state_dict, gptq_state_dict, save_awq, save_compressed_tensors, save_gptq

__all__ = ["save_compressed_tensors", "save_gptq", "save_awq", "gptq_state_dict", "awq_state_dict",
           "load_gptq_weights", "load_gptq_model", "load_awq_layers", "load_awq_weights",
           "load_compressed_tensors_weights", "load_quantized_weights", "load_quantized_model", "loaded_bytes"]
