"""Will it fit? A serving plan for a model on N GPUs: weights, KV cache and activations per GPU.

Every byte count is :mod:`quantedu.memory`'s (notebook 01): this module only decides *which* tensors
land on which GPU, then asks ``memory`` what they weigh.

* **vLLM, tensor parallelism** (``--tensor-parallel-size N``, the fp16/int8/fp8/W4A16/FP4 schemes): every
  rank holds a slice of every layer. Column-parallel ``q/k/v/gate/up`` split their output rows,
  row-parallel ``o/down`` split their input columns, the embedding and ``lm_head`` are vocab-parallel
  (the vocabulary padded to a multiple of 64, then split), norms are replicated. So one rank is a
  Llama of ``heads/N`` heads, ``intermediate/N`` MLP width and ``vocab/N`` rows (:func:`rank_shape`), and
  ``memory.weight_bytes`` / ``kv_cache_bytes`` of that shape are the bytes on each GPU. KV heads split the
  same way; with more ranks than KV heads vLLM gives every rank one whole KV head (replicated).
* **llama.cpp, layer split** (the GGUF mixes, ``-ngl 99``): whole blocks go to GPUs in proportion to
  ``--tensor-split`` (equal GPUs: equal shares of ``layers + 1``, the output layer counting as the last);
  the token embedding stays in host memory; each block's KV cache sits with the block.
* **Calibration** (llm-compressor's sequential pipeline, one GPU): the model waits in CPU memory; one
  decoder layer at a time is moved to the GPU with the calibration activations of one sample, plus
  what the method keeps: GPTQ a float32 Hessian per linear layer, AWQ the inputs of every sample.

Sizes in GiB; ``gpu_memory_gb`` is read as GiB (an H100 80GB reports 79.6); the budget is 90% of it.
"""
from __future__ import annotations

import bisect
import json
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import memory
from .memory import GIB, ModelShape
from .schemes import SCHEME_HELP, Scheme, parse_scheme

UTILIZATION = 0.9      # vLLM's default --gpu-memory-utilization
VOCAB_PADDING = 64     # vLLM's DEFAULT_VOCAB_PADDING_SIZE (vocab_parallel_embedding.py)
BLOCK_TOKENS = 16      # vLLM's KV-cache block size: contexts are whole blocks
LLAMA_UBATCH = 512     # llama.cpp's default -ub: the tokens one compute graph is sized for
MAX_CONTEXT = {  # max_position_embeddings of the presets' published config.json files
               "llama-2-7b": 4096, "llama-2-13b": 4096, "llama-2-70b": 4096, "llama-3-8b": 8192,
               "llama-3-70b": 8192, "llama-3.1-8b": 131072, "llama-3.1-70b": 131072, "smollm2-135m": 8192}


class PlanError(ValueError):
    """A configuration an engine refuses (the engine's own reason, and what to do)."""


# ------------------------------------------------------------------------------------------- models

def resolve(model) -> tuple[ModelShape, str, int | None]:
    """(shape, name, max context) of a preset name, a hub id whose name is a preset
    (``meta-llama/Llama-3.1-8B-Instruct``), a config.json / checkpoint folder, a config dict or a ModelShape."""
    if isinstance(model, ModelShape):
        return model, model.name, MAX_CONTEXT.get(model.name)
    if isinstance(model, dict):
        return memory.model_shape(model), model.get("_name_or_path") or "model", model.get("max_position_embeddings")
    text = str(model)
    path = Path(text).expanduser()
    config = path / "config.json" if path.is_dir() else path
    if config.is_file():
        c = json.loads(config.read_text())
        name = path.name if path.is_dir() else path.parent.name
        return memory.shape_from_config(c, name=name), name, c.get("max_position_embeddings")
    base = re.sub(r"^meta-|-(instruct|hf|chat)$", "", text.rsplit("/", 1)[-1].lower())
    if base in memory.PRESETS:
        return memory.model_shape(base), text, MAX_CONTEXT.get(base)
    return memory.model_shape(text), text, None  # hub id: a config in the local hub cache, else a clear error


# -------------------------------------------------------------------------------- tensor parallelism

def valid_tp_sizes(shape: ModelShape) -> list[int]:
    """The tensor-parallel sizes vLLM accepts for ``shape``: every rule of :func:`rank_shape` holds."""
    def ok(tp: int) -> bool:
        try:
            rank_shape(shape, tp)
        except PlanError:
            return False
        return True
    return [tp for tp in range(1, shape.heads + 1) if shape.heads % tp == 0 and ok(tp)]


def rank_shape(shape: ModelShape, tp: int) -> ModelShape:
    """One rank's slice of ``shape`` under vLLM's tensor parallelism of ``tp``; refuses what vLLM refuses.

    vLLM's rules (config/model.py ``verify_with_parallel_config``, models/llama.py, layers/linear.py
    ``QKVParallelLinear``, ``divide()``'s assertion for the MLP and the padded vocabulary).
    """
    if tp < 1:
        raise PlanError(f"tensor parallel size must be >= 1, got {tp}")
    if shape.heads % tp:
        raise PlanError(f"Total number of attention heads ({shape.heads}) must be divisible by tensor parallel "
                        f"size ({tp}). (vLLM's reason.) What to do: use --tensor-parallel-size in "
                        f"{valid_tp_sizes(shape)}, or split the rest with --pipeline-parallel-size.")
    kv = shape.kv_heads
    if (kv >= tp and kv % tp) or (kv < tp and tp % kv):
        raise PlanError(f"{shape.kv_heads} KV heads cannot be shared by {tp} ranks: vLLM splits them when "
                        f"their number divides by the TP size and replicates them when the TP size divides by "
                        f"it (models/llama.py asserts one or the other). Choose a TP size that divides "
                        f"{kv} or is a multiple of it.")
    padded = VOCAB_PADDING * math.ceil(shape.vocab / VOCAB_PADDING)
    for what, n in (("intermediate size", shape.intermediate), ("padded vocabulary", padded)):
        if n % tp:
            raise PlanError(f"{n} is not divisible by {tp}: vLLM splits the {what} evenly across ranks")
    return replace(shape, heads=shape.heads // tp, kv_heads=max(1, kv // tp), intermediate=shape.intermediate // tp,
                   vocab=padded // tp, name=f"{shape.name} / rank of {tp}")


_SPLIT = {"q_proj": "column", "k_proj": "column", "v_proj": "column", "gate_proj": "column", "up_proj": "column",
          "o_proj": "row", "down_proj": "row"}


def tp_splits(shape: ModelShape, tp: int) -> list[tuple[str, str, tuple, tuple]]:
    """(matrix, how it is split, full shape, one rank's shape) for every kind of weight, as vLLM shards it."""
    rank = rank_shape(shape, tp)
    full_lin, rank_lin = shape.linear_shapes(), rank.linear_shapes()
    kv_how = "column" if shape.kv_heads >= tp else f"column, KV heads replicated x{tp // shape.kv_heads}"
    rows = [(n, kv_how if n in ("k_proj", "v_proj") and tp > 1 else _SPLIT[n], full_lin[n], rank_lin[n])
            for n in full_lin]
    rows.append(("embed_tokens", "vocab (padded to 64)", (shape.vocab, shape.hidden), (rank.vocab, rank.hidden)))
    rows.append(("lm_head", "tied to embed_tokens" if shape.tied else "vocab (padded to 64)",
                 (shape.vocab, shape.hidden), (rank.vocab, rank.hidden)))
    rows.append(("norms", "replicated", (2 * shape.layers + 1, shape.hidden), (2 * shape.layers + 1, shape.hidden)))
    return rows


def group_alignment(shape: ModelShape, sch: Scheme, tp: int = 1) -> None:
    """Refuse a group size that does not divide a layer's input columns (on every rank: row-parallel
    layers split the columns), as llm-compressor and vLLM do."""
    g = getattr(sch.weights, "group_size", None)
    if sch.gguf or not g:
        return
    full, rank = shape.linear_shapes(), rank_shape(shape, tp).linear_shapes()
    bad = [f"{n} ({full[n][1]} columns)" if full[n][1] % g else f"{n} ({rank[n][1]} columns per rank)"
           for n in full if full[n][1] % g or rank[n][1] % g]
    if bad:
        common = math.gcd(*[c for _, c in rank.values()])
        fit = next((x for x in (128, 64, 32, 16) if common % x == 0), common)
        raise PlanError(f"group size {g} does not divide the input width of {', '.join(bad)}: llm-compressor "
                        f"refuses such layers and vLLM's kernels need whole groups on every rank. Use a group "
                        f"size that divides {common} (e.g. {fit}){', or fewer GPUs' if tp > 1 else ''}.")


# ------------------------------------------------------------------------------------ llama.cpp split

def gguf_tensor_bytes(shape: ModelShape, mix: str) -> dict[str, float]:
    """Bytes of every tensor of ``shape`` quantized with the llama.cpp ``mix`` (llama-quantize's choice of
    type per tensor, ``quantedu.gguf.mixes``; the bytes of each type from ``memory.tensor_bytes``)."""
    from gguf import GGMLQuantizationType as T

    from .gguf.mixes import assign_types, shape_tensor_infos
    infos = shape_tensor_infos(shape)
    types = assign_types(infos, mix, shape.layers, shape.heads, shape.kv_heads)
    floats = {T.F32: "fp32", T.F16: "fp16", T.BF16: "bf16"}
    return {i.name: memory.tensor_bytes(math.prod(i.shape) // i.shape[0], i.shape[0],
                                        floats.get(types[i.name], types[i.name].name)) for i in infos}


def layer_devices(n_layer: int, gpus: int) -> list[int]:
    """The GPU of each of llama.cpp's ``n_layer + 1`` layers (blocks, then the output layer) with
    ``-ngl`` all and equal ``--tensor-split`` (llama-model.cpp: ``upper_bound`` over the cumulative split)."""
    splits = [(i + 1) / gpus for i in range(gpus)]
    return [min(bisect.bisect_right(splits, il / (n_layer + 1)), gpus - 1) for il in range(n_layer + 1)]


# ---------------------------------------------------------------------------------------- calibration

def calibration_peak(model, method: str | None = "gptq", n_samples: int = 512, seq_len: int = 2048) -> dict:
    """GPU bytes at the peak of llm-compressor's sequential pipeline (an estimate, by part), and host RAM.

    On the GPU: one decoder layer in bf16, the activations of one calibration sample through it, and
    per method: ``gptq`` one float32 Hessian ``cols x cols`` per linear layer (all of the layer's, kept
    until the layer is quantized) plus, while the widest one is quantized, its float32 weight and two more
    ``cols x cols`` buffers (normalized H, its inverse); ``awq`` the inputs of every sample to the layer's
    smoothed groups (attention, o_proj, MLP, down_proj); ``None`` (data-free: FP8 dynamic) the layer alone.
    The embedding is onloaded alone. GPTQ's ``batched_quantization="auto"`` stacks same-shape layers into
    free memory, so a real peak grows: this is what it needs. Host: the bf16 model and every hidden state.
    """
    shape = resolve(model)[0]
    lin = shape.linear_shapes()
    layer = replace(shape, layers=1)
    w = memory.weight_bytes(layer, "bf16")
    parts = {"one decoder layer (bf16)": w["linear"] + w["norms"]}
    if method is not None:
        parts["one sample's activations"] = memory.activation_bytes(shape, 1, seq_len)
    if method in ("gptq", "w8a8"):
        parts["GPTQ Hessians (fp32)"] = sum(4 * c * c for _, c in lin.values())
        parts["GPTQ work on the widest layer"] = max(4 * r * c + 8 * c * c for r, c in lin.values())
    elif method == "awq":
        width = 2 * shape.hidden + lin["o_proj"][1] + shape.intermediate
        parts["AWQ cached inputs"] = 2 * n_samples * seq_len * width
    embedding = memory.tensor_bytes(shape.vocab, shape.hidden, "bf16")
    host = memory.weight_bytes(shape, "bf16")["total"] + 2 * n_samples * seq_len * shape.hidden
    return {"peak": max(sum(parts.values()), embedding + parts.get("one sample's activations", 0)), "parts": parts,
            "host": host, "method": method, "samples": (n_samples, seq_len)}


def default_method(sch: Scheme) -> str | None:
    """The calibration llm-compressor's examples use for a scheme: GPTQ for integer weights (SmoothQuant + GPTQ
    for W8A8), round-to-nearest with observed scales for FP4, nothing for FP8 dynamic (data-free)."""
    if sch.gguf or sch.name in ("fp16", "bf16", "fp8"):
        return None
    if sch.name.startswith(("nvfp4", "mxfp4")):
        return "rtn"
    return "w8a8" if sch.name == "w8a8" else "gptq"


# ----------------------------------------------------------------------------------------------- plan

@dataclass(frozen=True)
class Plan:
    """What one GPU of ``gpus`` holds for ``model`` in ``scheme`` at ``context`` x ``batch`` (bytes)."""

    model: str
    shape: ModelShape
    scheme: Scheme
    gpus: int
    gpu_memory_gib: float
    context: int
    batch: int
    per_gpu: dict             # {"weights", "KV cache", "activations"} of the most loaded GPU
    budget: float             # usable bytes per GPU
    kv_per_token: float       # KV bytes per token on that GPU
    max_context: int          # largest context that fits at this batch (memory, capped by the model's)
    model_max_context: int | None
    fits: bool
    reason: str
    host: float = 0.0         # bytes kept in host RAM while serving (llama.cpp's token embedding)
    splits: tuple = ()
    layers_per_gpu: tuple = ()
    calibration: dict | None = field(default=None, compare=False)
    kv_bits: int = 16

    @property
    def tensor_parallel(self) -> int:
        return 1 if self.scheme.gguf else self.gpus

    @property
    def total(self) -> float:
        return sum(self.per_gpu.values())

    @property
    def engine(self) -> str:
        return "llama.cpp, layer split" if self.scheme.gguf else f"vLLM, --tensor-parallel-size {self.gpus}"

    def __str__(self) -> str:
        g = lambda b: f"{b / GIB:10.3f}"  # noqa: E731
        lines = [f"plan: {self.model} ({self.shape.n_params() / 1e9:.2f}B params), {self.scheme.name} weights, "
                 f"{self.scheme.activations} activations",
                 f"      {self.gpus} x {self.gpu_memory_gib:g} GiB GPU ({self.engine}), context {self.context} x "
                 f"batch {self.batch}, KV cache {self.kv_bits}-bit",
                 "", "per GPU (the most loaded one)        GiB"]
        for k, v in self.per_gpu.items():
            lines.append(f"  {k + (' (estimate)' if k == 'activations' else ''):32s}{g(v)}")
        lines += [f"  {'total':32s}{g(self.total)}   of {self.budget / GIB:.2f} usable "
                  f"({UTILIZATION:.0%} of {self.gpu_memory_gib:g})"]
        if self.host:
            lines.append(f"  {'in host RAM (token embedding)':32s}{g(self.host)}")
        cap = f", the model's limit {self.model_max_context}" if self.model_max_context else ""
        lines += ["", f"fits: {'yes' if self.fits else 'NO'} - {self.reason}",
                  f"largest context at batch {self.batch}: {self.max_context} tokens "
                  f"(KV cache {self.kv_per_token / 2**10:.1f} KiB per token per GPU{cap})"]
        if self.splits and self.gpus == 1:
            lines += ["", "one GPU: every matrix whole (--tensor-parallel-size 1)"]
        elif self.splits:
            lines += ["", f"tensor-parallel split (vLLM, {self.gpus} ranks):",
                      f"  {'matrix':14s}{'split':40s}{'full':>16s}{'per GPU':>16s}"]
            lines += [f"  {n:14s}{how:40s}{'x'.join(map(str, a)):>16s}{'x'.join(map(str, b)):>16s}"
                      for n, how, a, b in self.splits]
        if self.layers_per_gpu:
            lines += ["", f"layer split (llama.cpp -ngl 99, equal --tensor-split): blocks per GPU "
                          f"{list(self.layers_per_gpu)}, output layer on GPU {self.gpus - 1}, token embedding on the CPU"]
        c = self.calibration
        if c:
            n, length = c["samples"]
            how = f"{c['method']}, {n} x {length} tokens" if c["method"] else "data-free"
            lines += ["", f"calibration (llm-compressor sequential pipeline, {how}, "
                          f"one GPU): peak {c['peak'] / GIB:.2f} GiB "
                          f"({'fits' if c['peak'] <= self.budget else 'does NOT fit'} one GPU); host RAM "
                          f"{c['host'] / GIB:.1f} GiB"]
            lines += [f"  {k:32s}{g(v)}" for k, v in c["parts"].items()]
        return "\n".join(lines)


def _positive(name, value, kind=int):  # a count or a size, refused with the bad value otherwise
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int) or value <= 0:
        raise ValueError(f"{name} must be a positive {'number' if kind is float else 'whole number'}, got {value!r}")
    return value


def plan(model_or_shape, gpus: int = 1, gpu_memory_gb: float = 24.0, context: int = 4096, batch: int = 1,
         scheme="w4a16", kv_bits: int = 16, method: str | None = "auto", calibration=(512, 2048)) -> Plan:
    """Weights, KV cache and activations per GPU, whether they fit, and the calibration peak.

    ``model_or_shape``: a preset (``llama-3.1-8b``, ``llama-2-13b``, ...), a hub id named like one, a
    ``config.json`` path or checkpoint folder, a config dict, a ModelShape.
    ``scheme``: see :data:`SCHEME_HELP`. ``method``: the calibration algorithm ("auto": GPTQ for W4A16/W8A16,
    SmoothQuant + GPTQ for W8A8, none for fp8/fp16/GGUF; or "gptq", "awq", "rtn", None). Raises
    :class:`PlanError` with vLLM's reason where vLLM would refuse the split.
    """
    for name, v in (("gpus", gpus), ("context", context), ("batch", batch), ("kv_bits", kv_bits)):
        _positive(name, v)
    _positive("gpu_memory_gb", gpu_memory_gb, float)
    shape, name, model_max = resolve(model_or_shape)
    sch = parse_scheme(scheme)
    budget = UTILIZATION * gpu_memory_gb * GIB
    host, splits, per_layer = 0.0, (), ()
    if sch.gguf:
        tb = gguf_tensor_bytes(shape, sch.weights)
        devs = layer_devices(shape.layers, gpus)
        out_names = ["token_embd.weight" if shape.tied else "output.weight", "output_norm.weight"]
        weights = [sum(b for t, b in tb.items() if t.startswith("blk.") and devs[int(t.split(".")[1])] == d)
                   + (sum(tb[t] for t in out_names) if devs[-1] == d else 0) for d in range(gpus)]
        per_layer = tuple(devs[:-1].count(d) for d in range(gpus))
        kv_layer = memory.kv_bytes_per_token(replace(shape, layers=1), kv_bits)
        kv_tok = [n * kv_layer for n in per_layer]
        # one -ub of tokens attending to itself (the server computes logits for each sequence's last token only)
        act = memory.activation_bytes(shape, 1, LLAMA_UBATCH, attention="eager")
        host = tb["token_embd.weight"]
        worst = max(range(gpus), key=lambda d: weights[d] + kv_tok[d] * context * batch)
        w, kv_per_token = weights[worst], kv_tok[worst]
    else:
        rank = rank_shape(shape, gpus)
        group_alignment(shape, sch, gpus)
        splits = tuple(tp_splits(shape, gpus))
        w = memory.weight_bytes(rank, sch.weights, embed_spec="bf16")["total"]
        kv_per_token = memory.kv_bytes_per_token(rank, kv_bits)
        # vLLM's profiling run: max_num_batched_tokens of `vllm serve` (8192 on >= 70 GiB GPUs, else 2048)
        act = memory.activation_bytes(rank, 1, 8192 if gpu_memory_gb >= 70 else 2048)
    kv = kv_per_token * context * batch
    free = budget - w - act
    mem_ctx = max(0, int(free // (kv_per_token * batch)) // BLOCK_TOKENS * BLOCK_TOKENS) if free > 0 else 0
    max_ctx = min(mem_ctx, model_max) if model_max else mem_ctx
    if w + act > budget:
        reason = (f"the weights alone need {w / GIB:.2f} GiB per GPU (+ {act / GIB:.2f} GiB activations), more than "
                  f"the {budget / GIB:.2f} GiB usable of {gpu_memory_gb:g} GiB: use more GPUs, a smaller scheme or "
                  f"bigger GPUs")
    elif w + act + kv > budget:
        flags = ("-c or -np, use -ctk q8_0 -ctv q8_0 -fa on" if sch.gguf else   # each engine's own KV flags
                 "--max-model-len or --max-num-seqs, use --kv-cache-dtype fp8")
        reason = (f"the KV cache for {context} tokens x {batch} sequences needs {kv / GIB:.2f} GiB per GPU, but "
                  f"{free / GIB:.2f} GiB are left after weights and activations: at batch {batch} the largest "
                  f"context is {mem_ctx} tokens (lower {flags}, or add GPUs)")
    elif model_max and context > model_max:
        reason = f"memory would allow it, but the model has {model_max} positions: use a context <= {model_max}"
    else:
        reason = f"{(w + act + kv) / GIB:.2f} GiB of the {budget / GIB:.2f} GiB usable per GPU"
    fits = w + act + kv <= budget and not (model_max and context > model_max)
    method = default_method(sch) if method == "auto" else method
    calib = None if sch.gguf or sch.name in ("fp16", "bf16") else calibration_peak(shape, method, *calibration)
    return Plan(name, shape, sch, gpus, float(gpu_memory_gb), context, batch,
                {"weights": w, "KV cache": kv, "activations": act}, budget, kv_per_token, max_ctx, model_max,
                fits, reason, host, splits, per_layer, calib, kv_bits)


__all__ = ["Plan", "PlanError", "Scheme", "SCHEME_HELP", "plan", "parse_scheme", "default_method", "resolve",
           "rank_shape", "valid_tp_sizes", "tp_splits", "group_alignment", "gguf_tensor_bytes", "layer_devices", "calibration_peak"]
