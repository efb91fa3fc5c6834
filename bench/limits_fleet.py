"""The fleet scenario of issue 20: 3 instances x 2 workers (six real processes) sharing one real
Redis, one key limited to 100 req/s, offered 500 req/s split 80/15/5 over the instances for
20 s. Run twice in one go: the lease limiter (gateway/limits) and the baseline that makes a
Redis call per request like Kong's `redis` policy (bench/baselines/kong_redis_limiter.py).
Prints admitted requests second by second for both, their ratio to the target, and Redis
commands per request (from INFO commandstats: the commands clients sent; Redis also counts
the commands a script runs, shown apart). Also times `decide` for an unreached limit.

    .venv/bin/python -m bench.limits_fleet [--duration 20] [--rate 500] [--limit 100]

The traffic is generated inside each worker process (paced every 5 ms, the worker's part of
the offered rate): no HTTP, so the figures are the limiter's alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import mmap
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import redis
import uvloop

SPLIT = (0.4, 0.4, 0.075, 0.075, 0.025, 0.025)  # 80/15/5 over instances, halved per worker
KEY = "gw:key:bench"


async def run_worker(url: str, mode: str, rate: float, limit: int, start_at: float,
                     duration: float, seed: int, interval: float,
                     counter: mmap.mmap | None) -> dict[str, Any]:
    from gateway.limits.leases import Limit, Settings
    from gateway.limits.local import LeaseTable
    from gateway.limits.policy import parse_quota, parse_rate
    from gateway.limits.sync import LimitSync
    from gateway.store.client import connect

    client = connect(url, 0.5)
    admitted: Counter[int] = Counter()
    offered = 0
    pending: set[asyncio.Task[None]] = set()
    limiter = LimitSync(client, LeaseTable(Settings(interval=interval)))
    rule = [Limit("key-quota", KEY, parse_quota(str(limit))) if mode == "quota"
            else Limit("key", KEY, parse_rate(f"{limit}/s"))]
    total = 0  # admissions so far, also kept in `counter` (readable after a SIGKILL)

    def count(second: int) -> None:
        nonlocal total
        admitted[second] += 1
        total += 1
        if counter is not None:
            struct.pack_into("q", counter, 0, total)
    from bench.baselines.kong_redis_limiter import KongStyleLimiter
    kong = KongStyleLimiter(client, limit)  # type: ignore[arg-type]

    async def later(second: int) -> None:
        if mode == "kong":
            ok = await kong.admit(KEY)
        else:
            ok = (await limiter.check(rule, KEY)).admitted
        if ok:
            count(second)

    if mode != "kong":
        limiter.start()
    await asyncio.sleep(max(0.0, start_at - time.time()))
    random.seed(seed)
    phase = random.random() / max(rate, 1)
    while (elapsed := time.time() - start_at) < duration:
        second = int(elapsed)
        while offered < int((elapsed + phase) * rate):
            offered += 1
            decision = limiter.decide(rule, KEY) if mode != "kong" else None
            if decision is not None and decision.outcome != "wait":
                if decision.admitted:
                    count(second)
                continue
            task = asyncio.ensure_future(later(second))
            pending.add(task)
            task.add_done_callback(pending.discard)
        await asyncio.sleep(0.005)
    if pending:
        await asyncio.gather(*pending)
    if mode != "kong":
        await limiter.stop()
    await client.aclose()
    return {"admitted": dict(admitted), "offered": offered}


def worker_main(args: argparse.Namespace) -> None:
    counter = None
    if args.counter_file:
        with open(args.counter_file, "r+b") as file:
            counter = mmap.mmap(file.fileno(), 8)
    result = uvloop.run(run_worker(args.url, args.mode, args.worker_rate, args.limit,
                                   args.start_at, args.duration, args.seed, args.interval,
                                   counter))
    print(json.dumps(result), flush=True)


def start_redis(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    sock = tmp / "redis.sock"
    binary = shutil.which("redis-server") or "redis-server"
    process = subprocess.Popen([binary, "--port", "0", "--unixsocket", str(sock), "--save", "",
                                "--appendonly", "no", "--dir", str(tmp)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with redis.Redis(unix_socket_path=str(sock)) as client:
                client.ping()
            return process, f"unix://{sock}"
        except (redis.ConnectionError, FileNotFoundError):
            time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


def client_commands(stats: dict[str, Any]) -> tuple[int, int]:
    """(commands clients sent, commands executed in all) from INFO commandstats."""
    calls = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}
    ignored = {"info", "config|resetstat", "flushall", "ping", "hello", "client|setname",
               "config"}
    inside_scripts = {"time", "hmget", "hset", "pexpire", "get", "set", "expireat", "incrby",
                      "hincrby", "expire"}
    sent = sum(n for name, n in calls.items()
               if name not in ignored and name not in inside_scripts)
    everything = sum(n for name, n in calls.items() if name not in ignored)
    return sent, everything


def run_mode(url: str, mode: str, args: argparse.Namespace, tmp: Path, *,
             rate: float | None = None, limit: int | None = None,
             duration: float | None = None, kill_at: float | None = None) -> dict[str, Any]:
    """One fleet run; `kill_at` SIGKILLs the busiest worker that many seconds in."""
    rate, limit = rate or args.rate, limit or args.limit
    duration = duration or args.duration
    with redis.Redis.from_url(url) as admin:
        admin.flushall()
        admin.config_resetstat()
    start_at = time.time() + 3.0  # every process up and connected first
    counters = []
    for i in range(len(SPLIT)):
        counters.append(tmp / f"{mode}-{i}.count")
        counters[-1].write_bytes(bytes(8))
    workers = [subprocess.Popen(
        [sys.executable, "-m", "bench.limits_fleet", "--worker", "--url", url, "--mode", mode,
         "--worker-rate", str(rate * share), "--limit", str(limit),
         "--start-at", str(start_at), "--duration", str(duration), "--seed", str(i),
         "--interval", str(args.interval), "--counter-file", str(counters[i])],
        stdout=subprocess.PIPE) for i, share in enumerate(SPLIT)]
    if kill_at is not None:
        time.sleep(max(0.0, start_at + kill_at - time.time()))
        workers[0].send_signal(signal.SIGKILL)
    results = []
    for worker, counter in zip(workers, counters, strict=True):
        out, _ = worker.communicate(timeout=duration + 60)
        lines = out.decode().strip().splitlines()
        results.append(json.loads(lines[-1]) if lines and worker.returncode == 0 else
                       {"admitted": {}, "offered": 0,
                        "killed_admitted": struct.unpack("q", counter.read_bytes())[0]})
    with redis.Redis.from_url(url) as admin:
        stats = admin.info("commandstats")
    admitted: Counter[int] = Counter()
    for result in results:
        admitted.update({int(k): v for k, v in result["admitted"].items()})
    offered = sum(r["offered"] for r in results)
    sent, everything = client_commands(stats)
    if mode == "kong":
        sent = everything  # INCR and EXPIRE are both sent by the client
    killed = sum(r.get("killed_admitted", 0) for r in results)
    return {"admitted": admitted, "offered": offered, "sent": sent, "executed": everything,
            "killed_admitted": killed}


def time_decide(limit_text: str = "1000000/s", rounds: int = 200_000) -> float:
    """µs per decision for an unreached limit, the lease in hand (no store)."""
    from gateway.limits.leases import Lease, Limit
    from gateway.limits.local import LeaseTable
    from gateway.limits.policy import parse_rate
    table = LeaseTable()
    limit = Limit("key", KEY, parse_rate(limit_text))
    lease = table.leases[limit.bucket] = Lease(limit, known=True, server_remaining=1e9)
    lease.tokens, lease.expires = rounds + 1, time.monotonic() + 3600
    started = time.perf_counter()
    for _ in range(rounds):
        table.decide([limit], KEY)
    return (time.perf_counter() - started) / rounds * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--url", default="")
    parser.add_argument("--mode", default="leases")
    parser.add_argument("--worker-rate", type=float, default=0.0)
    parser.add_argument("--start-at", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--counter-file", default="")
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--interval", type=float, default=0.15, help="lease sync interval (s)")
    args = parser.parse_args()
    if args.worker:
        worker_main(args)
        return
    tmp = Path(tempfile.mkdtemp(prefix="limbench-", dir="/tmp"))
    process, url = start_redis(tmp)
    try:
        ours = run_mode(url, "leases", args, tmp)
        kong = run_mode(url, "kong", args, tmp)
        quota = run_mode(url, "quota", args, tmp, rate=1500, limit=10_000, duration=10,
                         kill_at=4.0)
    finally:
        process.kill()
        process.wait()
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"{len(SPLIT)} workers (3 instances x 2), {args.rate:.0f} req/s offered 80/15/5, "
          f"limit {args.limit}/s, {args.duration:.0f} s, lease sync every {args.interval} s")
    print(f"{'second':>6} {'leases':>8} {'ratio':>6} {'kong-redis':>10} {'ratio':>6}")
    worst = 0.0
    for second in range(int(args.duration)):
        a, b = ours["admitted"][second], kong["admitted"][second]
        if second >= 2:
            worst = max(worst, abs(a / args.limit - 1))
        print(f"{second:>6} {a:>8} {a / args.limit:>6.2f} {b:>10} {b / args.limit:>6.2f}")
    for name, result in (("leases", ours), ("kong-redis", kong)):
        total = sum(result["admitted"].values())
        print(f"{name}: admitted {total} of {result['offered']} offered; commands sent per "
              f"request {result['sent'] / result['offered']:.3f} (executed incl. inside "
              f"scripts {result['executed'] / result['offered']:.3f})")
    print(f"leases: worst second after the first 2 s off the target by {worst:.1%}")
    print(f"decide() for an unreached limit: {time_decide():.2f} µs per request")
    admitted = sum(quota["admitted"].values()) + quota["killed_admitted"]
    print(f"quota 10000 (total), 1500 req/s offered 80/15/5 for 10 s, the busiest worker "
          f"SIGKILLed at 4 s: admitted {admitted} ({admitted / 10_000:.2%} of the quota; "
          f"{quota['killed_admitted']} by the killed worker before it died)")


if __name__ == "__main__":
    main()
