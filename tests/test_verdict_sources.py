"""Issue 21: every comparison a notebook prints goes through the one verdict rule (quantedu.verdict).

A code cell that prints a winner ("better", "beats", "worse than", "ahead", ...) must take it from the rule:
the cell calls ``.verdict(`` / ``verdict(`` or shows ``quality_table(`` (whose verdict column is the rule).
The old two-halves heuristic (``Session.better``) is gone from the notebooks.
"""
import re

import pytest
from test_notebook_sources import SOURCES, build_notebooks

CLAIM = re.compile(r"\b(better|worse|beats?|ahead|wins?|outperform\w*|more accurate|less accurate)\b", re.I)
RULE = re.compile(r"\bverdict\(|\.verdict\b|quality_table\(")


def _printed_strings(code: str) -> list[str]:
    """String literals (f-strings included) inside print(...) / display text of a code cell."""
    return re.findall(r"print\((?:[^()]|\([^()]*\))*\)", code, re.S)


@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.stem)
def test_printed_comparisons_use_the_rule(src):
    offenders = []
    for kind, code in build_notebooks.parse_cells(src.read_text()):
        if kind != "code":
            continue
        claims = [s for s in _printed_strings(code) if CLAIM.search(s)]
        if claims and not RULE.search(code):
            offenders.append(claims[0][:120])
    assert not offenders, f"{src.name}: comparisons printed without the verdict rule: {offenders}"


@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.stem)
def test_no_two_halves_heuristic(src):
    assert not re.search(r"\.better\(|\bbetter\s*=\s*session\.better|\.halves\b", src.read_text()), (
        f"{src.name} still calls a winner from two halves of the text: use report.verdict(other)")
