"""Load check of the OpenAI-compatible API: many concurrent streaming clients on loopback.

    python benchmarks/api_load.py [--clients 50] [--max-tokens 32] [--max-queue 64] [--timeout 300]

Starts ``roost serve`` in a subprocess on 127.0.0.1 (a free port) with a small random-weight model,
then runs the official ``openai`` async client: one streaming chat request alone (the idle-server
baseline), then ``--clients`` at once, each with its own prompt. Reports errors, lost responses (a
stream without a finish_reason and usage, or tokens the server generated that no client received),
total throughput and time to first token (first content chunk). Everything is bounded: the whole
run is cancelled after ``--timeout`` seconds. Loopback only.
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


async def one_client(client, model: str, i: int, max_tokens: int) -> dict:
    t0 = time.perf_counter()
    out = {"ttft": None, "seconds": None, "tokens": 0, "finish": None, "error": None, "text": ""}
    try:
        stream = await client.chat.completions.create(
            model=model, stream=True, max_tokens=max_tokens, seed=i, stream_options={"include_usage": True},
            messages=[{"role": "user", "content": f"Client {i}: tell me a short story about the number {i}."}])
        async for chunk in stream:
            if chunk.choices:
                c = chunk.choices[0]
                if c.delta.content:
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


async def run_clients(base_url: str, model: str, n: int, max_tokens: int) -> tuple[list[dict], float]:
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key="loopback", max_retries=0, timeout=600)
    t0 = time.perf_counter()
    results = await asyncio.gather(*(one_client(client, model, i, max_tokens) for i in range(n)))
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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--max-queue", type=int, default=64, help="the server's queue (its default is 16)")
    p.add_argument("--arch", default="v7.0")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--embd", type=int, default=128)
    p.add_argument("--timeout", type=float, default=300.0, help="the whole run is cancelled after this")
    args = p.parse_args()

    from roost.engine.synthetic import save_checkpoint

    folder = Path(tempfile.mkdtemp(prefix="roost-api-bench-"))
    path = save_checkpoint(folder / f"bench-{args.arch}.pth", args.arch, n_layer=args.layers, n_embd=args.embd)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}/v1"
    cmd = [sys.executable, "-m", "roost", "serve", "--model", str(path), "--strategy", "cpu fp32",
           "--host", "127.0.0.1", "--port", str(port), "--max-queue", str(args.max_queue)]
    server = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "ROOST_HOME": str(folder / "home")},
                              stderr=subprocess.PIPE, text=True)
    try:
        httpx2 = http()
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx2.get(f"{base_url}/models", timeout=2).status_code == 200:
                    break
            except httpx2.TransportError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                print("the server did not start:\n" + (server.stderr.read() if server.stderr else ""))
                return 1
            time.sleep(0.2)
        model = path.stem
        print(f"server: {' '.join(cmd[1:])}")
        print(f"model: random {args.arch} {args.layers}x{args.embd}, vocab 65536, cpu fp32; "
              f"{os.cpu_count()} CPU cores")

        single, single_wall = asyncio.run(asyncio.wait_for(run_clients(base_url, model, 1, args.max_tokens),
                                                           timeout=args.timeout))
        s = single[0]
        print(f"\none client alone: {s['tokens']} tokens in {single_wall:.2f} s "
              f"({s['tokens'] / single_wall:.1f} tok/s), time to first token {s['ttft'] * 1000:.0f} ms"
              + (f", error {s['error']}" if s["error"] else ""))

        before = server_stats(base_url)
        results, wall = asyncio.run(asyncio.wait_for(run_clients(base_url, model, args.clients, args.max_tokens),
                                                     timeout=args.timeout))
        after = server_stats(base_url)
        errors = [r for r in results if r["error"]]
        lost = [r for r in results if not r["error"] and (r["finish"] is None or r["tokens"] == 0)]
        received = sum(r["tokens"] for r in results)
        generated = after["generated_tokens"] - before["generated_tokens"]
        ttft = [r["ttft"] for r in results if r["ttft"] is not None]
        done = [r["seconds"] for r in results if not r["error"]]
        print(f"\n{args.clients} concurrent streaming clients, max_tokens {args.max_tokens}:")
        print(f"  completed {len(results) - len(errors)}/{len(results)}, errors {len(errors)}, "
              f"lost responses {len(lost)}")
        for r in errors[:5]:
            print(f"    {r['error']}")
        print(f"  tokens received {received}, generated by the server {generated}"
              f"{'' if received == generated else '  <-- MISMATCH'}")
        print(f"  wall {wall:.2f} s, throughput {received / wall:.1f} tok/s")
        print(f"  time to first token: median {statistics.median(ttft):.2f} s, p95 {percentile(ttft, 0.95):.2f} s, "
              f"min {min(ttft):.3f} s, max {max(ttft):.2f} s")
        print(f"  request time: median {statistics.median(done):.2f} s, max {max(done):.2f} s")
        print(f"  finish reasons: { {f: sum(r['finish'] == f for r in results) for f in {r['finish'] for r in results}} }")
        print(f"  server: {after['completed'] - before['completed']} completed, "
              f"{after['rejected'] - before['rejected']} rejected (503), "
              f"{after['cancelled'] - before['cancelled']} cancelled, {after['failed'] - before['failed']} failed")
        return 0 if not errors and not lost and received == generated else 1
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()


if __name__ == "__main__":
    sys.exit(main())
