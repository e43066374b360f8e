"""The seed post's figures and rules, as quoted (not measured): package data, read with importlib.resources.

They ship inside the wheel (``quantedu/course/data/*.csv``), so a notebook installed from PyPI or git on Colab,
or opened in an offline room, reads them without the repository.
"""
from __future__ import annotations

from importlib import resources

import pandas as pd

FILES = ("seed_memory", "seed_rules", "seed_table")


def seed_csv(name: str) -> pd.DataFrame:
    """One of the seed post's quoted tables: ``seed_memory``, ``seed_rules`` or ``seed_table``."""
    if name not in FILES:
        raise ValueError(f"no seed table {name!r}; there are {', '.join(FILES)}")
    with resources.files(__package__).joinpath("data", f"{name}.csv").open("rb") as f:
        return pd.read_csv(f)


__all__ = ["FILES", "seed_csv"]
