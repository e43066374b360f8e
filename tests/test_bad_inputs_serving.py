"""Bad-input matrix for quantedu.engines.server (issue 10): a port a server just left is free again at once (its
connections in TIME_WAIT do not block a restart), a port with a live listener is still refused, and no
server leaves its log file behind, whether it stops, fails to start or never starts.

Most cases use a 15-line stand-in server (python's http.server, which binds with SO_REUSEADDR like
uvicorn does); one case restarts the real llama.cpp server on the offline GGUF."""
import glob
import socket
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from helpers import offline_gguf, require_module

from quantedu.engines import llama_cpp as lt
from quantedu.engines import procs
from quantedu.engines import server as servers

FAKE_SERVER = r'''
import http.server, sys
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b'{"data": [{"id": "fake"}]}')
    def log_message(self, fmt, *args):
        print("request", self.path, flush=True)
print("fake server on port", sys.argv[1], flush=True)
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
'''


def fake(port, **kwargs):
    return servers.Server([sys.executable, "-c", FAKE_SERVER, str(port)], port, name="fake", **kwargs)


def our_logs():
    return set(glob.glob(str(Path(tempfile.gettempdir()) / "quantedu-fake-*.log")))


@pytest.fixture
def no_log_left():
    before = our_logs()
    yield
    leaked = our_logs() - before
    for path in leaked:
        Path(path).unlink()
    assert not leaked, f"server logs left behind: {leaked}"


def time_wait_port() -> int:
    """A port whose only trace is a server-side connection in TIME_WAIT (what a stopped server leaves)."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn / http.server bind
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    port = srv.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    conn, _ = srv.accept()
    conn.close()  # the server side closes first: its end goes to TIME_WAIT
    time.sleep(0.05)
    client.close()
    srv.close()
    return port


# ------------------------------------------------------------------------------------------ ports

def test_port_in_time_wait_is_free():
    assert not procs.port_in_use(time_wait_port())


@pytest.mark.parametrize("reuse, host", [(False, "127.0.0.1"), (True, "127.0.0.1"), (False, "0.0.0.0")])
def test_port_with_a_live_listener_is_in_use_good_before(reuse, host):
    with socket.socket() as s:
        if reuse:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, 0))
        s.listen()
        port = s.getsockname()[1]
        assert procs.port_in_use(port)
        with pytest.raises(servers.PortInUseError, match="already in use"):
            fake(port).start()


def test_free_port_is_free_good_before():
    assert not procs.port_in_use(procs.free_port())


def test_immediate_restart_on_the_same_port(no_log_left):
    port = procs.free_port()
    first = fake(port).start(timeout=20)
    for _ in range(3):
        urllib.request.urlopen(first.base_url + "/v1/models").read()
    first.stop()
    with fake(port) as second:  # the port it just left
        assert second.running and servers.models(second) == ["fake"]


def test_second_server_on_a_live_port_is_still_refused(no_log_left):
    with fake(procs.free_port()) as first:
        with pytest.raises(servers.PortInUseError, match=str(first.port)):
            fake(first.port).start(timeout=20)


# ------------------------------------------------------------------------------------------- logs

def test_log_is_removed_when_the_server_stops_and_its_tail_kept(no_log_left):
    srv = fake(procs.free_port())
    with srv:
        log = srv.log_path
        assert log.is_file()
        urllib.request.urlopen(srv.base_url + "/hello").read()
        time.sleep(0.2)
        assert "request /hello" in srv.log_tail()
    assert not log.exists() and srv.log_path is None
    assert "request /hello" in srv.log_tail()  # still readable after stop
    assert "log=None" in repr(srv)


def test_a_server_never_started_makes_no_log(no_log_left):
    srv = fake(procs.free_port())
    assert srv.log_path is None
    srv.stop()  # harmless


def test_failed_start_quotes_the_log_and_leaves_nothing(no_log_left):
    srv = servers.Server([sys.executable, "-c", "print('boom: bad model file', flush=True); raise SystemExit(3)"],
                         procs.free_port(), name="fake")
    with pytest.raises(servers.ServerError, match=r"exited with code 3(.|\n)*boom: bad model file"):
        srv.start(timeout=20)
    assert not srv.running and srv not in servers._LIVE and srv.log_path is None


def test_command_that_cannot_run_is_a_server_error_and_leaves_no_log(no_log_left, tmp_path):
    srv = servers.Server([str(tmp_path / "no-such-engine"), "serve"], procs.free_port(), name="fake")
    with pytest.raises(servers.ServerError, match="could not run"):
        srv.start()
    assert srv.log_path is None and srv not in servers._LIVE


def test_unwritable_log_path_is_a_server_error(tmp_path, no_log_left):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    srv = fake(procs.free_port(), log_path=blocker / "server.log")
    with pytest.raises(servers.ServerError, match="cannot write the log"):
        srv.start()
    assert srv.proc is None and srv not in servers._LIVE


def test_timeout_stops_the_server_and_removes_its_log(no_log_left):
    srv = servers.Server([sys.executable, "-c", "import time; print('loading', flush=True); time.sleep(60)"],
                         procs.free_port(), name="fake")
    with pytest.raises(servers.ServerError, match=r"not ready after 1 s(.|\n)*loading"):
        srv.start(timeout=1)
    assert not srv.running and srv.log_path is None


def test_logs_of_dead_processes_are_swept_and_live_ones_kept(no_log_left):
    import subprocess

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    tmp = Path(tempfile.gettempdir())
    orphan = tmp / f"quantedu-fake-1-p{dead.pid}-abcd1234.log"  # its kernel was SIGKILLed: no stop() ran
    alive = tmp / "quantedu-fake-1-p1-abcd1234.log"  # pid 1 is alive: not ours to judge
    orphan.write_text("old log")
    alive.write_text("live log")
    try:
        with fake(procs.free_port()):
            pass
        assert not orphan.exists() and alive.exists()
    finally:
        orphan.unlink(missing_ok=True)
        alive.unlink(missing_ok=True)


def test_a_log_path_you_pass_is_kept_good_before(tmp_path, no_log_left):
    log = tmp_path / "mine.log"
    with fake(procs.free_port(), log_path=log) as srv:
        assert srv.log_path == log
    assert log.is_file() and "fake server on port" in log.read_text()


# ------------------------------------------------------------------------------ real llama.cpp

def test_llama_cpp_restarts_on_the_port_it_just_left():
    require_module("llama_cpp")
    require_module("uvicorn")
    gguf = offline_gguf()
    before = set(glob.glob(str(Path(tempfile.gettempdir()) / "quantedu-llama.cpp*.log")))
    with lt.start_llama_cpp(gguf, n_ctx=256) as first:
        assert servers.models(first)
    with lt.start_llama_cpp(gguf, port=first.port, n_ctx=256) as second:
        assert servers.models(second)
    assert set(glob.glob(str(Path(tempfile.gettempdir()) / "quantedu-llama.cpp*.log"))) == before
