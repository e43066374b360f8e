"""The exercises in their notebooks, the pieces the checkers add to the package, and the instructor commands.

* every exercise cell of notebooks/src/01-07 is the registry's stub, and runs (in a fresh namespace, seconds
  per notebook, no whole-notebook execution) as "not attempted" as committed and as "passed" with
  QUANTEDU_EXERCISE_SOLUTIONS=1: the checkers proven in their notebook context;
* the standalone pieces the checkers build (GPTQ's outer loop, Q4_K's scale fields, the SSE replay) agree
  with the package code for code;
* ``quantedu exercises --solutions`` and ``--status`` on temporary folders.
"""
import importlib.util
import json
from pathlib import Path

import nbformat
import numpy as np
import pytest
from helpers import missing
import torch

from quantedu import cli, gguf
from quantedu.exercises import NOT_ATTEMPTED, PASSED, REGISTRY, RESULTS, SOLUTIONS_ENV, core, grade, hint, is_stub
from quantedu.exercises import gguf_blocks, gptq_block, inputs, notebooks, serving_stream
from quantedu.gptq import gptq_quantize_weight

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("build_notebooks", ROOT / "tools" / "build_notebooks.py")
build_notebooks = importlib.util.module_from_spec(spec)
spec.loader.exec_module(build_notebooks)
SOURCES = sorted(p for p in (ROOT / "notebooks" / "src").glob("[0-9][0-9]_*.py") if p.name[:2] != "00")  # 00 has no exercise


def src_cells(src):
    return build_notebooks.parse_cells(src.read_text())


def run_cell(source, ex_id):
    RESULTS.pop(ex_id, None)
    ex = REGISTRY[ex_id]
    exec(compile(source, f"<cell {ex_id}>", "exec"), {**(ex.example_context() if ex.example_context else {})})
    return RESULTS[ex_id]


@pytest.fixture(autouse=True)
def text_mode(monkeypatch):
    monkeypatch.setenv("QUANTEDU_QUIZ_TEXT", "1")
    monkeypatch.delenv(SOLUTIONS_ENV, raising=False)


# --- the notebooks ----------------------------------------------------------------------------------


def test_every_lesson_has_its_exercises_and_each_cell_is_the_registry_stub():
    found = {}
    for src in SOURCES:
        cells = src_cells(src)
        for i, (kind, source) in enumerate(cells):
            ex_id = notebooks.exercise_id(source) if kind == "code" else None
            if ex_id is None:
                continue
            ex = REGISTRY[ex_id]
            assert ex.notebook == src.name[:2], f"{ex_id} sits in {src.name}"
            assert source == ex.cell(), f"{src.name}: the cell of {ex_id} differs from REGISTRY['{ex_id}'].cell()"
            assert cells[i - 1] == ("markdown", ex.markdown()), f"{src.name}: {ex_id} needs its statement above"
            found.setdefault(src.name[:2], []).append(ex_id)
    assert sorted(i for ids in found.values() for i in ids) == sorted(REGISTRY), "each exercise exactly once"
    assert all(len(found.get(n, [])) >= 1 for n in ("01", "06", "07")), found
    assert all(len(found.get(n, [])) >= 2 for n in ("02", "03", "04", "05")), found


@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.stem)
def test_exercise_cells_run_as_committed_and_with_the_solutions(src, monkeypatch, capsys):
    cells = [(notebooks.exercise_id(s), s) for k, s in src_cells(src) if k == "code" and notebooks.exercise_id(s)]
    assert cells
    for ex_id, source in cells:  # as committed: stubs, "not attempted", no error (nbval runs them)
        res = run_cell(source, ex_id)
        assert res.status == NOT_ATTEMPTED, res.text()
        assert f"Exercise {ex_id}: not attempted yet" in capsys.readouterr().out
    monkeypatch.setenv(SOLUTIONS_ENV, "1")
    for ex_id, source in cells:  # CI: the reference stands in for the stubs, the checker runs in full
        res = run_cell(source, ex_id)
        assert res.status == PASSED, res.text()
        assert SOLUTIONS_ENV in res.note
        out = capsys.readouterr().out
        assert f"Exercise {ex_id}: PASSED" in out and "reference solution stood in" in out


@pytest.mark.parametrize("ex_id", sorted(REGISTRY))
def test_the_solution_cell_is_self_contained_and_passes(ex_id):
    res = run_cell(REGISTRY[ex_id].cell(solution=True), ex_id)
    assert res.status == PASSED and not res.note, res.text()


# --- pieces the checkers add, against the package -----------------------------------------------------


@pytest.mark.parametrize("index", range(4))
def test_reference_pieces_inside_the_package_are_the_package_code_for_code(index):
    label, make = gptq_block._layers({})[index]
    W, H, config = make()
    ours = gptq_quantize_weight(W, H, config)
    for pieces in ({"hinv_fn": gptq_block.gptq_hinv}, {"block_fn": gptq_block.gptq_block}):
        theirs = gptq_block.run_with(W, H, config, **pieces)
        assert torch.equal(theirs.codes, ours.codes) and torch.equal(theirs.weight, ours.weight), (label, pieces)


def test_q4k_scale_fields_are_the_bytes_of_gguf_quantize():
    for x in ((np.random.default_rng(0).standard_normal((8, 512)) * 0.05).astype(np.float32),
              inputs.course_tensor("blk.1.ffn_down.weight", 32)):
        fields = gguf.layout("Q4_K").split(gguf.quantize(x, "Q4_K"))
        d, dmin, packed = gguf_blocks.q4k_scale_fields(*gguf_blocks.q4k_subblock_scales(x))
        assert np.array_equal(d, fields["d"].reshape(-1).view(np.uint16))
        assert np.array_equal(dmin, fields["dmin"].reshape(-1).view(np.uint16))
        assert np.array_equal(packed, fields["scales"].reshape(-1, 12))


def test_the_gguf_solutions_write_ggml_s_own_bytes():
    from quantedu.engines.llama_cpp import ggml as ggml_reference

    if not ggml_reference.is_available():
        missing("ggml's C library (llama-cpp-python) is not installed")
    x = inputs.course_tensor("blk.2.ffn_down.weight", 16)
    assert np.array_equal(gguf_blocks.q8_0(x.reshape(-1, 32)).reshape(16, -1), ggml_reference.quantize(x, "Q8_0"))
    theirs = gguf.layout("Q4_K").split(ggml_reference.quantize(x, "Q4_K"))
    d, dmin, packed = gguf_blocks.q4k_scales(*gguf_blocks.q4k_subblock_scales(x))
    assert np.array_equal(d.astype(np.float16), theirs["d"].reshape(-1))
    assert np.array_equal(dmin.astype(np.float16), theirs["dmin"].reshape(-1))
    assert np.array_equal(packed, theirs["scales"].reshape(-1, 12))


def test_the_sse_replay_runs_the_benchmark_client_on_the_virtual_clock():
    t_sent, events = serving_stream._llama_cpp()  # 6 tokens from 0.40 s, one every 50 ms
    ttft, tps = serving_stream.package_timings(t_sent, events)
    assert ttft == pytest.approx(0.40) and tps == pytest.approx(20.0)
    with pytest.raises(RuntimeError, match="does not parse"):
        serving_stream.package_timings(0.0, [(0.1, "data: {not json")])


# --- grading, stubs, hints, panels, skipped inputs --------------------------------------------------


def test_stub_detection():
    namespace = {}
    exec("def a(x):\n    ...\n\ndef b(x):\n    'doc'\n    raise NotImplementedError('later')\n\n"
         "def c(x):\n    pass\n\ndef d(x):\n    return x\n", namespace)  # no source file: the bytecode decides
    assert is_stub(namespace["a"]) and is_stub(namespace["b"]) and is_stub(namespace["c"])
    assert not is_stub(namespace["d"])
    assert all(is_stub(f) is False for f in REGISTRY["02.asym_quantize"].solution)
    assert not is_stub(REGISTRY["02.round_ste"].solution[0])  # a class: every method must be a stub


def test_solutions_env_fills_in_only_the_stubs(monkeypatch):
    def stub(shape, context, batch, dtype_bits=16):
        ...

    def wrong(shape, context, batch, dtype_bits=16):
        return 0

    monkeypatch.setenv(SOLUTIONS_ENV, "1")
    assert grade("01.kv_cache", stub).passed
    assert grade("01.kv_cache", wrong).status == "failed"  # the learner's own code is always graded


def test_bad_calls_are_explained():
    with pytest.raises(TypeError, match="takes 2 function"):
        grade("02.asym_quantize", REGISTRY["02.asym_quantize"].solution[0])
    with pytest.raises(TypeError, match="table="):
        grade("07.pick_format", REGISTRY["07.pick_format"].solution[0])
    with pytest.raises(KeyError, match="02.asym_quantize"):
        grade("02.asym_quantise", print)


def test_hints_come_one_at_a_time(capsys):
    ex = REGISTRY["01.kv_cache"]
    core._hints_shown.pop(ex.id, None)
    assert hint(ex.id).startswith(f"Hint 1/{len(ex.hints)}") and ex.hints[0] in capsys.readouterr().out
    for _ in ex.hints[1:]:
        hint(ex.id)
    assert "No more hints" in hint(ex.id)


def test_the_widget_panel_reveals_hints_on_click():
    ex = REGISTRY["06.sse_timings"]
    core._hints_shown.pop(ex.id, None)
    res = grade(ex.id, lambda t, e: (0.0, 0.0))
    box = core.panel(res)
    head, button, shown = box.children
    assert "failed" in head.value and "06.sse_timings" in head.value
    assert button.description == f"Show hint 1 of {len(ex.hints)}" and shown.value == ""
    button.click()
    assert "Hint 1." in shown.value and "Hint 2." not in shown.value
    assert button.description == f"Show hint 2 of {len(ex.hints)}"
    assert len(core.panel(grade(ex.id, ex.solution[0])).children) == 1  # passed: no hint button


def test_a_panel_drawn_again_shows_the_hints_already_read():
    """Re-running a failed cell draws a new panel: it starts where the learner was, not at hint 0."""
    ex = REGISTRY["06.sse_timings"]
    core._hints_shown.pop(ex.id, None)
    failed = grade(ex.id, lambda t, e: (0.0, 0.0))
    _, button, _ = core.panel(failed).children
    button.click()
    button.click()
    _, again, shown = core.panel(failed).children
    assert "Hint 1." in shown.value and "Hint 2." in shown.value and "Hint 3." not in shown.value
    assert again.description == f"Show hint 3 of {len(ex.hints)}" and not again.disabled
    again.click()
    assert "Hint 3." in shown.value
    for _ in ex.hints:
        again.click()
    assert again.disabled and again.description == f"All {len(ex.hints)} hints shown"
    assert "Hint 1/" in failed.text() and "Hint 2/" in failed.text()  # text mode lists them too


def test_panels_render_code_spans_not_backticks():
    ex = REGISTRY["06.sse_timings"]
    passed = grade(ex.id, ex.solution[0])
    head = core.panel(passed).children[0].value
    assert "`" in passed.message and "`" not in head and "<code>quantedu.engines.load" in head

    def crashes(t, e):
        raise RuntimeError("boom")

    failed = grade(ex.id, crashes)
    head = core.panel(failed).children[0].value
    assert "`raise RuntimeError(\"boom\")`" in failed.message and "<code>raise RuntimeError(\"boom\")</code>" in head


def test_a_real_tensor_input_is_skipped_without_the_offline_model(monkeypatch):
    from quantedu import models

    def missing():
        raise models.ModelError("not installed")

    inputs._read.cache_clear()
    monkeypatch.setattr(models, "offline_gguf_path", missing)
    try:
        res = grade("02.asym_quantize", *REGISTRY["02.asym_quantize"].solution)
    finally:
        inputs._read.cache_clear()
    assert res.status == PASSED and len(res.skipped) == 1
    assert "the course model" in res.skipped[0] and "offline course model is not installed" in res.skipped[0]
    assert "skipped:" in res.text()


# --- instructor commands ----------------------------------------------------------------------------


def notebook(*sources):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# a lesson")] + [nbformat.v4.new_code_cell(s) for s in sources]
    return nb


def test_solutions_command_writes_solution_notebooks_and_never_touches_foreign_files(tmp_path, capsys, monkeypatch):
    course = tmp_path / "notebooks"
    course.mkdir()
    nbformat.write(notebook(REGISTRY["02.round_ste"].cell(), "x = 1"), course / "02_ptq_vs_qat.ipynb")
    nbformat.write(notebook(REGISTRY["07.pick_format"].cell()), course / "07_benchmark_and_guide.ipynb")
    assert cli.main(["exercises", "--solutions", "--notebooks", str(course)]) == 0
    out = course / "solutions"
    nb = nbformat.read(out / "02_ptq_vs_qat.ipynb", as_version=4)
    assert nb.cells[1].source == REGISTRY["02.round_ste"].cell(solution=True) and nb.cells[2].source == "x = 1"
    assert "return grad_output" in nb.cells[1].source
    assert set(json.loads((out / notebooks.MARK).read_text())) == {
        "02_ptq_vs_qat.ipynb", "07_benchmark_and_guide.ipynb", "conftest.py"}
    assert "collect_ignore_glob" in (out / "conftest.py").read_text()  # nbval skips the solutions
    assert cli.main(["exercises", "--solutions", "--notebooks", str(course)]) == 0  # its own files: rewritten
    (out / "07_benchmark_and_guide.ipynb").unlink()
    (out / "07_benchmark_and_guide.ipynb").write_text("{}")
    assert cli.main(["exercises", "--solutions", "--notebooks", str(course)]) == 0  # still on its list
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    capsys.readouterr()
    assert cli.main(["exercises", "--solutions", "--notebooks", str(course), "--out", str(foreign)]) == 2
    assert "was not written by" in capsys.readouterr().err and (foreign / "notes.txt").read_text() == "keep me"
    (course / ".ipynb_checkpoints").mkdir()
    nbformat.write(notebook(REGISTRY["02.round_ste"].cell()), course / ".ipynb_checkpoints" / "02-checkpoint.ipynb")
    seen = []
    monkeypatch.setattr(notebooks, "run_cells", lambda cells, timeout: seen.extend(cells) or
                        [{"status": "passed"} for _ in cells])
    rows = notebooks.status(course)  # the solution folder and the checkpoints are not learners' work
    assert [(r["notebook"], r["exercise"]) for r in rows] == [("02_ptq_vs_qat", "02.round_ste"),
                                                               ("07_benchmark_and_guide", "07.pick_format")]
    nbformat.write(notebook("print(1)"), out / "99_extra.ipynb")
    nbformat.write(notebook("print(2)"), course / "99_extra.ipynb")
    assert cli.main(["exercises", "--solutions", "--notebooks", str(course)]) == 2  # not one of its files
    assert "99_extra.ipynb" in capsys.readouterr().err
    assert nbformat.read(out / "99_extra.ipynb", as_version=4).cells[1].source == "print(1)"


def test_status_command_grades_learners_in_child_processes(tmp_path, capsys):
    kv = REGISTRY["01.kv_cache"].cell()
    wrong = kv.replace("    ...  # YOUR CODE", "    return 2 * shape.layers * shape.heads * shape.head_dim * 2 "
                                               "* context * batch")
    hang = REGISTRY["01.weight_bytes"].cell().replace("    ...  # YOUR CODE", "    while True:\n        pass")
    crash = kv.replace("    ...  # YOUR CODE", "    import os\n    os._exit(3)")
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    alice.mkdir(), bob.mkdir()
    nbformat.write(notebook(REGISTRY["02.round_ste"].cell(solution=True), REGISTRY["02.asym_quantize"].cell()),
                   alice / "02_ptq_vs_qat.ipynb")
    nbformat.write(notebook(wrong, hang, crash, "print('not an exercise')"), bob / "01_memory_math.ipynb")
    assert cli.main(["exercises", "--status", str(tmp_path), "--timeout", "5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split(maxsplit=2) for line in lines[2:-1]]
    a, b = "alice/02_ptq_vs_qat", "bob/01_memory_math"
    assert [r[:2] for r in rows] == [[a, "02.round_ste"], [a, "02.asym_quantize"], [b, "01.kv_cache"],
                                     [b, "01.weight_bytes"], [b, "01.kv_cache"]]
    assert rows[0][2] == "passed" and rows[1][2] == "not attempted"
    assert rows[2][2].startswith("failed: input") and "query head" in rows[2][2]
    assert "timed out after 5 s" in rows[3][2]
    assert "crashed" in rows[4][2]
    assert lines[-1] == "1 passed, 3 failed, 1 not attempted"


def test_exercises_command_without_options_lists_them(capsys):
    assert cli.main(["exercises"]) == 0
    out = capsys.readouterr().out
    assert all(ex_id in out for ex_id in REGISTRY) and "--solutions" in out
    assert cli.main(["exercises", "--status", "/no/such/folder"]) == 2
