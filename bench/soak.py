"""The soak run of issue 9 (never in CI): mixed traffic against a gateway for a set time, with
its memory sampled over time and every answer checked against the one its kind must get.

    make soak SOAK_ARGS="--duration 300"        # or: .venv/bin/python -m bench.soak ...
    .venv/bin/python -m bench.soak --duration 300 --workers 2 --rate 1000

It starts everything itself in a scratch directory (the helpers of bench/run.py): a Redis on a
unix socket (the gateway's key store, external to it), the upstream (nginx `return 200`, which
also serves a large file for downloads; else bench/upstream.py and no downloads), the upload sink
(bench/upstream.py) and `gateway run --workers W` (brute-force protection off, where the
gateway has it: all the traffic comes from one address and a quarter of it is refused on purpose).
Then, for `--duration` seconds:

- wrk (bench/wrk/soak.lua), paced to about `--rate` requests/s, in runs of `--segment` seconds:
  valid API-key GETs over `--keys` keys, RFC 9421 signed GETs and 4 KiB POSTs (pre-signed just
  before each run, every nonce used once), malformed, unknown, expired, wrong-scope, disabled-
  account and no-api_access keys, no credential, no route (`--mix` sets the weights);
- Python (aiohttp), now and then: a 16 MiB streamed upload (Content-Length) and a chunked one,
  a 16 MiB download, a 1 MiB signed POST;
- key churn through the admin API and the CLI: keys created, used, reissued (the old secret must
  fail, or keep working during a grace period for HMAC keys), given an expiry that passes,
  deleted (one by one, in bulk, from the CLI), accounts disabled and re-enabled, api_access
  revoked and granted, each followed `--settle` seconds later by the answer it must cause;
- the RSS of the supervisor, of every worker and of Redis (and Redis's used_memory), every
  `--sample-interval` seconds.

Unexpected errors: any answer that differs (status and error code) from the one its kind must
get, connection errors, timeouts, requests wrk sent that got no answer, failed admin or CLI
calls, and worker restarts (a worker pid that disappears, or the supervisor's log saying so).
Memory is flat when the median RSS of the gateway (all its processes) over the last third of
the run exceeds its median over the middle third by less than `--flat-mib` MiB and less than
`--flat-pct` % (the first third is warm-up). Redis is reported, not judged: signed requests'
nonces are kept for `hmac.clock_skew` (300 s), so the store grows for the first five minutes of
signed traffic by design. Exit status 1 when the verdict fails.

Results: bench/results/soak-<timestamp>.json and bench/results/soak-latest.json (the options,
every sample, every wrk run's counts, the churn and transfer checks, the first unexpected
answers, the gateway's log warnings, the verdict).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import redis

from bench import keys as keymat
from bench.load import WRK_DIR, upload
from bench.procs import Service, children, cpu_seconds, free_port, rss_kib
from bench.run import (
    GET_PATH,
    MALFORMED_KEY,
    RESULTS,
    SCOPE,
    UPLOAD_PATH,
    Options,
    Stack,
    nginx_conf,
    versions,
)
from gateway.auth import apikey
from gateway.client import sign_request
from gateway.config import Config

MIB = 2**20
OTHER_SCOPE = "yc.ai.translate.execute"  # held by the wrong-scope keys; the routes need SCOPE
MARKER = "SOAK_JSON "
DEFAULT_MIX = ("apikey=60,hmac_get=8,hmac_post=7,malformed=5,unknown=8,expired=3,scope=3,"
               "disabled=2,no_access=1,missing=2,no_route=1")
HMAC_KINDS = ("hmac_get", "hmac_post")
OK = (200, "-")

# What each kind of request must get: (status, error code; "-" for an upstream's answer).
EXPECTED: dict[str, tuple[int, str]] = {
    # wrk
    "apikey": OK, "hmac_get": OK, "hmac_post": OK,
    "malformed": (401, "invalid_credentials"), "unknown": (401, "invalid_credentials"),
    "expired": (401, "expired_key"), "scope": (403, "insufficient_scope"),
    "disabled": (403, "account_disabled"), "no_access": (403, "api_access_denied"),
    "missing": (401, "missing_credentials"), "no_route": (404, "no_route"),
    # Python: transfers
    "upload": OK, "upload_chunked": OK, "download": OK, "hmac_post_1m": OK,
    # Python: key churn, checked --settle seconds after the change
    "churn_new": OK, "churn_reissued_old": (401, "invalid_credentials"),
    "churn_reissued_new": OK, "churn_expired": (401, "expired_key"),
    "churn_deleted": (401, "invalid_credentials"),
    "churn_hmac_new": OK, "churn_hmac_grace_old": OK, "churn_hmac_reissued_new": OK,
    "churn_hmac_deleted": (401, "invalid_credentials"),
    "churn_account_disabled": (403, "account_disabled"), "churn_account_enabled": OK,
    "churn_access_revoked": (403, "api_access_denied"), "churn_access_granted": OK,
}


@dataclass
class SoakOptions:
    duration: int = 300
    workers: int = 2
    rate: int = 1000
    connections: int = 32
    threads: int = 1
    segment: int = 30
    mix: str = DEFAULT_MIX
    keys: int = 2_000
    unknown_keys: int = 50_000
    sample_interval: float = 2.0
    churn_interval: float = 4.0
    cli_every: int = 6
    transfer_interval: float = 8.0
    transfer_mib: int = 16
    settle: float = 1.5
    flat_mib: float = 8.0
    flat_pct: float = 5.0


def parse_mix(text: str) -> dict[str, int]:
    mix: dict[str, int] = {}
    for part in text.split(","):
        kind, _, weight = part.strip().partition("=")
        if kind not in EXPECTED or not weight.isdigit():
            raise ValueError(f"--mix: {part!r} is not KIND=WEIGHT with a known kind")
        if int(weight):
            mix[kind] = int(weight)
    if not mix:
        raise ValueError("--mix: no kind with a weight")
    return mix


def iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat()


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def remove(paths: list[str]) -> None:
    for path in paths:
        Path(path).unlink(missing_ok=True)


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace")
    except OSError:
        return ""


# -- setting up -----------------------------------------------------------------------------------

@dataclass
class Material:
    """What the traffic presents, made before it starts."""

    plan: Path
    valid: list[str]
    hmac_id: str
    hmac_secret: str
    churn_account: str
    toggle_account: str
    toggle_secret: str
    download_size: int  # 0: no downloads (no nginx)


def gateway_extra() -> dict[str, Any]:
    """Config beyond bench/run.py's: brute-force protection off where the gateway has it (all
    the soak's traffic comes from one address, and a quarter of it is refused on purpose)."""
    if "brute_force" in getattr(Config, "__dataclass_fields__", {}):
        return {"brute_force": {"max_failures": 0}}
    return {}


def start_upstreams(stack: Stack, download_size: int) -> int:
    """The upload sink and the upstream (nginx: `return 200`, and /big/ serving one file of
    `download_size` bytes). Returns the download size actually served (0 without nginx)."""
    sink = stack.ports["sink"] = free_port()
    stack.start("sink", [sys.executable, "-m", "bench.upstream", "--port", str(sink)], sink,
                env=stack.env())
    if not stack.nginx:
        stack.ports["upstream"] = sink
        return 0
    www = stack.tmp / "www"
    (www / "big").mkdir(parents=True)
    with (www / "big" / "file.bin").open("wb") as handle:
        for _ in range(download_size // MIB):
            handle.write(os.urandom(MIB))
    up = stack.ports["upstream"] = free_port()
    conf = nginx_conf(stack.tmp / "nginx-upstream", workers=1, port=up, body=f"""
    server {{ listen 127.0.0.1:PORT reuseport backlog=4096; default_type text/plain;
             location /big/ {{ root {www}; default_type application/octet-stream; }}
             location / {{ return 200 "ok\\n"; }} }}""")
    stack.start("nginx-upstream", [stack.nginx, "-p", str(conf.parent), "-c", str(conf),
                                   "-e", str(conf.parent / "logs/error.log")], up)
    return download_size // MIB * MIB


def corrupt(secret: str) -> str:
    """A key whose checksum no longer matches (refused before any lookup)."""
    last = secret[-1]
    return secret[:-1] + ("A" if last != "A" else "B")


def prepare(opts: SoakOptions, stack: Stack, admin_port: int, valid: list[str],
            download_size: int) -> Material:
    def admin(method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        return stack.admin(method, admin_port, path, body)

    def accounts(name: str) -> str:
        return str(admin("POST", "/admin/accounts", {"name": name})["id"])

    def key(account: str, **fields: Any) -> dict[str, Any]:
        result: dict[str, Any] = admin("POST", "/admin/keys", {"account_id": account, **fields})
        return result

    main, disabled, no_access = accounts("soak"), accounts("soak-disabled"), \
        accounts("soak-no-access")
    churn, toggle = accounts("soak-churn"), accounts("soak-toggle")
    expiring = [key(main, scopes=[SCOPE], expires_in="2s")["secret"] for _ in range(20)]
    expiry_done = time.monotonic() + 2.5
    scope = [key(main, scopes=[OTHER_SCOPE])["secret"] for _ in range(20)]
    off = [key(disabled, scopes=[SCOPE])["secret"] for _ in range(10)]
    denied = [key(no_access, scopes=[SCOPE])["secret"] for _ in range(10)]
    admin("PATCH", f"/admin/accounts/{disabled}", {"enabled": False})
    admin("PATCH", f"/admin/accounts/{no_access}", {"api_access": False})
    toggle_secret = key(toggle, scopes=[SCOPE])["secret"]
    # The CLI, as in bench/run.py (and so the CLI's create path is part of the run).
    hmac_key = stack.cli("gateway", "keys", "create", "--account", main, "--type", "hmac",
                         "--scope", SCOPE, "--expires-in", "1d", "--json")
    plan = stack.tmp / "plan"
    plan.mkdir()
    unknown = [keymat.fast_secret() for _ in range(opts.unknown_keys)]
    malformed = [MALFORMED_KEY, corrupt(valid[0]), corrupt(valid[1]), "gwk_short",
                 "sk_live_" + "x" * 32, apikey.PREFIX + "!" * 36]
    for name, lines in (("valid", valid), ("unknown", unknown), ("expired", expiring),
                        ("scope", scope), ("disabled", off), ("no_access", denied),
                        ("malformed", malformed)):
        keymat.write_lines(plan / f"{name}.txt", lines)
    body = os.urandom(4096)
    (plan / "body.bin").write_bytes(body)
    digest = sign_request("POST", "http://x/", key_id="x", secret="x", body=body)
    keymat.write_lines(plan / "digest.txt", [digest["Content-Digest"]])
    keymat.write_lines(plan / "mix.txt",
                       [f"{kind} {weight}" for kind, weight in parse_mix(opts.mix).items()])
    time.sleep(max(0.0, expiry_done - time.monotonic()))  # the expiring keys have expired
    return Material(plan=plan, valid=valid, hmac_id=hmac_key["id"],
                    hmac_secret=hmac_key["secret"], churn_account=churn,
                    toggle_account=toggle, toggle_secret=toggle_secret,
                    download_size=download_size)


# -- the run ------------------------------------------------------------------------------------

class Soak:
    def __init__(self, opts: SoakOptions, stack: Stack, gateway: Service, port: int,
                 admin_port: int, store: redis.Redis, redis_pid: int, material: Material
                 ) -> None:
        self.opts = opts
        self.stack = stack
        self.gateway = gateway
        self.base = f"http://127.0.0.1:{port}"
        self.admin_base = f"http://127.0.0.1:{admin_port}"
        self.store = store
        self.redis_pid = redis_pid
        self.m = material
        self.mix = parse_mix(opts.mix)
        self.counts: Counter[tuple[str, int, str]] = Counter()
        self.unexpected: Counter[str] = Counter()  # by cause
        self.examples: list[dict[str, Any]] = []  # the first unexpected answers, in detail
        self.samples: list[dict[str, Any]] = []
        self.segments: list[dict[str, Any]] = []
        self.actions: Counter[str] = Counter()  # admin and CLI calls made
        self.worker_pids: list[int] = []
        self.alive: set[int] = set()
        self.restarts: list[dict[str, Any]] = []
        self.started = 0.0
        self.deadline = 0.0
        self.probe_n = 0
        self.client_cpu_s = 0.0
        self.rate_seen = float(opts.rate) if opts.rate > 0 else 5_000.0
        # wrk's pacing: each connection waits this long after an answer (adjusted after each
        # run for the latency, so that the connections together send about --rate requests/s)
        self.delay_ms = opts.connections * 1000 / opts.rate if opts.rate > 0 else 0.0

    # -- bookkeeping

    def now(self) -> float:
        return round(time.monotonic() - self.started, 2)

    def running(self) -> bool:
        return time.monotonic() < self.deadline

    def bad(self, cause: str, detail: dict[str, Any], n: int = 1) -> None:
        self.unexpected[cause] += n
        if len(self.examples) < 200:
            self.examples.append({"t": self.now(), "cause": cause, "count": n, **detail})

    def record(self, kind: str, status: int, code: str, n: int = 1,
               detail: dict[str, Any] | None = None) -> None:
        self.counts[(kind, status, code)] += n
        expected = EXPECTED.get(kind)
        if status == 0:
            self.bad(code, {"kind": kind, **(detail or {})}, n)  # connection_error, timeout
        elif expected is None or (status, code) != expected:
            self.bad("status", {"kind": kind, "got": f"{status} {code}",
                                "expected": f"{expected[0]} {expected[1]}" if expected
                                else "a labelled answer", **(detail or {})}, n)

    # -- memory

    def sample(self) -> None:
        sup = self.gateway.pid
        workers: dict[int, int] = {}
        others: dict[int, int] = {}
        for pid in children(sup):
            line = cmdline(pid)
            (workers if "spawn_main" in line else others)[pid] = rss_kib(pid)
        for pid in workers:
            if pid not in self.worker_pids:
                self.worker_pids.append(pid)
        for pid in self.alive - set(workers):  # the gateway is stopped only after the run
            self.restarts.append({"t": self.now(), "pid": pid})
            self.bad("worker_restart", {"pid": pid})
        self.alive = set(workers)
        info: dict[str, Any] = {}
        with contextlib.suppress(redis.RedisError):
            info = self.store.info("memory")
            info["keys"] = self.store.dbsize()
        supervisor = rss_kib(sup)
        self.samples.append({
            "t": self.now(), "supervisor_kib": supervisor,
            "workers_kib": {str(pid): kib for pid, kib in workers.items()},
            "other_children_kib": {str(pid): kib for pid, kib in others.items()},
            "gateway_kib": supervisor + sum(workers.values()) + sum(others.values()),
            "gateway_cpu_s": round(sum(cpu_seconds(pid) for pid in (sup, *workers, *others)),
                                   2),
            "redis_rss_kib": rss_kib(self.redis_pid),
            "redis_used_memory": info.get("used_memory"), "redis_keys": info.get("keys"),
        })

    async def sampler(self) -> None:
        while self.running():
            self.sample()
            await asyncio.sleep(self.opts.sample_interval)

    # -- wrk

    def sign_pools(self, segment: int, seconds: int) -> list[str]:
        share = sum(self.mix.values())
        paths = []
        url = self.base + GET_PATH
        for kind in HMAC_KINDS:
            count = int(self.rate_seen * seconds * self.mix.get(kind, 0) / share * 1.5) + 200
            method, body = ("POST", (self.m.plan / "body.bin").read_bytes()) \
                if kind == "hmac_post" else ("GET", None)
            created = int(time.time())
            lines: list[str] = []
            prefix = os.urandom(6).hex()
            for n in range(count):
                headers = sign_request(method, url, key_id=self.m.hmac_id,
                                       secret=self.m.hmac_secret, body=body, created=created,
                                       nonce=f"{prefix}{n:08x}")
                lines.append(f"{headers['Signature-Input']}\t{headers['Signature']}")
            path = keymat.write_lines(self.m.plan / f"{kind}-{segment}.txt", lines)
            paths.append(str(path))
        return paths

    async def run_wrk(self, segment: int, seconds: int, pools: list[str]) -> dict[str, Any]:
        o = self.opts
        env = dict(os.environ, BENCH_WRK_THREADS=str(o.threads),
                   SOAK_DELAY_MS=str(round(self.delay_ms)))
        process = await asyncio.create_subprocess_exec(
            "wrk", "-t", str(o.threads), "-c", str(o.connections), "-d", f"{seconds}s",
            "--timeout", "5s", "-s", str(WRK_DIR / "soak.lua"), self.base + GET_PATH, "--",
            str(self.m.plan), str(segment), *pools,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        try:
            out, err = await asyncio.wait_for(process.communicate(), seconds + 60)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise RuntimeError(f"wrk did not finish within {seconds + 60}s") from None
        for line in out.decode(errors="replace").splitlines():
            if line.startswith(MARKER):
                data: dict[str, Any] = json.loads(line[len(MARKER):])
                return data
        raise RuntimeError(f"wrk gave no result (exit {process.returncode}): "
                           f"{err.decode(errors='replace')[-2000:]}")

    async def traffic(self) -> None:
        segment = 0
        next_pools = asyncio.ensure_future(asyncio.to_thread(
            self.sign_pools, segment, min(self.opts.segment, self.opts.duration)))
        while (left := int(self.deadline - time.monotonic())) >= 1:
            seconds = min(self.opts.segment, left)
            pools = await next_pools
            # sign the next run's requests while this one runs (created = now: they stay
            # valid for hmac.clock_skew, far longer than one run)
            next_pools = asyncio.ensure_future(asyncio.to_thread(
                self.sign_pools, segment + 1, self.opts.segment))
            began = self.now()
            try:
                data = await self.run_wrk(segment, seconds, pools)
            except RuntimeError as exc:
                self.bad("wrk_failed", {"segment": segment, "error": str(exc)[-1000:]})
                print(f"[{began:4.0f}s] wrk run {segment} failed: {exc}", flush=True)
                await asyncio.sleep(1)
            else:
                self.account_wrk(segment, began, data)
            remove(pools)
            segment += 1
        with contextlib.suppress(Exception):
            remove(await next_pools)

    def account_wrk(self, segment: int, began: float, data: dict[str, Any]) -> None:
        answered = 0
        for key, n in data["counts"].items():
            kind, status, code = key.split(" ")
            self.record(kind, int(status), code, n, {"segment": segment})
            answered += n
        errors = data["errors"]
        sockets = errors["connect"] + errors["read"] + errors["write"]
        if sockets:
            self.bad("connection_error", {"kind": "wrk", "segment": segment, **errors}, sockets)
        if errors["timeout"]:
            self.bad("timeout", {"kind": "wrk", "segment": segment}, errors["timeout"])
        sent = sum(data["sent"].values())
        # A wrk run stops with at most one request in flight per connection.
        lost = sent - answered - self.opts.connections - sockets - errors["timeout"]
        if lost > 0:
            self.bad("no_answer", {"kind": "wrk", "segment": segment, "sent": sent,
                                   "answered": answered}, lost)
        seconds = data["duration_us"] / 1e6
        if self.opts.rate <= 0 and seconds:
            self.rate_seen = max(self.rate_seen, answered / seconds)
        elif answered and seconds and self.delay_ms:
            cycle_ms = self.opts.connections * 1000 / (answered / seconds)
            latency_ms = max(0.0, cycle_ms - round(self.delay_ms))
            self.delay_ms = max(1.0, self.opts.connections * 1000 / self.opts.rate - latency_ms)
        self.segments.append({
            "segment": segment, "t": began, "seconds": round(seconds, 2),
            "requests": data["requests"], "answered": answered, "sent": sent,
            "rps": round(answered / seconds, 1) if seconds else None,
            "p50_ms": data["p50_us"] / 1000, "p99_ms": data["p99_us"] / 1000,
            "max_ms": data["max_us"] / 1000, "socket_errors": errors,
            "hmac_pool_exhausted": data["exhausted"], "counts": data["counts"],
        })
        print(f"[{began:4.0f}s] wrk run {segment}: {answered:,} answers in {seconds:.0f}s "
              f"({answered / max(seconds, 1e-9):,.0f}/s), p99 {data['p99_us'] / 1000:.1f} ms, "
              f"socket errors {sockets}, timeouts {errors['timeout']}; unexpected so far "
              f"{sum(self.unexpected.values()):,}", flush=True)

    # -- Python requests

    async def request(self, kind: str, method: str, path: str, headers: dict[str, str],
                      data: Any = None, expect_bytes: int | None = None) -> None:
        self.probe_n += 1
        rid = f"py-{kind}.{self.probe_n}"
        headers = {**headers, "X-Request-Id": rid}
        detail: dict[str, Any] = {"request_id": rid}
        try:
            async with self.http.request(method, self.base + path, headers=headers,
                                         data=data) as answer:
                got = 0
                body = b""
                async for chunk in answer.content.iter_chunked(1 << 16):
                    got += len(chunk)
                    if len(body) < 4096:
                        body += chunk[:4096]
                status, code = answer.status, "-"
                if status >= 400:
                    try:
                        code = json.loads(body)["error"]["code"]
                    except (ValueError, KeyError, TypeError):
                        code = "?"
                if answer.headers.get("X-Request-Id") != rid:
                    detail["answer_request_id"] = answer.headers.get("X-Request-Id")
                    kind = "mislabelled"
                if expect_bytes is not None and status == 200 and got != expect_bytes:
                    code, detail["bytes"] = "short_body", got
        except TimeoutError:
            status, code = 0, "timeout"
        except aiohttp.ClientError as exc:
            status, code = 0, "connection_error"
            detail["error"] = repr(exc)
        self.record(kind, status, code, detail=detail)

    async def probe_key(self, kind: str, secret: str) -> None:
        await self.request(kind, "GET", GET_PATH, {"Authorization": f"Api-Key {secret}"})

    async def probe_signed(self, kind: str, key_id: str, secret: str) -> None:
        headers = sign_request("GET", self.base + GET_PATH, key_id=key_id, secret=secret)
        await self.request(kind, "GET", GET_PATH, headers)

    # -- admin API and CLI

    async def admin(self, op: str, method: str, path: str,
                    body: dict[str, Any] | None = None) -> Any:
        self.actions[f"admin {op}"] += 1
        try:
            async with self.admin_http.request(
                    method, self.admin_base + path, json=body,
                    headers={"Authorization": f"Bearer {self.stack.admin_token}"}) as answer:
                text = await answer.text()
                if answer.status < 300:
                    return json.loads(text) if text else {}
                self.bad("admin_call", {"op": op, "status": answer.status, "body": text[:300]})
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.bad("admin_call", {"op": op, "error": repr(exc)})
        return None

    async def cli(self, op: str, *args: str) -> Any:
        self.actions[f"cli {op}"] += 1
        try:
            return await asyncio.to_thread(self.stack.cli, "gateway", *args)
        except (subprocess.SubprocessError, ValueError) as exc:
            detail = getattr(exc, "stderr", "") or repr(exc)
            self.bad("cli_call", {"op": op, "error": str(detail)[-300:]})
        return None

    # -- churn

    async def key_cycle(self, n: int) -> None:
        """An API key: created (admin API, or the CLI every --cli-every cycles), used,
        reissued without grace (the old secret must fail), given an expiry that passes, deleted
        (one by one, in bulk or from the CLI); each change checked --settle seconds later."""
        settle = self.opts.settle
        use_cli = self.opts.cli_every > 0 and n % self.opts.cli_every == 0
        if use_cli:
            key = await self.cli("keys create", "keys", "create", "--account",
                                 self.m.churn_account, "--scope", SCOPE, "--description",
                                 f"soak churn {n}", "--json")
        else:
            key = await self.admin("create key", "POST", "/admin/keys", {
                "account_id": self.m.churn_account, "scopes": [SCOPE],
                "description": f"soak churn {n}"})
        if key is None:
            return
        key_id, first = key["id"], key["secret"]
        await self.probe_key("churn_new", first)
        again = await self.admin("reissue", "POST", f"/admin/keys/{key_id}/reissue", {})
        if again is None:
            return
        second = again["secret"]
        await asyncio.sleep(settle)
        await self.probe_key("churn_reissued_old", first)
        await self.probe_key("churn_reissued_new", second)
        until = time.time() + max(2.0, settle)
        if await self.admin("set expiry", "PATCH", f"/admin/keys/{key_id}",
                            {"expires_at": iso(until)}) is not None:
            await asyncio.sleep(until - time.time() + 0.2)
            await self.probe_key("churn_expired", second)
        if use_cli:
            await self.cli("keys delete", "keys", "delete", key_id, "--yes", "--json")
        elif n % 2:
            await self.admin("delete key", "DELETE", f"/admin/keys/{key_id}")
        else:
            await self.admin("bulk delete", "POST", "/admin/keys/delete", {"ids": [key_id]})
        await asyncio.sleep(settle)
        await self.probe_key("churn_deleted", second)

    async def hmac_cycle(self, n: int) -> None:
        """An HMAC key: created through the admin API, used, reissued with a grace period (both
        secrets must work), deleted."""
        settle = self.opts.settle
        key = await self.admin("create hmac key", "POST", "/admin/keys", {
            "account_id": self.m.churn_account, "type": "hmac", "scopes": [SCOPE],
            "expires_in": "1h", "description": f"soak churn {n}"})
        if key is None:
            return
        key_id, first = key["id"], key["secret"]
        await self.probe_signed("churn_hmac_new", key_id, first)
        again = await self.admin("reissue hmac", "POST", f"/admin/keys/{key_id}/reissue",
                                 {"grace": "10m"})
        if again is None:
            return
        await asyncio.sleep(settle)
        await self.probe_signed("churn_hmac_grace_old", key_id, first)
        await self.probe_signed("churn_hmac_reissued_new", key_id, again["secret"])
        await self.admin("delete hmac key", "DELETE", f"/admin/keys/{key_id}")
        await asyncio.sleep(settle)
        await self.probe_signed("churn_hmac_deleted", key_id, again["secret"])

    async def churn(self) -> None:
        cycles: set[asyncio.Task[None]] = set()
        n = 0
        while self.running():
            cycle = self.key_cycle(n) if n % 2 == 0 else self.hmac_cycle(n)
            task = asyncio.ensure_future(cycle)
            cycles.add(task)
            task.add_done_callback(cycles.discard)
            n += 1
            await asyncio.sleep(self.opts.churn_interval)
        if cycles:
            await asyncio.wait(cycles, timeout=60)

    async def account_toggles(self) -> None:
        """One account disabled and re-enabled, its api_access revoked and granted, in turn."""
        path = f"/admin/accounts/{self.m.toggle_account}"
        n = 0
        while self.running():
            field_, off_kind, on_kind = ("enabled", "churn_account_disabled",
                                         "churn_account_enabled") if n % 2 == 0 else \
                ("api_access", "churn_access_revoked", "churn_access_granted")
            for value, kind in ((False, off_kind), (True, on_kind)):
                if await self.admin(f"account {field_}={value}", "PATCH", path,
                                    {field_: value}) is None:
                    return
                await asyncio.sleep(self.opts.settle)
                await self.probe_key(kind, self.m.toggle_secret)
            n += 1
            await asyncio.sleep(self.opts.churn_interval)

    # -- transfers

    async def transfers(self) -> None:
        size = self.opts.transfer_mib * MIB
        auth = {"Authorization": f"Api-Key {self.m.valid[0]}"}
        kinds = ["upload", "download", "upload_chunked", "hmac_post_1m"]
        if not self.m.download_size:
            kinds.remove("download")
        n = 0
        await asyncio.sleep(min(2.0, self.opts.transfer_interval))
        while self.running():
            kind = kinds[n % len(kinds)]
            n += 1
            if kind == "upload":
                headers = {**auth, "X-Request-Id": f"py-upload.{n}"}
                try:
                    result = await asyncio.to_thread(upload, int(self.base.rsplit(":", 1)[1]),
                                                     UPLOAD_PATH, size, headers)
                    code = "-" if 0 < result.status < 400 else \
                        "?" if result.status else "connection_error"
                    self.record(kind, result.status, code,
                                detail={"seconds": round(result.seconds, 3)})
                except OSError as exc:
                    self.record(kind, 0, "connection_error", detail={"error": repr(exc)})
            elif kind == "download":
                await self.request(kind, "GET", "/bench/big/file.bin", auth,
                                   expect_bytes=self.m.download_size)
            elif kind == "upload_chunked":
                await self.request(kind, "POST", UPLOAD_PATH, auth, data=chunks(size))
            else:
                body = os.urandom(MIB)
                headers = sign_request("POST", self.base + UPLOAD_PATH, key_id=self.m.hmac_id,
                                       secret=self.m.hmac_secret, body=body)
                await self.request(kind, "POST", UPLOAD_PATH, headers, data=body)
            await asyncio.sleep(self.opts.transfer_interval)

    # -- all of it

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=120, sock_read=30)
        # A new connection per probe: the kernel spreads them over the workers.
        async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True), timeout=timeout,
                auto_decompress=False) as self.http, \
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as self.admin_http:
            self.started = time.monotonic()
            before = (resource.getrusage(resource.RUSAGE_SELF),
                      resource.getrusage(resource.RUSAGE_CHILDREN))
            self.deadline = self.started + self.opts.duration
            jobs: list[Awaitable[None]] = [self.sampler(), self.traffic(), self.churn(),
                                           self.account_toggles(), self.transfers()]
            await asyncio.gather(*jobs)
            self.sample()  # the last one, after the traffic
            after = (resource.getrusage(resource.RUSAGE_SELF),
                     resource.getrusage(resource.RUSAGE_CHILDREN))
            # this process (probes, signing, sampling) and its finished children (wrk, the CLI)
            self.client_cpu_s = sum(a.ru_utime + a.ru_stime - b.ru_utime - b.ru_stime
                                    for a, b in zip(after, before, strict=True))


async def chunks(size: int) -> AsyncIterator[bytes]:
    block = os.urandom(256 * 1024)
    left = size
    while left > 0:
        piece = block[:min(left, len(block))]
        left -= len(piece)
        yield piece


# -- judging ------------------------------------------------------------------------------------

def thirds(samples: list[dict[str, Any]], value: Any, end: float) -> list[float | None]:
    """Medians of `value(sample)` over the first, middle and last third of the traffic's
    `end` seconds (the last sample, taken once the churn has finished, counts in the last)."""
    parts: list[list[float]] = [[], [], []]
    for s in samples:
        v = value(s)
        if v is not None:
            parts[min(int(3 * s["t"] / end), 2)].append(v)
    return [median(p) for p in parts]


def memory_rows(samples: list[dict[str, Any]], worker_pids: list[int],
                duration: float) -> list[dict[str, Any]]:
    rows = []

    def row(name: str, value: Any, judged: bool = False, unit: float = 1024) -> None:
        first, middle, last = thirds(samples, value, duration)
        values = [value(s) for s in samples if value(s) is not None]
        growth = last - middle if last is not None and middle is not None else None
        rows.append({
            "process": name, "judged": judged,
            "first_mib": first / unit if first is not None else None,
            "middle_mib": middle / unit if middle is not None else None,
            "last_mib": last / unit if last is not None else None,
            "growth_mib": growth / unit if growth is not None else None,
            "growth_pct": 100 * growth / middle if growth is not None and middle else None,
            "max_mib": max(values) / unit if values else None,
            "samples": len(values)})

    row("supervisor", lambda s: s["supervisor_kib"])
    for pid in worker_pids:
        row(f"worker {pid}", lambda s, p=str(pid): s["workers_kib"].get(p))
    row("other children (resource tracker)", lambda s: sum(s["other_children_kib"].values()))
    row("gateway (all its processes)", lambda s: s["gateway_kib"], judged=True)
    row("redis RSS", lambda s: s["redis_rss_kib"])
    row("redis used_memory", lambda s: s["redis_used_memory"], unit=MIB)
    return rows


@dataclass
class Verdict:
    memory_flat: bool
    memory_reason: str
    unexpected: int
    passed: bool
    rule: str


def judge(opts: SoakOptions, rows: list[dict[str, Any]], unexpected: int) -> Verdict:
    rule = (f"memory flat: the median RSS of the gateway (all its processes) over the last "
            f"third of the run exceeds its median over the middle third by less than "
            f"{opts.flat_mib:g} MiB and less than {opts.flat_pct:g} % (the first third is "
            f"warm-up; Redis is reported, not judged); and zero unexpected errors")
    total = next(r for r in rows if r["judged"])
    if total["growth_mib"] is None:
        flat, reason = False, "not enough samples in the middle and last thirds"
    else:
        flat = total["growth_mib"] < opts.flat_mib and total["growth_pct"] < opts.flat_pct
        reason = (f"gateway RSS {total['middle_mib']:.1f} -> {total['last_mib']:.1f} MiB: "
                  f"{total['growth_mib']:+.2f} MiB ({total['growth_pct']:+.2f} %)")
    return Verdict(memory_flat=flat, memory_reason=reason, unexpected=unexpected,
                   passed=flat and unexpected == 0, rule=rule)


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def report_text(soak: Soak, rows: list[dict[str, Any]], verdict: Verdict,
                problems: Counter[str], exit_code: int | None) -> str:
    lines = ["| kind | must get | answers | as expected | unexpected |",
             "|---|---|---:|---:|---:|"]
    kinds: dict[str, Counter[str]] = {}
    for (kind, status, code), n in sorted(soak.counts.items()):
        kinds.setdefault(kind, Counter())[f"{status} {code}"] += n
    for kind, got in kinds.items():
        expected = EXPECTED.get(kind)
        want = f"{expected[0]} {expected[1]}" if expected else "-"
        good = got.get(want, 0)
        other = ", ".join(f"{k}: {v:,}" for k, v in got.items() if k != want)
        lines.append(f"| {kind} | {want} | {sum(got.values()):,} | {good:,} | "
                     f"{other or 0} |")
    total = sum(soak.counts.values())
    lines.append(f"| **all** | | {total:,} | | |")
    lines += ["", "| memory (MiB, medians) | first third | middle third | last third "
              "| last - middle | max |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        growth = "-" if r["growth_mib"] is None else \
            f"{r['growth_mib']:+.2f} ({r['growth_pct']:+.1f} %)"
        name = r["process"] + (" (judged)" if r["judged"] else "")
        lines.append(f"| {name} | {fmt(r['first_mib'])} | {fmt(r['middle_mib'])} | "
                     f"{fmt(r['last_mib'])} | {growth} | {fmt(r['max_mib'])} |")
    points = soak.samples[::max(1, len(soak.samples) // 12)]
    lines.append("\ngateway RSS over time (MiB): " + "  ".join(
        f"{p['t']:.0f}s {p['gateway_kib'] / 1024:.1f}" for p in points))
    rps = [s["rps"] for s in soak.segments if s["rps"]]
    gateway_cpu = soak.samples[-1]["gateway_cpu_s"] - soak.samples[0]["gateway_cpu_s"] \
        if soak.samples else None
    wall = soak.samples[-1]["t"] - soak.samples[0]["t"] if soak.samples else None
    p99 = [s["p99_ms"] for s in soak.segments]
    lines += ["",
              f"wrk: {len(soak.segments)} runs, {fmt(median(rps), 0)} answers/s (median of "
              f"runs), p99 {fmt(median(p99), 1)} ms (median), {fmt(max(p99) if p99 else None)}"
              f" ms (worst); HMAC pool ran dry "
              f"{sum(s['hmac_pool_exhausted'] for s in soak.segments):,} times (sent as API-key"
              " GETs instead)",
              f"CPU: gateway {fmt(gateway_cpu, 0)} s, client {fmt(soak.client_cpu_s, 0)} s "
              f"(soak.py, wrk, CLI) over {fmt(wall, 0)} s of wall time on {os.cpu_count()} CPUs",
              "admin/CLI calls: " + (", ".join(f"{k} {v}" for k, v in sorted(soak.actions.items()))
                                     or "none"),
              "unexpected: " + (", ".join(f"{k} {v:,}" for k, v in soak.unexpected.items())
                                or "none")
              + f"; worker restarts {len(soak.restarts)}",
              f"gateway log: {sum(problems.values()):,} warnings/errors; exit status after "
              f"SIGTERM {exit_code}"]
    lines += [f"  {n:,} x {message[:400]}" for message, n in problems.most_common(5)]
    lines += ["", f"rule: {verdict.rule}",
              f"memory: {'flat' if verdict.memory_flat else 'NOT flat'} ({verdict.memory_reason})",
              f"verdict: {'PASS' if verdict.passed else 'FAIL'} "
              f"({verdict.unexpected:,} unexpected errors)"]
    return "\n".join(lines)


# -- main ---------------------------------------------------------------------------------------

LOG_LEVEL = re.compile(r" (WARNING|ERROR|CRITICAL) ")
LOG_START = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[,.]?\d*")


def gateway_log(service: Service) -> tuple[Counter[str], list[str], int]:
    """The supervisor's and workers' warnings and errors: each distinct message (time and pid
    left out, the exception and the line raising it added when a traceback follows) with its
    count, the first raw lines, and how many worker exits the supervisor logged."""
    try:
        lines = service.log_path.read_text(errors="replace").splitlines()
    except OSError:
        return Counter(), [], 0
    problems: Counter[str] = Counter()
    raw: list[str] = []
    exits = 0
    for i, line in enumerate(lines):
        if not LOG_LEVEL.search(line):
            continue
        exits += "exited with" in line
        if len(raw) < 200:
            raw.append(line)
        message = re.sub(r"\[worker \d+\]", "[worker]", LOG_START.sub("", line)).strip()
        message = re.sub(r"pid \d+", "pid N", message)
        end = i + 1
        while end < len(lines) and not LOG_START.match(lines[end]):
            end += 1
        if end - i > 2:  # a traceback: where it was raised and what
            raw.extend(lines[i + 1:end][-3:] if len(raw) < 200 else [])
            message += " | " + " ".join(part.strip() for part in lines[end - 3:end])
        problems[message] += 1
    return problems, raw, exits


def main(argv: list[str] | None = None) -> int:
    d = SoakOptions()
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=d.duration, help="seconds of traffic")
    parser.add_argument("--workers", type=int, default=d.workers)
    parser.add_argument("--rate", type=int, default=d.rate,
                        help="about this many wrk requests/s (0: as fast as it goes)")
    parser.add_argument("--connections", type=int, default=d.connections)
    parser.add_argument("--threads", type=int, default=d.threads, help="wrk threads")
    parser.add_argument("--segment", type=int, default=d.segment,
                        help="seconds per wrk run (HMAC requests are signed per run)")
    parser.add_argument("--mix", default=d.mix, help="KIND=WEIGHT,... of the wrk traffic")
    parser.add_argument("--keys", type=int, default=d.keys, help="valid API keys presented")
    parser.add_argument("--sample-interval", type=float, default=d.sample_interval)
    parser.add_argument("--churn-interval", type=float, default=d.churn_interval)
    parser.add_argument("--cli-every", type=int, default=d.cli_every,
                        help="every Nth API-key churn cycle uses the CLI (0: never)")
    parser.add_argument("--transfer-interval", type=float, default=d.transfer_interval)
    parser.add_argument("--transfer-mib", type=int, default=d.transfer_mib)
    parser.add_argument("--settle", type=float, default=d.settle,
                        help="seconds between a key change and the check of its effect")
    parser.add_argument("--flat-mib", type=float, default=d.flat_mib)
    parser.add_argument("--flat-pct", type=float, default=d.flat_pct)
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args(argv)
    if not shutil.which("wrk"):
        print("wrk is not installed: apt-get install wrk", file=sys.stderr)
        return 2
    opts = SoakOptions(**{k: v for k, v in vars(args).items() if k != "keep"})
    if opts.duration < 3 or opts.segment < 1 or opts.rate < 0 or opts.sample_interval <= 0:
        parser.error("need --duration >= 3, --segment >= 1, --rate >= 0, --sample-interval > 0")
    if opts.duration < 9 * opts.sample_interval:  # at least 3 samples in each third
        opts.sample_interval = opts.duration / 9
    try:
        parse_mix(opts.mix)
    except ValueError as exc:
        parser.error(str(exc))

    tmp = Path(tempfile.mkdtemp(prefix="gwsoak-"))
    stack = Stack(Options(workers=opts.workers), tmp)
    began = datetime.now(UTC)
    exit_code: int | None = None
    problems: Counter[str] = Counter()
    log_lines: list[str] = []
    logged_exits = 0
    try:
        print(f"starting redis, upstreams and the gateway ({opts.workers} workers) ...",
              flush=True)
        store = stack.redis("redis")
        redis_pid = next(s.pid for s in stack.services if s.name == "redis")
        download = start_upstreams(stack, opts.transfer_mib * MIB)
        keymat.write_account(store)
        valid = keymat.write_keys(store, opts.keys, 1)
        gateway, port, admin_port = stack.gateway("gateway", tmp / "redis.sock",
                                                  gateway_extra())
        material = prepare(opts, stack, admin_port, valid, download)
        print(f"soak: {opts.duration}s of mixed traffic (wrk ~{opts.rate or 'max'} req/s over "
              f"{opts.connections} connections; {opts.keys:,} valid keys), churn every "
              f"{opts.churn_interval:g}s, transfers every {opts.transfer_interval:g}s, memory "
              f"every {opts.sample_interval:g}s", flush=True)
        soak = Soak(opts, stack, gateway, port, admin_port, store, redis_pid, material)
        asyncio.run(soak.run())
    finally:
        stack.stop()
        for service in stack.services:
            if service.name == "gateway":
                exit_code = service.process.returncode
                problems, log_lines, logged_exits = gateway_log(service)
        if args.keep:
            print(f"scratch directory kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    if logged_exits > len(soak.restarts):
        soak.bad("worker_restart", {"source": "gateway log"}, logged_exits - len(soak.restarts))
    rows = memory_rows(soak.samples, soak.worker_pids, opts.duration)
    verdict = judge(opts, rows, sum(soak.unexpected.values()))
    text = report_text(soak, rows, verdict, problems, exit_code)
    print()
    print(text)
    stamp = began.strftime("%Y%m%dT%H%M%SZ")
    result = {
        "timestamp": stamp, "machine": versions(), "options": asdict(opts),
        "command": " ".join(["python -m bench.soak", *(argv if argv is not None
                                                       else sys.argv[1:])]),
        "verdict": asdict(verdict), "memory": rows,
        "counts": [{"kind": k, "status": s, "code": c, "n": n, "expected": list(EXPECTED[k])
                    if k in EXPECTED else None} for (k, s, c), n in sorted(soak.counts.items())],
        "unexpected": dict(soak.unexpected), "unexpected_examples": soak.examples,
        "worker_restarts": soak.restarts, "worker_pids": soak.worker_pids,
        "actions": dict(soak.actions), "client_cpu_s": round(soak.client_cpu_s, 1),
        "wrk_runs": soak.segments, "samples": soak.samples,
        "gateway_log_problems": dict(problems.most_common(50)), "gateway_log": log_lines,
        "gateway_exit_status": exit_code, "table": text,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    data = json.dumps(result, indent=1)
    (RESULTS / f"soak-{stamp}.json").write_text(data)
    (RESULTS / "soak-latest.json").write_text(data)
    print(f"\nwrote {RESULTS / f'soak-{stamp}.json'} and {RESULTS / 'soak-latest.json'}")
    return 0 if verdict.passed else 1


if __name__ == "__main__":
    sys.exit(main())
