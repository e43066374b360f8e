"""The bad-input matrix, part 1: writes that could destroy a learner's files, and inputs that used to
give silent garbage (NaN groups, all-zero Hessians, foreign metadata). Each case asserts the exact
behaviour: the error type and a phrase of its message, or the correct result, and that nothing
outside the target was touched. (Models, CLI, quiz and servers: ``test_bad_inputs_*.py``.)
"""
from __future__ import annotations

import copy
import multiprocessing as mp
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import require_module
import torch

from quantedu import artifacts, gguf
from quantedu.artifacts import TargetExistsError
from quantedu.checks import ModelStateError, NonFiniteError
from quantedu.export.write import save_compressed_tensors, save_gptq
from quantedu.gptq import GPTQConfig, gptq_quantize_model, gptq_quantize_weight
from quantedu.primitives import QuantConfig, choose_qparams, fake_quantize, rtn

ROOT = Path(__file__).resolve().parents[1]
CFG = GPTQConfig(bits=4, group_size=32)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def quantized(tiny_llama):
    model = copy.deepcopy(tiny_llama)
    calib = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0))
    return model, gptq_quantize_model(model, calib, CFG, progress=False)


# --- data loss: exports -----------------------------------------------------------------------------
@pytest.mark.parametrize("save", [save_gptq, save_compressed_tensors], ids=["gptq", "compressed-tensors"])
def test_export_into_the_current_directory_is_refused_and_deletes_nothing(quantized, tmp_path, monkeypatch, save):
    model, layers = quantized
    (tmp_path / "hw.ipynb").write_text("my homework")
    before = snapshot(tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TargetExistsError, match="folder you work in"):
        save(model, layers, CFG.quant_config(), ".")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("save", [save_gptq, save_compressed_tensors], ids=["gptq", "compressed-tensors"])
def test_export_into_a_foreign_folder_is_refused_before_any_work(quantized, tmp_path, save):
    model, layers = quantized
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(TargetExistsError, match="did not write.*notes.txt"):
        save(model, layers, CFG.quant_config(), target)
    assert snapshot(target) == {"notes.txt": b"keep me"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no temporary left either


def test_an_export_replaces_its_own_previous_export_but_not_once_you_add_a_file(quantized, tmp_path):
    model, layers = quantized
    path = save_gptq(model, layers, CFG.quant_config(), tmp_path / "export")
    assert (path / artifacts.OWNER_MARKER).is_file()
    save_gptq(model, layers, CFG.quant_config(), path)  # our own: replaced
    (path / "README.md").write_text("my notes about this export")
    with pytest.raises(TargetExistsError, match="README.md"):
        save_gptq(model, layers, CFG.quant_config(), path)
    assert (path / "README.md").read_text() == "my notes about this export"


def test_export_checks_layers_against_the_config_before_writing(quantized, tmp_path):
    model, layers = quantized
    with pytest.raises(ValueError, match="another group size"):
        save_compressed_tensors(model, layers, QuantConfig(4, 64), tmp_path / "ct")
    with pytest.raises(ValueError, match="no quantized layers"):
        save_gptq(model, {}, CFG.quant_config(), tmp_path / "empty")
    assert list(tmp_path.iterdir()) == []


# --- data loss: GGUF files ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def wide_vocab_llama():
    """A tiny Llama with the offline model's 49152-token vocabulary (its tokenizer metadata fits)."""
    from quantedu.testmodel import tiny_llama

    return tiny_llama(vocab_size=49152, rope_theta=100000.0)


def test_write_gguf_into_an_existing_folder_is_refused(wide_vocab_llama, tmp_path):
    from quantedu.gguf.io import write_gguf

    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "other.gguf").write_bytes(b"GGUF...")
    for overwrite in (False, True):  # never a foreign folder, even when asked
        with pytest.raises(TargetExistsError, match="never deletes a folder"):
            write_gguf(wide_vocab_llama, folder, "F32", overwrite=overwrite)
    assert snapshot(folder) == {"other.gguf": b"GGUF..."}


def test_write_gguf_replaces_a_foreign_file_only_with_overwrite(wide_vocab_llama, tmp_path):
    from quantedu.gguf.io import write_gguf

    path = tmp_path / "m.gguf"
    path.write_bytes(b"somebody else's file")
    with pytest.raises(TargetExistsError, match="overwrite=True"):
        write_gguf(wide_vocab_llama, path, "F32")
    assert path.read_bytes() == b"somebody else's file"
    write_gguf(wide_vocab_llama, path, "F32", overwrite=True)
    assert path.read_bytes()[:4] == b"GGUF"
    write_gguf(wide_vocab_llama, path, "F16")  # now it is ours: replaced without asking


def test_write_gguf_metadata_comes_from_the_model_written(wide_vocab_llama, tiny_llama, tmp_path):
    from quantedu.gguf.io import open_gguf, read_metadata, write_gguf

    path = tmp_path / "tiny.gguf"
    write_gguf(wide_vocab_llama, path, "F32")
    meta = {k: v[0] for k, v in read_metadata(open_gguf(path)).items()}
    assert meta["llama.embedding_length"] == 64 and meta["llama.block_count"] == 2
    assert meta["llama.feed_forward_length"] == 128 and meta["llama.attention.head_count_kv"] == 2
    assert meta["llama.context_length"] == 256 and meta["llama.rope.freq_base"] == pytest.approx(1e5)
    # A model whose vocabulary the reference tokenizer does not fit: refused, not written.
    with pytest.raises(ValueError, match="256.*vocab|vocab.*256"):
        write_gguf(tiny_llama, tmp_path / "bad.gguf", "F32")
    assert not (tmp_path / "bad.gguf").exists()


def test_llama_cpp_loads_a_written_non_course_model(wide_vocab_llama, tmp_path):
    require_module("llama_cpp")
    from quantedu.gguf.io import write_gguf
    path = tmp_path / "tiny.gguf"
    write_gguf(wide_vocab_llama, path, "F16")
    code = ("import llama_cpp,sys; m=llama_cpp.Llama(sys.argv[1], n_ctx=64, verbose=False); "
            "print(m.n_embd(), m.n_ctx())")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[0] == "64"


# --- data loss: the cache ---------------------------------------------------------------------------
def test_clear_never_leaves_the_cache(tmp_path, monkeypatch):
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "hub-model.bin").write_bytes(b"x")
    root = tmp_path / "cache"
    monkeypatch.setenv("QUANTEDU_CACHE", str(root))
    for bad in ("..", "../precious", str(outside), "/", "", "a/b"):
        with pytest.raises(ValueError, match="plain name"):
            artifacts.clear(bad)
    assert (outside / "hub-model.bin").exists()


def test_clear_everything_removes_only_the_caches_own_folders(tmp_path, monkeypatch):
    # QUANTEDU_CACHE pointed at a folder that also holds other things (say, ~/.cache).
    monkeypatch.setenv("QUANTEDU_CACHE", str(tmp_path))
    (tmp_path / "huggingface" / "hub").mkdir(parents=True)
    (tmp_path / "huggingface" / "hub" / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "notes.txt").write_text("mine")
    artifacts.cached_json("results", "k", lambda: 1)
    artifacts.cached_dir("models", "m", lambda d: (d / "w.bin").write_bytes(b"w"))
    removed = {p.name for p in artifacts.clear()}
    assert {"results", "models"} <= removed
    assert (tmp_path / "huggingface" / "hub" / "model.safetensors").read_bytes() == b"weights"
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "results").exists() and not (tmp_path / "models").exists()
    with pytest.raises(ValueError, match="not a folder of cache entries"):
        artifacts.clear("huggingface")


def test_a_temporary_left_by_a_killed_process_is_removed_and_nothing_else(tmp_cache):
    kind = artifacts.kind_dir("models")
    # pid 2**22+1 exceeds Linux's pid_max: that process cannot exist.
    stale = kind / f".m.{2**22 + 1}.0123abcd.tmp"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"0" * 1000)
    foreign = kind / ".my-own.tmp"
    foreign.write_text("not ours")
    artifacts.cached_dir("models", "m", lambda d: (d / "x").write_text("ok"))
    assert not stale.exists() and foreign.exists()


def _build_slowly(cache: str, log: str) -> str:
    import time
    os.environ["QUANTEDU_CACHE"] = cache

    def build(d):
        with open(log, "a") as f:
            f.write("built\n")
        time.sleep(1.0)
        (d / "data").write_text("x")
    return str(artifacts.cached_dir("models", "shared", build))


def test_two_processes_building_one_entry_build_it_once(tmp_path):
    log = tmp_path / "log"
    ctx = mp.get_context("spawn")
    with ctx.Pool(2) as pool:
        paths = pool.starmap(_build_slowly, [(str(tmp_path / "c"), str(log))] * 2)
    assert paths[0] == paths[1] and log.read_text() == "built\n"


def test_atomic_write_refuses_a_foreign_file_and_replaces_its_own(tmp_path):
    mine = tmp_path / "mine.txt"
    mine.write_text("user")
    with pytest.raises(TargetExistsError, match="overwrite=True"):
        artifacts.atomic_write_bytes(mine, b"package")
    ours = tmp_path / "ours.bin"
    artifacts.atomic_write_bytes(ours, b"1")
    artifacts.atomic_write_bytes(ours, b"2")
    assert ours.read_bytes() == b"2" and mine.read_text() == "user"


# --- data loss: notebooks and make targets ---------------------------------------------------------
def test_make_lab_does_not_rebuild_notebooks():
    out = subprocess.run(["make", "-n", "lab", "BIN=/bin"], cwd=ROOT, capture_output=True, text=True)
    recipe = out.stdout
    assert "jupyter lab" in recipe and "build_notebooks" not in recipe
    assert ("--allow-root" in recipe) == (os.geteuid() == 0)


@pytest.fixture
def builder(tmp_path, monkeypatch):
    import importlib.util
    spec = importlib.util.spec_from_file_location("build_notebooks_t", ROOT / "tools" / "build_notebooks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    src = tmp_path / "src"
    src.mkdir()
    (src / "09_demo.py").write_text("# %% [markdown]\n# # Demo\n# %%\nMODEL = 'x'\nprint(1)\n")
    monkeypatch.setattr(mod, "SRC", src)
    monkeypatch.setattr(mod, "OUT", tmp_path)
    monkeypatch.setattr(mod, "ROOT", tmp_path)
    return mod


def test_rebuilding_keeps_a_learners_edited_notebook(builder, tmp_path):
    import nbformat
    assert builder.main([]) == 0
    nb_path = tmp_path / "09_demo.ipynb"
    assert builder.main([]) == 0  # untouched since built: replaced, no backup
    assert not (tmp_path / ".backups").exists()
    nb = nbformat.read(nb_path, as_version=4)
    nb.cells.append(nbformat.v4.new_markdown_cell("my notes: GPTQ is OBS per row"))
    nbformat.write(nb, nb_path)
    assert builder.main([]) == 0
    backups = list((tmp_path / ".backups").glob("09_demo.*.ipynb"))
    assert len(backups) == 1 and "my notes" in backups[0].read_text()
    assert builder.main(["09", "--fresh"]) == 0  # a fresh copy goes beside, never over
    assert len(list(tmp_path.glob("09_demo.fresh-*.ipynb"))) == 1


# --- silent garbage: numerics ------------------------------------------------------------------------
def test_nan_or_inf_in_weights_is_an_error_with_its_address():
    w = torch.randn(8, 64)
    w[3, 17] = float("nan")
    with pytest.raises(NonFiniteError, match="row 3, column 17"):
        rtn(w, QuantConfig(4, 32))
    w[3, 17] = float("inf")
    with pytest.raises(NonFiniteError, match="inf"):
        choose_qparams(w, QuantConfig(4, 32))
    H = torch.eye(64)
    with pytest.raises(NonFiniteError, match="W"):
        gptq_quantize_weight(w, H, CFG)


@pytest.mark.parametrize("qtype", ["Q4_0", "Q8_0", "Q4_K", "Q6_K", "IQ4_XS"])
def test_gguf_quantizers_refuse_non_finite_rows(qtype):
    x = np.random.default_rng(0).standard_normal((4, 256)).astype(np.float32)
    x[2, 100] = np.inf if qtype == "Q6_K" else np.nan
    with pytest.raises(NonFiniteError, match="row 2, column 100"):
        gguf.quantize(x, qtype)


def test_gguf_dequantize_refuses_anything_but_its_bytes():
    q = gguf.quantize(np.ones((2, 32), np.float32), "Q8_0")
    with pytest.raises(TypeError, match="uint8"):
        gguf.dequantize(q.astype(np.float32), "Q8_0")
    np.testing.assert_allclose(gguf.dequantize(q, "Q8_0"), np.ones((2, 32), np.float32), atol=1e-4)


def test_tiny_fp16_groups_quantize_to_finite_values():
    w = (torch.randn(4, 64) * 1e-7).half()
    for cfg in (QuantConfig(4, 32), QuantConfig(4, 32, symmetric=True)):
        out = fake_quantize(w, cfg)
        assert torch.isfinite(out).all()
        ref = fake_quantize(w.float(), cfg).half()
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-7)


def test_clip_ratio_and_awq_grid_out_of_range_are_refused():
    from quantedu.awq import AWQConfig
    w = torch.randn(4, 64)
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="clip_ratio must be in"):
            fake_quantize(w, QuantConfig(4, 32), clip_ratio=bad)
    with pytest.raises(ValueError, match="clip_ratio"):
        choose_qparams(w, QuantConfig(4, 32), clip_ratio=torch.zeros(4, 2))
    for bad in (0, -3):
        with pytest.raises(ValueError, match="clip_grid"):
            AWQConfig(clip_grid=bad)
    assert torch.isfinite(fake_quantize(w, QuantConfig(4, 32), clip_ratio=0.5)).all()  # a valid ratio works


def test_gptq_refuses_an_empty_hessian_and_explains_a_singular_one():
    W = torch.randn(8, 64)
    with pytest.raises(ValueError, match="all zero.*hook"):
        gptq_quantize_weight(W, torch.zeros(64, 64), CFG)
    H = -torch.eye(64)  # not positive (semi)definite: damping of its mean diagonal cannot fix it
    with pytest.raises(ValueError, match="(?i)raise damp_percent"):
        gptq_quantize_weight(W, H, CFG)
    x = torch.randn(256, 64)
    res = gptq_quantize_weight(W, x.T @ x, CFG)  # a real Hessian still works
    assert torch.isfinite(res.weight).all() and res.loss > 0


def test_a_nan_layer_leaves_the_model_untouched_and_a_rerun_is_refused(tiny_llama):
    from quantedu.rtn import quantize_model_rtn

    calib = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    model = copy.deepcopy(tiny_llama)
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[0, 5] = float("nan")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(NonFiniteError, match=r"layers\.1\.mlp\.up_proj"):
        gptq_quantize_model(model, calib, CFG, progress=False)
    with pytest.raises(NonFiniteError, match=r"layers\.1\.mlp\.up_proj"):
        quantize_model_rtn(model, QuantConfig(4, 32), progress=False)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) or (before[k].isnan() == after[k].isnan()).all() for k in before)
    assert all(torch.equal(before[k].nan_to_num(), after[k].nan_to_num()) for k in before)

    good = copy.deepcopy(tiny_llama)
    gptq_quantize_model(good, calib, CFG, progress=False)
    with pytest.raises(ModelStateError, match="already quantized in place"):
        gptq_quantize_model(good, calib, CFG, progress=False)
