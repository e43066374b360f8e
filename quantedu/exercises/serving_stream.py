"""Notebook 06's exercise: time to first token and decode tokens/s from a stream of server-sent events.

The OpenAI streaming API (``/v1/completions`` with ``"stream": true``) sends ``data: {json}`` lines and a
final ``data: [DONE]`` (the server-sent events format, WHATWG HTML "Server-sent events"). The reference is
the package's own client, :func:`quantedu.engines.load.stream_completion`: each scripted stream is replayed
through it with a fake connection and a virtual clock (the arrival time of each line), so the expected
numbers are exactly what the benchmark of notebook 06 would report for that stream.
"""
from __future__ import annotations

import json
import math
from types import SimpleNamespace
from unittest import mock

from ..engines import load
from .core import Exercise, case, fmt, register


# --- reference solution (learner style) -------------------------------------------------------------


def sse_timings(t_sent, events):
    stamps = []                                       # arrival times of chunks that carry text
    for t, line in events:
        line = line.strip()
        if not line.startswith("data:"):
            continue                                  # blank separators, ": ping" comments
        data = line[5:].strip()
        if data == "[DONE]":
            break
        chunk = json.loads(data)
        if "".join(c.get("text") or "" for c in chunk.get("choices", ())):
            stamps.append(t)
    ttft = stamps[0] - t_sent if stamps else float("nan")
    span = stamps[-1] - stamps[0] if len(stamps) > 1 else 0.0
    decode_tps = (len(stamps) - 1) / span if span > 0 else float("nan")
    return ttft, decode_tps


# --- the package's client on a scripted stream -------------------------------------------------------


def package_timings(t_sent: float, events: list[tuple[float, str]]) -> tuple[float, float]:
    """``(ttft_s, decode_tps)`` that :func:`quantedu.engines.load.stream_completion` measures for this stream."""
    clock = SimpleNamespace(now=t_sent)

    class Response:
        status = 200

        def __iter__(self):
            for t, line in events:
                clock.now = t
                yield (line + "\n").encode()

        def read(self, n=-1):
            return b""

    class Connection:
        def __init__(self, host, port, timeout=None):
            pass

        def request(self, *args, **kwargs):
            pass

        def getresponse(self):
            return Response()

        def close(self):
            pass

    fake_http = SimpleNamespace(client=SimpleNamespace(HTTPConnection=Connection))
    fake_time = SimpleNamespace(perf_counter=lambda: clock.now)
    with mock.patch.object(load, "http", fake_http), mock.patch.object(load, "time", fake_time):
        r = load.stream_completion("http://127.0.0.1:8080", "prompt", 16, timeout=1e12)
    if r.error:
        raise RuntimeError(f"the scripted stream does not parse in quantedu.engines.load: {r.error}")
    return r.ttft_s, r.decode_tps


# --- streams ----------------------------------------------------------------------------------------


def _chunk(text, **extra):
    return "data: " + json.dumps({"id": "cmpl-1", "object": "text_completion",
                                  "choices": [{"text": text, "index": 0, "finish_reason": None}], **extra})


def _llama_cpp():
    """As llama-cpp-python's server streams: a ping, an empty first chunk, text, [DONE]."""
    words = [" Paris", ".", " It", " is", " the", " capital"]
    ev = [(0.05, ": ping - 2024-01-01 00:00:00"), (0.06, ""), (0.12, _chunk("")), (0.13, "")]
    for k, w in enumerate(words):
        ev += [(0.40 + 0.05 * k, _chunk(w)), (0.40 + 0.05 * k, "")]
    return 0.0, ev + [(0.70, "data: [DONE]"), (0.70, "")]


def _vllm():
    """As vLLM streams with usage: text chunks, then a final chunk with no choices and the usage."""
    ev = [(1.30 + 0.02 * k, _chunk(w)) for k, w in enumerate([" one", " two", " three", " four"])]
    usage = {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}
    ev.append((1.40, "data: " + json.dumps({"id": "cmpl-2", "object": "text_completion", "choices": [],
                                            "usage": usage})))
    return 1.0, ev + [(1.41, "data: [DONE]")]


def _compact():
    """No space after 'data:' (allowed by the SSE format) and a keep-alive comment between tokens."""
    ev = [(2.5, 'data:{"choices": [{"text": "A"}]}'), (2.6, ": keep-alive"), (2.7, 'data:{"choices": [{"text": "B"}]}'),
          (2.9, 'data:{"choices": [{"text": "C"}]}'), (3.0, "data:[DONE]")]
    return 2.0, ev


def _one_token():
    return 0.0, [(0.3, _chunk(" Hi")), (0.31, "data: [DONE]")]


def _text_times(events) -> list[float]:
    """Arrival times of the chunks that carry text (for the diagnoses)."""
    out = []
    for t, line in events:
        data = line.strip()[5:].strip() if line.startswith("data:") else "[DONE]"
        if data != "[DONE]" and any(c.get("text") for c in json.loads(data).get("choices", ())):
            out.append(t)
    return out


def _same(a, b) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def _stream_case(label, make):
    @case(label)
    def run(fn):
        t_sent, events = make()
        exp_ttft, exp_tps = package_timings(t_sent, events)
        try:
            out = fn(t_sent, list(events))
        except ZeroDivisionError:
            return "division by zero: a stream with a single token has no decode interval: return nan there."
        except (IndexError, KeyError) as exc:
            return (f"your code raised {type(exc).__name__}: {exc}. A chunk can have no choices (vLLM's final usage "
                    f"chunk: \"choices\": []) or a choice without text: use chunk.get(\"choices\", ()).")
        except json.JSONDecodeError as exc:
            return (f"json.loads failed ({exc}): skip lines that are not 'data:' (blank lines, ': ping' comments), "
                    f"stop at 'data: [DONE]', and strip the space after 'data:' (it is optional).")
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            return "sse_timings must return (ttft_s, decode_tps)"
        ttft, tps = (float(v) for v in out)
        texts = _text_times(events)
        if not _same(ttft, exp_ttft):
            first_any = next(t for t, line in events if line.strip()) - t_sent
            first_data = next(t for t, line in events if line.startswith("data:")) - t_sent
            cause = ""
            if _same(ttft, first_any) or _same(ttft, first_data):
                cause = (" Likely cause: you timed the first line or chunk; the first TOKEN is the first chunk "
                         "with text.")
            elif texts and _same(ttft, texts[0]):
                cause = " Likely cause: TTFT is measured from when the request was sent: subtract t_sent."
            return f"time to first token: expected {fmt(exp_ttft)} s, got {fmt(ttft)} s.{cause}"
        if not _same(tps, exp_tps):
            n, t_first, t_last = len(texts), texts[0] if texts else 0, texts[-1] if texts else 0
            done = next((t for t, line in events if line.replace(" ", "") == "data:[DONE]"), t_last)
            causes = [(n / (t_last - t_first) if t_last > t_first else math.inf,
                       "n tokens arrive with n - 1 gaps: decode speed is (n - 1) / (t_last - t_first)."),
                      ((n - 1) / (t_last - t_sent) if t_last > t_sent else math.inf,
                       "decode speed leaves out the time to first token: divide by t_last - t_first."),
                      (n / (t_last - t_sent) if t_last > t_sent else math.inf,
                       "that is tokens / latency; decode speed is (n - 1) / (t_last - t_first)."),
                      ((n - 1) / (done - t_first) if done > t_first else math.inf,
                       "[DONE] (and the usage chunk) carry no token: stop the clock at the last chunk with text."),
                      (0.0, "with one token there is no decode interval: return nan.")]
            cause = next((c for v, c in causes if _same(tps, v)), "")
            return (f"decode tokens/s: expected {fmt(exp_tps)}, got {fmt(tps)}."
                    + (f" Likely cause: {cause}" if cause else ""))
        return None
    return run


register(Exercise(
    id="06.sse_timings",
    title="time to first token and decode speed from a stream",
    statement="""\
Write `sse_timings(t_sent, events)` for one streamed completion: `t_sent` is when the request was sent (seconds),
`events` the lines the server sent as `(arrival time, line)` pairs. A line `data: {...}` carries a JSON chunk
whose `choices[0]["text"]` may be empty; `data: [DONE]` ends the stream; blank lines and comments (`: ping`)
carry nothing. Return `(ttft_s, decode_tps)`: the time from sending to the first chunk **with text**, and
`(n - 1) / (t_last - t_first)` over the `n` chunks with text (`nan` when there are fewer than two).""",
    reference="`quantedu.engines.load.stream_completion` (replayed on each stream with a virtual clock)",
    imports="import json\n\nfrom quantedu.exercises import check, hint",
    stubs=('''\
def sse_timings(t_sent, events):
    """(ttft_s, decode_tps) of a stream of (arrival time, line) server-sent events."""
    ...  # YOUR CODE
''',),
    solution=(sse_timings,),
    cases=lambda context: [
        _stream_case("a llama.cpp stream: a ping, an empty first chunk, then 6 tokens", _llama_cpp),
        _stream_case("a vLLM stream whose last chunk has no choices, only usage", _vllm),
        _stream_case("compact lines ('data:{...}', no space) and a keep-alive comment", _compact),
        _stream_case("a single token", _one_token),
    ],
    hints=(
        "Skip every line that does not start with 'data:'; strip what follows; stop at '[DONE]'.",
        "json.loads the rest; the text is in chunk['choices'][0]['text'], but a chunk may have no choices: "
        "use chunk.get('choices', ()) and c.get('text') or ''.",
        "Keep the arrival time of every chunk with non-empty text: ttft = first - t_sent; "
        "decode = (n - 1) / (last - first), nan if n < 2.",
    ),
))
