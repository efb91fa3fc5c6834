"""Metrics and the access log (SPEC §9, issue 6): `/metrics` read with the official Prometheus
parser while real requests pass, in-process and across `gateway run --workers 2`; one JSON access
line per request, with no secret anywhere in the logs or the metrics."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import shutil
import signal
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest, multiprocess
from prometheus_client.parser import text_string_to_metric_families

from gateway.auth import apikey
from gateway.client import sign_request
from gateway.config import build_config, load_config
from gateway.keys.secrets import SecretBox
from gateway.keys.service import KeyService
from gateway.keys.store import KeyStore
from gateway.store.client import connect
from tests.conftest import api_key, new_key
from tests.integration.test_process_model import (
    ADMIN_TOKEN,
    echo_app,
    eventually,
    fresh_session,
    launch_fixture,  # noqa: F401 (registers the `launch` fixture here)
    route,
    short_dir_fixture,  # noqa: F401 (registers the `short_dir` fixture here)
    statuses,
    worker_pids,
)
from tests.support.redis_server import RedisServer

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample of a text exposition, read with prometheus-client's own parser."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def gateway_only(samples: Samples) -> Samples:
    return {key: count for key, count in samples.items() if key[0].startswith("gateway_")}


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples called `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, have), v in samples.items() if n == name and wanted <= set(have))


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def buckets(samples: Samples, name: str, **labels: str) -> dict[float, float]:
    found: dict[float, float] = {}
    for (n, have), v in samples.items():
        label_map = dict(have)
        if n == name + "_bucket" and all(label_map.get(k) == x for k, x in labels.items()):
            found[float(label_map["le"])] = found.get(float(label_map["le"]), 0.0) + v
    return found


async def scrape(session: aiohttp.ClientSession, admin_url: str) -> Samples:
    async with session.get(admin_url + "/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return parse(await response.text())


async def scrape_until(session: aiohttp.ClientSession, admin_url: str, name: str,
                       at_least: float, **labels: str) -> Samples:
    """Scrape until `name` has reached `at_least` (a response can reach the client a moment
    before the worker has counted it), then return that scrape."""
    samples: Samples = {}

    async def reached() -> bool:
        nonlocal samples
        samples = await scrape(session, admin_url)
        return value(samples, name, **labels) >= at_least

    assert await eventually(reached, 5.0), (name, labels, value(samples, name, **labels))
    return samples


def check_latency_histogram(before: Samples, after: Samples, name: str, route_name: str,
                            count: int) -> None:
    assert delta(before, after, name + "_count", route=route_name) == count
    assert delta(before, after, name + "_sum", route=route_name) > 0
    now = buckets(after, name, route=route_name)
    then = buckets(before, name, route=route_name)
    bounds = sorted(now)
    assert bounds[-1] == float("inf")
    finite = bounds[:-1]
    assert finite[0] <= 0.001, finite  # sub-millisecond
    assert finite[-1] >= 10.0, finite  # to tens of seconds
    moved = [now[b] - then.get(b, 0.0) for b in bounds]
    assert moved == sorted(moved), moved  # cumulative
    assert moved[-1] == count


# -- in-process: values move as requests pass ---------------------------------------------------

async def test_metrics_move_as_requests_pass_in_process(
        redis_clean: RedisServer, key_service: KeyService, start_gateway: Any,
        serve_app: Any, tmp_path: Path) -> None:
    echo = await serve_app(echo_app("echo"))
    gate, entered = asyncio.Event(), asyncio.Event()

    async def held(request: web.Request) -> web.Response:
        entered.set()
        await gate.wait()
        return web.Response(text="released")

    held_app = web.Application()
    held_app.router.add_get("/{tail:.*}", held)
    held_upstream = await serve_app(held_app)

    _, secret, _ = await new_key(key_service, ("svc.read",))
    _, unscoped, _ = await new_key(key_service, ())
    unknown = apikey.new_secret()
    path = tmp_path / "gateway.yaml"
    data = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"host": "127.0.0.1", "port": 0, "token": ADMIN_TOKEN},
        "redis": {"url": redis_clean.url},
        "routes": [route("open", str(echo.make_url("")), public=True),
                   route("secure", str(echo.make_url("")), scopes=["svc.read"]),
                   route("held", str(held_upstream.make_url("")), public=True)],
    }
    path.write_text(yaml.safe_dump(data))
    gateway = await start_gateway(load_config(str(path), {}))

    async with aiohttp.ClientSession() as session:
        before = await scrape(session, gateway.admin_url)

        async def status(method: str, target: str, headers: dict[str, str] | None = None,
                         body: bytes | None = None) -> int:
            async with session.request(method, gateway.url + target, headers=headers,
                                       data=body) as response:
                await response.read()
                return response.status

        assert [await status("GET", "/open/x") for _ in range(3)] == [200] * 3
        assert await status("GET", "/secure/x") == 401  # missing_credentials
        assert await status("GET", "/secure/x", api_key(secret)) == 200  # cache miss
        assert await status("GET", "/secure/x", api_key(secret)) == 200  # hit
        assert await status("POST", "/secure/x", api_key(secret), b"{}") == 200  # hit
        assert await status("GET", "/secure/x", api_key(unscoped)) == 403  # miss
        assert await status("GET", "/secure/x", api_key(unknown)) == 401  # miss
        assert await status("GET", "/secure/x", api_key(unknown)) == 401  # negative hit
        assert await status("GET", "/secure/x", {"Authorization": "Api-Key nope"}) == 401

        after = await scrape_until(session, gateway.admin_url, "gateway_requests_total",
                                   value(before, "gateway_requests_total") + 11)
        requests = "gateway_requests_total"
        assert delta(before, after, requests) == 11
        assert delta(before, after, requests, route="open", method="GET", status="200") == 3
        assert delta(before, after, requests, route="secure", method="GET", status="200") == 2
        assert delta(before, after, requests, route="secure", method="POST", status="200") == 1
        assert delta(before, after, requests, route="secure", method="GET", status="401") == 4
        assert delta(before, after, requests, route="secure", method="GET", status="403") == 1

        check_latency_histogram(before, after, "gateway_request_duration_seconds", "open", 3)
        check_latency_histogram(before, after, "gateway_request_duration_seconds", "secure", 8)
        # Only requests that reached the upstream have an upstream time.
        check_latency_histogram(before, after, "gateway_upstream_duration_seconds", "open", 3)
        check_latency_histogram(before, after, "gateway_upstream_duration_seconds", "secure", 3)

        auth = "gateway_auth_results_total"
        assert delta(before, after, auth, method="api_key", outcome="ok") == 3
        assert delta(before, after, auth, outcome="missing_credentials") == 1
        assert delta(before, after, auth, method="api_key", outcome="insufficient_scope") == 1
        assert delta(before, after, auth, method="api_key", outcome="invalid_credentials") >= 2
        assert delta(before, after, auth, outcome="invalid_credentials") == 3
        assert delta(before, after, auth) == 8

        cache = "gateway_key_cache_total"
        assert delta(before, after, cache, result="miss") == 3
        assert delta(before, after, cache, result="hit") == 2
        assert delta(before, after, cache, result="negative_hit") == 1

        # In flight: a request held at the upstream counts until it is answered.
        in_flight = "gateway_requests_in_flight"
        assert value(after, in_flight) == value(before, in_flight)
        held_request = asyncio.ensure_future(status("GET", "/held/x"))
        await asyncio.wait_for(entered.wait(), 5)
        during = await scrape(session, gateway.admin_url)
        assert value(during, in_flight) == value(before, in_flight) + 1
        gate.set()
        assert await held_request == 200
        settled = await scrape_until(session, gateway.admin_url, requests,
                                     value(after, requests) + 1)
        assert value(settled, in_flight) == value(before, in_flight)

        # Config reloads, by result.
        reloads = "gateway_config_reloads_total"
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with session.post(gateway.admin_url + "/admin/reload", headers=admin) as response:
            assert response.status == 200, await response.text()
        path.write_text(yaml.safe_dump({**data, "keys": {"cache_ttl": "forever"}}))
        async with session.post(gateway.admin_url + "/admin/reload", headers=admin) as response:
            assert response.status == 422, await response.text()
        reloaded = await scrape(session, gateway.admin_url)
        assert delta(before, reloaded, reloads, result="ok") == 1
        assert delta(before, reloaded, reloads, result="error") == 1


# -- two workers: one view, every request counted once -------------------------------------------

def per_worker_requests(metrics_dir: Path, pids: set[int], scratch: Path) -> dict[int, float]:
    """Requests counted by each worker: its own counter file, aggregated on its own."""
    counts = {}
    for pid in pids:
        alone = scratch / str(pid)
        alone.mkdir()
        source = metrics_dir / f"counter_{pid}.db"
        if source.exists():
            shutil.copy(source, alone / source.name)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(alone))
        counts[pid] = value(parse(generate_latest(registry).decode()), "gateway_requests_total")
    return counts


@pytest.mark.parametrize("workers", [1, 2])
async def test_config_reloads_are_exported_at_zero_from_the_start(
        redis_clean: RedisServer, serve_app: Any, launch: Any, workers: int) -> None:
    """Issue 17, item 17: SPEC §9 lists gateway_config_reloads_total; with --workers 2 it
    was absent until the first reload. Both results are there at 0 before any reload."""
    echo = await serve_app(echo_app("echo"))
    gateway = await launch(redis_clean.url, [route("open", str(echo.make_url("")),
                                                   public=True)], workers=workers)
    async with aiohttp.ClientSession() as session:
        samples = await scrape(session, gateway.admin_url)
    reloads = "gateway_config_reloads_total"
    assert (reloads, (("result", "ok"),)) in samples
    assert (reloads, (("result", "error"),)) in samples
    assert value(samples, reloads, result="ok") == 0
    assert value(samples, reloads, result="error") == 0
    # And a reload counts once, whichever process did it (the supervisor, with workers).
    status, _ = await gateway.admin_reload()
    assert status == 200
    async with aiohttp.ClientSession() as session:
        samples = await scrape(session, gateway.admin_url)
    assert value(samples, reloads, result="ok") == 1
    assert value(samples, reloads, result="error") == 0


@pytest.mark.slow
async def test_two_workers_count_every_request_exactly_once(
        redis_clean: RedisServer, key_service: KeyService, serve_app: Any, launch: Any,
        tmp_path: Path) -> None:
    echo = await serve_app(echo_app("echo"))
    _, secret, _ = await new_key(key_service, ("svc.read",))
    gateway = await launch(redis_clean.url,
                           [route("secure", str(echo.make_url("")), scopes=["svc.read"])])
    pids = worker_pids(gateway.pid)
    assert len(pids) == 2

    total = 40
    assert await statuses(gateway.url + "/secure/items", total, api_key(secret),
                          parallel=4) == Counter({200: total})

    async with aiohttp.ClientSession() as session:
        after = await scrape_until(session, gateway.admin_url, "gateway_requests_total", total)
        await asyncio.sleep(0.3)
        settled = await scrape(session, gateway.admin_url)
    # Nothing more arrives: each request counted once, not more. (process_* of the processes
    # themselves, CPU and memory, move on their own.)
    assert gateway_only(settled) == gateway_only(after)
    assert value(after, "gateway_requests_total") == total
    assert value(after, "gateway_requests_total", route="secure", method="GET",
                 status="200") == total
    for name in ("gateway_request_duration_seconds", "gateway_upstream_duration_seconds"):
        check_latency_histogram({}, after, name, "secure", total)
    assert value(after, "gateway_auth_results_total", method="api_key", outcome="ok") == total
    assert value(after, "gateway_auth_results_total") == total
    hits = value(after, "gateway_key_cache_total", result="hit")
    misses = value(after, "gateway_key_cache_total", result="miss")
    assert hits + misses == total
    assert 1 <= misses <= 8  # at first, once per worker (or per concurrent first lookup)
    assert value(after, "gateway_key_cache_total", result="negative_hit") == 0
    assert value(after, "gateway_requests_in_flight") == 0

    # Both workers served: each one's own counter file holds some of the 40.
    counts = per_worker_requests(Path(gateway.directory) / "data" / "metrics", pids, tmp_path)
    assert sum(counts.values()) == total, counts
    assert all(count > 0 for count in counts.values()), counts

    # The metric files are cleaned at start: a restarted gateway counts from zero.
    assert await gateway.stop() == 0
    await gateway.start()
    assert await statuses(gateway.url + "/secure/items", 3, api_key(secret)) == Counter({200: 3})
    async with aiohttp.ClientSession() as session:
        restarted = await scrape_until(session, gateway.admin_url, "gateway_requests_total", 3)
    assert value(restarted, "gateway_requests_total") == 3
    assert value(restarted, "gateway_auth_results_total") == 3


# -- the access log ------------------------------------------------------------------------------

ACCESS_FIELDS = {"time", "request_id", "method", "path", "route", "status", "duration_ms",
                 "upstream_ms", "bytes_sent", "client", "auth_method", "key_id", "account_id",
                 "outcome", "host", "user_agent", "http_version"}
# Refusals about a key the store holds name it (issue 17, item 18).
KNOWN_KEY_REFUSALS = {"insufficient_scope", "account_disabled", "api_access_denied",
                      "expired_key", "replayed_request"}


def access_lines(log: str) -> list[dict[str, Any]]:
    """The proxy's access-log lines (the admin listener's carry "log": "admin")."""
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("log") != "admin"]


@pytest.mark.slow
async def test_access_log_lines_and_no_secret_in_logs_or_metrics(
        redis_clean: RedisServer, key_service: KeyService, serve_app: Any,
        launch: Any) -> None:
    echo = await serve_app(echo_app("echo"))
    key, secret, account = await new_key(key_service, ("svc.read",))
    _, other_secret, _ = await new_key(key_service, ("svc.read",))
    unscoped_key, unscoped_secret, _ = await new_key(key_service, ())
    unknown = apikey.new_secret()
    signature = "sig1=:c2lnbmF0dXJlLXRoYXQtbXVzdC1ub3QtYmUtbG9nZ2Vk:"
    gateway = await launch(redis_clean.url,
                           [route("secure", str(echo.make_url("")), scopes=["svc.read"])])

    sent: list[tuple[str, str, dict[str, str], int, str]] = [
        # method, target, headers, expected status, expected outcome
        ("GET", f"/secure/items?token={other_secret}&x=1", api_key(secret), 200, "ok"),
        ("POST", "/secure/items", {**api_key(secret), "X-Request-Id": "trace-me-0001"}, 200,
         "ok"),
        ("GET", "/secure/items", api_key(unknown), 401, "invalid_credentials"),
        ("GET", "/secure/items", {"Authorization": "Api-Key not-a-real-key-1234"}, 401,
         "invalid_credentials"),
        ("GET", "/secure/items", {"Authorization": f"Bearer {other_secret}"}, 401,
         "invalid_credentials"),
        ("GET", f"/secure/items?api_key={other_secret}", {}, 401, "missing_credentials"),
        ("GET", "/secure/items", api_key(unscoped_secret), 403, "insufficient_scope"),
        ("GET", "/secure/items", {"Signature-Input": 'sig1=("@method");keyid="nope";'
                                                    'created=1700000000',
                                  "Signature": signature}, 401, ""),
    ]
    async with fresh_session() as session:
        for method, target, headers, expected, _ in sent:
            async with session.request(method, gateway.url + target, headers=headers,
                                       data=b'{"a": 1}' if method == "POST" else None
                                       ) as response:
                await response.read()
                assert response.status == expected, (target, await response.text())
        metrics = await scrape_until(session, gateway.admin_url, "gateway_requests_total",
                                     len(sent))
        async with session.get(gateway.admin_url + "/metrics") as response:
            metrics_text = await response.text()
    assert value(metrics, "gateway_requests_total") == len(sent)
    assert await gateway.stop() == 0
    log = gateway.log()

    secrets = [secret, other_secret, unscoped_secret, unknown, ADMIN_TOKEN,
               "not-a-real-key-1234", "c2lnbmF0dXJlLXRoYXQtbXVzdC1ub3QtYmUtbG9nZ2Vk",
               *(value for _, _, headers, _, _ in sent for name, value in headers.items()
                 if name in ("Authorization", "Signature"))]
    for text, where in ((log, "log"), (metrics_text, "metrics")):
        leaked = [s for s in secrets if s in text]
        assert not leaked, f"secrets in the {where}: {leaked}\n{text}"
        assert "Api-Key " not in text and "Bearer " not in text, text

    lines = access_lines(log)
    assert len(lines) == len(sent), log
    for line in lines:
        assert set(line) >= ACCESS_FIELDS, line
        assert line["route"] == "secure"
        assert line["path"] == "/secure/items"  # the path only, never the query
        assert line["client"] == "127.0.0.1"
        assert isinstance(line["duration_ms"], int | float) and line["duration_ms"] >= 0
        assert isinstance(line["bytes_sent"], int) and line["bytes_sent"] > 0
        assert datetime.fromisoformat(line["time"]).tzinfo is not None
        assert line["request_id"]
    assert Counter(line["status"] for line in lines) == Counter(s[3] for s in sent)
    for outcome in ("ok", "invalid_credentials", "missing_credentials", "insufficient_scope"):
        assert (sum(1 for line in lines if line["outcome"] == outcome)
                == sum(1 for s in sent if s[4] == outcome)), outcome
    ok = [line for line in lines if line["status"] == 200]
    assert sorted(line["method"] for line in ok) == ["GET", "POST"]
    for line in ok:
        # As the upstream's X-Auth-Method says it (SPEC §6): `api-key`.
        assert (line["auth_method"], line["key_id"], line["account_id"]) == (
            "api-key", key.id, account.id)
        assert 0 <= line["upstream_ms"] <= line["duration_ms"]
    assert "trace-me-0001" in {line["request_id"] for line in lines}
    for line in lines:
        if line["status"] != 200:
            assert line["upstream_ms"] is None, line
        if line["outcome"] in KNOWN_KEY_REFUSALS:
            assert (line["auth_method"], line["key_id"]) == ("api-key", unscoped_key.id), line
        elif line["status"] != 200:
            assert line["key_id"] is None and line["account_id"] is None, line
        assert line["host"] == f"127.0.0.1:{gateway.process.port}"
        assert line["http_version"] == "1.1"
        assert line["user_agent"].startswith("Python/")  # aiohttp's own


async def test_access_log_names_the_key_of_a_refusal_once_it_was_found(
        redis_clean: RedisServer, upstream: Any, start_gateway: Any) -> None:
    """Issue 17, item 18: insufficient_scope, account_disabled, expired_key and
    replayed_request are about a key the store holds: their lines carry key_id, account_id and
    auth_method (they were null). Every line has host, user_agent and http_version."""
    master = os.urandom(32)
    config = build_config({
        "listen": {"host": "127.0.0.1", "port": 0}, "admin": {"host": "127.0.0.1", "port": 0},
        "redis": {"url": redis_clean.url}, "brute_force": {"max_failures": 1_000_000},
        "routes": [{"name": "secure", "prefix": "/secure/", "scopes": ["svc.read"],
                    "upstream": f"http://127.0.0.1:{upstream.port}"}],
    }, "<test>", {"GATEWAY_MASTER_KEY": base64.b64encode(master).decode()})
    gateway = await start_gateway(config)
    stream = io.BytesIO()
    gateway.running.access_log.stream = stream
    redis = connect(redis_clean.url, 2.0)
    service = KeyService(KeyStore(redis), secret_box=SecretBox(master))
    try:
        unscoped, unscoped_secret, unscoped_account = await new_key(service, ())
        off_account = await service.create_account("to-disable")
        disabled, disabled_secret, _ = await new_key(service, ("svc.read",),
                                                     account=off_account)
        await service.update_account(off_account.id, enabled=False)
        expiring, expiring_secret, expiring_account = await new_key(
            service, ("svc.read",), expires_at=time.time() + 1)
        signer, signer_secret = await service.create_key(
            account_id=unscoped_account.id, key_type="hmac", scopes=["svc.read"],
            expires_at=time.time() + 3600)
    finally:
        await redis.aclose()
    await asyncio.sleep(1.2)  # `expiring` is past its expiry

    url = gateway.url + "/secure/x"
    signed = sign_request("GET", url, key_id=signer.id, secret=signer_secret)
    sent = [  # headers, expected status and outcome, the key the line must name
        ({**api_key(unscoped_secret), "User-Agent": "probe/1.0"}, 403, "insufficient_scope",
         (unscoped, unscoped_account.id, "api-key")),
        (api_key(disabled_secret), 403, "account_disabled",
         (disabled, off_account.id, "api-key")),
        (api_key(expiring_secret), 401, "expired_key",
         (expiring, expiring_account.id, "api-key")),
        (signed, 200, "ok", (signer, unscoped_account.id, "hmac")),
        (signed, 401, "replayed_request", (signer, unscoped_account.id, "hmac")),
        (api_key(apikey.new_secret()), 401, "invalid_credentials", None),
    ]
    async with aiohttp.ClientSession() as session:
        for headers, status, _, _ in sent:
            async with session.get(url, headers=headers) as response:
                assert response.status == status, await response.text()
    gateway.running.access_log.flush()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["outcome"] for line in lines] == [outcome for _, _, outcome, _ in sent]
    for line, (headers, _, _, named) in zip(lines, sent, strict=True):
        found = (line["key_id"], line["account_id"], line["auth_method"])
        if named is None:
            assert found == (None, None, None), line
        else:
            key, account_id, method = named
            assert found == (key.id, account_id, method), line
        assert set(line) >= ACCESS_FIELDS, line
        assert line["host"] == f"127.0.0.1:{gateway.running.proxy_port}"
        assert line["http_version"] == "1.1"
        assert line["user_agent"] == headers.get("User-Agent", line["user_agent"])
        assert line["user_agent"]
    assert lines[0]["user_agent"] == "probe/1.0"


async def test_access_log_can_be_turned_off_and_on_again(
        redis_clean: RedisServer, serve_app: Any, launch: Any) -> None:
    echo = await serve_app(echo_app("echo"))
    gateway = await launch(redis_clean.url, [route("open", str(echo.make_url("")), public=True)],
                           workers=1, log={"access_log": False})
    assert await statuses(gateway.url + "/open/x", 5) == Counter({200: 5})

    data = gateway.data
    data["log"] = {"access_log": True}
    gateway.write(data)
    status, body = await gateway.admin_reload()
    assert status == 200, body
    assert await statuses(gateway.url + "/open/y", 3) == Counter({200: 3})
    assert await gateway.stop(signal.SIGTERM) == 0
    lines = access_lines(gateway.log())
    assert [line["path"] for line in lines] == ["/open/y"] * 3, gateway.log()
