"""Held-out text from another source than calibration (the standard library's source), and the seed's
wikitext-2 ``select(range(128))`` pitfall."""
import hashlib
import re
import sys
import types

import pytest

from quantedu import data


def shingles(text: str, k: int = 64) -> set[bytes]:
    """Digests of every k-character passage, whitespace runs collapsed (so re-wrapping does not hide a copy)."""
    t = re.sub(r"\s+", " ", text)
    return {hashlib.blake2b(t[i:i + k].encode(), digest_size=8).digest() for i in range(len(t) - k + 1)}


def test_pysource_shares_no_passage_with_the_calibration_text():
    held_out = data.load_corpus("pysource").evaluation
    calibration = shingles(data.load_corpus("pydoc").calibration)
    assert not shingles(held_out) & calibration  # not one 64-character passage in common
    # the check does see a copy: one passage of the help pages pasted into the code
    planted = held_out[:5000] + data.load_corpus("pydoc").calibration[20_000:20_100] + held_out[5000:10_000]
    assert shingles(planted) & calibration


def test_pysource_is_whole_modules_split_deterministically():
    corpus = data.load_corpus("pysource")
    data.load_corpus.cache_clear()
    assert data.load_corpus("pysource") == corpus
    import sysconfig
    from pathlib import Path
    lib = Path(sysconfig.get_paths()["stdlib"])
    sides = {m: data._goes_to_evaluation(m) for m in data.STDLIB_MODULES}
    assert 0 < sum(sides.values()) < len(sides)
    for m, to_eval in sides.items():
        src = (lib / f"{m}.py").read_text(encoding="utf-8")
        assert src in (corpus.evaluation if to_eval else corpus.calibration), m


def test_pysource_gives_eight_windows_of_512_course_tokens():
    from transformers import AutoTokenizer

    from quantedu.evaluate import evaluation_windows
    from quantedu.models import offline_checkpoint
    tok = AutoTokenizer.from_pretrained(offline_checkpoint())
    assert evaluation_windows(tok, data.load_corpus("pysource"), 8, 512).shape == (8, 512)
    assert len(data.tokenize(tok, data.load_corpus("pysource").calibration)) > 32 * 512


def test_select_pitfall_says_plainly_when_the_hub_is_out_of_reach(monkeypatch):
    import quantedu.models
    monkeypatch.setattr(quantedu.models, "hub_reachable", lambda: (False, "huggingface.co is unreachable (OSError)"))
    p = data.select_pitfall(128)
    assert p.empty is None and "cannot be shown live" in str(p) and "unreachable" in str(p)


def test_select_pitfall_counts_the_empty_rows_where_datasets_answers(monkeypatch):
    import quantedu.models
    rows = ["", " = Valkyria Chronicles III = \n", "", " Senjō no Valkyria 3 is a game .\n", " \n"] * 30

    class Split:
        def __init__(self, texts):
            self.texts = texts

        def select(self, idx):
            return Split([self.texts[i] for i in idx])

        def __getitem__(self, key):
            assert key == "text"
            return self.texts

    fake = types.ModuleType("datasets")
    fake.load_dataset = lambda *a, split=None: Split(rows)
    monkeypatch.setitem(sys.modules, "datasets", fake)
    monkeypatch.setattr(quantedu.models, "hub_reachable", lambda: (True, "huggingface.co answered"))
    p = data.select_pitfall(128)
    first = rows[:128]
    assert (p.rows, p.empty, p.headings) == (128, sum(not r.strip() for r in first), 26)
    assert f"{p.empty} of 128 rows are empty" in str(p)


def test_unknown_corpus_lists_pysource():
    with pytest.raises(ValueError, match="pysource"):
        data.load_corpus("stdlib")
