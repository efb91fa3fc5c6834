"""Table-driven tests for gateway.config (SPEC §10): durations, sizes, prefixes, validation."""

from __future__ import annotations

import base64
import math
from pathlib import Path
from typing import Any

import pytest

from gateway.config import (
    Config,
    build_config,
    load_config,
    normalise_prefix,
    parse_duration,
    parse_size,
)
from gateway.errors import ConfigError

SOURCE = "gateway.yaml"

# ---------------------------------------------------------------------------------------------
# parse_duration
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("30s", 30.0),
        ("2m", 120.0),
        ("500ms", 0.5),
        ("1.5h", 5400.0),
        ("30d", 30 * 86400.0),
        ("1h", 3600.0),
        ("0s", 0.0),
        ("45", 45.0),
        (" 5 m ", 300.0),
        ("0.25s", 0.25),
        (10, 10.0),
        (2.5, 2.5),
        (0, 0.0),
    ],
)
def test_parse_duration_valid(value: object, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "s",
        "abc",
        "10 seconds",
        "10S",
        "5w",
        "-5s",
        "1e3",
        "1,5s",
        "1.s",
        -1,
        -0.5,
        True,
        False,
        None,
        [],
        {},
    ],
)
def test_parse_duration_invalid(value: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_parse_duration_rejects_non_finite(value: float) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


# ---------------------------------------------------------------------------------------------
# parse_size
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ("10MiB", 10 * 1024 * 1024),
        ("4KiB", 4096),
        ("1GiB", 1024**3),
        ("1GB", 1_000_000_000),
        ("64KB", 64_000),
        ("3MB", 3_000_000),
        ("512B", 512),
        ("4096", 4096),
        (" 2 KiB ", 2048),
        ("0", 0),
        (4096, 4096),
        (0, 0),
    ],
)
def test_parse_size_valid(value: object, size: int) -> None:
    result = parse_size(value)
    assert result == size
    assert isinstance(result, int)


@pytest.mark.parametrize(
    "value",
    ["", "MiB", "1.5MiB", "10mib", "10 TB", "-1", "ten", -1, True, False, None, 1.5, []],
)
def test_parse_size_invalid(value: object) -> None:
    with pytest.raises(ValueError):
        parse_size(value)


# ---------------------------------------------------------------------------------------------
# normalise_prefix
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("/vision/", "/vision"),
        ("/vision", "/vision"),
        ("/", "/"),
        ("/api/v1/", "/api/v1"),
        ("/api/v1", "/api/v1"),
    ],
)
def test_normalise_prefix(prefix: str, expected: str) -> None:
    assert normalise_prefix(prefix) == expected


# ---------------------------------------------------------------------------------------------
# build_config: valid documents
# ---------------------------------------------------------------------------------------------

VISION = {
    "name": "vision",
    "prefix": "/vision/",
    "upstream": "http://127.0.0.1:9103",
    "strip_prefix": True,
    "scopes": ["yc.ai.vision.execute"],
    "timeout": "30s",
}


def test_build_config_defaults_from_empty_document() -> None:
    for data in (None, {}):
        config = build_config(data, SOURCE, {})
        assert config.source == SOURCE
        assert (config.listen.host, config.listen.port) == ("0.0.0.0", 8080)
        assert config.listen.trusted_proxies == ()
        assert (config.admin.host, config.admin.port, config.admin.token) == (
            "127.0.0.1", 9090, None)
        assert config.redis.url == "embedded"
        assert config.keys.default_scopes == ()
        assert config.keys.cache_ttl == 30.0
        assert config.keys.negative_cache_ttl == 2.0
        assert config.keys.stale_if_error == 300.0
        assert config.keys.last_used_flush == 1.0
        assert config.hmac.clock_skew == 300.0
        assert config.hmac.max_body_bytes == 10 * 1024 * 1024
        assert config.hmac.max_buffered_bytes == 64 * 1024 * 1024
        # Brute-force protection is on unless turned off.
        assert (config.brute_force.max_failures, config.brute_force.window,
                config.brute_force.block_for) == (30, 60.0, 60.0)
        assert config.brute_force.enabled
        assert config.routes == ()
        assert config.data_dir == Path(".gateway")
        assert config.master_key is None


def test_build_config_spec_example() -> None:
    data = {
        "listen": {"host": "0.0.0.0", "port": 8080},
        "admin": {"host": "127.0.0.1", "port": 9090},
        "redis": {"url": "embedded"},
        "keys": {"default_scopes": [], "cache_ttl": "30s", "negative_cache_ttl": "2s",
                 "stale_if_error": "300s", "last_used_flush": "1s"},
        "hmac": {"clock_skew": "300s", "max_body_bytes": "10MiB"},
        "routes": [VISION],
    }
    config = build_config(data, SOURCE, {})
    assert isinstance(config, Config)
    (route,) = config.routes
    assert route.name == "vision"
    assert route.prefix == "/vision"
    assert route.upstream == "http://127.0.0.1:9103"
    assert route.strip_prefix is True
    assert route.scopes == ("yc.ai.vision.execute",)
    assert route.auth == ("api_key", "hmac")
    assert route.public is False
    assert route.timeout == 30.0


@pytest.mark.parametrize(
    ("data", "getter", "expected"),
    [
        ({"listen": {"port": 8443}}, lambda c: c.listen.port, 8443),
        ({"listen": {"host": "::"}}, lambda c: c.listen.host, "::"),
        ({"listen": {"trusted_proxies": ["10.0.0.0/8", "192.168.1.7"]}},
         lambda c: [str(n) for n in c.listen.trusted_proxies], ["10.0.0.0/8", "192.168.1.7/32"]),
        ({}, lambda c: c.listen.strip_headers, ("x-original-url", "x-rewrite-url", "x-real-ip",
                                                "true-client-ip", "x-client-ip", "proxy")),
        ({"listen": {"strip_headers": ["X-Real-IP", "X_Forwarded_Server", "x-real-ip"]}},
         lambda c: c.listen.strip_headers, ("x-real-ip", "x-forwarded-server")),
        ({"listen": {"strip_headers": []}}, lambda c: c.listen.strip_headers, ()),
        ({"admin": {"port": 0}}, lambda c: c.admin.port, 0),
        ({"admin": {"token": "s3cret"}}, lambda c: c.admin.token, "s3cret"),
        ({}, lambda c: c.status, None),
        ({}, lambda c: c.shutdown.delay, 0.0),
        ({"shutdown": {"delay": "5s"}}, lambda c: c.shutdown.delay, 5.0),
        ({"status": {}}, lambda c: (c.status.host, c.status.port), ("0.0.0.0", 8100)),
        ({"status": {"host": "::", "port": 0}}, lambda c: (c.status.host, c.status.port),
         ("::", 0)),
        ({"redis": {"url": "redis://localhost:6379/0"}}, lambda c: c.redis.url,
         "redis://localhost:6379/0"),
        ({"redis": {"url": "rediss://r.example:6380"}}, lambda c: c.redis.url,
         "rediss://r.example:6380"),
        ({"redis": {"url": "unix:///tmp/redis.sock"}}, lambda c: c.redis.url,
         "unix:///tmp/redis.sock"),
        ({"redis": {"timeout": "250ms"}}, lambda c: c.redis.timeout, 0.25),
        ({"keys": {"default_scopes": ["yc.ai.*", "yc.ydb.tables.manage"]}},
         lambda c: c.keys.default_scopes, ("yc.ai.*", "yc.ydb.tables.manage")),
        ({"keys": {"cache_ttl": "1m"}}, lambda c: c.keys.cache_ttl, 60.0),
        ({"keys": {"negative_cache_ttl": 0}}, lambda c: c.keys.negative_cache_ttl, 0.0),
        ({"keys": {"stale_if_error": "1h"}}, lambda c: c.keys.stale_if_error, 3600.0),
        ({"keys": {"last_used_flush": "500ms"}}, lambda c: c.keys.last_used_flush, 0.5),
        ({"hmac": {"clock_skew": "5m"}}, lambda c: c.hmac.clock_skew, 300.0),
        ({"hmac": {"max_body_bytes": "1KiB"}}, lambda c: c.hmac.max_body_bytes, 1024),
        ({"hmac": {"max_body_bytes": 100}}, lambda c: c.hmac.max_body_bytes, 100),
        ({"hmac": {"max_buffered_bytes": "1GiB"}}, lambda c: c.hmac.max_buffered_bytes,
         2**30),
        ({"data_dir": "/var/lib/gateway"}, lambda c: c.data_dir, Path("/var/lib/gateway")),
        ({"brute_force": {"max_failures": 5}}, lambda c: c.brute_force.max_failures, 5),
        ({"brute_force": {"max_failures": 0}}, lambda c: c.brute_force.enabled, False),
        ({"brute_force": {"max_failures": 1}}, lambda c: c.brute_force.enabled, True),
        ({"brute_force": {"window": "10m"}}, lambda c: c.brute_force.window, 600.0),
        ({"brute_force": {"block_for": "1h"}}, lambda c: c.brute_force.block_for, 3600.0),
        ({"brute_force": {"block_for": 90}}, lambda c: c.brute_force.block_for, 90.0),
        ({"brute_force": {"window": "30s"}}, lambda c: c.brute_force.max_failures, 30),
        ({"brute_force": None}, lambda c: c.brute_force.enabled, True),
        # A section given as null keeps its defaults.
        ({"listen": None}, lambda c: c.listen.port, 8080),
    ],
)
def test_build_config_valid_fields(data: dict[str, Any], getter: Any, expected: object) -> None:
    assert getter(build_config(data, SOURCE, {})) == expected


@pytest.mark.parametrize(
    ("route", "attribute", "expected"),
    [
        ({}, "prefix", "/vision"),
        ({"prefix": "/vision"}, "prefix", "/vision"),
        ({"prefix": "/"}, "prefix", "/"),
        ({"prefix": "/api/v1/"}, "prefix", "/api/v1"),
        ({"upstream": "http://10.0.0.5:8000/"}, "upstream", "http://10.0.0.5:8000"),
        ({"upstream": "https://svc.internal/base/"}, "upstream", "https://svc.internal/base"),
        ({}, "strip_prefix", True),
        ({"strip_prefix": False}, "strip_prefix", False),
        ({"auth": ["hmac"]}, "auth", ("hmac",)),
        ({"auth": ["api_key"]}, "auth", ("api_key",)),
        ({"auth": ["hmac", "api_key"]}, "auth", ("hmac", "api_key")),
        ({"timeout": "2m"}, "timeout", 120.0),
        ({"connect_timeout": "250ms"}, "connect_timeout", 0.25),
        ({"scopes": ["yc.ai.*"]}, "scopes", ("yc.ai.*",)),
        ({"public": True, "scopes": []}, "public", True),
    ],
)
def test_build_config_route_fields(route: dict[str, Any], attribute: str,
                                   expected: object) -> None:
    config = build_config({"routes": [{**VISION, **route}]}, SOURCE, {})
    assert getattr(config.routes[0], attribute) == expected


def test_build_config_route_defaults() -> None:
    config = build_config(
        {"routes": [{"name": "fn", "prefix": "/functions/", "upstream": "http://h:1"}]},
        SOURCE, {})
    (route,) = config.routes
    assert route.strip_prefix is False
    assert route.scopes == ()
    assert route.auth == ("api_key", "hmac")
    assert route.public is False
    assert route.timeout == 30.0
    assert route.connect_timeout == 5.0


def test_build_config_keeps_route_order() -> None:
    routes = [
        {"name": "a", "prefix": "/a", "upstream": "http://h:1"},
        {"name": "b", "prefix": "/b", "upstream": "http://h:2"},
        {"name": "c", "prefix": "/", "upstream": "http://h:3"},
    ]
    config = build_config({"routes": routes}, SOURCE, {})
    assert [r.name for r in config.routes] == ["a", "b", "c"]


# ---------------------------------------------------------------------------------------------
# build_config: environment overrides
# ---------------------------------------------------------------------------------------------

# 32 bytes whose standard base64 contains '+' and '/', so the two alphabets differ.
MASTER_KEY = bytes([0xFB, 0xFF, 0xBF] * 10 + [0xFE, 0xFF])
_STD = base64.b64encode(MASTER_KEY).decode()
_URL = base64.urlsafe_b64encode(MASTER_KEY).decode()
assert _STD != _URL and _STD.endswith("=")


@pytest.mark.parametrize(
    "encoded",
    [
        pytest.param(_STD, id="standard-padded"),
        pytest.param(_STD.rstrip("="), id="standard-unpadded"),
        pytest.param(_URL, id="urlsafe-padded"),
        pytest.param(_URL.rstrip("="), id="urlsafe-unpadded"),
        pytest.param(f" {_STD}\n", id="surrounding-whitespace"),
    ],
)
def test_master_key_override(encoded: str) -> None:
    config = build_config({}, SOURCE, {"GATEWAY_MASTER_KEY": encoded})
    assert config.master_key is not None and config.master_key.keys == (MASTER_KEY,)


@pytest.mark.parametrize(
    "encoded",
    [
        pytest.param(base64.b64encode(bytes(16)).decode(), id="16-bytes"),
        pytest.param(base64.b64encode(bytes(31)).decode(), id="31-bytes"),
        pytest.param(base64.b64encode(bytes(33)).decode(), id="33-bytes"),
        pytest.param(base64.b64encode(bytes(64)).decode(), id="64-bytes"),
        pytest.param("not base64 at all!", id="garbage"),
        pytest.param(_STD[:-2] + "!=", id="bad-character"),
    ],
)
def test_master_key_override_invalid(encoded: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config({}, SOURCE, {"GATEWAY_MASTER_KEY": encoded})
    assert [p.path for p in info.value.problems] == ["GATEWAY_MASTER_KEY"]
    message = str(info.value)
    assert SOURCE in message
    assert "GATEWAY_MASTER_KEY" in message
    assert encoded.strip() not in message  # the secret itself is never echoed


@pytest.mark.parametrize(
    ("data", "env", "getter", "expected"),
    [
        ({}, {"GATEWAY_REDIS_URL": "redis://cache:6379/1"}, lambda c: c.redis.url,
         "redis://cache:6379/1"),
        ({"redis": {"url": "redis://file:6379"}}, {"GATEWAY_REDIS_URL": "unix:///run/r.sock"},
         lambda c: c.redis.url, "unix:///run/r.sock"),
        ({"redis": {"url": "redis://file:6379"}}, {"GATEWAY_REDIS_URL": "embedded"},
         lambda c: c.redis.url, "embedded"),
        ({}, {"GATEWAY_ADMIN_TOKEN": "tok-env"}, lambda c: c.admin.token, "tok-env"),
        ({"admin": {"token": "tok-file"}}, {"GATEWAY_ADMIN_TOKEN": "tok-env"},
         lambda c: c.admin.token, "tok-env"),
        ({"admin": {"token": "tok-file"}}, {}, lambda c: c.admin.token, "tok-file"),
        ({}, {"GATEWAY_DATA_DIR": "/srv/gw"}, lambda c: c.data_dir, Path("/srv/gw")),
        ({"data_dir": "/from/file"}, {"GATEWAY_DATA_DIR": "/srv/gw"}, lambda c: c.data_dir,
         Path("/srv/gw")),
        ({"data_dir": "/from/file"}, {}, lambda c: c.data_dir, Path("/from/file")),
        # Unrelated variables change nothing.
        ({}, {"HOME": "/root", "REDIS_URL": "redis://x"}, lambda c: c.redis.url, "embedded"),
    ],
)
def test_environment_overrides(data: dict[str, Any], env: dict[str, str], getter: Any,
                               expected: object) -> None:
    assert getter(build_config(data, SOURCE, env)) == expected


@pytest.mark.parametrize("url", ["http://cache:6379", "cache:6379", "", "mysql://db/"])
def test_redis_url_override_invalid(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config({}, SOURCE, {"GATEWAY_REDIS_URL": url})
    assert [p.path for p in info.value.problems] == ["GATEWAY_REDIS_URL"]
    assert "GATEWAY_REDIS_URL" in str(info.value)


@pytest.mark.parametrize(
    ("data", "env", "expected"),
    [
        ({}, {"GATEWAY_PORT": "9000"}, (9000, 9090)),
        ({}, {"GATEWAY_ADMIN_PORT": "9001"}, (8080, 9001)),
        ({"listen": {"port": 8000}, "admin": {"port": 8001}},
         {"GATEWAY_PORT": "9000", "GATEWAY_ADMIN_PORT": "9001"}, (9000, 9001)),
        ({"listen": {"port": 8000}, "admin": {"port": 8001}}, {}, (8000, 8001)),
        ({}, {"GATEWAY_PORT": "0", "GATEWAY_ADMIN_PORT": "65535"}, (0, 65535)),
        # Empty: not set, as with the other variables.
        ({"listen": {"port": 8000}}, {"GATEWAY_PORT": "", "GATEWAY_ADMIN_PORT": ""},
         (8000, 9090)),
    ],
)
def test_port_overrides(data: dict[str, Any], env: dict[str, str],
                        expected: tuple[int, int]) -> None:
    config = build_config(data, SOURCE, env)
    assert (config.listen.port, config.admin.port) == expected


@pytest.mark.parametrize("value", ["http", "-1", "65536", "80.0", " 80", "+80", "8_0", "٨٠",
                                   "0x50"])
def test_port_override_invalid(value: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config({"listen": {"port": 8000}}, SOURCE,
                     {"GATEWAY_PORT": value, "GATEWAY_ADMIN_PORT": value})
    assert [p.path for p in info.value.problems] == ["GATEWAY_PORT", "GATEWAY_ADMIN_PORT"]
    message = str(info.value)
    assert f"GATEWAY_PORT: {value!r} is not a port number (expected 0 to 65535)" in message


# ---------------------------------------------------------------------------------------------
# build_config: invalid documents
# ---------------------------------------------------------------------------------------------


def _route(**overrides: Any) -> dict[str, Any]:
    return {"name": "vision", "prefix": "/vision/", "upstream": "http://127.0.0.1:9103",
            **overrides}


@pytest.mark.parametrize(
    ("data", "path", "reason_word"),
    [
        # Unknown fields, wherever they are.
        ({"listn": {}}, "listn", "unknown"),
        ({"listen": {"hots": "x"}}, "listen.hots", "unknown"),
        ({"keys": {"cache": "1s"}}, "keys.cache", "unknown"),
        ({"hmac": {"skew": "1s"}}, "hmac.skew", "unknown"),
        ({"hmac": {"max_buffered_bytes": "1MiB"}}, "hmac.max_buffered_bytes", "max_body_bytes"),
        ({"routes": [_route(upstreams="http://x")]}, "routes[0].upstreams", "unknown"),
        # Sections of the wrong shape.
        ({"listen": [1]}, "listen", "mapping"),
        ({"admin": "127.0.0.1:9090"}, "admin", "mapping"),
        ({"routes": {"name": "vision"}}, "routes", "list"),
        ({"routes": ["vision"]}, "routes[0]", "mapping"),
        # Scalars.
        ({"listen": {"port": 70000}}, "listen.port", "port"),
        ({"listen": {"port": -1}}, "listen.port", "port"),
        ({"listen": {"port": "8080"}}, "listen.port", "port"),
        ({"listen": {"port": True}}, "listen.port", "port"),
        ({"listen": {"host": ""}}, "listen.host", "string"),
        ({"listen": {"trusted_proxies": ["not-an-ip"]}}, "listen.trusted_proxies", "network"),
        ({"listen": {"trusted_proxies": "10.0.0.0/8"}}, "listen.trusted_proxies", "list"),
        ({"listen": {"strip_headers": "X-Real-IP"}}, "listen.strip_headers", "header names"),
        ({"listen": {"strip_headers": ["X Real IP"]}}, "listen.strip_headers", "header names"),
        ({"admin": {"port": 1.5}}, "admin.port", "port"),
        ({"status": "0.0.0.0:8100"}, "status", "mapping"),
        ({"shutdown": {"delay": "-1s"}}, "shutdown.delay", "duration"),
        ({"shutdown": {"dealy": "5s"}}, "shutdown.dealy", "unknown"),
        ({"status": {"token": "x"}}, "status.token", "unknown"),
        ({"status": {"port": 70000}}, "status.port", "port"),
        ({"status": {"host": ""}}, "status.host", "string"),
        ({"status": {"port": 9090}}, "status.port", "differ"),
        ({"redis": {"url": "http://localhost:6379"}}, "redis.url", "redis://"),
        ({"redis": {"url": "localhost:6379"}}, "redis.url", "redis://"),
        ({"redis": {"timeout": "0s"}}, "redis.timeout", "greater than zero"),
        ({"keys": {"cache_ttl": "soon"}}, "keys.cache_ttl", "duration"),
        ({"keys": {"stale_if_error": -1}}, "keys.stale_if_error", "negative"),
        ({"keys": {"stale_if_error": "-1s"}}, "keys.stale_if_error", "duration"),
        ({"keys": {"last_used_flush": 0}}, "keys.last_used_flush", "greater than zero"),
        ({"keys": {"default_scopes": "yc.ai.*"}}, "keys.default_scopes", "list"),
        ({"keys": {"default_scopes": ["bad scope"]}}, "keys.default_scopes", "scope"),
        ({"keys": {"default_scopes": ["yc..ai"]}}, "keys.default_scopes", "scope"),
        # `$` alone would let a trailing newline through, into the X-Auth-Scopes header.
        ({"keys": {"default_scopes": ["yc.ai\n"]}}, "keys.default_scopes", "scope"),
        ({"hmac": {"clock_skew": 0}}, "hmac.clock_skew", "greater than zero"),
        ({"hmac": {"max_body_bytes": "10 megs"}}, "hmac.max_body_bytes", "size"),
        ({"data_dir": 5}, "data_dir", "string"),
        ({"brute_force": {"limit": 5}}, "brute_force.limit", "unknown"),
        ({"brute_force": "on"}, "brute_force", "mapping"),
        ({"brute_force": {"max_failures": -1}}, "brute_force.max_failures", "whole number"),
        ({"brute_force": {"max_failures": 2.5}}, "brute_force.max_failures", "whole number"),
        ({"brute_force": {"max_failures": "30"}}, "brute_force.max_failures", "whole number"),
        ({"brute_force": {"max_failures": True}}, "brute_force.max_failures", "whole number"),
        ({"brute_force": {"window": "0s"}}, "brute_force.window", "greater than zero"),
        ({"brute_force": {"window": "a while"}}, "brute_force.window", "duration"),
        ({"brute_force": {"block_for": 0}}, "brute_force.block_for", "greater than zero"),
        ({"brute_force": {"block_for": "-5s"}}, "brute_force.block_for", "duration"),
        # Routes.
        ({"routes": [{"prefix": "/v", "upstream": "http://h"}]}, "routes[0].name", "required"),
        ({"routes": [{"name": "v", "upstream": "http://h"}]}, "routes[0].prefix", "required"),
        ({"routes": [{"name": "v", "prefix": "/v"}]}, "routes[0].upstream", "required"),
        ({"routes": [_route(name="has space")]}, "routes[0].name", "letters"),
        ({"routes": [_route(name="")]}, "routes[0].name", "non-empty"),
        ({"routes": [_route(name="vision\n")]}, "routes[0].name", "letters"),
        ({"routes": [_route(prefix="/vision/\n")]}, "routes[0].prefix", "absolute path"),
        ({"routes": [_route(prefix="vision")]}, "routes[0].prefix", "absolute path"),
        ({"routes": [_route(prefix="/a/../b")]}, "routes[0].prefix", "absolute path"),
        ({"routes": [_route(prefix="/a/./b")]}, "routes[0].prefix", "absolute path"),
        ({"routes": [_route(prefix="/a//b")]}, "routes[0].prefix", "absolute path"),
        ({"routes": [_route(prefix="/a%2Fb")]}, "routes[0].prefix", "absolute path"),
        ({"routes": [_route(prefix="/a?b")]}, "routes[0].prefix", "absolute path"),
        # A servlet container reads `/a;v=1` as `/a` (issue 17, item 1).
        ({"routes": [_route(prefix="/a;v=1/b")]}, "routes[0].prefix", "';'"),
        ({"routes": [_route(upstream="ftp://h")]}, "routes[0].upstream", "http"),
        ({"routes": [_route(upstream="127.0.0.1:9103")]}, "routes[0].upstream", "http"),
        ({"routes": [_route(upstream="http://")]}, "routes[0].upstream", "host"),
        ({"routes": [_route(upstream="http://h:99999")]}, "routes[0].upstream", "port"),
        ({"routes": [_route(upstream="http://h:abc")]}, "routes[0].upstream", "port"),
        ({"routes": [_route(upstream="http://h/?a=1")]}, "routes[0].upstream", "query"),
        ({"routes": [_route(upstream="http://h/#top")]}, "routes[0].upstream", "fragment"),
        ({"routes": [_route(strip_prefix="yes")]}, "routes[0].strip_prefix", "true or false"),
        ({"routes": [_route(public="no")]}, "routes[0].public", "true or false"),
        ({"routes": [_route(auth=["oauth"])]}, "routes[0].auth", "oauth"),
        ({"routes": [_route(auth=[])]}, "routes[0].auth", "non-empty"),
        ({"routes": [_route(auth="api_key")]}, "routes[0].auth", "list"),
        ({"routes": [_route(auth=["api_key", "basic"])]}, "routes[0].auth", "basic"),
        ({"routes": [_route(scopes="yc.ai.*")]}, "routes[0].scopes", "list"),
        ({"routes": [_route(scopes=["yc.ai.*.x"])]}, "routes[0].scopes", "scope"),
        ({"routes": [_route(scopes=["*\n"])]}, "routes[0].scopes", "scope"),
        ({"routes": [_route(public=True, scopes=["yc.ai.vision.execute"])]},
         "routes[0].scopes", "public"),
        ({"routes": [_route(timeout="0s")]}, "routes[0].timeout", "greater than zero"),
        ({"routes": [_route(connect_timeout="fast")]}, "routes[0].connect_timeout", "duration"),
    ],
)
def test_build_config_invalid(data: dict[str, Any], path: str, reason_word: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config(data, SOURCE, {})
    error = info.value
    assert error.source == SOURCE
    assert [p.path for p in error.problems] == [path]
    problem = error.problems[0]
    assert problem.reason
    assert reason_word.lower() in problem.reason.lower()
    # The message names the file, the field path and the reason, on one line.
    assert f"{SOURCE}: {path}: {problem.reason}" in str(error).splitlines()


@pytest.mark.parametrize("data", [[], "routes: []", 42, ["listen"]])
def test_build_config_top_level_not_a_mapping(data: object) -> None:
    with pytest.raises(ConfigError) as info:
        build_config(data, SOURCE, {})
    assert str(info.value).startswith(f"{SOURCE}: ")
    assert "mapping" in str(info.value)


def test_build_config_reports_every_problem_at_once() -> None:
    data = {
        "listen": {"port": 99999},
        "bogus": 1,
        "keys": {"cache_ttl": "forever"},
        "routes": [
            _route(),
            {"name": "fn", "prefix": "/functions/", "upstream": "gopher://h"},
            _route(name="other", prefix="/other/", auth=["password"]),
        ],
    }
    with pytest.raises(ConfigError) as info:
        build_config(data, SOURCE, {"GATEWAY_MASTER_KEY": "short"})
    paths = {p.path for p in info.value.problems}
    assert paths == {"listen.port", "bogus", "keys.cache_ttl", "routes[1].upstream",
                     "routes[2].auth", "GATEWAY_MASTER_KEY"}
    lines = str(info.value).splitlines()
    assert len(lines) == len(info.value.problems)
    assert all(line.startswith(f"{SOURCE}: ") for line in lines)
    assert any(line.startswith(f"{SOURCE}: routes[1].upstream: ") for line in lines)


@pytest.mark.parametrize(
    ("routes", "path", "other"),
    [
        ([_route(), _route(prefix="/other/")], "routes[1].name", "routes[0].name"),
        ([_route(), _route(name="v2")], "routes[1].prefix", "routes[0].prefix"),
        # '/vision' and '/vision/' are the same subtree.
        ([_route(), _route(name="v2", prefix="/vision")], "routes[1].prefix", "routes[0].prefix"),
        ([_route(name="a", prefix="/a"), _route(name="b", prefix="/b"),
          _route(name="a", prefix="/c")], "routes[2].name", "routes[0].name"),
        ([_route(name="r1", prefix="/"), _route(name="r2", prefix="/")],
         "routes[1].prefix", "routes[0].prefix"),
        # A case-insensitive upstream cannot tell them apart (issue 17, item 1).
        ([_route(), _route(name="v2", prefix="/Vision/")], "routes[1].prefix",
         "routes[0].prefix"),
    ],
)
def test_build_config_duplicate_routes(routes: list[dict[str, Any]], path: str,
                                       other: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config({"routes": routes}, SOURCE, {})
    assert [p.path for p in info.value.problems] == [path]
    assert other in info.value.problems[0].reason


def test_build_config_duplicate_name_and_prefix_both_reported() -> None:
    with pytest.raises(ConfigError) as info:
        build_config({"routes": [_route(), _route()]}, SOURCE, {})
    assert {p.path for p in info.value.problems} == {"routes[1].name", "routes[1].prefix"}


# ---------------------------------------------------------------------------------------------
# load_config
# ---------------------------------------------------------------------------------------------

VALID_YAML = """\
listen: {host: 0.0.0.0, port: 8081}
routes:
  - name: vision
    prefix: /vision/
    upstream: http://127.0.0.1:9103
    strip_prefix: true
    scopes: [yc.ai.vision.execute]
    timeout: 30s
"""


def test_load_config_reads_file(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(VALID_YAML, encoding="utf-8")
    for given in (path, str(path)):
        config = load_config(given, {})
        assert config.source == str(path)
        assert config.listen.port == 8081
        assert [r.prefix for r in config.routes] == ["/vision"]


def test_load_config_uses_gateway_config_when_path_is_none(tmp_path: Path) -> None:
    path = tmp_path / "from-env.yaml"
    path.write_text(VALID_YAML, encoding="utf-8")
    config = load_config(None, {"GATEWAY_CONFIG": str(path)})
    assert config.source == str(path)
    assert config.listen.port == 8081


def test_load_config_explicit_path_beats_gateway_config(tmp_path: Path) -> None:
    explicit = tmp_path / "explicit.yaml"
    explicit.write_text("listen: {port: 7000}\n", encoding="utf-8")
    other = tmp_path / "other.yaml"
    other.write_text("listen: {port: 7001}\n", encoding="utf-8")
    config = load_config(explicit, {"GATEWAY_CONFIG": str(other)})
    assert config.listen.port == 7000


@pytest.mark.parametrize("env", [{}, {"GATEWAY_CONFIG": ""}])
def test_load_config_defaults_without_any_file(env: dict[str, str]) -> None:
    config = load_config(None, env)
    assert config.listen.port == 8080
    assert config.routes == ()


def test_load_config_applies_environment_overrides(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text("redis: {url: embedded}\n", encoding="utf-8")
    config = load_config(path, {"GATEWAY_REDIS_URL": "redis://r:6379",
                                "GATEWAY_DATA_DIR": str(tmp_path / "data")})
    assert config.redis.url == "redis://r:6379"
    assert config.data_dir == tmp_path / "data"


def test_load_config_empty_file_gives_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("", encoding="utf-8")
    assert load_config(path, {}).listen.port == 8080


@pytest.mark.parametrize("via_env", [False, True])
def test_load_config_missing_file(tmp_path: Path, via_env: bool) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        if via_env:
            load_config(None, {"GATEWAY_CONFIG": str(path)})
        else:
            load_config(path, {})
    assert info.value.source == str(path)
    assert str(info.value).startswith(f"{path}: ")
    assert "cannot read" in str(info.value)


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("listen: {host: 0.0.0.0, port: 8080\nadmin: {}\n", 2),
        ("listen:\n  port: 8080\n    host: x\n", 3),
        ("routes:\n  - name: a\n  - name: [b\n", 4),
        ("a: 1\nb: 2\nc: 3\nd: 'unterminated\n", 5),
        ("\tlisten: {}\n", 1),
    ],
)
def test_load_config_invalid_yaml_names_line(tmp_path: Path, text: str, line: int) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert f"line {line}" in message
    assert "YAML" in message


def test_load_config_validation_error_names_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        "routes:\n"
        "  - {name: a, prefix: /a/, upstream: http://h:1}\n"
        "  - {name: b, prefix: /b/, upstream: 'not a url'}\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert f"{path}: routes[1].upstream: " in str(info.value)


def test_the_status_listener_needs_a_restart_and_the_shutdown_delay_does_not() -> None:
    before = build_config({}, "<test>")
    with_status = build_config({"status": {"port": 8100}}, "<test>")
    moved = build_config({"status": {"port": 8101}}, "<test>")
    delayed = build_config({"shutdown": {"delay": "5s"}}, "<test>")
    assert before.restart_needed_for(with_status) == ["status"]
    assert with_status.restart_needed_for(moved) == ["status"]
    assert with_status.restart_needed_for(with_status) == []
    assert before.restart_needed_for(delayed) == []
