"""The course around the package: what a notebook starts with, its quizzes, its comparison table and guide.

* :mod:`.session`: ``start(MODEL)`` -> :class:`Session` (model, tokenizer, corpus, evaluation windows),
  ``parameter`` (notebook parameters from ``QUANTEDU_*``), the course map;
* :mod:`.quiz`: quiz widgets (questions in ``quizzes/*.json``);
* :mod:`.comparison`, :mod:`.guide`, :mod:`.seed_check`: notebook 07's re-measured table, the selection guide
  backed by it, and the seed post's rules checked against the measurements;
* :mod:`.views`: result tables and figures; :mod:`.seed`: the seed post's quoted figures (package data).
"""
from .session import COURSE_MAP, Session, course_map, fast_default, no_bars, parameter, quiet_libraries, start

__all__ = ["COURSE_MAP", "Session", "course_map", "fast_default", "no_bars", "parameter", "quiet_libraries", "start"]
