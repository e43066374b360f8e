"""The committed notebooks are exactly what their sources build (so no one edits one and not the other)."""
import importlib.util
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("build_notebooks", ROOT / "tools" / "build_notebooks.py")
build_notebooks = importlib.util.module_from_spec(spec)
spec.loader.exec_module(build_notebooks)

SOURCES = sorted((ROOT / "notebooks" / "src").glob("[0-9][0-9]_*.py"))


def test_every_notebook_has_a_source_and_vice_versa():
    built = {p.stem for p in (ROOT / "notebooks").glob("*.ipynb") if ".fresh-" not in p.name}
    assert built == {s.stem for s in SOURCES}


@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.stem)
def test_notebook_matches_its_source(src):
    expected = build_notebooks.build(src)
    committed = nbformat.read(ROOT / "notebooks" / f"{src.stem}.ipynb", as_version=4)
    assert [(c.cell_type, c.source) for c in committed.cells] == [(c.cell_type, c.source) for c in expected.cells], (
        f"notebooks/{src.stem}.ipynb is out of date: run python tools/build_notebooks.py {src.name[:2]}"
    )


@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.stem)
def test_notebook_starts_with_title_setup_and_parameters(src):
    nb = build_notebooks.build(src)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    assert "colab-badge" in nb.cells[0].source
    assert nb.cells[1].source == build_notebooks.setup_cell(src.stem)
    assert f"quantedu[{build_notebooks.EXTRAS[src.name[:2]]}] @ git+{build_notebooks.REPO_URL}" in nb.cells[1].source
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    assert any(line.startswith("MODEL = ") for c in code for line in c.splitlines()), "no MODEL parameter"


def test_parser_rejects_malformed_sources():
    with pytest.raises(ValueError, match="first"):
        build_notebooks.parse_cells("print(1)\n# %%\n")
    with pytest.raises(ValueError, match="markdown line"):
        build_notebooks.parse_cells("# %% [markdown]\nnot a comment\n")
    assert build_notebooks.parse_cells("# %% [markdown]\n# # T\n#\n# x\n# %%\na = 1\n") == [
        ("markdown", "# T\n\nx"), ("code", "a = 1")]


# What needs each extra: llama-cpp-python itself, or a quantedu module that loads it or runs llama.cpp's tools.
# (quantedu.engines.llama_cpp.kv_cache's byte formula, which notebook 01 uses, is arithmetic: no extra.)
NEEDS = {"llama": (r"\bimport llama_cpp\b", r"llama_cpp import (bindings|quality|ggml|kv_cache|fp4)\b",
                   r"llama_cpp as \w+", r"[\"']llama_cpp[\"']"),
         "reference": (r"llmcompressor",)}


def test_every_notebook_installs_what_it_needs_on_colab():
    import re
    for src in SOURCES:
        text, extras = src.read_text(), build_notebooks.EXTRAS[src.name[:2]].split(",")
        for extra, markers in NEEDS.items():
            if any(re.search(m, text) for m in markers):
                assert extra in extras, f"{src.name} uses {extra} but its Colab set-up cell does not install it"


def test_the_extras_markers_catch_what_needs_llama_cpp():
    import re
    uses = ["import llama_cpp", "from quantedu.engines.llama_cpp import bindings as llama",
            "from quantedu.engines import llama_cpp as lt", "find_spec(m) for m in ('llama_cpp', 'uvicorn')",
            "from quantedu.engines.llama_cpp import kv_cache"]
    assert all(any(re.search(m, u) for m in NEEDS["llama"]) for u in uses)
    assert not any(re.search(m, "from quantedu.engines.llama_cpp.kv_cache import kv_cache_type_bytes")
                   for m in NEEDS["llama"])


def test_readme_badges_point_at_the_one_repository():
    import re
    readme = (ROOT / "README.md").read_text()
    urls = re.findall(r"https://colab\.research\.google\.com/github/([^)]+?)/blob/main/notebooks/(\w+)\.ipynb", readme)
    assert {name for _, name in urls} == {s.stem for s in SOURCES}
    assert {repo for repo, _ in urls} == {build_notebooks.REPO}

