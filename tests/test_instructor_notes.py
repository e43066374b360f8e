"""tools/instructor_notes.py: each notebook's section is read from the notebook itself, and the tool never
replaces a file it did not write."""
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import instructor_notes as notes  # noqa: E402


def _notebook(path, seconds, code):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# GPTQ from scratch\nprose"), nbformat.v4.new_code_cell(code)]
    nb.metadata["quantedu"] = {"executed_seconds": seconds}
    nbformat.write(nb, path)
    return path


def test_a_section_reports_the_recorded_time_extras_quiz_and_each_mistakes_diagnosis(tmp_path):
    path = _notebook(tmp_path / "03_gptq.ipynb", 212.4,
                     'quiz = Quiz.load("gptq", values={})\n# Exercise 03.gptq_block: one block\npass')
    timings = {"03_gptq": {"empty_cache_s": 230.0, "warm_cache_s": 41.0, "measured": "2026-12-06"}}
    text = notes.section(path, timings, {"03.gptq_block": [("forgot Hinv", "input 1: column 3 differs")]})
    assert text.startswith("## 03_gptq: GPTQ from scratch")
    assert "212 s from an empty cache" in text and "230 s empty, 41 s warm" in text
    assert "quantedu[" in text and "reference" in text  # 03 needs llm-compressor (build_notebooks.EXTRAS)
    assert "`quantedu quiz --keys gptq`" in text
    assert "Exercise `03.gptq_block`" in text and "forgot Hinv" in text and "column 3 differs" in text
    assert "03.gptq_hinv" not in text  # only the exercises whose cells the notebook has


def test_an_untimed_notebook_says_so(tmp_path):
    path = _notebook(tmp_path / "01_memory_math.ipynb", None, "x = 1")
    text = notes.section(path, {}, {})
    assert "not recorded" in text and "--time 01" in text


def test_it_refuses_to_replace_a_file_it_did_not_write(tmp_path):
    foreign = tmp_path / "INSTRUCTOR.md"
    foreign.write_text("my own notes\n")
    with pytest.raises(SystemExit, match="not written by this tool"):
        notes._replace(foreign, "# Instructor notes\n")
    assert foreign.read_text() == "my own notes\n"
    ours = tmp_path / "NEW.md"
    notes._replace(ours, "# Instructor notes\nv1\n")
    notes._replace(ours, "# Instructor notes\nv2\n")
    assert ours.read_text().endswith("v2\n")
