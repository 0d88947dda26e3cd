"""Load check of the OpenAI-compatible API: many concurrent streaming clients on loopback, with
continuous batching against one request at a time, in the same run.

    python benchmarks/api_load.py                       # v7 1.5B shape, cpu int8, 8 streams, 50 clients
    python benchmarks/api_load.py --shape v7-0.4b --clients 20 --max-batch 8 --baseline-batch 1

For each server (``roost serve`` in a subprocess on 127.0.0.1, a free port, a random-weight model of
a real shape: first ``--max-batch 1``, one reply at a time, then ``--max-batch`` replies decoded
together) the official ``openai`` async client runs: one streaming chat request alone, then
``--streams`` at once (aggregate generation speed), then ``--clients`` at once with prompts of about
``--prompt-tokens`` tokens. Reports errors, lost responses (a stream without a finish_reason and
usage, or tokens the server generated that no client received), throughput and time to first token
(first content chunk), then the ratios against the targets: ``--streams`` streams at least 4x one
stream's tokens per second; with ``--clients`` clients, a median time to first token at most a
third of the one-at-a-time server's. Everything is bounded by ``--timeout``. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    if not values:
        return float("nan")
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


FILLER = ("The weather in the valley was mild, the river ran quietly past the old mill, and the children "
          "walked to school along the path between the fields while the baker opened his shop. ")


def prompt_text(i: int, tokens: int) -> str:
    """About `tokens` tokens of user message (World tokenizer: ~4-5 characters a token)."""
    text = f"Client {i}: tell me a short story about the number {i}. "
    while len(text) < tokens * 4.5:
        text += FILLER
    return text[:int(tokens * 4.5)]


async def one_client(client, model: str, i: int, max_tokens: int, prompt_tokens: int = 16) -> dict:
    t0 = time.perf_counter()
    out = {"ttft": None, "seconds": None, "tokens": 0, "finish": None, "error": None, "text": "", "at": []}
    try:
        stream = await client.chat.completions.create(
            model=model, stream=True, max_tokens=max_tokens, seed=i, stream_options={"include_usage": True},
            messages=[{"role": "user", "content": prompt_text(i, prompt_tokens)}])
        async for chunk in stream:
            if chunk.choices:
                c = chunk.choices[0]
                if c.delta.content:
                    out["at"].append(time.perf_counter())
                    if out["ttft"] is None:
                        out["ttft"] = time.perf_counter() - t0
                    out["text"] += c.delta.content
                if c.finish_reason:
                    out["finish"] = c.finish_reason
            if chunk.usage is not None:
                out["tokens"] = chunk.usage.completion_tokens
    except Exception as e:  # noqa: BLE001 -- counted and shown
        out["error"] = f"{type(e).__name__}: {e}"
    out["seconds"] = time.perf_counter() - t0
    return out


async def run_clients(base_url: str, model: str, n: int, max_tokens: int,
                      prompt_tokens: int = 16) -> tuple[list[dict], float]:
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key="loopback", max_retries=0, timeout=1800)
    t0 = time.perf_counter()
    results = await asyncio.gather(*(one_client(client, model, i, max_tokens, prompt_tokens) for i in range(n)))
    wall = time.perf_counter() - t0
    await client.close()
    return list(results), wall


def http():
    """The HTTP client the openai package brings: httpx2 (openai 3.x) or httpx (older)."""
    try:
        import httpx2
    except ImportError:
        import httpx as httpx2
    return httpx2


def server_stats(base_url: str) -> dict:
    return http().get(base_url.removesuffix("/v1") + "/roost/stats", timeout=10).json()


def decode_rate(results: list[dict]) -> float:
    """Tokens per second received while every client was past its first token and none had
    finished: the speed of decoding alone, the prompts' reading left out."""
    times = [r["at"] for r in results if len(r["at"]) > 1]
    if not times:
        return float("nan")
    start, end = max(t[0] for t in times), min(t[-1] for t in times)
    if end <= start:
        return float("nan")
    return sum(sum(1 for x in t if start < x <= end) for t in times) / (end - start)


def start_server(path: Path, strategy: str, max_queue: int, max_batch: int, home: Path):
    port = free_port()
    base_url = f"http://127.0.0.1:{port}/v1"
    cmd = [sys.executable, "-m", "roost", "serve", "--model", str(path), "--strategy", strategy,
           "--host", "127.0.0.1", "--port", str(port), "--max-queue", str(max_queue), "--max-batch", str(max_batch)]
    server = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "ROOST_HOME": str(home)},
                              stderr=subprocess.PIPE, text=True)
    httpx2 = http()
    deadline = time.monotonic() + 600
    while True:
        try:
            if httpx2.get(f"{base_url}/models", timeout=2).status_code == 200:
                return server, base_url
        except httpx2.TransportError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise RuntimeError("the server did not start:\n" + (server.stderr.read() if server.stderr else ""))
        time.sleep(0.5)


def measure(base_url: str, model: str, args, label: str) -> dict:
    """One client alone, `--streams` at once, `--clients` at once: printed, and the figures returned."""
    def run(n, prompt_tokens):
        return asyncio.run(asyncio.wait_for(run_clients(base_url, model, n, args.max_tokens, prompt_tokens),
                                            timeout=args.timeout))

    print(f"\n== {label} ==")
    single, single_wall = run(1, 16)
    s = single[0]
    one = decode_rate(single)
    print(f"one client alone: {s['tokens']} tokens in {single_wall:.2f} s, decoding at {one:.1f} tok/s, "
          f"time to first token {s['ttft'] * 1000:.0f} ms" + (f", error {s['error']}" if s["error"] else ""))
    streams, streams_wall = run(args.streams, 16)
    agg = decode_rate(streams)
    together = f"decoding at {agg:.1f} tok/s together ({agg / one:.2f}x one client)" if agg == agg else \
        "never decoding together"
    print(f"{args.streams} streams at once: {together}; "
          f"{sum(r['tokens'] for r in streams) / streams_wall:.1f} tok/s with the prompts' reading")

    before = server_stats(base_url)
    results, wall = run(args.clients, args.prompt_tokens)
    after = server_stats(base_url)
    errors = [r for r in results if r["error"]]
    lost = [r for r in results if not r["error"] and (r["finish"] is None or r["tokens"] == 0)]
    received = sum(r["tokens"] for r in results)
    generated = after["generated_tokens"] - before["generated_tokens"]
    ttft = [r["ttft"] for r in results if r["ttft"] is not None]
    done = [r["seconds"] for r in results if not r["error"]]
    print(f"{args.clients} concurrent streaming clients, prompts of ~{args.prompt_tokens} tokens, "
          f"max_tokens {args.max_tokens}:")
    print(f"  completed {len(results) - len(errors)}/{len(results)}, errors {len(errors)}, lost responses {len(lost)}")
    for r in errors[:5]:
        print(f"    {r['error']}")
    print(f"  tokens received {received}, generated by the server {generated}"
          f"{'' if received == generated else '  <-- MISMATCH'}")
    print(f"  wall {wall:.2f} s, throughput {received / wall:.1f} tok/s")
    print(f"  time to first token: median {statistics.median(ttft):.2f} s, p95 {percentile(ttft, 0.95):.2f} s, "
          f"min {min(ttft):.3f} s, max {max(ttft):.2f} s")
    print(f"  request time: median {statistics.median(done):.2f} s, max {max(done):.2f} s")
    print(f"  server: {after['completed'] - before['completed']} completed, "
          f"{after['rejected'] - before['rejected']} rejected (503), {after['failed'] - before['failed']} failed, "
          f"largest batch {after.get('largest_batch', 1)}")
    ok = not errors and not lost and received == generated
    return {"one": one, "agg": agg, "ttft": statistics.median(ttft), "ok": ok}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="v7-1.5b", help="a shape of benchmarks/bench.py (random weights)")
    p.add_argument("--strategy", default="cpu int8")
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--streams", type=int, default=8)
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--max-queue", type=int, default=64)
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--baseline-batch", type=int, default=1, help="the server compared with (1: one at a time)")
    p.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "roost-bench"))
    p.add_argument("--timeout", type=float, default=1800.0, help="each phase is cancelled after this")
    args = p.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench import checkpoint

    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    path = checkpoint(args.shape, cache)
    home = Path(tempfile.mkdtemp(prefix="roost-api-bench-"))
    print(f"model: random {args.shape} ({path.name}), {args.strategy}; {os.cpu_count()} CPU cores")
    figures, ok = {}, True
    for batch in (args.baseline_batch, args.max_batch):
        server, base_url = start_server(path, args.strategy, args.max_queue, batch, home)
        try:
            figures[batch] = measure(base_url, path.stem, args,
                                     "one reply at a time" if batch == 1 else f"up to {batch} replies decoded together")
            ok = ok and figures[batch]["ok"]
        finally:
            server.terminate()
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                server.kill()
    base, new = figures[args.baseline_batch], figures[args.max_batch]
    print("\n== against the targets ==")
    print(f"{args.streams} streams with batching: {new['agg'] / new['one']:.2f}x one stream (target >= 4x)")
    print(f"{args.clients} clients, median time to first token: {new['ttft']:.2f} s against {base['ttft']:.2f} s one "
          f"at a time: {new['ttft'] / base['ttft']:.2f} (target <= 0.33)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
