"""A small load generator for OpenAI-compatible servers (llama.cpp's or vLLM's), in plain ``http.client``.

Each request streams ``/v1/completions`` (server-sent events), so the client sees every token arrive:

* **TTFT** (time to first token): request sent -> first non-empty text chunk. Prompt processing
  plus queueing: it grows with concurrency when the server handles one request at a time.
* **decode tokens/s** of one request: ``(n_tokens - 1) / (t_last - t_first)``.
* **latency**: request sent -> stream closed; reported as p50 / p95 over the requests of a level.
* **throughput**: all completion tokens of a level / wall time of that level (first send -> last end).

A *sweep* runs ``n_requests`` requests at each concurrency level (``c`` client threads). Everything is
bounded (request count, concurrency, tokens, per-request timeout) and loopback-only: this is a
measuring tool for a server you started, not a load-testing tool for someone else's.
"""
from __future__ import annotations

import http.client
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from urllib.parse import urlparse

import numpy as np

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
MAX_REQUESTS, MAX_CONCURRENCY, MAX_TOKENS = 256, 64, 1024
PROMPTS = (
    "The capital of France is",
    "Write one sentence about the ocean:",
    "List three prime numbers:",
    "A good name for a cat is",
    "The main idea of quantization is",
    "Python is a programming language that",
)


@dataclass
class RequestResult:
    concurrency: int
    index: int
    ttft_s: float
    latency_s: float
    n_tokens: int
    decode_tps: float
    start_s: float
    end_s: float
    error: str = ""
    text: str = ""


def _base(url) -> tuple[str, int]:
    url = getattr(url, "base_url", url)  # a quantedu.engines.server.Server or a URL
    parsed = urlparse(str(url))
    if parsed.scheme != "http" or parsed.hostname not in LOOPBACK:
        raise ValueError(f"{url}: the benchmark client only talks to a local server (http://127.0.0.1:PORT)")
    return parsed.hostname, parsed.port or 80


def stream_completion(url, prompt: str, max_tokens: int = 32, model: str | None = None, timeout: float = 60.0,
                      concurrency: int = 1, index: int = 0, t_origin: float | None = None) -> RequestResult:
    """One streamed greedy completion; returns its timings (``error`` set instead of raising). Only a complete
    answer counts: a stream that ends without ``[DONE]`` or a ``finish_reason`` (the server died), or that carries
    an error object (a server whose engine died mid-answer says so, then ends the stream), is an error."""
    host, port = _base(url)
    body = {"prompt": prompt, "max_tokens": int(max_tokens), "temperature": 0.0, "stream": True}
    if model:
        body["model"] = model
    t_origin = time.perf_counter() if t_origin is None else t_origin
    t0 = time.perf_counter()
    stamps, pieces, usage_tokens, error = [], [], None, ""
    finished = False  # a complete answer ends with `data: [DONE]` or a chunk carrying a finish_reason
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("POST", "/v1/completions", body=json.dumps(body),
                     headers={"Content-Type": "application/json", "Accept": "text/event-stream"})
        resp = conn.getresponse()
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {resp.read(500).decode(errors='replace')}")
        for raw in resp:
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue  # blank separators, ': ping' comments
            data = line[5:].strip()
            if data == b"[DONE]":
                finished = True
                break
            chunk = json.loads(data)
            if chunk.get("error"):  # vLLM reports a dead engine inside the stream, then still ends it with [DONE]
                err = chunk["error"]
                raise RuntimeError(f"the server sent an error in the stream: "
                                   f"{err.get('message', err) if isinstance(err, dict) else err}")
            finished = finished or any(c.get("finish_reason") for c in chunk.get("choices", ()))
            if chunk.get("usage") and chunk["usage"].get("completion_tokens"):
                usage_tokens = chunk["usage"]["completion_tokens"]
            text = "".join(c.get("text") or "" for c in chunk.get("choices", ()))
            if text:
                stamps.append(time.perf_counter())
                pieces.append(text)
            if time.perf_counter() - t0 > timeout:
                raise TimeoutError(f"stream still open after {timeout} s")
        if not finished:  # the server died mid-answer: its partial tokens are not a (short) success
            raise ConnectionError(f"the stream ended after {len(stamps)} text chunks without [DONE] or a "
                                  "finish_reason (did the server die?)")
    except Exception as exc:  # noqa: BLE001 - recorded per request, summarised by the sweep
        error = f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()
    t1 = time.perf_counter()
    n = usage_tokens or len(stamps)
    ttft = stamps[0] - t0 if stamps else float("nan")
    span = stamps[-1] - stamps[0] if len(stamps) > 1 else 0.0
    tps = (len(stamps) - 1) / span if span > 0 else float("nan")
    return RequestResult(concurrency, index, ttft, t1 - t0, n, tps, t0 - t_origin, t1 - t_origin, error,
                         "".join(pieces))


def run_level(url, concurrency: int, n_requests: int, max_tokens: int = 32, prompts=PROMPTS,
              model: str | None = None, timeout: float = 60.0) -> list[RequestResult]:
    """``n_requests`` requests with ``concurrency`` client threads; returns their results in order."""
    _base(url)
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise ValueError(f"concurrency must be in 1..{MAX_CONCURRENCY}")
    if not 1 <= n_requests <= MAX_REQUESTS:
        raise ValueError(f"n_requests must be in 1..{MAX_REQUESTS}")
    if not 1 <= max_tokens <= MAX_TOKENS:
        raise ValueError(f"max_tokens must be in 1..{MAX_TOKENS}")
    origin = time.perf_counter()
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="bench")
    try:
        futures = [pool.submit(stream_completion, url, prompts[i % len(prompts)], max_tokens, model, timeout,
                               concurrency, i, origin) for i in range(n_requests)]
        results = [f.result() for f in futures]
    except BaseException:  # KeyboardInterrupt: drop queued requests, do not wait for the running ones
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    return results


def sweep(url, concurrency=(1, 2, 4), n_requests: int = 8, max_tokens: int = 32, prompts=PROMPTS,
          model: str | None = None, timeout: float = 60.0, warmup: int = 1):
    """Run :func:`run_level` at each concurrency; one row per request (pandas DataFrame).

    ``warmup`` requests go first and are not recorded (the first request pays one-off costs).
    """
    import pandas as pd

    for _ in range(warmup):
        stream_completion(url, prompts[0], max_tokens=4, model=model, timeout=timeout)
    rows = []
    for c in concurrency:
        rows += [asdict(r) for r in run_level(url, int(c), n_requests, max_tokens, prompts, model, timeout)]
    df = pd.DataFrame(rows)
    failed = df[df.error != ""]
    if len(failed) == len(df):
        raise RuntimeError(f"every request failed; first error: {failed.error.iloc[0]}")
    return df


def by_concurrency(requests) -> "pd.DataFrame":  # noqa: F821
    """One row per concurrency level: TTFT, decode tok/s, throughput, p50/p95 latency, failures."""
    import pandas as pd

    rows = []
    for c, g in requests.groupby("concurrency"):
        ok = g[g.error == ""]
        wall = ok.end_s.max() - ok.start_s.min() if len(ok) else float("nan")
        rows.append({
            "concurrency": c, "requests": len(g), "failed": len(g) - len(ok),
            "ttft_p50_s": ok.ttft_s.median(), "ttft_p95_s": np.nanpercentile(ok.ttft_s, 95) if len(ok) else np.nan,
            "decode_tok_s": ok.decode_tps.median(),
            "throughput_tok_s": ok.n_tokens.sum() / wall if wall > 0 else float("nan"),
            "latency_p50_s": ok.latency_s.median(),
            "latency_p95_s": np.percentile(ok.latency_s, 95) if len(ok) else np.nan,
        })
    return pd.DataFrame(rows).set_index("concurrency")


def plot_sweep(summary, label: str = "", axes=None):
    """Throughput, latency (p50/p95) and TTFT against concurrency; several calls can share ``axes``."""
    import matplotlib.pyplot as plt

    if axes is None:
        _, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    x = summary.index.values
    axes[0].plot(x, summary.throughput_tok_s, "o-", label=label or None)
    axes[0].set(title="total throughput", xlabel="concurrent requests", ylabel="tokens/s")
    line, = axes[1].plot(x, summary.latency_p50_s, "o-", label=f"{label} p50".strip())
    axes[1].plot(x, summary.latency_p95_s, "s--", color=line.get_color(), label=f"{label} p95".strip())
    axes[1].set(title="request latency", xlabel="concurrent requests", ylabel="seconds")
    axes[2].plot(x, summary.ttft_p50_s, "o-", label=label or None)
    axes[2].set(title="time to first token (p50)", xlabel="concurrent requests", ylabel="seconds")
    for ax in axes:
        ax.set_xticks(x)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    return axes


__all__ = ["RequestResult", "stream_completion", "run_level", "sweep", "by_concurrency", "plot_sweep", "PROMPTS"]
