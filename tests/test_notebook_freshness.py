"""Issue 15: a committed notebook's outputs come from one top-to-bottom run of its current source."""
from test_notebook_sources import ROOT, SOURCES, build_notebooks, nbformat, pytest


@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.stem)
def test_committed_notebook_was_executed_from_its_current_source(src):
    """Every code cell ran, in order, in one pass of the notebook built from today's source."""
    committed = nbformat.read(ROOT / "notebooks" / f"{src.stem}.ipynb", as_version=4)
    meta = committed.metadata.get("quantedu", {})
    assert meta.get("source_sha256") == build_notebooks.source_digest(src), (
        f"notebooks/{src.stem}.ipynb was not built from the current {src.name}: "
        f"run python tools/build_notebooks.py {src.name[:2]} --execute")
    assert "executed_seconds" in meta, f"notebooks/{src.stem}.ipynb was built but never executed"
    counts = [c.get("execution_count") for c in committed.cells if c.cell_type == "code"]
    assert None not in counts, f"{src.stem}: {counts.count(None)} code cell(s) never ran"
    assert counts == list(range(1, len(counts) + 1)), f"{src.stem}: cells ran out of order or twice: {counts}"
