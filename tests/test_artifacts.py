import json

import pytest

from quantedu import artifacts


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    target = tmp_path / "a" / "file.bin"
    artifacts.atomic_write_bytes(target, b"one")
    artifacts.atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in target.parent.iterdir()] == ["file.bin"]


def test_atomic_path_keeps_old_file_when_writer_fails(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with artifacts.atomic_path(target, overwrite=True) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_cached_dir_builds_once_and_rebuilds_incomplete_entry(tmp_cache):
    calls = []

    def build(d):
        calls.append(d)
        (d / "x.txt").write_text("built")

    first = artifacts.cached_dir("kind", "key", build)
    second = artifacts.cached_dir("kind", "key", build)
    assert first == second and len(calls) == 1 and (first / "x.txt").read_text() == "built"
    (first / ".complete").unlink()  # an interrupted build: the marker never got written
    artifacts.cached_dir("kind", "key", build)
    assert len(calls) == 2 and artifacts.is_complete(first)


def test_cached_dir_failed_build_leaves_nothing(tmp_cache):
    def build(d):
        (d / "partial").write_text("x")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        artifacts.cached_dir("kind", "broken", build)
    assert not artifacts.entry_dir("kind", "broken").exists()
    assert not any(p.name.endswith(".tmp") for p in (tmp_cache / "kind").iterdir())


def test_cached_json_recomputes_corrupt_entry(tmp_cache):
    values = iter([1.5, 2.5])
    assert artifacts.cached_json("r", "k", lambda: next(values)) == 1.5
    assert artifacts.cached_json("r", "k", lambda: next(values)) == 1.5  # cached
    path = tmp_cache / "r" / "k.json"
    path.write_text('{"value": 1.')  # truncated
    assert artifacts.cached_json("r", "k", lambda: next(values)) == 2.5
    assert json.loads(path.read_text()) == {"value": 2.5}


def test_cache_key_depends_on_every_part():
    a = artifacts.cache_key("model", "gptq", {"bits": 4})
    assert a == artifacts.cache_key("model", "gptq", {"bits": 4})
    assert a != artifacts.cache_key("model", "gptq", {"bits": 3})
    assert a.startswith("model-gptq-")


def test_code_fingerprint_changes_with_the_code():
    import types
    a = types.ModuleType("a")
    exec("def f():\n    return 1\n", a.__dict__)
    from quantedu import gptq, awq
    assert artifacts.code_fingerprint(gptq) == artifacts.code_fingerprint(gptq)
    assert artifacts.code_fingerprint(gptq) != artifacts.code_fingerprint(awq)
    assert artifacts.code_fingerprint(gptq, awq) != artifacts.code_fingerprint(gptq)
