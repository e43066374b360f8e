"""The recipe writer: the learner's choice -> files that run with the maintained tools.

:func:`recipe` checks a choice (method GPTQ / AWQ / W8A8 / FP8 / NVFP4, bits, group, calibration set and size,
GPUs, context) against the model's shape and the engines' rules, and refuses a bad one with what to do.
:func:`write` puts, through :mod:`quantedu.artifacts` (atomic; never over a folder quantedu did not write):

* ``quantize.py``: the llm-compressor script (:mod:`quantedu.recipes.script`);
* ``serve_vllm.sh``: ``vllm serve`` on its output with ``--tensor-parallel-size``, ``--max-model-len``,
  ``--max-num-seqs`` and ``--quantization compressed-tensors``;
* ``gguf.sh`` / ``serve_llama.sh``: the llama.cpp path from the original checkpoint: ``convert_hf_to_gguf.py``,
  ``llama-imatrix`` on the same calibration text, ``llama-quantize``, ``llama-server -ngl 99``;
* ``client.py``: the ``openai`` client talking to whichever server runs;
* ``plan.txt``: :func:`quantedu.plan.plan` for both paths.

The commands are also returned as argument lists (:func:`vllm_serve_command`, :func:`gguf_commands`), which is
what the tests run and check against each tool's ``--help``.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from .. import artifacts
from .. import plan as planner
from . import script as recipe_script

METHODS = ("gptq", "awq", "w8a8", "fp8", "nvfp4")
DATASETS = ("wikitext", "pydoc")  # or the path of a text file
VLLM_PORT, LLAMA_PORT = 8000, 8080
IMATRIX_CTX, IMATRIX_CHUNKS = 512, 200


@dataclass(frozen=True)
class Recipe:
    """A checked choice (build it with :func:`recipe`)."""

    model: str
    method: str
    bits: int
    group_size: int | None
    symmetric: bool
    activation_bits: int
    dataset: str
    n_samples: int
    seq_len: int
    gpus: int
    gpu_memory_gb: float
    context: int
    batch: int
    gguf_mix: str

    @property
    def scheme(self) -> str:
        """The serving scheme, in :mod:`quantedu.plan`'s names."""
        if self.method in ("w8a8", "fp8"):
            return self.method
        if self.method == "nvfp4":
            return "nvfp4" if self.activation_bits == 4 else "nvfp4a16"
        return f"w{self.bits}a16-" + (f"g{self.group_size}" if self.group_size else "channel") + \
            ("" if self.symmetric else "-asym")

    @property
    def name(self) -> str:
        return Path(self.model.rstrip("/")).name

    @property
    def save_name(self) -> str:
        return f"{self.name}-{self.scheme}"

    def weights_args(self) -> dict | None:
        """The compressed-tensors ``weights`` arguments for integer weight-only schemes (None: a preset)."""
        if self.method not in ("gptq", "awq"):
            return None
        return {"num_bits": self.bits, "type": "int", "symmetric": self.symmetric,
                "strategy": "group" if self.group_size else "channel",
                **({"group_size": self.group_size} if self.group_size else {})}

    def preset(self) -> str | None:
        return {"w8a8": "W8A8", "fp8": "FP8_DYNAMIC", "nvfp4": "NVFP4" if self.activation_bits == 4 else "NVFP4A16"
                }.get(self.method)

    def min_tokens(self) -> int:
        """Calibration tokens GPTQ needs for a full-rank Hessian: the widest linear input (0 for other methods)."""
        if self.method not in ("gptq", "w8a8"):
            return 0
        return max(c for _, c in planner.resolve(self.model)[0].linear_shapes().values())


# the hub ids of the planner's presets: a recipe names the checkpoint the script downloads
HUB_IDS = {"llama-2-7b": "meta-llama/Llama-2-7b-hf", "llama-2-13b": "meta-llama/Llama-2-13b-hf",
           "llama-2-70b": "meta-llama/Llama-2-70b-hf", "llama-3-8b": "meta-llama/Meta-Llama-3-8B",
           "llama-3-70b": "meta-llama/Meta-Llama-3-70B", "llama-3.1-8b": "meta-llama/Llama-3.1-8B",
           "llama-3.1-70b": "meta-llama/Llama-3.1-70B", "smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct"}

_DEFAULTS = {  # method -> (bits, group, symmetric, activation bits)
    "gptq": (4, 128, True, 16), "awq": (4, 128, False, 16), "w8a8": (8, None, True, 8),
    "fp8": (8, None, True, 8), "nvfp4": (4, 16, True, 4),
}


def _check_format(method: str, bits, group_size, activation_bits) -> tuple:
    """(bits, group_size, activation_bits) for ``method``, or a ValueError saying what the method allows."""
    d_bits, d_group, _, d_act = _DEFAULTS[method]
    if method in ("gptq", "awq"):
        if activation_bits != 16:
            raise ValueError(f"{method.upper()} quantizes weights only (it has no activation scheme), so "
                             f"activation_bits={activation_bits} cannot apply: use method='w8a8' for int8 weights "
                             f"and activations (SmoothQuant + GPTQ), 'fp8' or 'nvfp4', or leave activation_bits out")
        if bits not in (4, 8):
            raise ValueError(f"{method.upper()} here writes 4- or 8-bit integer weights (what vLLM's kernels run), "
                             f"got bits={bits}")
    elif (bits, group_size) != (d_bits, d_group) or (method != "nvfp4" and activation_bits != d_act):
        raise ValueError(f"{method} fixes its format: {d_bits}-bit weights, "
                         f"{'a group of 16' if method == 'nvfp4' else 'one scale per output channel'}"
                         f"{'' if method == 'nvfp4' else ', ' + str(d_act) + '-bit activations'}; leave bits, "
                         f"group_size{'' if method == 'nvfp4' else ' and activation_bits'} out")
    elif method == "nvfp4" and activation_bits not in (4, 16):
        raise ValueError(f"nvfp4 runs activations in fp4 (activation_bits=4) or bf16 (16), got {activation_bits}")
    if group_size is not None and (isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1):
        raise ValueError(f"group_size must be a positive whole number or None (one group per row), got {group_size!r}")
    return bits, group_size, activation_bits


def recipe(model, method: str = "gptq", bits: int | None = None, group_size="auto", symmetric: bool | None = None,
           activation_bits: int | None = None, dataset: str = "wikitext", n_samples: int = 512, seq_len: int = 2048,
           gpus: int = 1, gpu_memory_gb: float = 80.0, context: int = 4096, batch: int = 1,
           gguf_mix: str = "Q4_K_M") -> Recipe:
    """Check a choice and return the :class:`Recipe`; ValueError / :class:`quantedu.plan.PlanError` with the fix.

    ``model``: a hub id, a local checkpoint folder, or a preset name of :mod:`quantedu.plan` (its hub id is used)."""
    method = str(method).lower()
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: choose one of {', '.join(METHODS)}")
    d_bits, d_group, d_sym, d_act = _DEFAULTS[method]
    bits, group_size, activation_bits = _check_format(
        method, d_bits if bits is None else bits, d_group if group_size == "auto" else group_size,
        d_act if activation_bits is None else activation_bits)
    if dataset not in DATASETS:
        if not Path(dataset).expanduser().is_file():
            raise ValueError(f"dataset {dataset!r} is neither one of {DATASETS} nor an existing text file")
        dataset = str(Path(dataset).expanduser().resolve())  # the script may run from another folder
    for what, value in (("n_samples", n_samples), ("seq_len", seq_len)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{what} must be a positive whole number, got {value!r}")
    r = Recipe(HUB_IDS.get(str(model).lower(), str(model)), method, bits, group_size,
               d_sym if symmetric is None else bool(symmetric), activation_bits, dataset, n_samples, seq_len, gpus,
               float(gpu_memory_gb), context, batch, gguf_mix.upper())
    shape, _, max_ctx = planner.resolve(r.model)
    sch = planner.parse_scheme(r.scheme)
    planner.rank_shape(shape, gpus)                  # TP larger than the heads, heads not divisible: vLLM's reason
    planner.group_alignment(shape, sch, gpus)        # a group that does not divide a layer's width (on every rank)
    if n_samples * seq_len < r.min_tokens():
        raise ValueError(f"{n_samples} x {seq_len} = {n_samples * seq_len} calibration tokens: GPTQ's Hessian of the "
                         f"widest layer ({r.min_tokens()} input columns) needs at least as many tokens to be full "
                         f"rank. Raise n_samples or seq_len.")
    if max_ctx and seq_len > max_ctx:
        raise ValueError(f"seq_len={seq_len} is longer than the model's {max_ctx} positions")
    p = plans(r)["vllm"]  # the llama.cpp path's plan is written beside it (plan.txt), fitting or not
    if not p.fits:
        raise planner.PlanError(f"{p.scheme.name} on {gpus} x {gpu_memory_gb:g} GiB does not fit: {p.reason}")
    return r


def plans(r: Recipe) -> dict:
    """The serving plans of both paths (vLLM with the llm-compressor checkpoint, llama.cpp with the GGUF mix)."""
    kw = dict(gpus=r.gpus, gpu_memory_gb=r.gpu_memory_gb, context=r.context, batch=r.batch)
    return {"vllm": planner.plan(r.model, scheme=r.scheme, method=_calibration(r), calibration=(r.n_samples, r.seq_len),
                                 **kw),
            "llama.cpp": planner.plan(r.model, scheme=r.gguf_mix, **kw)}


def _calibration(r: Recipe) -> str | None:
    return {"gptq": "gptq", "awq": "awq", "w8a8": "w8a8", "fp8": None, "nvfp4": "rtn"}[r.method]


# ----------------------------------------------------------------------------------------------- commands

def vllm_serve_command(r: Recipe, model_dir: str | None = None, port: int = VLLM_PORT) -> list[str]:
    """``vllm serve`` for the quantized folder: TP over the GPUs, the planned context and batch."""
    return ["vllm", "serve", model_dir or f"./{r.save_name}", "--tensor-parallel-size", str(r.gpus),
            "--max-model-len", str(r.context), "--max-num-seqs", str(r.batch),
            "--gpu-memory-utilization", str(planner.UTILIZATION), "--quantization", "compressed-tensors",
            "--host", "127.0.0.1", "--port", str(port)]


def gguf_commands(r: Recipe, source: str | None = None, folder: str = "gguf", port: int = LLAMA_PORT,
                  python: str = "python") -> dict[str, list[str]]:
    """The llama.cpp path, step by step (``argv[0]``: the tool's name, ``convert_hf_to_gguf.py`` run by ``python``).

    ``source``: the original checkpoint folder; for a hub id a ``download`` step (``hf download``) makes one."""
    steps = {}
    if source is None:
        if Path(r.model).expanduser().is_dir():
            source = r.model
        else:
            source = f"./{r.name}-hf"
            steps["download"] = ["hf", "download", r.model, "--local-dir", source]
    f16, imat = f"{folder}/{r.name}-f16.gguf", f"{folder}/imatrix.gguf"
    out, text = f"{folder}/{r.name}-{r.gguf_mix}.gguf", f"{folder}/calibration.txt"
    # the tokens llm-compressor calibrates on, at most IMATRIX_CHUNKS chunks (llama.cpp's usual 100-200)
    chunks = max(1, min(IMATRIX_CHUNKS, r.n_samples * r.seq_len // IMATRIX_CTX))
    steps["convert"] = [python, "convert_hf_to_gguf.py", source, "--outfile", f16, "--outtype", "f16"]
    steps["calibration text"] = [python, "quantize.py", "--calibration-text", text]
    steps["imatrix"] = ["llama-imatrix", "-m", f16, "-f", text, "-o", imat, "-c", str(IMATRIX_CTX),
                        "--chunks", str(chunks), "-ngl", "99"]
    steps["quantize"] = ["llama-quantize", "--imatrix", imat, f16, out, r.gguf_mix]
    serve = ["llama-server", "-m", out, "--host", "127.0.0.1", "--port", str(port), "-c", str(r.context * r.batch),
             "-np", str(r.batch), "-ngl", "99"]
    steps["serve"] = serve + (["-ts", ",".join(["1"] * r.gpus)] if r.gpus > 1 else [])
    return steps


_CLIENT = '''"""Talk to the server the recipe started, with the openai client (vLLM: port {vllm}, llama-server: port {llama}).

    python client.py                                # vLLM
    python client.py http://127.0.0.1:{llama}/v1       # llama-server
"""
import sys

from openai import OpenAI

base_url = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:{vllm}/v1"
client = OpenAI(base_url=base_url, api_key="local")  # local servers take any key
model = client.models.list().data[0].id               # whatever the server loaded
reply = client.chat.completions.create(
    model=model, messages=[{{"role": "user", "content": "In one sentence: why quantize a language model?"}}],
    max_tokens=48, temperature=0)
print(reply.choices[0].message.content)
print(f"[{{model}}: {{reply.usage.completion_tokens}} tokens, finish_reason={{reply.choices[0].finish_reason}}]")
'''


def client_code() -> str:
    return _CLIENT.format(vllm=VLLM_PORT, llama=LLAMA_PORT)


def quantize_script(r: Recipe) -> str:
    title = f"Quantize {r.model} to {r.scheme} with llm-compressor ({r.method.upper()})"
    return recipe_script.render(title=title, model=r.model, save_name=r.save_name, dataset=r.dataset,
                                n_samples=r.n_samples, seq_len=r.seq_len, min_tokens=r.min_tokens(),
                                method=_calibration(r) or "rtn", weights=r.weights_args(), preset=r.preset(),
                                data_free=r.method == "fp8")


def _sh(cmd: list[str]) -> str:
    tool = cmd[0]
    head = [f'"$LLAMA_BIN/{tool}"'] if tool.startswith("llama-") else \
        [tool, '"$CONVERT"'] if cmd[1:2] == ["convert_hf_to_gguf.py"] else [shlex.quote(tool)]
    rest = cmd[2:] if cmd[1:2] == ["convert_hf_to_gguf.py"] else cmd[1:]
    return " ".join(head + [shlex.quote(c) for c in rest])


def _script(comment: str, lines: list[str], env: str = "") -> str:
    return "#!/bin/sh\n" + "".join(f"# {c}\n" for c in comment.splitlines()) + 'set -e\ncd "$(dirname "$0")"\n' + \
        env + "\n".join(lines) + "\n"


def files(r: Recipe) -> dict[str, str]:
    """The recipe's files, name -> text."""
    from ..engines.llama_cpp import locate

    tools = locate.tools_dir()  # defaults: this machine's build (make llama-tools); set them to your llama.cpp
    try:
        convert = locate.convert_script()
    except locate.ToolsMissingError:
        convert = "llama.cpp/convert_hf_to_gguf.py"
    bin_env = f'LLAMA_BIN="${{LLAMA_BIN:-{tools}}}"   # llama.cpp build/bin: llama-imatrix, llama-quantize, llama-server\n'
    env = bin_env + f'CONVERT="${{CONVERT:-{convert}}}"   # convert_hf_to_gguf.py of the same llama.cpp\n'
    steps = gguf_commands(r)
    p = plans(r)
    return {
        "quantize.py": quantize_script(r),
        "serve_vllm.sh": _script(f"Serve {r.save_name} with vLLM: OpenAI API on http://127.0.0.1:{VLLM_PORT}/v1 "
                                 "(plan.txt says why these numbers)", ["exec " + shlex.join(vllm_serve_command(r))]),
        "gguf.sh": _script(f"The llama.cpp path: {r.model} -> f16 GGUF -> importance matrix -> {r.gguf_mix}\n"
                           "convert_hf_to_gguf.py needs llama.cpp's requirements/requirements-convert_hf_to_gguf.txt "
                           "(gguf, sentencepiece, ...)",
                           ["mkdir -p gguf"] + [_sh(c) for k, c in steps.items() if k != "serve"], env),
        "serve_llama.sh": _script(f"Serve the {r.gguf_mix} GGUF with llama-server on http://127.0.0.1:{LLAMA_PORT}/v1 "
                                  "(-ngl 99: every layer on the GPUs)", ["exec " + _sh(steps["serve"])], bin_env),
        "client.py": client_code(),
        "plan.txt": f"{p['vllm']}\n\n{'=' * 100}\n\n{p['llama.cpp']}\n",
        "README.md": (f"# {r.save_name}: a recipe written by quantedu\n\n1. `python quantize.py` (llm-compressor "
                      f"{recipe_script.LLMCOMPRESSOR_VERSION}) writes `{r.save_name}/`\n2. `sh serve_vllm.sh` serves it "
                      f"with vLLM on {r.gpus} GPU(s)\n3. or `sh gguf.sh` then `sh serve_llama.sh` for llama.cpp "
                      f"({r.gguf_mix})\n4. `python client.py [BASE_URL]` talks to the server (`pip install openai`)"
                      f"\n\n`plan.txt`: what fits where.\n"),
    }


def write(r: Recipe, out_dir, overwrite: bool = False) -> dict[str, Path]:
    """Write the recipe's files into the folder ``out_dir`` (atomically; a folder quantedu did not write is
    refused, see :func:`quantedu.artifacts.check_target`). Returns name -> path."""
    texts = files(r)
    with artifacts.atomic_path(out_dir, overwrite=overwrite) as tmp:
        tmp.mkdir(parents=True)
        for name, text in texts.items():
            (tmp / name).write_text(text, encoding="utf-8")
            if name.endswith(".sh"):
                (tmp / name).chmod(0o755)
    return {name: Path(out_dir) / name for name in texts}


__all__ = ["METHODS", "DATASETS", "HUB_IDS", "Recipe", "recipe", "plans", "vllm_serve_command", "gguf_commands", "client_code",
           "quantize_script", "files", "write"]
