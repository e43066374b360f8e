"""quantedu.engines.llama_cpp: llama.cpp's own programs, built by `make llama-tools` (part of `make setup`).

The tools are built before the tests run, so a test that needs them FAILS (naming `make llama-tools`) when
the build is missing; only where the build cannot work at all (not Linux/macOS) do those tests skip.
The equality tests use a tiny random Llama (2 layers) with the course model's vocabulary, so every tool
runs in a second or two.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from helpers import gone

from quantedu.engines import llama_cpp as lt
from quantedu.engines.llama_cpp import builder as lt_build
from quantedu.engines import procs
from quantedu.engines import server as servers
from quantedu.engines import load as sb

SUPPORTED, WHY_NOT = lt.build_supported()


@pytest.fixture(scope="module")
def tools():
    if not SUPPORTED:
        pytest.skip(WHY_NOT)
    st = lt.status()
    if not st["ok"]:
        pytest.fail(st["why"])  # names `make llama-tools`
    return st


@pytest.fixture(scope="module")
def gguf():
    from quantedu.models import offline_gguf_path
    return offline_gguf_path()


# ------------------------------------------------------------------------------- finding and building

def test_the_four_tools_and_the_converter_are_built(tools):
    assert set(tools["tools"]) == set(lt.TOOLS)
    for path in tools["tools"].values():
        assert os.access(path, os.X_OK)
    assert Path(tools["convert"]).name == "convert_hf_to_gguf.py"
    assert (Path(tools["convert"]).parent / "gguf-py" / "gguf").is_dir()
    if not tools["override"]:  # our own build: outside the clone, with its record
        root = Path(__file__).resolve().parent.parent
        assert root not in Path(tools["dir"]).resolve().parents
        assert tools["build"]["llama-cpp-python"] == lt.version()
        assert "-DLLAMA_OPENSSL=OFF" in tools["build"]["cmake_flags"]
        assert tools["build"]["total_s"] > 0


def test_a_second_build_reuses_the_first(tools, capsys):
    if tools["override"]:
        pytest.skip(f"{lt.ENV_VAR} is set: nothing is built")
    t0 = time.perf_counter()
    assert lt.build() == lt.build_dir()
    assert time.perf_counter() - t0 < 5
    assert "already built" in capsys.readouterr().out


def test_missing_tools_name_the_make_target(tmp_path, monkeypatch):
    monkeypatch.delenv(lt.ENV_VAR, raising=False)
    monkeypatch.setenv(lt.CACHE_ENV_VAR, str(tmp_path))
    with pytest.raises(lt.ToolsMissingError, match="make llama-tools") as err:
        lt.binary("llama-server")
    assert str(tmp_path) in str(err.value)
    with pytest.raises(lt.ToolsMissingError, match="make llama-tools"):
        lt.convert_script()
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")
    with pytest.raises(lt.ToolsMissingError, match="make llama-tools"):
        lt.start_llama_server(model)  # the binary is looked for before anything starts
    st = lt.status()
    assert not st["ok"] and "make llama-tools" in st["why"]
    from quantedu.engines import doctor
    row = next(r for r in doctor.engines() if r["engine"].startswith("llama.cpp tools"))
    assert not row["usable"] and "make llama-tools" in row["install"]


def test_override_folder_without_the_tools_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv(lt.ENV_VAR, str(tmp_path))
    with pytest.raises(lt.ToolsMissingError, match=lt.ENV_VAR):
        lt.binary("llama-quantize")
    with pytest.raises(ValueError, match="unknown tool"):
        lt.binary("llama-cli")


def test_a_half_build_is_never_used_and_is_cleaned_up(tmp_path, monkeypatch):
    """A folder with binaries but no completion marker (an interrupted copy) is not trusted, and a failed
    build leaves neither a target folder nor its temporary behind."""
    monkeypatch.delenv(lt.ENV_VAR, raising=False)
    monkeypatch.setenv(lt.CACHE_ENV_VAR, str(tmp_path))
    target = lt.build_dir()
    (target / "bin").mkdir(parents=True)
    for t in lt.TOOLS:
        (target / "bin" / t).write_text("#!/bin/sh\n")
        (target / "bin" / t).chmod(0o755)
    with pytest.raises(lt.ToolsMissingError):
        lt.binary("llama-server")
    import shutil
    shutil.rmtree(target)

    # a temporary of a build whose process died is removed by the next build
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".{target.name}.p{dead.pid}.tmp"
    (stale / "build").mkdir(parents=True)

    def fail(work, target, *args):
        (work / "out" / "bin").mkdir(parents=True)
        (work / "out" / "bin" / "llama-server").write_text("half")
        raise lt.BuildError("compiler exploded")
    monkeypatch.setattr(lt_build, "_build_into", fail)
    monkeypatch.setattr(lt_build.shutil, "which", lambda name: "/usr/bin/" + name)
    with pytest.raises(lt.BuildError, match="exploded"):
        lt.build(quiet=True)
    assert not target.exists()
    assert not stale.exists()
    assert not list(tmp_path.glob(".llama.cpp-*.tmp"))


def test_an_interrupted_build_step_leaves_no_process(tmp_path):
    """Ctrl-C during a build step kills the whole process group (cmake, make, the compilers)."""
    import signal
    pidfile = tmp_path / "child.pid"
    old = signal.signal(signal.SIGALRM, lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    signal.setitimer(signal.ITIMER_REAL, 1.0)
    try:
        with pytest.raises(KeyboardInterrupt):
            lt_build._run_logged(["bash", "-c", f"sleep 60 & echo $! > {pidfile}; wait"], tmp_path / "log")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert gone(int(pidfile.read_text()), 5), "a build step's child survived the interrupt"


def test_no_cmake_says_what_to_install(tmp_path, monkeypatch):
    if not SUPPORTED:
        pytest.skip(WHY_NOT)
    monkeypatch.delenv(lt.ENV_VAR, raising=False)
    monkeypatch.setenv(lt.CACHE_ENV_VAR, str(tmp_path))
    monkeypatch.setattr(lt_build.shutil, "which", lambda name: None)
    with pytest.raises(lt.BuildError, match="apt-get install cmake"):
        lt.build(quiet=True)


# ----------------------------------------------------------------------------------------- the server

@pytest.fixture(scope="module")
def server(tools, gguf):
    with lt.start_llama_server(gguf, parallel=2, n_threads=1, ctx=1024) as s:
        yield s
    assert not s.running


def test_command_is_the_seed_command_corrected(tools, gguf):
    cmd = lt.llama_server_command(gguf, 8080, parallel=4, n_threads=2, ctx=8192, n_predict=2048)
    assert Path(cmd[0]).name == "llama-server"
    def flag(c, name):
        return c[c.index(name) + 1]
    assert flag(cmd, "--host") == "127.0.0.1" and flag(cmd, "--port") == "8080"
    assert flag(cmd, "-c") == "8192" and flag(cmd, "-np") == "4" and flag(cmd, "--n-predict") == "2048"
    assert flag(cmd, "-t") == "2" and flag(cmd, "-tb") == "2"
    assert "-ngl" not in cmd and "0.0.0.0" not in cmd
    assert flag(lt.llama_server_command(gguf, 1, parallel=3), "-c") == str(3 * 2048)  # 2048 tokens per slot
    with pytest.raises(ValueError, match="slots"):
        lt.llama_server_command(gguf, 1, parallel=16, ctx=512)
    with pytest.raises(FileNotFoundError):
        lt.llama_server_command(Path("/nonexistent.gguf"), 1)


def test_server_health_completion_and_loopback(server):
    assert server.running and server.base_url.startswith("http://127.0.0.1:")
    conns = [c for c in psutil.Process(server.pid).net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    assert conns and all(c.laddr.ip == "127.0.0.1" for c in conns)
    import urllib.request
    with urllib.request.urlopen(server.base_url + "/health", timeout=10) as r:
        assert r.status == 200
    body = json.dumps({"prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}).encode()
    req = urllib.request.Request(server.base_url + "/v1/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        out = json.load(r)
    text = out["choices"][0]["text"]
    assert text and out["usage"]["completion_tokens"] <= 8
    r = sb.stream_completion(server, "The capital of France is", max_tokens=8)
    assert r.error == "" and r.text == text  # streamed greedy = non-streamed greedy
    assert 1 <= r.n_tokens <= 8


def test_two_slots_serve_two_clients_at_once(server):
    results = sb.run_level(server, concurrency=2, n_requests=2, max_tokens=16)
    assert all(r.error == "" for r in results)
    a, b = results
    assert a.start_s < b.end_s and b.start_s < a.end_s  # overlapping in time
    # decoded together: the second did not wait for the first to finish before its first token
    assert max(a.start_s + a.ttft_s, b.start_s + b.ttft_s) < min(a.end_s, b.end_s)


def test_stop_ends_the_process_and_frees_the_port(tools, gguf):
    s = lt.start_llama_server(gguf, ctx=256)
    pid, port = s.pid, s.port
    s.stop()
    assert gone(pid, 5) and not s.running
    assert not procs.port_in_use(port)
    assert s not in servers.running_servers()


def test_port_in_use_is_refused(tools, gguf):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        port = sock.getsockname()[1]
        before = {p.pid for p in psutil.process_iter()}
        with pytest.raises(servers.PortInUseError, match=str(port)):
            lt.start_llama_server(gguf, port=port, ctx=256)
        new = [p for p in psutil.process_iter() if p.pid not in before and "llama-server" in p.name()]
        assert not new


def test_a_file_it_cannot_load_fails_with_the_log_tail(tools, tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    srv = lt.llama_server(bad, ctx=256)
    with pytest.raises(servers.ServerError, match="before it was ready") as err:
        srv.start(timeout=60)
    assert "Last lines" in str(err.value) and len(str(err.value)) > 200
    assert not srv.running and srv not in servers._LIVE


def test_no_server_outlives_a_killed_python(tools, gguf, tmp_path):
    """The process that started the server gets SIGKILL (no atexit, no __exit__): the server goes too."""
    code = ("import sys, time\nfrom quantedu.engines import llama_cpp\n"
            f"s = llama_cpp.start_llama_server({str(gguf)!r}, ctx=256)\n"
            "print(s.pid, flush=True)\ntime.sleep(120)\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    pid = None
    try:
        line = child.stdout.readline()
        assert line.strip(), "the child did not start a server"
        pid = int(line)
        assert psutil.Process(pid).is_running() and "llama-server" in psutil.Process(pid).name()
        child.kill()  # SIGKILL
        child.wait(10)
        assert gone(pid, 5), "llama-server outlived the Python process that started it"
    finally:
        if child.poll() is None:
            child.kill()
        if pid is not None and psutil.pid_exists(pid):
            psutil.Process(pid).kill()


# ------------------------------------------------------------------- tool output = the course's output

@pytest.fixture(scope="module")
def tiny(tools, gguf, tmp_path_factory):
    """A 2-layer random Llama with the course model's vocabulary, saved as a Hugging Face folder whose
    tokenizer is rebuilt from the course GGUF, converted by llama.cpp's convert_hf_to_gguf.py to f16."""
    import torch

    from quantedu.testmodel import tiny_llama

    model = tiny_llama(vocab_size=49152, intermediate_size=256, max_position_embeddings=512, rope_theta=10000.0,
                       rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2)
    with torch.no_grad():  # varied norm weights, so a norm written wrongly would show
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    root = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(root / "weights")
    folder = lt.checkpoint_with_gguf_tokenizer(root / "weights", gguf, root, model_name="tiny-llama")
    f16 = root / "tiny-f16.gguf"
    run = lt.convert_hf_to_gguf(folder, f16, "f16")
    assert f16.is_file(), run.tail()
    text = root / "text.txt"
    from quantedu.data import evaluation_text
    text.write_text(evaluation_text("pydoc")[:6000])
    return {"model": model, "folder": folder, "f16": f16, "text": text, "root": root, "gguf": gguf}


def _tensors(path):
    """{name: (type name, raw bytes)}, read fast (no GGUFReader over a 49k-token vocabulary)."""
    return lt.tensor_bytes(path)


def _f16_rows(path, name):
    meta, table = lt.read_header(path)
    t = next(t for t in table if t["name"] == name)
    assert t["type"] == "F16"
    return np.asarray(lt.tensor_bytes(path)[name][1]).view(np.float16).astype(np.float32).reshape(-1, t["shape"][0])


def test_convert_equals_the_course_writer_tensor_by_tensor(tiny):
    from quantedu.gguf import io
    ours = tiny["root"] / "ours-f16.gguf"
    io.write_gguf(tiny["model"], ours, "F16", reference_gguf=tiny["gguf"])
    cmp = lt.compare_tensors(ours, tiny["f16"])
    assert len(cmp) == len(lt.read_header(ours)[1]) and cmp["identical"].all(), cmp[~cmp["identical"]]
    assert set(cmp["type_a"]) == {"F16", "F32"}
    # the rebuilt tokenizer gives the converter the course file's vocabulary back
    ma, mb = lt.read_header(tiny["gguf"])[0], lt.read_header(tiny["f16"])[0]
    for key in ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.merges",
                "tokenizer.ggml.token_type", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                "tokenizer.ggml.add_bos_token", "tokenizer.chat_template"):
        assert ma[key] == mb[key], key
    diff = set(lt.metadata_differences(ours, tiny["f16"])["key"])
    assert not {k for k in diff if k.startswith("tokenizer.")}, diff


def test_llama_quantize_equals_the_c_api_and_our_quantizers(tiny):
    from quantedu import gguf as qg
    from quantedu.engines.llama_cpp import bindings as llama
    tool, api = tiny["root"] / "tool-q4km.gguf", tiny["root"] / "api-q4km.gguf"
    lt.quantize(tiny["f16"], tool, "Q4_K_M")
    llama.quantize_file(tiny["f16"], api, "Q4_K_M")
    assert Path(tool).read_bytes() == Path(api).read_bytes()  # the whole file, header included
    kinds = set()
    for name, (qtype, data) in _tensors(tool).items():
        if qtype in qg.TYPES:  # our numpy quantizer on the same f16 input
            assert np.array_equal(qg.quantize(_f16_rows(tiny["f16"], name), qtype).reshape(-1), data), name
            kinds.add(qtype)
    assert "Q4_K" in kinds  # ffn_down's 256-wide rows get a real K-quant, the 64-wide ones fall back


def test_llama_imatrix_matches_the_course_imatrix_and_feeds_llama_quantize(tiny):
    import torch

    from quantedu import gguf as qg
    from quantedu.engines.llama_cpp import bindings as llama
    from quantedu.gguf.imatrix import compute_imatrix
    im_file = tiny["root"] / "imatrix.gguf"
    ctx, chunks = 64, 4
    lt.imatrix(tiny["f16"], tiny["text"], im_file, ctx=ctx, chunks=chunks)
    theirs = lt.read_imatrix(im_file)
    # ours, on the same tokens: llama.cpp's tokenization of the text, the same chunks (no BOS: the
    # vocabulary says add_bos_token = false), the f16-rounded weights llama.cpp computes with
    import llama_cpp
    vocab = llama_cpp.Llama(model_path=str(tiny["f16"]), vocab_only=True, verbose=False)
    ids = vocab.tokenize(tiny["text"].read_text().encode(), add_bos=False, special=False)
    vocab.close()
    batches = torch.tensor(ids[: chunks * ctx]).reshape(chunks, ctx)
    model = tiny["model"]
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
    ours = compute_imatrix(model, batches)
    assert set(ours) == set(theirs)
    for name in ours:
        rel = np.abs(ours[name] - theirs[name]) / np.abs(theirs[name]).max()
        assert rel.max() < 1e-3, (name, rel.max())
    # llama-quantize --imatrix = the C API given the values read back from the tool's file
    tool, api = tiny["root"] / "tool-iq4xs.gguf", tiny["root"] / "api-iq4xs.gguf"
    lt.quantize(tiny["f16"], tool, "IQ4_XS", imatrix_file=im_file)
    llama.quantize_file(tiny["f16"], api, "IQ4_XS", imatrix=theirs)
    cmp = lt.compare_tensors(tool, api)
    assert cmp["identical"].all(), cmp[~cmp["identical"]]  # headers differ: quantize.imatrix.* keys
    assert set(lt.metadata_differences(tool, api)["key"]) <= {
        "quantize.imatrix.file", "quantize.imatrix.dataset", "quantize.imatrix.entries_count",
        "quantize.imatrix.chunks_count"}
    a = _tensors(tool)
    assert "IQ4_XS" in {t for t, _ in a.values()}
    for name, (qtype, data) in a.items():
        if qtype in ("IQ4_XS", "IQ4_NL") and name in theirs:
            ours_q = qg.quantize(_f16_rows(tiny["f16"], name), qtype, theirs[name])
            assert np.array_equal(ours_q.reshape(-1), data), name
    # the legacy .dat format (the seed's `-o imatrix.dat`) reads back to the same values
    dat = tiny["root"] / "imatrix.dat"
    lt.imatrix(tiny["f16"], tiny["text"], dat, ctx=ctx, chunks=chunks)
    legacy = lt.read_imatrix(dat)
    for name in theirs:
        np.testing.assert_allclose(legacy[name], theirs[name], rtol=1e-6)


def test_llama_perplexity_equals_its_protocol_replayed_in_the_library(tiny):
    ctx, chunks = 128, 3
    res = lt.perplexity(tiny["f16"], tiny["text"], ctx=ctx, chunks=chunks)
    assert res.chunks == chunks and np.isfinite(res.ppl) and res.ppl > 1
    text = tiny["text"].read_text()
    replay = lt.perplexity_tool_protocol(tiny["f16"], text, ctx=ctx, chunks=chunks)
    assert abs(replay - res.ppl) / res.ppl < 1e-3, (replay, res.ppl)


def test_a_failing_tool_quotes_its_command_and_output(tools, tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(lt.ToolError, match="llama-quantize failed") as err:
        lt.quantize(bad, tmp_path / "out.gguf", "Q4_K_M")
    assert "command:" in str(err.value)
    assert not (tmp_path / "out.gguf").exists() and not list(tmp_path.glob(".out.gguf*"))
    with pytest.raises(FileNotFoundError):
        lt.perplexity(tmp_path / "missing.gguf", bad)


# ------------------------------------------------- a tool's file against the course; llama.cpp's own logits

def test_course_bytes_holds_each_type_and_catches_one_changed_byte(tiny):
    tool = tiny["root"] / "tool-q4km-check.gguf"
    lt.quantize(tiny["f16"], tool, "Q4_K_M")
    check = lt.course_bytes(tool, tiny["f16"])
    assert check["identical"].all() and "Q4_K" in set(check["type"]), check
    assert set(check["type"]) == {t for t, _ in _tensors(tool).values()} - {"F32", "F16"}
    # one byte changed in the tensor the check reads: that type, and only that one, fails
    row = check.set_index("type").loc["Q4_K"]
    meta, table = lt.read_header(tool)
    offset = next(t["offset"] for t in table if t["name"] == row["checked"])
    bad = tiny["root"] / "tool-q4km-bad.gguf"
    data = bytearray(tool.read_bytes())
    data[offset + 5] ^= 0x10
    bad.write_bytes(bytes(data))
    flagged = lt.course_bytes(bad, tiny["f16"]).set_index("type")["identical"]
    assert not flagged["Q4_K"] and flagged.drop("Q4_K").all()
    with pytest.raises(ValueError, match="float"):
        lt.course_bytes(tool, tool)  # the source must be the float file the tool read


def test_llama_cpp_logits_scored_against_the_torch_baseline(tiny):
    import torch

    from quantedu.engines.llama_cpp import quality
    from quantedu.evaluate import Baseline
    model = tiny["model"]  # its weights are float16-rounded by an earlier test or not: the F16 file is close either way
    windows = torch.randint(0, 49152, (4, 96), generator=torch.Generator().manual_seed(0))
    base = Baseline(model, windows, score_from=8)
    f16 = quality.measure(tiny["f16"], {"a": base}, "F16", n_tokens=4)
    q4 = tiny["root"] / "tiny-q4_0.gguf"
    lt.quantize(tiny["f16"], q4, "Q4_0")
    r4 = quality.report(q4, base, "Q4_0")
    r16 = f16.reports["a"]
    assert r16.tokens == r4.tokens == 4 * (96 - 1 - 8)
    assert r16.kld.mean < 1e-3 and r16.same_top.mean > 0.97  # llama.cpp's F16 run of the same weights
    assert r4.kld.mean > 10 * r16.kld.mean
    assert r16.verdict(r4, metric="kld").winner == "F16"  # paired with torch rows and with each other
    assert f16.tokens_per_s > 0 and f16.sizes["types"]["F16"] > 0
    other = Baseline(model, windows[:, :32], score_from=0)
    other.vocab_size = 1000  # a baseline over another vocabulary is refused before any scoring
    with pytest.raises(ValueError, match="vocabulary"):
        quality.report(q4, other, "Q4_0")
