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


def test_every_notebook_installs_what_it_needs_on_colab():
    needs = {"llama": ("llama_cpp",), "reference": ("llmcompressor",)}
    for src in SOURCES:
        text, extras = src.read_text(), build_notebooks.EXTRAS[src.name[:2]].split(",")
        for extra, markers in needs.items():
            if any(m in text for m in markers):
                assert extra in extras, f"{src.name} uses {extra} but its Colab set-up cell does not install it"


def test_readme_badges_point_at_the_one_repository():
    import re
    readme = (ROOT / "README.md").read_text()
    urls = re.findall(r"https://colab\.research\.google\.com/github/([^)]+?)/blob/main/notebooks/(\w+)\.ipynb", readme)
    assert {name for _, name in urls} == {s.stem for s in SOURCES}
    assert {repo for repo, _ in urls} == {build_notebooks.REPO}

