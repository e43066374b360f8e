"""quantedu.engines.server + quantedu.engines.load against a real llama.cpp server on the offline GGUF (1 thread)."""
import socket
import sys
import time

import psutil
import pytest
from helpers import gone, offline_gguf, require_module

from quantedu.engines import llama_cpp as lt
from quantedu.engines import load as sb
from quantedu.engines import procs
from quantedu.engines import server as servers



@pytest.fixture(scope="module")
def gguf():
    require_module("llama_cpp")
    require_module("uvicorn")
    return offline_gguf()


@pytest.fixture(scope="module")
def server(gguf):
    with lt.start_llama_cpp(gguf, n_ctx=512) as s:
        yield s
    assert not s.running


def test_server_is_loopback_only_and_answers(server, gguf):
    assert server.running and server.base_url.startswith("http://127.0.0.1:")
    conns = [c for c in psutil.Process(server.pid).net_connections(kind="inet")
             if c.status == psutil.CONN_LISTEN]
    assert conns and all(c.laddr.ip == "127.0.0.1" for c in conns)
    assert servers.models(server)  # /v1/models lists the loaded file
    r = sb.stream_completion(server, "The capital of France is", max_tokens=8)
    assert r.error == ""
    assert 1 <= r.n_tokens <= 8
    assert 0 < r.ttft_s <= r.latency_s < 60


def test_sweep_numbers_are_consistent(server):
    df = sb.sweep(server, concurrency=(1, 2), n_requests=2, max_tokens=6, warmup=0)
    assert len(df) == 4 and (df.error == "").all()
    assert (df.n_tokens >= 1).all() and (df.n_tokens <= 6).all()
    assert (df.ttft_s > 0).all() and (df.ttft_s <= df.latency_s).all()
    s = sb.by_concurrency(df)
    assert list(s.index) == [1, 2]
    assert (s.latency_p50_s <= s.latency_p95_s + 1e-9).all()
    assert (s.throughput_tok_s > 0).all()
    # tokens / wall time of the level: recompute for concurrency 1 from the per-request rows
    one = df[df.concurrency == 1]
    assert s.loc[1, "throughput_tok_s"] == pytest.approx(one.n_tokens.sum() / (one.end_s.max() - one.start_s.min()))


def test_client_refuses_non_loopback():
    with pytest.raises(ValueError, match="local server"):
        sb.stream_completion("http://example.com:80", "hi")
    with pytest.raises(ValueError, match="concurrency"):
        sb.run_level("http://127.0.0.1:9", concurrency=0, n_requests=1)


def test_port_in_use_is_refused(server, gguf):
    with pytest.raises(servers.PortInUseError, match=str(server.port)):
        lt.start_llama_cpp(gguf, port=server.port)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert procs.port_in_use(port)
        with pytest.raises(servers.PortInUseError, match="already in use"):
            lt.llama_cpp_server(gguf, port=port).start()


def test_missing_model_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        lt.llama_cpp_server(tmp_path / "nope.gguf")


def test_missing_server_extra_names_the_extra(gguf, monkeypatch):
    real = lt.server._missing
    monkeypatch.setattr(lt.server, "_missing", lambda mods: ["uvicorn"] if "uvicorn" in mods else real(mods))
    with pytest.raises(servers.MissingPackageError, match=r"llama-cpp-python\[server\]"):
        lt.llama_cpp_server(gguf)


def test_startup_failure_leaves_nothing_and_quotes_the_log(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)  # not a loadable model: the server exits during start-up
    srv = lt.llama_cpp_server(bad)
    with pytest.raises(servers.ServerError, match="before it was ready"):
        srv.start(timeout=60)
    assert not srv.running and srv not in servers._LIVE


def _kernel_manager():
    jupyter_client = require_module("jupyter_client")
    km = jupyter_client.KernelManager(kernel_name="python3")
    km.kernel_spec  # noqa: B018 - fail early if no kernel spec
    km.kernel_cmd = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    return km, kc


def _wait_for_pid(path, within=90.0) -> int:
    deadline = time.time() + within
    while time.time() < deadline:
        if path.is_file() and path.read_text().strip():
            return int(path.read_text())
        time.sleep(0.2)
    raise AssertionError("the kernel did not start a server in time")


@pytest.mark.parametrize("how", ["interrupt", "kill"])
def test_kernel_interrupted_or_killed_mid_request_leaves_no_server(tmp_path, gguf, how):
    """A notebook cell streams a long completion; the kernel is interrupted (or killed) mid-request."""
    pidfile = tmp_path / "server.pid"
    request = "load.stream_completion(server, 'Once upon a time', max_tokens=1000, timeout=120)"
    code = [
        "from pathlib import Path",
        "from quantedu.engines import llama_cpp as lt, load",
        f"server = lt.start_llama_cpp({str(gguf)!r}, n_ctx=512)",
        f"Path({str(pidfile)!r}).write_text(str(server.pid))",
    ]
    # interrupt: the cell uses the context manager; kill: no context manager, only the kernel's death stops it
    code += ["with server:", "    " + request] if how == "interrupt" else [request]
    km, kc = _kernel_manager()
    pid = None
    try:
        msg_id = kc.execute("\n".join(code))
        pid = _wait_for_pid(pidfile)
        server = psutil.Process(pid)
        assert "llama_cpp.server" in " ".join(server.cmdline())
        # mid-request: the server has started streaming (the request can run for ~1000 tokens)
        time.sleep(2.0)
        assert server.is_running()
        if how == "interrupt":
            km.interrupt_kernel()
            reply = kc.get_shell_msg(timeout=60)
            while reply["parent_header"].get("msg_id") != msg_id:
                reply = kc.get_shell_msg(timeout=60)
            assert reply["content"]["status"] == "error"
            assert reply["content"]["ename"] == "KeyboardInterrupt"
            assert gone(pid, 15.0), "the server survived the interrupted cell"
        else:
            km.shutdown_kernel(now=True)  # SIGKILL: no atexit, no __exit__
            assert gone(pid, 15.0), "the server survived its kernel"
    finally:
        kc.stop_channels()
        if km.is_alive():
            km.shutdown_kernel(now=True)
        if pid is not None and psutil.pid_exists(pid):  # a failed run must not leave its server behind
            try:
                psutil.Process(pid).kill()
            except psutil.NoSuchProcess:
                pass


def test_server_left_running_is_stopped_when_python_exits(gguf):
    """No stop(), no context manager: the atexit hook (and the parent-death signal) clean up."""
    import subprocess

    code = ("from quantedu.engines import llama_cpp as lt; "
            f"s = lt.start_llama_cpp({str(gguf)!r}, n_ctx=256); print(s.pid, flush=True)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    pid = int(out.stdout.split()[-1])
    try:
        assert gone(pid, within=5.0), "a server outlived the Python process that started it"
    finally:
        if psutil.pid_exists(pid):
            psutil.Process(pid).kill()
