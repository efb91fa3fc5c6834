"""Rate limits and quotas across a real fleet (issue 20): three `gateway run --workers 2`
instances sharing one Redis, requests over HTTP through their proxy listeners.

    PYTHONPATH=. .venv/bin/python -m bench.limits_gateways [--seconds 20] [--offered 500]

1. Rate: one key limited to 100 requests/s; `--offered` requests/s (open loop, on a schedule,
   whatever the answers) split 80/15/5 over the instances for `--seconds`. Prints the admitted
   count of every second, their spread around the limit after the first 2 s, and the Redis
   commands the gateways send per request (MONITOR; what scripts run inside Redis is counted
   apart).
2. Quota: one key with a total quota of 10,000, offered 2,000 requests/s split 80/15/5 until
   it is used up; one worker of the busiest instance is killed (SIGKILL) mid-run. Prints what
   was admitted against the quota.

bench/limits_fleet.py measures the limiter itself (no HTTP) against a Kong-style limiter
that makes a Redis call per request; this one measures the gateway as deployed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

from bench.procs import Service, free_port, wait_port, workers_of
from bench.run import VENV_BIN, bench_redis_server

SPLIT = (0.80, 0.15, 0.05)
LIMIT = 100
QUOTA = 10_000


class Fleet:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.services: list[Service] = []
        self.redis_port = free_port()
        self.services.append(Service("redis", [bench_redis_server(), "--port",
                                               str(self.redis_port), "--save", "",
                                               "--appendonly", "no"], tmp))
        wait_port(self.redis_port)
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}"
        self.upstream_port = free_port()
        self.services.append(Service("upstream", [sys.executable, "-m", "bench.upstream",
                                                  "--port", str(self.upstream_port)], tmp,
                                     env=self.env()))
        wait_port(self.upstream_port)
        self.ports: list[int] = []
        self.gateways: list[Service] = []
        for index in range(3):
            port = free_port()
            config = tmp / f"gateway-{index}.json"
            config.write_text(json.dumps({
                "listen": {"host": "127.0.0.1", "port": port},
                "admin": {"host": "127.0.0.1", "port": free_port()},
                "redis": {"url": self.redis_url},
                "log": {"level": "warning", "access_log": False},
                "brute_force": {"max_failures": 0},
                "routes": [{"name": "svc", "prefix": "/svc/", "strip_prefix": True,
                            "upstream": f"http://127.0.0.1:{self.upstream_port}"}],
            }))
            service = Service(f"gateway-{index}", [str(VENV_BIN / "gateway"), "run",
                                                   "--config", str(config), "--workers", "2"],
                              tmp, env=self.env())
            self.services.append(service)
            self.gateways.append(service)
            wait_port(port, 60, service.process, service.name)
            self.ports.append(port)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
        return env

    def cli(self, *args: str) -> Any:
        result = subprocess.run([str(VENV_BIN / "gateway"), *args, "--json"], check=True,
                                capture_output=True, text=True,
                                env={**self.env(), "GATEWAY_REDIS_URL": self.redis_url})
        return json.loads(result.stdout)

    def key(self, *limits: str) -> str:
        account = self.cli("accounts", "create", "bench-limits")
        return str(self.cli("keys", "create", "--account", account["id"], *limits)["secret"])

    def monitor(self) -> Monitor:
        return Monitor(self.redis_port)

    def stop(self) -> None:
        for service in reversed(self.services):
            service.stop()


class Monitor:
    """Counts the commands clients send (Redis MONITOR), apart from those scripts run inside
    Redis (MONITOR marks them `[0 lua]`): INFO commandstats counts both."""

    def __init__(self, port: int) -> None:
        self.sent: Counter[str] = Counter()
        self.in_scripts = 0
        self._sock = socket.create_connection(("127.0.0.1", port))
        self._sock.sendall(b"MONITOR\r\n")
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        buffer = b""
        with contextlib.suppress(OSError):
            while chunk := self._sock.recv(65536):
                buffer += chunk
                *lines, buffer = buffer.split(b"\r\n")
                for line in lines:
                    if not line.startswith(b"+") or line == b"+OK":
                        continue
                    if b" lua] " in line:
                        self.in_scripts += 1
                    else:
                        name = line.partition(b'] "')[2].partition(b'"')[0].decode().lower()
                        self.sent[name] += 1

    def stop(self) -> Counter[str]:
        time.sleep(0.3)
        self._sock.close()
        self._thread.join(2)
        return self.sent


async def offer(ports: list[int], secret: str, rate: float, seconds: float,
                stop_when: Any = None, midway: Any = None) -> list[tuple[float, int, int]]:
    """(seconds since start, instance, status) of every request, sent on schedule."""
    results: list[tuple[float, int, int]] = []
    headers = {"Authorization": f"Api-Key {secret}"}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        start = time.monotonic()
        tasks: set[asyncio.Task[None]] = set()

        async def one(instance: int, sent_at: float) -> None:
            url = f"http://127.0.0.1:{ports[instance]}/svc/x"
            try:
                async with session.get(url, headers=headers) as response:
                    await response.read()
                    results.append((sent_at, instance, response.status))
            except aiohttp.ClientError:
                results.append((sent_at, instance, 0))

        sent = 0
        counts = [0.0, 0.0, 0.0]
        while True:
            now = time.monotonic() - start
            if now >= seconds or (stop_when is not None and stop_when(results)):
                break
            if midway is not None and now >= seconds / 2:
                midway()
                midway = None
            due = int(now * rate) + 1
            while sent < due:
                # Deterministic 80/15/5: each request goes to the instance furthest behind
                # its share.
                shares = [counts[i] - SPLIT[i] * sent for i in range(3)]
                instance = shares.index(min(shares))
                counts[instance] += 1
                sent += 1
                task = asyncio.create_task(one(instance, now))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            await asyncio.sleep(0.002)
        if tasks:
            await asyncio.wait(tasks, timeout=10)
    return results


def rate_run(fleet: Fleet, seconds: float, offered: float) -> dict[str, Any]:
    secret = fleet.key("--rate", f"{LIMIT}/s")
    # First sight of a key waits one sync on each worker: warm every worker up.
    asyncio.run(offer(fleet.ports, secret, 60, 1.0))
    time.sleep(2.5)  # the bucket refills
    monitor = fleet.monitor()
    results = asyncio.run(offer(fleet.ports, secret, offered, seconds))
    by_command = monitor.stop()
    commands = by_command.total()
    per_second = Counter(int(at) for at, _, status in results if status == 200)
    seconds_measured = [per_second.get(s, 0) for s in range(2, int(seconds))]
    errors = sum(1 for _, _, status in results if status not in (200, 429))
    within = sum(1 for n in seconds_measured if abs(n - LIMIT) <= LIMIT * 0.1)
    by_instance = Counter(instance for _, instance, status in results if status == 200)
    return {"requests": len(results), "admitted_per_second": [per_second.get(s, 0)
                                                              for s in range(int(seconds))],
            "mean_after_2s": statistics.mean(seconds_measured),
            "min_after_2s": min(seconds_measured), "max_after_2s": max(seconds_measured),
            "seconds_within_10pct": f"{within}/{len(seconds_measured)}",
            "admitted_by_instance": [by_instance.get(i, 0) for i in range(3)],
            "errors": errors, "redis_commands": commands,
            "redis_commands_by_name": dict(by_command.most_common(8)),
            "run_inside_scripts": monitor.in_scripts,
            "redis_commands_per_request": commands / max(len(results), 1)}


def quota_run(fleet: Fleet) -> dict[str, Any]:
    secret = fleet.key("--quota", str(QUOTA))
    victim = workers_of(fleet.gateways[0].pid)

    def kill_one() -> None:
        if victim:
            os.kill(victim[0], signal.SIGKILL)

    def used_up(results: list[tuple[float, int, int]]) -> bool:
        return sum(1 for *_, status in results[-200:] if status == 429) >= 150

    results = asyncio.run(offer(fleet.ports, secret, 2000, 30, used_up, kill_one))
    admitted = sum(1 for *_, status in results if status == 200)
    return {"quota": QUOTA, "requests": len(results), "admitted": admitted,
            "overshoot_pct": 100 * (admitted - QUOTA) / QUOTA,
            "killed_worker": victim[0] if victim else None,
            "errors": sum(1 for *_, status in results if status not in (200, 429))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--offered", type=float, default=500.0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-limits-") as scratch:
        fleet = Fleet(Path(scratch))
        try:
            rate = rate_run(fleet, args.seconds, args.offered)
            print("rate:", json.dumps(rate, indent=1), flush=True)
            quota = quota_run(fleet)
            print("quota:", json.dumps(quota, indent=1), flush=True)
        finally:
            fleet.stop()
    ok = (rate["min_after_2s"] >= LIMIT * 0.9 and rate["max_after_2s"] <= LIMIT * 1.1
          and rate["redis_commands_per_request"] <= 0.1 and quota["admitted"] <= QUOTA * 1.01)
    print(f"targets: 100/s ± 10 % every second after 2 s, <= 0.1 Redis commands/request, "
          f"quota overshoot <= 1 %: {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
