"""The recipe writer (issue 25): bad choices get the fix, files are written the package's way, the pieces agree.

Running the written files with the real tools is tests/test_recipe_run.py (llm-compressor + vLLM) and
tests/test_recipe_gguf.py (llama.cpp); their flags against each tool's --help: tests/test_recipe_flags.py.
"""
import ast

import pytest

from quantedu import artifacts, cli, memory, recipes
from quantedu.plan import PlanError, resolve

COURSE = "smollm2-135m"  # 576 wide (not a multiple of 128), 9 heads / 3 KV heads, MLP 1536


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(method="awq", activation_bits=8), ValueError, "AWQ quantizes weights only .* use method='w8a8'"),
    (dict(method="gptq", activation_bits=8), ValueError, "GPTQ quantizes weights only"),
    (dict(method="gptq", group_size=128), PlanError, r"group size 128 does not divide .*q_proj \(576 columns\)"),
    (dict(method="gptq", group_size=64, gpus=18), PlanError, r"attention heads \(9\) must be divisible by tensor "
                                                             r"parallel size \(18\)"),
    (dict(method="gptq", group_size=64, gpus=2), PlanError, r"attention heads \(9\) .* size \(2\)"),
    (dict(method="gptq", group_size=64, n_samples=2, seq_len=512), ValueError, r"1024 calibration tokens: GPTQ's "
                                                                               r"Hessian .*1536 input columns"),
    (dict(method="nvfp4", group_size=32), ValueError, "nvfp4 fixes its format: 4-bit weights, a group of 16"),
    (dict(method="fp8", bits=4), ValueError, "fp8 fixes its format"),
    (dict(method="gptq", bits=3, group_size=64), ValueError, "4- or 8-bit"),
    (dict(method="spqr"), ValueError, "unknown method 'spqr'"),
    (dict(method="gptq", group_size=64, dataset="no/such/file.txt"), ValueError, "neither one of"),
    (dict(method="gptq", group_size=64, seq_len=16384), ValueError, "longer than the model's 8192 positions"),
])
def test_bad_choices_are_refused_with_what_to_do(kwargs, error, match):
    with pytest.raises(error, match=match):
        recipes.recipe(COURSE, **kwargs)


def test_defaults_per_method():
    r = recipes.recipe("llama-3.1-8b")
    assert r.model == "meta-llama/Llama-3.1-8B"  # a preset names the checkpoint the script downloads ...
    assert resolve(r.model)[0] == memory.model_shape("llama-3.1-8b")  # ... and that id plans as the preset
    assert (r.scheme, r.min_tokens()) == ("w4a16-g128", 14336)  # GPTQ needs down_proj's 14336 tokens at least
    assert recipes.recipe("llama-3.1-8b", method="awq").scheme == "w4a16-g128-asym"
    assert recipes.recipe("llama-3.1-8b", method="nvfp4").preset() == "NVFP4"
    assert recipes.recipe("llama-3.1-8b", method="nvfp4", activation_bits=16).preset() == "NVFP4A16"
    assert recipes.recipe("llama-3.1-8b", method="fp8").min_tokens() == 0  # data-free


def test_a_recipe_that_does_not_fit_is_refused():
    with pytest.raises(PlanError, match="w4a16-g128 on 1 x 24 GiB does not fit: the weights alone need"):
        recipes.recipe("llama-3.1-70b", gpus=1, gpu_memory_gb=24)


def test_the_written_files_agree_with_each_other(tmp_path, tmp_cache):
    r = recipes.recipe("meta-llama/Llama-3.1-70B-Instruct", method="gptq", gpus=4, gpu_memory_gb=80, context=8192,
                       batch=8)
    paths = recipes.write(r, tmp_path / "recipe")
    text = {name: p.read_text() for name, p in paths.items()}
    tree = ast.parse(text["quantize.py"])  # a valid script, its settings as written
    consts = {t.targets[0].id: t.value for t in tree.body if isinstance(t, ast.Assign) and len(t.targets) == 1
              and isinstance(t.targets[0], ast.Name)}
    assert ast.literal_eval(consts["MODEL_ID"]) == r.model and ast.literal_eval(consts["MIN_TOKENS"]) == 28672
    assert f"vllm serve ./{r.save_name} --tensor-parallel-size 4 --max-model-len 8192 --max-num-seqs 8" \
        in text["serve_vllm.sh"]  # serves the folder the script writes
    assert f"/ {r.save_name!r}" in text["quantize.py"]
    steps = recipes.gguf_commands(r)
    assert steps["download"][:3] == ["hf", "download", r.model]  # a hub id: downloaded for the converter
    assert steps["convert"][4] == steps["imatrix"][2] == steps["quantize"][3]  # the f16 file flows through
    assert steps["quantize"][4] == steps["serve"][2] and steps["serve"][-2:] == ["-ts", "1,1,1,1"]
    assert "fits: yes" in text["plan.txt"] and "llama.cpp, layer split" in text["plan.txt"]
    assert (tmp_path / "recipe" / "gguf.sh").stat().st_mode & 0o111


def test_writes_never_replace_a_folder_quantedu_did_not_write(tmp_path, tmp_cache):
    r = recipes.recipe(COURSE, group_size=64, n_samples=8, seq_len=256)
    mine = tmp_path / "mine"
    recipes.write(r, mine)
    recipes.write(recipes.recipe(COURSE, method="awq", group_size=64), mine)  # its own folder: replaced
    assert "AWQModifier" in (mine / "quantize.py").read_text()
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine, not quantedu's")
    with pytest.raises(artifacts.TargetExistsError, match="did not write"):
        recipes.write(r, theirs)
    assert sorted(p.name for p in theirs.iterdir()) == ["notes.txt"]


def test_cli_recipe(tmp_path, tmp_cache, capsys):
    out = tmp_path / "r"
    assert cli.main(["recipe", COURSE, "--group", "64", "--samples", "8", "--seq-len", "256", "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out and (out / "quantize.py").is_file()
    assert cli.main(["recipe", COURSE, "--method", "awq", "--activation-bits", "8", "--out", str(out)]) == 2
    assert "AWQ quantizes weights only" in capsys.readouterr().err
