"""Teacher client throughput against the fake OpenAI server at a fixed simulated latency.

Named baseline: the ideal rate concurrency / latency (every slot always busy). Prints, for our
client (`teacher.client.run_chat_requests`: retries, cache with fsync, progress bar) and for a
bare client (the same openai SDK and semaphore, nothing else), achieved requests/s and its ratio
to the ideal (target >= 0.9), then the rerun's requests (target 0: everything cached).

The server runs in its own process (as a real endpoint would): in the client's process its
threads would compete with the event loop for the GIL and the measurement would be of Python's
scheduler, not of the client. On a machine with few cores both still share the CPU.

Why the ratio falls short of 1 at short latencies: the client is one event loop, and every
request costs it CPU t (building, sending, parsing: about 0.6-1.3 ms here, mostly in the SDK and
the HTTP library). With a fixed latency L the C requests of a wave come back together and queue
for the loop, so slots wait up to C*t before they are reused (ratio roughly L / (L + C*t/2)).
Real teachers answer in seconds, where the same CPU costs well under 1%; several teacher jobs
(teacher.shards with teacher_jobs > 1) spread it over more cores.

The default 3,840 requests are 60 waves of 64, so the steady state is measured: with 20 waves
the first wave's connection set-up and the last wave's tail weigh enough to cost ~0.05 of ratio.

Run: python benchmarks/teacher_throughput.py [--requests 3840] [--concurrency 64] [--latency-ms 100]
     python benchmarks/teacher_throughput.py --smoke   # 64 requests at 20 ms: does it still run?
Writes benchmarks/results/teacher_throughput.json (see results_record.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

from results_record import write_result  # noqa: E402

from rationale_bench.teacher.client import (  # noqa: E402
    ChatRequest,
    EndpointConfig,
    run_chat_requests,
)


def start_server(latency_ms: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "tests" / "fake_openai_server.py"),
            "--port",
            "0",
            "--latency-ms",
            str(latency_ms),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    return proc, line.split(" on ")[1].split()[0]


def make_requests(n: int, tag: str) -> list[ChatRequest]:
    return [
        ChatRequest(
            key=f"{tag}{i}",
            messages=(
                {"role": "system", "content": "You explain dementia risk."},
                {"role": "user", "content": f"{tag} patient {i}: I10, E11.9, age {60 + i % 30}."},
            ),
        )
        for i in range(n)
    ]


async def bare_client(base_url: str, requests: list[ChatRequest], concurrency: int) -> float:
    """The same SDK call with a semaphore and nothing else: the ceiling on this machine."""
    import httpx2
    import openai

    http = openai.DefaultAsyncHttpx2Client(
        timeout=60,
        limits=httpx2.Limits(
            max_connections=concurrency + 8, max_keepalive_connections=concurrency
        ),
    )
    client = openai.AsyncOpenAI(
        base_url=base_url, api_key="x", max_retries=0, http_client=http, timeout=60
    )
    sem = asyncio.Semaphore(concurrency)

    async def one(r: ChatRequest) -> None:
        async with sem:
            await client.chat.completions.with_raw_response.create(
                model="m", messages=[dict(m) for m in r.messages], max_tokens=64
            )

    t0 = time.perf_counter()
    async with client:
        await asyncio.gather(*(one(r) for r in requests))
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=3840)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--latency-ms", type=float, default=100.0)
    p.add_argument("--smoke", action="store_true", help="64 requests, concurrency 16, 20 ms")
    args = p.parse_args()
    if args.smoke:
        args.requests, args.concurrency, args.latency_ms = 64, 16, 20.0
    n, c, lat = args.requests, args.concurrency, args.latency_ms / 1000
    ideal = c / lat
    proc, base_url = start_server(args.latency_ms)
    try:
        # Warm-up: imports, connection setup and the server's thread creation, outside timing.
        asyncio.run(bare_client(base_url, make_requests(c, "warm"), c))
        wall = asyncio.run(bare_client(base_url, make_requests(n, "bare"), c))
        bare_rate = n / wall
        with tempfile.TemporaryDirectory() as tmp:
            ep = EndpointConfig(
                base_url=base_url,
                model="m",
                api_key_env=None,
                temperature=0.0,
                top_p=1.0,
                max_tokens=64,
                seed=0,
                concurrency=c,
                request_timeout_s=60,
            )
            reqs = make_requests(n, "ours")
            cache = Path(tmp) / "cache.jsonl"
            t0, cpu0 = time.perf_counter(), time.process_time()
            results, usage = run_chat_requests(reqs, ep, cache, progress=True)
            ours_wall = time.perf_counter() - t0
            cpu = time.process_time() - cpu0
            assert len(results) == n and usage.retries == 0, usage
            _, rerun = run_chat_requests(reqs, ep, cache, progress=False)
        ours_rate = n / ours_wall
        print(f"cpus={os.cpu_count()} requests={n} concurrency={c} latency={lat * 1000:.0f}ms")
        print(f"ideal (baseline)        {ideal:8.1f} req/s")
        print(f"bare SDK + semaphore    {bare_rate:8.1f} req/s  ratio {bare_rate / ideal:.2f}")
        print(f"run_chat_requests       {ours_rate:8.1f} req/s  ratio {ours_rate / ideal:.2f}")
        print(f"ours / bare             {ours_rate / bare_rate:.2f}")
        print(
            f"client CPU            {cpu / ours_wall:8.2f} cores busy, "
            f"{cpu / n * 1000:.2f} ms CPU per request"
        )
        print(f"rerun requests sent     {rerun.requests_sent} (cache hits {rerun.cache_hits})")
        assert rerun.requests_sent == 0 and rerun.cache_hits == n, rerun
        figures = {
            "ideal_requests_per_s": round(ideal, 1),
            "bare_requests_per_s": round(bare_rate, 1),
            "ours_requests_per_s": round(ours_rate, 1),
            "ours_vs_ideal": round(ours_rate / ideal, 3),
            "bare_vs_ideal": round(bare_rate / ideal, 3),
            "ours_vs_bare": round(ours_rate / bare_rate, 3),
            "client_cpu_ms_per_request": round(cpu / n * 1000, 3),
            "rerun_requests_sent": rerun.requests_sent,
        }
        baseline = "ideal rate concurrency / latency; and the bare openai SDK with a semaphore"
        path = write_result(
            "teacher_throughput",
            vars(args),
            figures,
            baseline,
            smoke=args.smoke,
            packages=("openai", "httpx2"),
        )
        print(f"result: {path}")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


if __name__ == "__main__":
    main()
