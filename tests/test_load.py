"""quantedu.engines.load counts only complete answers: a fake OpenAI-style server that dies mid-stream."""
import subprocess
import sys
from dataclasses import asdict

import pandas as pd
import pytest

from quantedu.engines import load as sb

# A streaming /v1/completions server in a child process: it sends three tokens, then either finishes the
# answer (finish_reason + [DONE]) or dies on the spot (os._exit), as a crashed inference server does.
FAKE_SERVER = r'''
import json, os, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
mode = sys.argv[1]

class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        for word in ("one", " two", " three"):
            chunk = {"choices": [{"index": 0, "text": word, "finish_reason": None}]}
            self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            self.wfile.flush()
        if mode == "die":
            os._exit(1)
        if mode == "error":  # vLLM's way when its engine dies: an error object, then [DONE]
            error = {"error": {"message": "EngineDeadError: engine died", "type": "InternalServerError", "code": 500}}
            self.wfile.write(b"data: " + json.dumps(error).encode() + b"\n\ndata: [DONE]\n\n")
            return
        last = {"choices": [{"index": 0, "text": "", "finish_reason": "length"}]}
        self.wfile.write(b"data: " + json.dumps(last).encode() + b"\n\ndata: [DONE]\n\n")

server = HTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
'''


@pytest.fixture
def fake_server():
    procs = []

    def start(mode):
        proc = subprocess.Popen([sys.executable, "-c", FAKE_SERVER, mode], stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        return f"http://127.0.0.1:{int(proc.stdout.readline())}"

    yield start
    for proc in procs:
        proc.kill()
        proc.wait(10)


def test_a_complete_stream_counts(fake_server):
    r = sb.stream_completion(fake_server("complete"), "hi", max_tokens=3)
    assert r.error == "" and r.n_tokens == 3 and r.text == "one two three"


def test_a_server_that_dies_mid_stream_is_a_failed_request_not_a_short_success(fake_server):
    url = fake_server("die")
    r = sb.stream_completion(url, "hi", max_tokens=3)
    assert "without [DONE] or a finish_reason" in r.error, r
    assert r.text == "one two three"  # it did receive the partial answer ...
    s = sb.by_concurrency(pd.DataFrame([asdict(r)]))
    assert s.loc[1, "failed"] == 1 and not s.loc[1, "throughput_tok_s"] > 0  # ... and it counts for nothing


def test_an_error_sent_inside_the_stream_is_a_failed_request(fake_server):
    r = sb.stream_completion(fake_server("error"), "hi", max_tokens=3)
    assert "error in the stream: EngineDeadError: engine died" in r.error, r
    assert sb.by_concurrency(pd.DataFrame([asdict(r)])).loc[1, "failed"] == 1
