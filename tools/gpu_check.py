"""The course on a CUDA GPU, checked in one short run (issue 16): for a session that has a device.

The device machine has no network, a Python with torch/transformers/accelerate, and takes at most
64 MiB of carried files, so the course model cannot go there. This script therefore

1. (``prepare``, here) downloads the few packages the device lacks as wheels and copies the offline
   model's tokenizer into ``.gpu_check/`` (git-ignored; pass it as ``carry``);
2. (``run``, there) installs those wheels into ``.gpu_check/site`` (no network), builds a random-weight
   model with the course model's config (``quantedu.testmodel.COURSE_CONFIG``) and runs every notebook's
   code on it with the second-model mechanism (``QUANTEDU_MODEL``), the GPU choosing the dtype; parts
   that need llama.cpp skip with their reason. After each notebook it checks that the session's model
   is on CUDA in bf16 (fp16 before Ampere);
3. times GPTQ on layers shaped like a 7-8B model's (4096x4096 and 14336x4096) against llm-compressor's
   ``quantize_weight`` on the same GPU, same W and H, and prints the ratio;
4. runs a recipe the recipe writer wrote (``quantedu.recipes``, issue 25: GPTQ W4A16 g64, pydoc calibration) on
   that model as a learner would - ``python quantize.py`` - and prints its time and GPU peak beside the plan's
   calibration estimate, then reads the checkpoint back with the package (perplexity beside the original's).
   The device has no llm-compressor and no network: ``prepare`` downloads it and what its ``oneshot`` imports
   (datasets, dill, multiprocess) as Python 3.12 wheels, carried in ``.gpu_check/wheels``.

    python tools/gpu_check.py prepare            # here, once (needs the package registry)
    python tools/gpu_check.py run                # on the device (the run tool: carry [".gpu_check"])
    python tools/gpu_check.py run --dry-run      # here, on the CPU: small layers, notebooks 00-02

Everything prints; the exit code is non-zero when a notebook failed or a device/dtype check did not hold.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".gpu_check"
WHEELS = WORK / "wheels"
SITE = WORK / "site"
TOKENIZER = WORK / "tokenizer"
# What the device image lacks (its pip list, /work/.library/device/KINDS.md), pinned like the course.
PACKAGES = ["gguf==0.19.0", "platformdirs", "llmcompressor==0.14.0.1", "compressed-tensors==0.19.0", "loguru",
            # what the recipe's oneshot(dataset=...) imports beyond them (the course's .venv versions)
            "datasets==5.2.0", "dill==0.4.1", "multiprocess==0.70.19"]
# the device's interpreter (KINDS.md: Python 3.12.3, x86-64): wheels for it, not for this one
DEVICE_WHEELS = ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
                 "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64",
                 "--platform", "manylinux2014_x86_64"]


def prepare() -> int:
    WHEELS.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", *DEVICE_WHEELS, "-d", str(WHEELS),
                    *PACKAGES], check=True)
    from transformers import AutoTokenizer

    from quantedu.models import offline_checkpoint
    AutoTokenizer.from_pretrained(offline_checkpoint()).save_pretrained(TOKENIZER)
    size = sum(p.stat().st_size for p in WORK.rglob("*") if p.is_file())
    print(f"prepared {WORK} ({size / 2**20:.1f} MiB): {sorted(p.name for p in WHEELS.iterdir())}")
    return 0


def _install(dry_run: bool = False) -> None:
    """The carried wheels, into .gpu_check/site (no index, no dependencies: the device has the rest). A dry run
    uses this machine's packages: the wheels are the device's (Python 3.12), not necessarily this Python's."""
    if WHEELS.is_dir() and not SITE.is_dir() and not dry_run:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target",
                        str(SITE), *map(str, WHEELS.glob("*.whl"))], check=True)
    for path in (SITE, ROOT):
        if path.is_dir() and str(path) not in sys.path:
            sys.path.insert(0, str(path))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(SITE), str(ROOT), os.environ.get("PYTHONPATH", "")])


def _code_cells(src: Path) -> list[str]:
    import importlib.util
    spec = importlib.util.spec_from_file_location("build_notebooks", ROOT / "tools" / "build_notebooks.py")
    bn = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bn)
    return [code for kind, code in bn.parse_cells(src.read_text()) if kind == "code"]


def run_notebook(src: Path, expect_cuda: bool) -> tuple[bool, str]:
    """Execute a notebook's code cells in one namespace (as a kernel would); then check its session."""
    import matplotlib
    matplotlib.use("Agg")
    ns: dict = {"__name__": "__main__", "display": print}
    needs_llama = "llama" in src.read_text() and src.name[:2] in ("05", "06", "07")
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        if needs_llama:
            return True, "skipped: needs llama-cpp-python, which the device does not have"
    cwd = os.getcwd()
    os.chdir(ROOT / "notebooks")
    try:
        for i, code in enumerate(_code_cells(src)):
            try:
                exec(compile(code, f"{src.name}[cell {i}]", "exec"), ns)
            except Exception:  # noqa: BLE001 - report the cell and stop this notebook
                return False, f"cell {i} failed:\n{traceback.format_exc(limit=4)}"
    finally:
        os.chdir(cwd)
        import matplotlib.pyplot as plt
        plt.close("all")
    session = ns.get("session")
    if session is None:
        return True, "ran (no session)"
    import torch
    want = torch.bfloat16 if not torch.cuda.is_available() or torch.cuda.is_bf16_supported() else torch.float16
    device, dtype = session.device, session.dtype
    ok = (device.type == "cuda") == expect_cuda and dtype == want
    return ok, f"session model on {device} in {dtype}" + ("" if ok else f" (expected cuda, {want})")


def gptq_timing(shapes, device: str) -> None:
    """quantedu's GPTQ vs llm-compressor's quantize_weight: same W, H, grid, device; seconds and ratio."""
    import torch

    from quantedu.gptq import GPTQConfig, gptq_quantize_weight
    cfg = GPTQConfig(bits=4, group_size=128, sym=True, static_groups=True)
    try:
        from compressed_tensors.quantization import QuantizationArgs
        from llmcompressor.modifiers.gptq.gptq_quantize import quantize_weight
    except Exception as exc:  # noqa: BLE001
        quantize_weight = None
        print(f"llm-compressor unavailable ({type(exc).__name__}: {exc}); timing quantedu alone")
    for rows, cols in shapes:
        g = torch.Generator(device=device).manual_seed(0)
        W = torch.randn(rows, cols, device=device, generator=g) * 0.02
        X = torch.randn(4 * cols, cols, device=device, generator=g)
        H = 2 * X.T @ X / X.shape[0]
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        gptq_quantize_weight(W[:8], H, cfg)  # warm-up (kernels, allocator)
        sync()
        t0 = time.perf_counter()
        res = gptq_quantize_weight(W, H, cfg)
        sync()
        ours = time.perf_counter() - t0
        line = f"GPTQ {rows}x{cols} on {device}: quantedu {ours:.2f} s"
        if quantize_weight is not None:
            args = QuantizationArgs(num_bits=4, symmetric=True, strategy="group", group_size=128, actorder="static")
            zp = torch.zeros_like(res.scales).to(torch.int8)
            sync()
            t0 = time.perf_counter()
            Q, _, _ = quantize_weight(W[None].clone(), H[None].clone(), res.scales[None].to(device), zp[None].to(device),
                                      None, args, blocksize=cfg.block_size, percdamp=cfg.damp_percent)
            sync()
            theirs = time.perf_counter() - t0
            same = (Q[0] == res.weight).float().mean().item()
            line += f", llm-compressor {theirs:.2f} s, ratio {ours / theirs:.2f}x; {same:.2%} of weights identical"
        print(line, flush=True)


def recipe_run(model_dir: Path, dry_run: bool) -> bool:
    """A written recipe's llm-compressor script on this device, as a learner runs it; False when it failed."""
    import json
    import math
    import tempfile

    import torch

    from quantedu import plan, recipes
    from quantedu.export.read import load_quantized_model
    n_samples, seq_len = (8, 256) if dry_run else (32, 512)
    r = recipes.recipe(str(model_dir), method="gptq", group_size=64, dataset="pydoc", n_samples=n_samples,
                       seq_len=seq_len, gpus=1, gpu_memory_gb=80, context=2048)
    with tempfile.TemporaryDirectory(dir=WORK, prefix="recipe-") as tmp:
        folder = Path(tmp) / "recipe"
        recipes.write(r, folder)
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "quantize.py"], cwd=folder, capture_output=True, text=True)
        if out.returncode != 0 or "RECIPE-RESULT " not in out.stdout:
            print(f"FAIL recipe: quantize.py exited {out.returncode}:\n{out.stdout[-2000:]}{out.stderr[-3000:]}")
            return False
        result = json.loads(out.stdout.split("RECIPE-RESULT ", 1)[1].splitlines()[0])
        planned = plan.calibration_peak(model_dir, "gptq", n_samples, seq_len)["peak"]
        peak = "n/a (CPU)" if result["peak_gpu_bytes"] is None else f"{result['peak_gpu_bytes'] / 2**20:.0f} MiB"
        print(f"OK   recipe GPTQ W4A16 g64, {n_samples} x {seq_len} tokens: oneshot {result['seconds']:.1f} s "
              f"(script {time.perf_counter() - t0:.0f} s); GPU peak {peak}, the plan's estimate "
              f"{planned / 2**20:.0f} MiB", flush=True)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from quantedu.data import load_corpus
        from quantedu.evaluate import evaluation_windows, window_nll
        device = "cuda" if torch.cuda.is_available() else "cpu"
        windows = evaluation_windows(AutoTokenizer.from_pretrained(model_dir), load_corpus("pydoc"), 2, 256)
        ppl = {}
        for name, model in (("checkpoint, read by quantedu", load_quantized_model(folder / r.save_name)),
                            ("original", AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32))):
            with torch.no_grad():
                nll = window_nll(model.to(device).eval(), windows.to(device), progress=False).sum().item()
            ppl[name] = math.exp(nll / windows[:, 1:].numel())
        print("     perplexity (random weights: near the vocabulary size) " +
              ", ".join(f"{k} {v:.1f}" for k, v in ppl.items()), flush=True)
        return all(math.isfinite(v) for v in ppl.values())


def run(dry_run: bool, notebooks: list[str]) -> int:
    _install(dry_run)
    import torch

    from quantedu import testmodel
    cuda = torch.cuda.is_available()
    print(f"torch {torch.__version__}, CUDA {cuda}" + (f" ({torch.cuda.get_device_name()})" if cuda else ""))
    if not cuda and not dry_run:
        print("no CUDA GPU visible: use --dry-run on a CPU")
        return 2
    t0 = time.perf_counter()
    tokenizer = TOKENIZER if TOKENIZER.is_dir() else None
    config = testmodel.CONFIG if dry_run else testmodel.COURSE_CONFIG
    model_dir = WORK / ("model-dry" if dry_run else "model-course-config")
    if not (model_dir / "config.json").exists():
        testmodel.build(model_dir, config=config, tokenizer=tokenizer)
    print(f"random-weight model ({config['num_hidden_layers']} layers, hidden {config['hidden_size']}) built "
          f"in {time.perf_counter() - t0:.0f} s at {model_dir}", flush=True)
    os.environ.update(QUANTEDU_MODEL=str(model_dir), QUANTEDU_QUIZ_TEXT="1", TOKENIZERS_PARALLELISM="false",
                      HF_HUB_OFFLINE="1", QUANTEDU_CACHE=str(WORK / "cache"))
    if dry_run:
        os.environ["QUANTEDU_DTYPE"] = "bfloat16"  # the GPU's dtype, on the CPU
    failures = 0
    sources = sorted((ROOT / "notebooks" / "src").glob("[0-9][0-9]_*.py"))
    for src in sources:
        if notebooks and src.name[:2] not in notebooks:
            continue
        t1 = time.perf_counter()
        ok, what = run_notebook(src, expect_cuda=cuda)
        failures += not ok
        print(f"{'OK  ' if ok else 'FAIL'} {src.stem} ({time.perf_counter() - t1:.0f} s): {what}", flush=True)
    shapes = [(256, 256), (512, 256)] if dry_run else [(4096, 4096), (14336, 4096)]
    gptq_timing(shapes, "cuda" if cuda else "cpu")
    recipe_ok = recipe_run(model_dir, dry_run)
    print(f"gpu check: {failures} notebook(s) failed, recipe {'ran' if recipe_ok else 'FAILED'}; "
          f"{time.perf_counter() - t0:.0f} s in all")
    return 1 if failures or not recipe_ok else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["prepare", "run"])
    ap.add_argument("--dry-run", action="store_true", help="on a CPU: a small model, small layers")
    ap.add_argument("--notebooks", nargs="*", default=None, help="numbers to run (default: all; dry run: 00-02)")
    args = ap.parse_args(argv)
    if args.mode == "prepare":
        return prepare()
    notebooks = args.notebooks if args.notebooks is not None else (["00", "01", "02"] if args.dry_run else [])
    return run(args.dry_run, notebooks)


if __name__ == "__main__":
    sys.exit(main())
