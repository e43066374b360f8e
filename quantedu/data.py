"""Text for calibration and evaluation.

* ``"pydoc"`` (offline): the help topics that ship with every Python, ``pydoc_data.topics`` —
  about 113k tokens of English technical prose with code. No download needed.
* ``"wikitext2"`` (online): wikitext-2-raw-v1 through ``datasets``, the set GPTQ/AWQ papers use.
* ``"pysource"`` (offline): the source code of some 40 pure-Python standard-library modules (code, comments,
  docstrings), read from this Python's own ``Lib/`` folder: held-out text from another source and genre than
  the help pages, to evaluate out of the calibration's domain (:func:`_pysource`).

The split into calibration and evaluation parts is deterministic and never overlaps: for pydoc,
each help topic goes wholly to one side by a hash of its name; for wikitext2, calibration comes
from the train split and evaluation from the test split.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache

import torch

CORPORA = ("pydoc", "pysource", "wikitext2")
EVAL_FRACTION = 0.3


@dataclass(frozen=True)
class Corpus:
    name: str
    calibration: str
    evaluation: str

    def __repr__(self) -> str:
        return (
            f"Corpus({self.name!r}: calibration {len(self.calibration):,} chars, "
            f"evaluation {len(self.evaluation):,} chars)"
        )


def _goes_to_evaluation(topic: str) -> bool:
    digest = hashlib.sha256(topic.encode()).digest()
    return digest[0] < 256 * EVAL_FRACTION


def _pydoc() -> Corpus:
    from pydoc_data.topics import topics

    calibration = [text for key, text in topics.items() if not _goes_to_evaluation(key)]
    evaluation = [text for key, text in topics.items() if _goes_to_evaluation(key)]
    return Corpus("pydoc", "\n\n".join(calibration), "\n\n".join(evaluation))


def _wikitext2() -> Corpus:
    try:
        from datasets import load_dataset

        ds = load_dataset("wikitext", "wikitext-2-raw-v1")
    except Exception as exc:  # noqa: BLE001 - datasets raises many kinds when offline
        raise RuntimeError(
            "wikitext2 needs the Hugging Face hub (pip install datasets, and a network). "
            "Offline, use load_corpus('pydoc'); for a workshop run `quantedu prepare` while online. "
            f"Cause: {exc.__class__.__name__}: {exc}"
        ) from exc
    return Corpus("wikitext2", "".join(ds["train"]["text"]), "".join(ds["test"]["text"]))


@lru_cache(maxsize=4)
def load_corpus(name: str = "pydoc") -> Corpus:
    """The named corpus, split into non-overlapping calibration and evaluation text."""
    if name == "pydoc":
        return _pydoc()
    if name == "wikitext2":
        return _wikitext2()
    if name == "pysource":
        return _pysource()
    raise ValueError(f"unknown corpus {name!r}; choose one of {CORPORA}")


def tokenize(tokenizer, text: str) -> torch.Tensor:
    """1-D LongTensor of token ids, no special tokens (so windows are pure corpus text)."""
    ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False, verbose=False)
    return torch.tensor(ids["input_ids"], dtype=torch.long)


def check_windows(n: int, seq_len: int, n_name: str = "n_windows", what: str = "windows") -> tuple[int, int]:
    """``(n, seq_len)`` as ints, or a ValueError saying what is expected: a ``(n, seq_len)`` tensor of
    token windows needs ``n >= 1`` windows of ``seq_len >= 2`` tokens (one to predict from, one to predict)."""
    def whole(value, name):
        if isinstance(value, bool) or not hasattr(value, "__index__"):
            raise TypeError(f"{what}: {name} must be a whole number, got {value!r}")
        return value.__index__()

    n, seq_len = whole(n, n_name), whole(seq_len, "seq_len")
    if n < 1 or seq_len < 2:
        raise ValueError(f"{what} makes a ({n_name}, seq_len) tensor of token windows and needs "
                         f"{n_name} >= 1 and seq_len >= 2, got {n_name}={n}, seq_len={seq_len}")
    return n, seq_len


def calibration_batches(
    tokenizer, n_samples: int = 32, seq_len: int = 512, seed: int = 0, corpus: Corpus | str = "pydoc"
) -> torch.Tensor:
    """``(n_samples, seq_len)`` token windows drawn at seeded random offsets of the calibration text."""
    n_samples, seq_len = check_windows(n_samples, seq_len, "n_samples", "calibration_batches")
    if isinstance(corpus, str):
        corpus = load_corpus(corpus)
    ids = tokenize(tokenizer, corpus.calibration)
    if len(ids) <= seq_len:
        raise ValueError(f"calibration text has {len(ids)} tokens, fewer than seq_len={seq_len}")
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(ids) - seq_len, (n_samples,), generator=gen)
    return torch.stack([ids[s : s + seq_len] for s in starts.tolist()])


def evaluation_text(corpus: Corpus | str = "pydoc") -> str:
    return (load_corpus(corpus) if isinstance(corpus, str) else corpus).evaluation


# --- held-out text from another source: Python's own standard-library source code ---------------------

# Pure-Python modules present in every CPython 3.10-3.13 (none frozen into the interpreter, none removed),
# read as files: the text is the same for a given Python version, on any platform, offline.
STDLIB_MODULES = (
    "argparse", "ast", "bisect", "calendar", "cmd", "configparser", "contextlib", "copy", "csv", "dataclasses",
    "difflib", "enum", "fractions", "functools", "gettext", "glob", "heapq", "ipaddress", "json/decoder",
    "json/encoder", "logging/__init__", "pprint", "queue", "random", "sched", "secrets", "shlex", "shutil",
    "statistics", "string", "tempfile", "textwrap", "threading", "tokenize", "traceback", "types", "uuid",
    "weakref", "zipapp",
)


def _pysource() -> Corpus:
    """Each module's source goes wholly to calibration or evaluation, by the hash rule of the help topics."""
    import sysconfig
    from pathlib import Path

    lib = Path(sysconfig.get_paths()["stdlib"])
    missing = [m for m in STDLIB_MODULES if not (lib / f"{m}.py").is_file()]
    if missing:
        raise RuntimeError(f"this Python's standard library at {lib} lacks {', '.join(missing)}.py (a stripped "
                           "install?); evaluate on load_corpus('pydoc') instead")
    texts = {m: (lib / f"{m}.py").read_text(encoding="utf-8") for m in STDLIB_MODULES}
    return Corpus("pysource", "\n\n".join(t for m, t in texts.items() if not _goes_to_evaluation(m)),
                  "\n\n".join(t for m, t in texts.items() if _goes_to_evaluation(m)))


@dataclass(frozen=True)
class SelectPitfall:
    """What the seed's ``load_dataset("wikitext", "wikitext-2-raw-v1")["train"].select(range(n))`` hands a
    calibration: ``rows`` rows, of which ``empty`` are empty or whitespace and ``headings`` are ``= Title =`` lines
    (None when the hub could not be reached: ``reason`` says why)."""

    rows: int
    empty: int | None
    headings: int | None
    characters: int | None
    reason: str = ""

    def __str__(self) -> str:
        if self.empty is None:
            return (f"wikitext-2 could not be loaded here ({self.reason}), so the pitfall cannot be shown live. "
                    "It is this: wikitext-2's train split has one row per line of the articles, blank lines and "
                    f"'= Heading =' lines included, so select(range({self.rows})) is {self.rows} lines, not "
                    f"{self.rows} passages. Count the empty rows yourself where the hub is reachable.")
        return (f"select(range({self.rows})) on wikitext-2's train split: {self.empty} of {self.rows} rows are empty "
                f"and {self.headings} are headings; the {self.rows} rows hold only {self.characters:,} characters. "
                "Calibrate on windows of real text instead (quantedu.data.calibration_batches).")


def select_pitfall(n: int = 128) -> SelectPitfall:
    """The seed's ``dataset.select(range(n))`` on wikitext-2, counted (needs the hub; says so plainly offline)."""
    from .models import hub_reachable

    ok, reason = hub_reachable()
    if not ok:
        return SelectPitfall(n, None, None, None, reason)
    try:
        from datasets import load_dataset
        rows = load_dataset("wikitext", "wikitext-2-raw-v1", split="train").select(range(n))["text"]
    except Exception as exc:  # noqa: BLE001 - datasets raises many kinds when offline
        return SelectPitfall(n, None, None, None, f"{exc.__class__.__name__}: {exc}")
    empty = sum(not r.strip() for r in rows)
    headings = sum(r.strip().startswith("=") and r.strip().endswith("=") for r in rows)
    return SelectPitfall(len(rows), empty, headings, sum(len(r) for r in rows))
