"""A fleet of real `gateway run` processes on one shared store, and a record of every answer
they give, by phase, for tests that break the store under traffic (tests/integration/
test_fleet.py).

    fleet = Fleet(tmp_path, topology.url, upstream_url, count=3)
    await fleet.start()                      # in threads: the upstream runs on this loop
    record = Record()
    async with fleet.session() as http:
        record.phase = "steady"
        await fleet.api_key_get(http, record, 0, "warm", secret)
    print(record.summary())
    await fleet.stop()
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import secrets
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from gateway.client import sign_request
from tests.support.processes import GatewayProcess, write_config

MASTER_KEY = os.urandom(32)
ADMIN_TOKEN = secrets.token_urlsafe(24)
FLEET_ENV = {"GATEWAY_MASTER_KEY": base64.b64encode(MASTER_KEY).decode(),
             "GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN}
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
REQUEST_TIMEOUT = 3.0  # a client's patience: far above redis.timeout (0.5 s)
PREFIX = "/echo/"
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exhausted)\b.*: ")


@dataclass(frozen=True, slots=True)
class Answer:
    at: float  # time.monotonic() when the answer (or the failure) came
    phase: str
    kind: str
    instance: int
    status: int  # 0: no HTTP answer (timeout, connection refused or reset)
    code: str | None  # the error code of a JSON error body
    detail: str  # the body (cut) of an answer nobody expected, or the client-side error


@dataclass
class Record:
    """Every answer of a test, by phase and kind of request; `allowed` says which statuses
    each kind may get (anything else is a finding)."""

    allowed: dict[str, set[int]] = field(default_factory=dict)
    phase: str = "start"
    answers: list[Answer] = field(default_factory=list)
    marks: list[tuple[float, str]] = field(default_factory=list)

    def mark(self, what: str) -> float:
        now = time.monotonic()
        self.marks.append((now, what))
        return now

    def add(self, kind: str, instance: int, status: int, code: str | None = None,
            detail: str = "") -> Answer:
        answer = Answer(time.monotonic(), self.phase, kind, instance, status, code, detail)
        self.answers.append(answer)
        return answer

    def unexpected(self) -> list[Answer]:
        return [a for a in self.answers if a.status not in self.allowed.get(a.kind, set())]

    def with_status(self, status: int, kinds: Iterable[str] | None = None) -> list[Answer]:
        chosen = set(kinds) if kinds is not None else None
        return [a for a in self.answers
                if a.status == status and (chosen is None or a.kind in chosen)]

    def dump(self, path: Path, start: float) -> Path:
        """Every answer and mark as JSON lines (t in seconds from `start`), for a closer look."""
        with path.open("w") as out:
            for at, what in self.marks:
                out.write(json.dumps({"t": round(at - start, 3), "mark": what}) + "\n")
            for a in self.answers:
                out.write(json.dumps({"t": round(a.at - start, 3), "phase": a.phase,
                                      "kind": a.kind, "gw": a.instance, "status": a.status,
                                      "code": a.code, "detail": a.detail[:300]}) + "\n")
        return path

    def summary(self, start: float | None = None) -> str:
        origin = start if start is not None else (self.answers[0].at if self.answers else 0.0)
        lines = []
        phases = list(dict.fromkeys(a.phase for a in self.answers))
        for phase in phases:
            mine = [a for a in self.answers if a.phase == phase]
            lines.append(f"  [{phase}] {mine[0].at - origin:6.2f}s..{mine[-1].at - origin:6.2f}s"
                         f" {len(mine)} answers")
            by_kind: dict[str, Counter[str]] = {}
            for a in mine:
                label = str(a.status) + (f" {a.code}" if a.code and a.status != 200 else "")
                by_kind.setdefault(a.kind, Counter())[label] += 1
            for kind, counts in by_kind.items():
                lines.append(f"      {kind:14} " + ", ".join(f"{label}: {n}" for label, n
                                                         in sorted(counts.items())))
        for at, what in self.marks:
            lines.append(f"  mark {at - origin:6.2f}s {what}")
        return "\n".join(lines)


class Fleet:
    """`count` gateway processes (`--workers 1`) on `redis_url`, each with the route
    /echo/ -> `upstream`; `sections` go into every config, `per_instance` (one dict per
    instance) into that instance's only."""

    def __init__(self, directory: Path, redis_url: str, upstream: str, count: int = 3, *,
                 per_instance: list[dict[str, Any]] | None = None,
                 trusted_proxies: list[str] | None = None, **sections: Any) -> None:
        routes = [{"name": "echo", "prefix": PREFIX, "upstream": upstream,
                   "strip_prefix": True}]
        sections = {"redis": {"url": redis_url, "timeout": "0.5s"},
                    "keys": {"cache_ttl": "2s"}, **sections}
        self.instances: list[GatewayProcess] = []
        for n in range(count):
            own = {**sections, **(per_instance[n] if per_instance else {})}
            own.setdefault("data_dir", str(directory / f"data{n}"))
            path, port, admin_port = write_config(directory / f"gateway{n}.yaml", redis_url,
                                                  routes, **own)
            if trusted_proxies:
                data = yaml.safe_load(path.read_text())
                data["listen"]["trusted_proxies"] = trusted_proxies
                path.write_text(yaml.safe_dump(data))
            self.instances.append(GatewayProcess(path, port, admin_port, env=FLEET_ENV))

    async def start(self) -> Fleet:
        """Start every instance at once (in threads: the upstream runs on this loop); if any
        fails, stop them all and raise its error."""
        results = await asyncio.gather(*(asyncio.to_thread(g.start, 30.0)
                                         for g in self.instances), return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            await self.stop()
            raise failed[0]
        return self

    async def stop(self) -> list[int]:
        return list(await asyncio.gather(*(asyncio.to_thread(g.stop) for g in self.instances)))

    def url(self, n: int, path: str = "x") -> str:
        return f"{self.instances[n].url}{PREFIX}{path}"

    def admin(self, n: int, path: str) -> str:
        return f"{self.instances[n].admin_url}{path}"

    def log_lines(self, *needles: str) -> list[str]:
        """Lines of every instance's log holding any of `needles` (each prefixed with its
        instance number)."""
        found = []
        for n, instance in enumerate(self.instances):
            for line in instance.log().splitlines():
                if any(needle in line for needle in needles):
                    found.append(f"gw{n}: {line}")
        return found

    def problems(self) -> list[str]:
        """Log lines of every instance that speak of a failure of the gateway itself: a
        traceback and the exception ending it, an ERROR, a 500 in the access log."""
        found = []
        for n, instance in enumerate(self.instances):
            for line in instance.log().splitlines():
                if ("Traceback" in line or " ERROR " in line or '"status":500' in line
                        or _EXCEPTION_LINE.match(line)):
                    found.append(f"gw{n}: {line}")
        return found

    @staticmethod
    def session() -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
            connector=aiohttp.TCPConnector(limit=64, force_close=False))

    # -- requests, each recorded

    async def call(self, http: aiohttp.ClientSession, record: Record, kind: str, n: int,
                   method: str, url: str, *, headers: dict[str, str] | None = None,
                   json: Any = None, tag: str = "") -> tuple[Answer, Any]:
        """One request; its answer is recorded (status 0 when none came). Returns the answer
        and the parsed JSON body (None when not JSON)."""
        try:
            async with http.request(method, url, headers=headers, json=json) as response:
                raw = await response.read()
                body: Any = None
                try:
                    body = await response.json(content_type=None) if raw else None
                except ValueError:
                    body = None
                code = None
                if isinstance(body, dict) and isinstance(body.get("error"), dict):
                    code = body["error"].get("code")
                detail = "" if response.status < 400 else raw[:300].decode(errors="replace")
                return record.add(kind, n, response.status, code, f"{tag} {detail}".strip()), \
                    body
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return record.add(kind, n, 0, None, f"{tag} {type(exc).__name__}: {exc}".strip()), \
                None

    async def api_key_get(self, http: aiohttp.ClientSession, record: Record, n: int, kind: str,
                          secret: str, *, forwarded_for: str | None = None, tag: str = ""
                          ) -> Answer:
        headers = {"Authorization": f"Api-Key {secret}"}
        if forwarded_for:
            headers["X-Forwarded-For"] = forwarded_for
        answer, _ = await self.call(http, record, kind, n, "GET", self.url(n, kind),
                                    headers=headers, tag=tag)
        return answer

    async def signed_get(self, http: aiohttp.ClientSession, record: Record, n: int, kind: str,
                         key_id: str, secret: str, *, forwarded_for: str | None = None
                         ) -> Answer:
        url = self.url(n, f"{kind}?n={secrets.token_hex(4)}")
        headers = sign_request("GET", url, key_id=key_id, secret=secret)  # a fresh nonce
        if forwarded_for:
            headers["X-Forwarded-For"] = forwarded_for
        answer, _ = await self.call(http, record, kind, n, "GET", url, headers=headers)
        return answer

    async def admin_call(self, http: aiohttp.ClientSession, record: Record, n: int, kind: str,
                         method: str, path: str, json: Any = None) -> tuple[Answer, Any]:
        return await self.call(http, record, kind, n, method, self.admin(n, path),
                               headers=ADMIN_HEADERS, json=json)

    async def readyz(self, http: aiohttp.ClientSession, n: int) -> tuple[int, Any]:
        try:
            async with http.get(self.admin(n, "/readyz")) as response:
                return response.status, await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return 0, repr(exc)


async def until(condition: Any, seconds: float, interval: float = 0.05) -> float | None:
    """Await `condition()` (an async callable answering a bool) until it holds, at most
    `seconds` and seconds / interval + 1 tries; the seconds it took, or None."""
    start = time.monotonic()
    for _ in range(int(seconds / interval) + 1):
        if await condition():
            return time.monotonic() - start
        if time.monotonic() - start > seconds:
            break
        await asyncio.sleep(interval)
    return None
