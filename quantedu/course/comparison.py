"""Notebook 07's comparison table, re-measured here: one :class:`Row` per (format, engine), every cell a real run.

Quality is a :class:`quantedu.evaluate.QualityReport` for **every** row, against the session's baseline on the
same windows (``session.baseline("eval")``: perplexity, % over the baseline with its interval, mean KLD +/-,
same top token +/-), and the verdict of the one rule (:mod:`quantedu.verdict`):

* **llama.cpp rows** (:func:`gguf_row`, and :func:`fp4_row` for the course's own MXFP4/NVFP4 files): llama.cpp's own full-vocabulary logits on the baseline's very windows
  (:func:`quantedu.engines.llama_cpp.quality.measure`), compared in torch.
* **vLLM rows** (:func:`checkpoint_row`, :func:`dense_row`, then :func:`add_vllm`): vLLM returns only the top-k
  log-probabilities of a prompt, not the whole distribution a KL divergence needs. So the KLD is computed in
  torch on the exact checkpoint vLLM serves (read back by the package's reader), and vLLM's served
  log-probability of every scored token is checked against torch's on the same checkpoint: their perplexities
  must agree within :data:`SERVED_TOLERANCE` (bf16 kernels against fp32), else the row says so.
* the **baseline row** (:func:`baseline_row`): the model itself in torch, the zero every other row is measured from.

Speed only from a real kernel, 1 thread: llama.cpp (llama-cpp-python) for GGUF files, vLLM for its checkpoints;
``speed[hardware][clients]`` is decode tokens/s of one request (``"1"``) or total tokens/s of ``K`` requests served
together (vLLM's continuous batching in its engine; llama.cpp's ``llama-server -np K`` where its tools are built).
Where no engine ran, the cell is "n/a on this hardware". Everything is cached (:mod:`quantedu.artifacts`), keyed by
the settings, the baseline's identity and the code's fingerprint, so a second run takes seconds.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import artifacts
from ..export.read import loaded_bytes

SERVED_TOLERANCE = 0.01  # |ppl_vLLM / ppl_torch - 1| on the same checkpoint: bf16 kernels vs fp32, measured < 0.5%
CLIENTS = (1, 8)         # one user; many users served together
MAX_TOKENS = 64          # generated per request when timing decode
SPEED_REPEATS = 3        # one-request timings per row: the cell shows their median and range
PROMPT = "The capital of France is"
NA = "n/a on this hardware"
ACT_ORDER_FORMAT = "GPTQ act-order, dynamic (desc_act)"  # vllm_probe.format_exports' label of a desc_act: true export
_VERSION = 4


@dataclass
class Row:
    """One line of the table (see the module docstring)."""

    variant: str                  # "GGUF Q4_K_M", "GPTQ W4 asym g64", ...
    format: str                   # what the guide's engine table knows: fp16, gptq, awq, gguf
    engine: str                   # the engine that serves it: "llama.cpp", "vLLM" or "torch" (the baseline)
    report: object                # QualityReport on the "eval" windows
    memory_mb: float              # the weights the engine loads (MB = 1e6 bytes)
    quant_s: float = math.nan     # quantization wall time (one thread on a CPU)
    speed: dict = field(default_factory=dict)   # {"cpu": {"1": tok/s, "8": tok/s}}
    kernel: str = ""
    checkpoint: str | None = None  # what vLLM serves (a folder or a hub id)
    served: dict | None = None     # vLLM's own log-probabilities against torch's, or why it refused
    heldout: object = None         # QualityReport on the "heldout" windows (calibrated methods)
    coverage: dict | None = None   # GGUF: matrices that got the mix's type, other K-quants, fallbacks
    label: str = ""
    note: str = ""

    def tok_s(self, hardware: str = "cpu", clients: int = 1) -> float:
        return float(self.speed.get(hardware, {}).get(str(clients), math.nan))

    def tok_s_range(self, hardware: str = "cpu", clients: int = 1) -> tuple[float, float] | None:
        """The lowest and highest of the repeated timings (``"<clients>_runs"``), or None if timed once."""
        runs = self.speed.get(hardware, {}).get(f"{clients}_runs") or []
        return (min(runs), max(runs)) if len(runs) > 1 else None


# --- cached reports -----------------------------------------------------------------------------------------

def _save_report(report, path: Path) -> None:
    np.savez(path / f"{report.name.replace('/', '_')}.npz", **report.per_token)
    meta = {k: getattr(report, k) for k in ("name", "baseline", "seq_len", "score_from", "seconds")}
    (path / f"{report.name.replace('/', '_')}.json").write_text(json.dumps({**meta, "baseline_id": report.baseline_id}))


def _load_report(path: Path, name: str):
    from ..evaluate import QualityReport
    meta = json.loads((path / f"{name.replace('/', '_')}.json").read_text())
    with np.load(path / f"{name.replace('/', '_')}.npz") as z:
        per_token = {k: z[k] for k in z.files}
    return QualityReport(meta["name"], meta["baseline"], meta["seq_len"], meta["score_from"],
                         tuple(meta["baseline_id"]), meta["seconds"], per_token)


def _cached(kind_key: str, names: list[str], compute) -> tuple[dict, list]:
    """``compute() -> (record, [QualityReport...])`` once per key: the record and reports come back from the cache."""
    def build(tmp: Path) -> None:
        record, reports = compute()
        for r in reports:
            _save_report(r, tmp)
        (tmp / "row.json").write_text(json.dumps(record, default=float))

    folder = artifacts.cached_dir("comparison", kind_key, build)
    return json.loads((folder / "row.json").read_text()), [_load_report(folder, n) for n in names]


def _key(*parts) -> str:
    return artifacts.cache_key(*parts, _VERSION)


def dense_target(session) -> str:
    """What vLLM serves for the unquantized row (and takes as ``--tokenizer`` beside a GGUF file): the session
    model's own checkpoint folder, or its hub id."""
    return str(getattr(session.model, "name_or_path", "") or session.model_name)


# --- rows ---------------------------------------------------------------------------------------------------

def baseline_row(session) -> Row:
    """The session model itself in torch: KLD 0, the reference of every other row (no engine kernel: no speed).
    Its report reuses the baseline's own log-probabilities (no second forward pass)."""
    base = session.baseline("eval")
    own = iter(base.logprobs)
    name = f"{session.dtype_name} (baseline)"
    report = base.score(lambda _row: next(own), name)
    params = {id(p): p for p in session.model.parameters()}.values()  # tied embeddings counted once
    return Row(name, "fp16", "torch", report, sum(p.numel() * p.element_size() for p in params) / 1e6,
               note="the reference: quality 0 by definition; no engine kernel, so no speed")


def _llama_server_throughput(path, clients: int) -> float | None:
    """Total tokens/s of ``clients`` requests served together by ``llama-server -np clients`` (1 thread), or
    None where llama.cpp's tools are not built (a Colab or pip-only install)."""
    from ..engines import llama_cpp as lt
    from ..engines.load import by_concurrency, sweep
    if not lt.available():
        return None
    with lt.start_llama_server(path, parallel=clients, n_threads=1, ctx=clients * 256) as s:
        df = sweep(s, (clients,), n_requests=clients, max_tokens=MAX_TOKENS, prompts=[PROMPT])
    return float(by_concurrency(df).throughput_tok_s.iloc[0])


def gguf_row(session, mix: str, imatrix: dict | None = None, heldout: bool = False, many: bool = True) -> Row:
    """A GGUF of the session model made by llama.cpp's quantizer (``mix``: ``F16`` or a ``llama-quantize`` type,
    optionally with an importance matrix), measured in llama.cpp (:func:`_gguf_file_row`)."""
    from ..engines.llama_cpp import bindings as llama
    from ..gguf.imatrix import imatrix_digest

    src = session.gguf_source()
    variant = ("FP16" if mix == "F16" else f"GGUF {mix}") + (" +imatrix" if imatrix is not None else "")
    key = ("gguf-row", mix, str(src), src.stat().st_size, imatrix_digest(imatrix) if imatrix else "",
           artifacts.code_fingerprint(llama))
    return _gguf_file_row(session, variant, mix, key, lambda path: llama.quantize_file(src, path, mix, imatrix, nthread=1),
                          heldout, many)


def fp4_row(session, qtype: str, heldout: bool = False, many: bool = False) -> Row:
    """The session model with every linear layer of its blocks in ``qtype`` (``MXFP4`` or ``NVFP4``), written by
    the course's own quantizers and GGUF writer (:func:`quantedu.gguf.fp4_files.write_fp4_gguf`, notebook 08:
    bytes equal to ggml's), measured in llama.cpp like every GGUF row (:func:`_gguf_file_row`)."""
    from ..gguf import fp4_files, io
    key = ("fp4-row", qtype.upper(), fp4_files.weights_digest(io.model_tensors(session.model)),
           artifacts.code_fingerprint(fp4_files, io.write_gguf))
    return _gguf_file_row(session, f"GGUF {qtype.upper()} (course)", qtype.upper(), key,
                          lambda path: fp4_files.write_fp4_gguf(session.model, path, qtype), heldout, many)


def _gguf_file_row(session, variant: str, mix: str, key: tuple, make, heldout: bool, many: bool) -> Row:
    """A GGUF file written by ``make(path)`` (timed: the quantization time), measured in llama.cpp: size,
    full-logit quality on the eval windows (and the held-out ones), decode speed (1 thread) and, where the tools
    are built, ``llama-server``'s throughput with many clients (``many=False``: not measured, the cell says so).
    The file itself is not kept (the numbers are); cached by ``key``, the baselines and the measuring code."""
    from ..engines.llama_cpp import quality
    from ..gguf.io import contents
    from ..gguf.mixes import type_coverage

    bases = {"eval": session.baseline("eval"), **({"heldout": session.baseline("heldout")} if heldout else {})}
    key = _key(*key, [b.id for b in bases.values()], CLIENTS if many else CLIENTS[:1],
               artifacts.code_fingerprint(quality, _gguf_file_row, type_coverage))
    names = [f"{variant} [{p}]" for p in bases]

    def compute():
        import tempfile
        with tempfile.TemporaryDirectory(prefix="quantedu-07-") as tmp:
            path = Path(tmp) / f"{mix}.gguf"
            t0 = time.perf_counter()
            make(path)
            quant_s = time.perf_counter() - t0
            m = quality.measure(path, bases, variant, n_threads=1, n_tokens=MAX_TOKENS, repeats=SPEED_REPEATS)
            reports = [_named(m.reports[p], n) for p, n in zip(bases, names)]
            speed = {"1": m.tokens_per_s, "1_runs": m.speed_runs}
            served = _llama_server_throughput(path, CLIENTS[-1]) if many else None
            if served is not None:
                speed[str(CLIENTS[-1])] = served
            record = {"memory_mb": path.stat().st_size / 1e6, "quant_s": quant_s if mix != "F16" else math.nan,
                      "speed": {"cpu": speed}, "bits": m.sizes["linear_bits_per_weight"],
                      "coverage": None if mix == "F16" else type_coverage(session.model, mix, contents(path).tensors)}
        return record, reports

    rec, reports = _cached(key, names, compute)
    return Row(variant, "fp16" if mix == "F16" else "gguf", "llama.cpp", _named(reports[0], variant), rec["memory_mb"],
               rec["quant_s"], rec["speed"], kernel=f"llama.cpp CPU ({'F16' if mix == 'F16' else mix})",
               heldout=_named(reports[1], variant) if heldout else None, coverage=rec["coverage"],
               label=f"{rec['bits']:.2f} bits/weight in the blocks' matrices")


def _named(report, name: str):
    import dataclasses
    return dataclasses.replace(report, name=name)


def _torch_reports(session, key: str, variant: str, make_model, heldout: bool) -> list:
    bases = {"eval": session.baseline("eval"), **({"heldout": session.baseline("heldout")} if heldout else {})}
    names = [f"{variant} [{p}]" for p in bases]

    def compute():
        model = make_model()
        return {}, [b.compare(model, n, session.tokenizer) for n, b in zip(names, bases.values())]

    _, reports = _cached(_key(key, [b.id for b in bases.values()]), names, compute)
    return [_named(r, variant) for r in reports]


def checkpoint_row(session, ckpt, heldout: bool = True) -> Row:
    """A GPTQ/AWQ/W8A8 :class:`~quantedu.course.checkpoints.Checkpoint`: quality in torch on the exact checkpoint
    (read back from its files: :meth:`~quantedu.course.checkpoints.Checkpoint.model`), on the eval windows and the
    held-out ones; the engine that serves it is vLLM (:func:`add_vllm` fills its speed, kernel and served check,
    or says why it cannot here)."""
    stamp = (ckpt.path / "model.safetensors").stat().st_mtime_ns
    reports = _torch_reports(session, f"ckpt-row-{ckpt.path.parent.name}-{stamp}", ckpt.label, ckpt.model, heldout)
    return Row(ckpt.label, ckpt.method, "vLLM", reports[0], loaded_mb(ckpt.path), ckpt.wall_s,
               checkpoint=str(ckpt.path), heldout=reports[1] if heldout else None,
               label=f"calibrated on {ckpt.calibration}")


def dense_row(session, dtype: str | None = None) -> Row:
    """The unquantized model as vLLM serves it (bf16 on a CPU, fp16 on a GPU): quality in torch on the model cast
    to that dtype; :func:`add_vllm` serves the session model's own checkpoint."""
    import copy

    import torch
    dtype = dtype or ("float16" if session.on_gpu else "bfloat16")
    name = {"bfloat16": "BF16", "float16": "FP16"}[dtype]
    target = dense_target(session)
    reports = _torch_reports(session, f"dense-row-{target}-{dtype}", name,
                             lambda: copy.deepcopy(session.model).to(getattr(torch, dtype)), heldout=False)
    mb = loaded_mb(target, dtype)
    return Row(name, "fp16", "vLLM", reports[0], mb if mb == mb else 2 * session.model.num_parameters() / 1e6,
               checkpoint=target, note=f"the checkpoint vLLM serves, in {dtype}")


def loaded_mb(model, dtype: str = "bfloat16") -> float:
    """:func:`quantedu.export.read.loaded_bytes` in MB (10^6 B), as the table prints it."""
    return loaded_bytes(model, dtype) / 1e6


# --- vLLM ---------------------------------------------------------------------------------------------------

def _served_check(row: Row, result: dict) -> dict:
    """vLLM's own log-probabilities of the scored tokens against torch's on the same checkpoint."""
    if result.get("error"):
        from ..engines.vllm import reason
        return {"ok": False, "error": reason(result["error"])}
    served = -np.asarray(result["token_logprobs"], dtype=np.float64)
    torch_nll = row.report.per_token["nll"]
    ratio = math.exp(served.mean() - torch_nll.mean()) - 1
    return {"ok": abs(ratio) <= SERVED_TOLERANCE, "ppl_ratio": ratio,
            "mean_abs_dnll": float(np.abs(served - torch_nll).mean())}


def add_vllm(rows: list[Row], session, dynamic_act_order: bool = True) -> dict:
    """Serve every row that has a ``checkpoint`` with vLLM's kernels (one vLLM process, 1 thread on a CPU): its
    speed, kernel and served check (:data:`SERVED_TOLERANCE`). Returns ``{"vllm", "device"}`` or, where vLLM
    cannot run here, ``{"missing": why}`` (those rows keep their torch quality and show "n/a" speeds).

    ``dynamic_act_order``: also ask vLLM to load a GPTQ checkpoint with dynamic act-order (``desc_act: true``),
    a tiny one from :func:`quantedu.engines.vllm_probe.format_exports`: ``info["act_order"]`` is served or refused."""
    from ..engines import vllm
    try:
        python = vllm.require_python()
        info = vllm.probe(python)
    except vllm.VLLMError as exc:
        for r in rows:
            if r.checkpoint:
                r.note = "vLLM not installed here: speed n/a, quality from torch on the checkpoint vLLM would serve"
        return {"missing": str(exc).splitlines()[0]}
    hw = "cpu" if info["device"] == "cpu" else "gpu"
    dtype = "bfloat16" if hw == "cpu" else "half"
    windows = session.windows("eval")
    prompt = session.tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    speed = {"prompt": prompt, "max_tokens": MAX_TOKENS, "clients": list(CLIENTS), "repeats": SPEED_REPEATS}
    digest = hashlib.sha256(windows.numpy().tobytes()).hexdigest()[:16]
    todo, keys = {}, {}
    for r in [r for r in rows if r.checkpoint]:
        stamp = Path(r.checkpoint).stat().st_mtime_ns if Path(r.checkpoint).exists() else 0
        keys[r.variant] = _key("vllm-row", r.checkpoint, stamp, dtype, info["vllm"], info["device"], speed, digest)
        if not artifacts.is_complete(artifacts.entry_dir("comparison", keys[r.variant])):
            todo[r.variant] = {"model": r.checkpoint, "per_token": True, "speed": speed}
    keys["__act_order__"] = _key("vllm-act-order", info["vllm"], info["device"], python)
    ask_act_order = dynamic_act_order and not artifacts.is_complete(artifacts.entry_dir("comparison", keys["__act_order__"]))
    if todo or ask_act_order:
        import tempfile
        with tempfile.TemporaryDirectory(prefix="quantedu-07-") as tmp:
            if ask_act_order:
                todo["__act_order__"] = _act_order_spec(Path(tmp))
            got = vllm.vllm_perplexities(todo, windows, dtype=dtype, python=python,
                                         cpu_threads=1 if hw == "cpu" else None)
        for variant, res in got.items():
            if variant == "__act_order__":
                res = {"served": not res.get("error"), "why": vllm.reason(res["error"]) if res.get("error") else ""}
            keep = json.dumps({k: v for k, v in res.items() if k != "shards"})
            artifacts.cached_dir("comparison", keys[variant], lambda d, keep=keep: (d / "result.json").write_text(keep))
    results = {v: _result(k) for v, k in keys.items() if artifacts.is_complete(artifacts.entry_dir("comparison", k))}
    for r in [r for r in rows if r.checkpoint]:
        res = results[r.variant]
        r.served = _served_check(r, res)
        if res.get("error"):
            r.note = f"vLLM refused it here: {r.served['error']}"
            continue
        r.speed[hw] = res["speed"]
        kernels = [k.split(" -> ")[-1] for k in res.get("kernels") or {} if " -> " in k]
        r.kernel = "vLLM " + (", ".join(dict.fromkeys(kernels)) or "dense")
        r.memory_mb = (res["reported_bytes"] / 1e6 if res.get("reported_bytes") else loaded_mb(r.checkpoint, dtype))
    return {"vllm": info["vllm"], "device": info["device"], "hardware": hw,
            "act_order": results.get("__act_order__") if dynamic_act_order else None}


def _result(key: str) -> dict:
    return json.loads((artifacts.entry_dir("comparison", key) / "result.json").read_text())


def _act_order_spec(folder: Path) -> dict:
    """A tiny GPTQ checkpoint with dynamic act-order (``desc_act: true``) and its windows, for vLLM to load."""
    import contextlib
    import io

    from ..calibration import inconclusive
    from ..engines.vllm_probe import format_exports
    # its quality is not the question (only whether vLLM loads the layout): starved calibration is fine, and quiet
    with inconclusive("a tiny probe checkpoint: only its layout matters"), contextlib.redirect_stdout(io.StringIO()):
        specs, tiny = format_exports(folder)
    return {**{k: v for k, v in specs[ACT_ORDER_FORMAT].items() if k != "torch_ppl"}, "windows": tiny.tolist()}


# --- the table ----------------------------------------------------------------------------------------------

def table(rows: list[Row], hardware: str = "cpu"):
    """The table as the notebook shows it: quality columns (:func:`quantedu.course.views.quality_table`, rounded to
    the noise, with the rule's verdict against the baseline) beside engine, memory, speed and quantization time."""
    import pandas as pd

    from .views import quality_table
    q = quality_table([r.report for r in rows])
    q["mean KLD"] = [_kld_cell(r.report.kld, cell) for r, cell in zip(rows, q["mean KLD"])]
    extra = pd.DataFrame([{
        "engine": ran(r), "MB": round(r.memory_mb, 1),
        **{f"tok/s, {k} user{'s' * (k > 1)}": speed_cell(r, hardware, k) for k in CLIENTS},
        "quantize s": "-" if math.isnan(r.quant_s) else f"{r.quant_s:.0f}"} for r in rows],
        index=q.index)
    return pd.concat([extra[["engine", "MB"]], q, extra.drop(columns=["engine", "MB"])], axis=1)


def _kld_cell(kld, cell: str) -> str:
    """A KLD far below 0.001 (a 16-bit row) in powers of ten: ``5.4e-06 ± 2e-07``, not seven decimals."""
    if not 0 < kld.se < kld.mean < 1e-3:
        return cell
    digits = max(0, math.floor(math.log10(kld.mean)) - math.floor(math.log10(kld.se)))
    return f"{kld.mean:.{digits}e} ± {kld.se:.0e}"


def ran(row: Row) -> str:
    """The engine that really produced the row's numbers: a vLLM row that vLLM did not serve here (not installed,
    or it refused the checkpoint) was measured in torch only, on the checkpoint vLLM would serve."""
    if row.engine == "vLLM" and not row.kernel:
        return "torch only: vLLM did not run"
    return row.engine


def speed_cell(row: Row, hardware: str, clients: int) -> str:
    """A speed as the table prints it: the median of the repeated timings and their range, "-" for the baseline,
    "not measured" or "n/a on this hardware"."""
    v, span = row.tok_s(hardware, clients), row.tok_s_range(hardware, clients)
    if v == v:
        return f"{v:.0f}" + (f" ({span[0]:.0f}-{span[1]:.0f})" if span else "")
    return "-" if row.engine == "torch" else ("not measured" if row.speed.get(hardware) else NA)


__all__ = ["Row", "CLIENTS", "NA", "SERVED_TOLERANCE", "baseline_row", "gguf_row", "fp4_row", "checkpoint_row",
           "dense_row", "add_vllm", "loaded_mb", "ran", "speed_cell", "table"]
