"""Throughput of ``e5x synth`` against a local OpenAI-compatible server with fixed latency.

The server (tests/fake_openai.py) runs in its own process and answers every request after
exactly ``--latency`` seconds, so at concurrency C the ceiling is C / latency requests/s
(640 req/s at C=64, 100 ms). Rows:

- ``openai raw``: the bare openai SDK loop (default httpx transport, parse nothing, store
  nothing) at the same concurrency: the baseline any client pays.
- ``e5x synth``: the whole stage: plan, rate/budget bookkeeping, JSON log append per
  answer (fsync every 1 s), aiohttp transport.
- ``e5x synth (httpx)``: the same over the SDK's default httpx transport.

CPU/req is this (client) process's CPU time per answered request; server ms/req is the
server process's, since on a 2-core machine both share the cores. Goal: e5x synth at C=64
reaches >= 80% of 640 req/s on a 2-core machine.

    python benches/bench_synth.py [--latency 0.1] [--concurrency 16 64 256] [--n 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KEY_ENV = "E5X_BENCH_KEY"


def proc_cpu_s(pid: int) -> float:
    """utime + stime of another process (Linux /proc), seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(latency: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "fake_openai.py"), "--latency", str(latency)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    port = int(proc.stdout.readline().split()[1])
    return proc, f"http://127.0.0.1:{port}/v1"


async def raw_openai(url: str, conc: int, n: int, prompt: str) -> None:
    import openai

    client = openai.AsyncOpenAI(api_key="k", base_url=url, max_retries=0)
    todo = list(range(n))

    async def worker() -> None:
        while todo:
            i = todo.pop()
            r = await client.chat.completions.with_raw_response.create(
                model="m",
                messages=[{"role": "user", "content": prompt}],
                extra_headers={"X-E5X-Request-Id": f"examples-sts-{i:06d}"},
            )
            _ = r.http_response.content  # read the body, as a real client would

    await asyncio.gather(*(worker() for _ in range(conc)))
    await client.close()


def run_raw(url: str, conc: int, n: int) -> tuple[float, float]:
    prompt = "x" * 1400  # about the size of an STS prompt
    c0, t0 = time.process_time(), time.perf_counter()
    asyncio.run(raw_openai(url, conc, n, prompt))
    return n / (time.perf_counter() - t0), (time.process_time() - c0) / n


def run_e5x(url: str, conc: int, n: int, backend: str, workdir: Path) -> tuple[float, float]:
    from e5x.synth import SynthConfig, synthesize

    cfg = SynthConfig(
        n_examples=n, task_weights={"sts": 1}, concurrency=conc, progress=False, http_backend=backend, timeout_s=30
    )
    cfg.endpoint.base_url, cfg.endpoint.api_key_env = url, KEY_ENV
    cfg.examples.models = {"m": 1}
    out = workdir / f"run-{backend}-{conc}"
    shutil.rmtree(out, ignore_errors=True)
    c0 = time.process_time()
    s = synthesize(cfg, out, echo=lambda _s: None)
    cpu = time.process_time() - c0
    assert s["complete"], s
    return s["requests_per_s"], cpu / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency", type=float, default=0.1)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[16, 64, 256])
    ap.add_argument("--n", type=int, default=0, help="requests per row (default: 25 x concurrency, >= 800)")
    ap.add_argument("--repeats", type=int, default=1, help="best of N per row (shared machines are noisy)")
    args = ap.parse_args()
    os.environ[KEY_ENV] = "k"

    import e5x

    cpu_model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    print(f"# bench_synth  device: CPU {cpu_model}, {os.cpu_count()} cores; load average at start {os.getloadavg()}")
    print(
        f"# python {platform.python_version()}, e5x {e5x.__version__}, openai {version('openai')}, "
        f"httpx2 {version('httpx2')}, aiohttp {version('aiohttp')}"
    )
    print(f"# server: tests/fake_openai.py in its own process, fixed latency {args.latency * 1000:.0f} ms")
    print(
        f"{'client':<20}{'conc':>6}{'requests':>10}{'req/s':>10}{'% ceiling':>11}{'CPU ms/req':>12}"
        f"{'server ms/req':>15}"
    )
    server, url = start_server(args.latency)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            # Warm up: imports (openai alone is ~1 s of CPU) are not per-request costs.
            run_raw(url, 4, 8)
            run_e5x(url, 4, 8, "aiohttp", Path(tmp))
            for conc in args.concurrency:
                n = args.n or max(800, 25 * conc)
                ceiling = conc / args.latency
                rows = [
                    ("openai raw", lambda: run_raw(url, conc, n)),
                    ("e5x synth", lambda: run_e5x(url, conc, n, "aiohttp", Path(tmp))),
                    ("e5x synth (httpx)", lambda: run_e5x(url, conc, n, "httpx", Path(tmp))),
                ]
                for name, fn in rows:
                    results = []
                    for _ in range(args.repeats):
                        s0 = proc_cpu_s(server.pid)
                        rate, cpu = fn()
                        results.append((rate, cpu, (proc_cpu_s(server.pid) - s0) / n))
                    rate, cpu, scpu = max(results, key=lambda x: x[0])
                    print(
                        f"{name:<20}{conc:>6}{n:>10}{rate:>10.1f}{100 * rate / ceiling:>10.1f}%{cpu * 1000:>12.3f}"
                        f"{scpu * 1000:>15.3f}",
                        flush=True,
                    )
    finally:
        server.kill()
        server.wait()
    print(f"# load average at end {os.getloadavg()}")


if __name__ == "__main__":
    main()
