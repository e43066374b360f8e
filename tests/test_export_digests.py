"""Issue 11's guard: every export of the course model stays byte-identical through refactors.

``data/export_digests.json`` was written by ``python tests/export_digest.py --write`` on the code
before the refactor (and checked equal on the commit before issue 10's input checks); regenerate it
only for a deliberate change of the stored bytes, and say why in the commit.
"""
import json

import pytest

from export_digest import DIGESTS, export_digests


@pytest.fixture(scope="module")
def digests():
    return export_digests()


def test_every_export_format_is_covered(digests):
    assert set(digests) == set(json.loads(DIGESTS.read_text()))


@pytest.mark.parametrize("name", sorted(json.loads(DIGESTS.read_text())))
def test_export_bytes_unchanged(digests, name):
    assert digests[name] == json.loads(DIGESTS.read_text())[name], (
        f"{name}: the export's bytes changed. If that is intended, regenerate data/export_digests.json "
        "with python tests/export_digest.py --write and say why in the commit.")
