"""Runs inside the seed-libraries interpreter (``.venv-seed``), started by :mod:`quantedu.engines.seed_libs`.

A standalone script: it imports only the standard library and that environment's packages (optimum,
GPTQModel, AutoAWQ, AutoGPTQ, transformers, torch); it has no quantedu. JSON in, JSON out.

    python _seed_worker.py probe OUT.json        each library: version, imports or not, the real error, needs
    python _seed_worker.py gptq JOB.json OUT.json   optimum's GPTQQuantizer on a local checkpoint (the seed's call)
    python _seed_worker.py awq JOB.json OUT.json    AutoAWQ's quantize on a local checkpoint (the seed's call)
    python _seed_worker.py selftest                 `make seed-libs`'s check: probe + both, fixed, on a tiny Llama

A library's failure is a result, not a crash: ``{"ok": false, "stage": ..., "error": "Type: message", "where":
file:line in the library's source, "traceback": ...}``. Only a broken job (bad JSON, missing files) exits non-zero.
"""
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path

# Run as a script from quantedu/, Python puts this folder first on sys.path, where quantedu/gguf would shadow
# the real gguf package. Only the seed environment's packages belong here.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

# (distribution, module imported, what the course uses it for)
LIBRARIES = [
    ("optimum", "optimum.gptq", "GPTQQuantizer: the seed's GPTQ snippet"),
    ("GPTQModel", "gptqmodel", "the GPTQ engine optimum 2.x calls (kernels, packing)"),
    ("autoawq", "awq", "AutoAWQForCausalLM: the seed's AWQ snippet"),
    ("auto-gptq", "auto_gptq", "AutoGPTQ: named by the course's design (archived)"),
]


def _write(path, data):
    with open(path, "w") as f:
        json.dump(data, f, indent=1, default=str)


def _error(exc):
    """``Type: message`` of an exception, and where in the library it was raised (the innermost frame)."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else None
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return {"error": text[-3000:], "error_type": type(exc).__name__, "where": where,
            "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-6000:]}


def _version(dist):
    import importlib.metadata as md
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def _unmet(dist):
    """Requirements ``dist`` declares (no extras) that this environment does not satisfy, from its metadata."""
    import importlib.metadata as md

    from packaging.requirements import Requirement
    out = []
    for text in md.requires(dist) or []:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        have = _version(req.name)
        if have is None:
            out.append(f"{req} (not installed)")
        elif req.specifier and not req.specifier.contains(have, prereleases=True):
            out.append(f"{req} (installed: {have})")
    return out


def _cuda_gates(module):
    """Lines of a package's source that refuse to run without CUDA (``if not torch.cuda.is_available(): raise``),
    read from the installed files: ``["path:line: raise ...", ...]``."""
    import importlib.util
    spec = importlib.util.find_spec(module.split(".")[0])
    if spec is None or not spec.submodule_search_locations:
        return []
    gates = []
    for root in spec.submodule_search_locations:
        for path in sorted(Path(root).rglob("*.py")):
            lines = path.read_text(errors="replace").splitlines()
            for i, line in enumerate(lines):
                if "not torch.cuda.is_available()" in line:
                    for j in range(i + 1, min(i + 3, len(lines))):
                        if lines[j].strip().startswith("raise"):
                            gates.append(f"{path}:{j + 1}: {lines[j].strip()}")
                            break
    return gates


def probe(out):
    import importlib
    import warnings

    import torch
    info = {"python": sys.executable, "torch": torch.__version__, "cuda": torch.cuda.is_available(),
            "transformers": _version("transformers"), "libraries": {}}
    for dist, module, role in LIBRARIES:
        row = {"dist": dist, "module": module, "role": role, "version": _version(dist), "imports": False}
        if row["version"] is None:
            row["error"] = f"{dist} is not installed in this environment"
        else:
            t0 = time.perf_counter()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # AutoAWQ's deprecation notice, torch.jit's
                    importlib.import_module(module)
                row["imports"] = True
            except Exception as exc:  # noqa: BLE001 - the real failure is the result
                row.update({k: v for k, v in _error(exc).items() if k != "traceback"})
            row["import_s"] = round(time.perf_counter() - t0, 2)
            row["unmet_requirements"] = _unmet(dist)
            if not row["imports"]:
                row["cuda_gates"] = _cuda_gates(module)
        info["libraries"][dist] = row
    _write(out, info)
    return info


# ------------------------------------------------------------------------------------------------ helpers

def _tokenizer(model_dir):
    from transformers import AutoTokenizer
    if not any((Path(model_dir) / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        return None
    return AutoTokenizer.from_pretrained(model_dir)


def _nll(model, windows):
    """Summed next-token NLL of each window through the library's own modules (its kernels), as
    quantedu.evaluate.window_nll defines it."""
    import torch
    import torch.nn.functional as F
    out = []
    with torch.no_grad():
        for w in windows:
            ids = torch.tensor([w])
            logits = model(ids, use_cache=False).logits.float()
            out.append(F.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="sum").item())
    return out


def _score(result, model, windows):
    if not windows:
        return
    try:
        nll = _nll(model, windows)
        result["library_nll"] = nll
        result["library_ppl"] = math.exp(sum(nll) / sum(len(w) - 1 for w in windows))
    except Exception as exc:  # noqa: BLE001 - a kernel that cannot run the model is a result too
        result["library_eval_error"] = _error(exc)["error"]


def _dump(path, weights):
    from safetensors.torch import save_file
    save_file({k: v.detach().float().contiguous() for k, v in weights.items()}, path)


def _failed(result, stage, exc):
    result.update(ok=False, stage=stage, **_error(exc))
    return result


# --------------------------------------------------------------------------------------- optimum GPTQ

def gptq(job):
    """The seed's GPTQ snippet on a local checkpoint: ``GPTQQuantizer(bits=4, group_size=128, desc_act=True,
    damp_percent=0.01, dataset=...)``, ``quantize_model(model, tokenizer)``, then the seed's
    ``quantized_model.save_pretrained(dir)`` (or optimum's own ``quantizer.save(model, dir)``).
    ``fix``: add ``act_group_aware=False`` (optimum's default ``True`` contradicts ``desc_act=True``)."""
    import torch
    from optimum.gptq import GPTQQuantizer
    from transformers import AutoModelForCausalLM

    settings = {"bits": job.get("bits", 4), "group_size": job["group_size"], "desc_act": True, "damp_percent": 0.01}
    if job["fix"]:
        settings["act_group_aware"] = False
    if job.get("backend"):  # GPTQModel's kernel choice (default "auto": the fastest that claims the layers)
        settings["backend"] = job["backend"]
    calib = job["calibration"]
    # a text per sample (what the seed passes, tokenized by optimum), or token ids as (1, L) rows
    data = calib if isinstance(calib[0], str) else [{"input_ids": [w], "attention_mask": [[1] * len(w)]} for w in calib]
    result = {"ok": True, "settings": settings, "n_samples": len(calib), "save": job.get("save", "save_pretrained")}
    t0 = time.perf_counter()
    try:
        quantizer = GPTQQuantizer(**settings, dataset=data)
    except Exception as exc:  # noqa: BLE001
        return _failed(result, "GPTQQuantizer(...)", exc)
    try:
        model = AutoModelForCausalLM.from_pretrained(job["model"], dtype=torch.float32).eval()
        tokenizer = _tokenizer(job["model"])
    except Exception as exc:  # noqa: BLE001
        return _failed(result, "from_pretrained", exc)
    t1 = time.perf_counter()
    try:
        model = quantizer.quantize_model(model, tokenizer)
    except Exception as exc:  # noqa: BLE001
        return _failed(result, "quantize_model", exc)
    result["quantize_s"] = time.perf_counter() - t1
    layers = {n: m for n, m in model.named_modules() if hasattr(m, "qweight") and hasattr(m, "dequantize_weight")}
    result["kernel"] = sorted({type(m).__name__ for m in layers.values()})
    _score(result, model, job.get("windows"))
    if job.get("dump"):  # GPTQModel's own dequantization of what it quantized: (in, out) -> (out, in)
        _dump(job["dump"], {n: m.dequantize_weight().t() for n, m in layers.items()})
    try:
        if result["save"] == "quantizer.save":
            quantizer.save(model, job["out"])
        else:
            model.save_pretrained(job["out"])
        if tokenizer is not None:
            tokenizer.save_pretrained(job["out"])
    except Exception as exc:  # noqa: BLE001
        return _failed(result, result["save"], exc)
    result["wall_s"] = time.perf_counter() - t0
    return result


# --------------------------------------------------------------------------------------------- AutoAWQ

BACKUP_BUG = "org_sd = {k: v.cpu() for k, v in module2inspect.state_dict().items()}"
BACKUP_FIX = "org_sd = {k: v.detach().clone() for k, v in module2inspect.state_dict().items()}"


def patch_awq_backup():
    """AutoAWQ 0.2.9's scale search (``AwqQuantizer._compute_best_scale``, awq/quantize/quantizer.py) backs up
    the block's weights with ``v.cpu()``, scales the weights in place (``fc.weight.mul_``) for each of 20 ratios
    and restores the backup. On a GPU ``.cpu()`` copies; on a CPU it returns the very same tensor, so the
    backup is scaled too and every ratio starts from the previous one's weights. The fix is that one line:
    ``.detach().clone()``. Done here by recompiling the method from its own source with the line replaced."""
    import inspect
    import textwrap

    from awq.quantize import quantizer as module
    method = module.AwqQuantizer._compute_best_scale
    lines, start = inspect.getsourcelines(method)
    hits = [i for i, line in enumerate(lines) if BACKUP_BUG in line]
    if len(hits) != 1:
        raise RuntimeError(f"AutoAWQ's weight backup line ({BACKUP_BUG}) was not found once in "
                           f"{inspect.getsourcefile(method)}; this AutoAWQ is not the one the fix was written for")
    source = textwrap.dedent("".join(lines)).replace(BACKUP_BUG, BACKUP_FIX)
    namespace = {}
    exec(compile(source, inspect.getsourcefile(method), "exec"), module.__dict__, namespace)  # noqa: S102
    module.AwqQuantizer._compute_best_scale = namespace["_compute_best_scale"]
    return {"file": inspect.getsourcefile(method), "line": start + hits[0], "was": BACKUP_BUG, "now": BACKUP_FIX}


def awq(job):
    """The seed's AWQ snippet on a local checkpoint: ``AutoAWQForCausalLM.from_pretrained(path)``,
    ``model.quantize(tokenizer, quant_config={"zero_point": True, "q_group_size": 128, "w_bit": 4,
    "version": "GEMM"})``, ``model.save_quantized(dir)``. The calibration set is given as token ids
    (``calib_data``, one of its documented forms) instead of the hub's pile-val, so it runs offline.
    ``fix``: :func:`patch_awq_backup` first."""
    import warnings

    warnings.simplefilter("ignore", DeprecationWarning)  # AutoAWQ's "deprecated" notice on import
    from awq import AutoAWQForCausalLM

    quant_config = {"zero_point": True, "q_group_size": job["group_size"], "w_bit": 4, "version": "GEMM"}
    windows = job["calibration"]
    result = {"ok": True, "quant_config": quant_config, "n_samples": len(windows)}
    t0 = time.perf_counter()
    if job["fix"]:
        result["patch"] = patch_awq_backup()
    try:
        model = AutoAWQForCausalLM.from_pretrained(job["model"])
        tokenizer = _tokenizer(job["model"])
    except Exception as exc:  # noqa: BLE001
        return _failed(result, "from_pretrained", exc)
    t1 = time.perf_counter()
    try:
        model.quantize(tokenizer, quant_config=quant_config, calib_data=windows, max_calib_samples=len(windows),
                       max_calib_seq_len=max(len(w) for w in windows))
    except Exception as exc:  # noqa: BLE001
        return _failed(result, "quantize", exc)
    result["quantize_s"] = time.perf_counter() - t1
    layers = {n: m for n, m in model.model.named_modules() if hasattr(m, "qweight") and hasattr(m, "qzeros")}
    result["kernel"] = sorted({type(m).__name__ for m in layers.values()})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Using naive (slow) implementation": no CUDA kernels on a CPU
        _score(result, model.model, job.get("windows"))
    if job.get("dump"):  # AutoAWQ's own unpacking and dequantization (awq/utils/packing_utils.py)
        import torch
        from awq.utils.packing_utils import dequantize_gemm, reverse_awq_order, unpack_awq
        dumped = {}
        for n, m in layers.items():
            codes, zeros = reverse_awq_order(*unpack_awq(m.qweight, m.qzeros, m.w_bit), m.w_bit)
            dumped[n] = dequantize_gemm(m.qweight, m.qzeros, m.scales, m.w_bit, m.group_size).t()
            dumped[f"{n}.codes"] = torch.bitwise_and(codes, 15).t()  # (out, in), as dequantize_gemm masks them
            dumped[f"{n}.zeros"] = torch.bitwise_and(zeros, 15).t()  # (out, n_groups)
        _dump(job["dump"], dumped)
    try:
        model.save_quantized(job["out"])
        if tokenizer is not None:
            tokenizer.save_pretrained(job["out"])
    except Exception as exc:  # noqa: BLE001
        return _failed(result, "save_quantized", exc)
    result["wall_s"] = time.perf_counter() - t0
    return result


# ------------------------------------------------------------------------------------------- selftest

def selftest():
    """Import every library; quantize a tiny random Llama with both snippets (fixed). On the first run on a
    machine GPTQModel compiles its CPU kernels (about a minute, cached by it in ~/.cache/gptqmodel)."""
    import tempfile

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    t0 = time.perf_counter()
    info = probe(os.devnull)
    for dist, row in info["libraries"].items():
        state = "imports" if row["imports"] else f"does not import: {row.get('error', '').splitlines()[0]}"
        print(f"  [seed-libs] {dist} {row['version']}: {state}", flush=True)
    broken = [d for d in ("optimum", "GPTQModel", "autoawq") if not info["libraries"][d]["imports"]]
    if broken:
        sys.exit(f"seed-libs self-test FAILED: {', '.join(broken)} do not import")
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=1,
                             num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256)
        LlamaForCausalLM(config).save_pretrained(f"{tmp}/tiny")
        g = torch.Generator().manual_seed(1)
        calib = torch.randint(0, 512, (2, 64), generator=g).tolist()
        for name, run in (("optimum GPTQ", gptq), ("AutoAWQ", awq)):
            t = time.perf_counter()
            r = run({"model": f"{tmp}/tiny", "out": f"{tmp}/{name[:3]}", "calibration": calib, "group_size": 128,
                     "fix": True, "windows": calib[:1]})
            if not r["ok"] or not math.isfinite(r.get("library_ppl", math.nan)):
                sys.exit(f"seed-libs self-test FAILED: {name}: {r.get('error') or r.get('library_eval_error')}")
            print(f"  [seed-libs] {name} (fixed) quantized a tiny Llama in {time.perf_counter() - t:.1f} s "
                  f"({', '.join(r['kernel'])})", flush=True)
    print(f"seed-libs self-test ok ({time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command == "probe":
        probe(sys.argv[2])
    elif command in ("gptq", "awq"):
        job = json.load(open(sys.argv[2]))
        _write(sys.argv[3], (gptq if command == "gptq" else awq)(job))
    elif command == "selftest":
        selftest()
    else:
        sys.exit(f"usage: {sys.argv[0]} probe OUT.json | gptq JOB.json OUT.json | awq JOB.json OUT.json | selftest")
