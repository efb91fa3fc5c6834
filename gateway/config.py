"""The one typed, frozen configuration, loaded from YAML (SPEC §10) and validated once.

Every problem is reported with the file, the field path and the reason, all at once, so an
operator fixes a broken file in one pass. Nothing else in the package reads `os.environ`: the
environment overrides are applied here, from the mapping the caller passes in.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import yaml

from gateway.auth.locations import DEFAULT_LOCATIONS, KeyLocation, parse_locations
from gateway.discovery import choose_data_dir
from gateway.errors import ConfigError, ConfigProblem
from gateway.keys.masterkeys import (
    ORIGIN_ENV,
    ORIGIN_FILE,
    MasterKeyError,
    MasterKeys,
    parse_key_list,
    read_key_file,
)
from gateway.limits.policy import PolicyError, parse_quota, parse_rate, rate_of
from gateway.proxy.tls import TlsLoadError, UpstreamTls, server_context, upstream_context
from gateway.store.urls import parse_store_url

T = TypeVar("T")

AUTH_METHODS = ("api_key", "hmac")
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# ASCII digits only (re.ASCII): `\d` would also take other scripts' digits.
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$", re.ASCII)
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+)\s*(B|KB|MB|GB|KiB|MiB|GiB)?\s*$", re.ASCII)
_SIZE_UNITS = {None: 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9,
               "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}
_ROUTE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# No ';': servlet containers drop `;` parameters, so such a prefix would not mean what it says.
_PREFIX = re.compile(r"^/([A-Za-z0-9._~!$&'()*+,=:@-]+/)*([A-Za-z0-9._~!$&'()*+,=:@-]+)?$")
_SCOPE = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*(\.\*)?$|^\*$")


def parse_duration(value: object) -> float:
    """'30s', '2m', '500ms', '1.5h', '30d' or a number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 5m or 1h")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    else:
        raise ValueError("expected a duration such as 30s, 5m or 1h")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError("must be a finite, non-negative duration")
    return seconds


def parse_size(value: object) -> int:
    """'10MiB', '4KiB', '1GB' or a number of bytes -> bytes."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and (m := _SIZE.match(value)):
        return int(m.group(1)) * _SIZE_UNITS[m.group(2)]
    raise ValueError("expected a size such as 4096, 64KiB or 10MiB")


def is_scope_name(scope: object) -> bool:
    """`yc.ai.vision.execute`, a prefix wildcard `yc.ai.*`, or `*` for everything."""
    return isinstance(scope, str) and _SCOPE.fullmatch(scope) is not None


def normalise_prefix(prefix: str) -> str:
    """'/vision/' and '/vision' both mean the subtree at /vision; '/' means everything."""
    return prefix.rstrip("/") or "/"


TLS_MIN_VERSIONS = ("1.2", "1.3")
CLIENT_CERT_MODES = ("optional", "required")


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """`listen.tls`: the proxy listener terminates TLS (gateway/proxy/tls.py). Paths are
    absolute: relative ones are read from the config file's directory."""

    cert: Path  # PEM, the certificate first, then its chain
    key: Path  # PEM
    min_version: str = "1.2"  # or "1.3"
    # A CA bundle (PEM): clients presenting a certificate it verifies have its subject passed
    # upstream. `client_cert`: "required" (no verified certificate, no handshake) or "optional".
    client_ca: Path | None = None
    client_cert: str = "required"


@dataclass(frozen=True, slots=True)
class ListenConfig:
    host: str = "0.0.0.0"  # the proxy listener is meant to be reachable
    port: int = 8080
    tls: TlsConfig | None = None  # None: plain HTTP
    # Peers whose X-Forwarded-* headers are trusted and extended rather than replaced.
    trusted_proxies: tuple[IPNetwork, ...] = ()
    # On SIGTERM, how long requests in flight may take to finish before they are cut.
    drain_timeout: float = 30.0
    # Removed from requests of untrusted peers: upstreams read them as a path (IIS, Symfony,
    # Laravel), a client address, or an HTTP proxy (httpoxy). Lower case.
    strip_headers: tuple[str, ...] = ("x-original-url", "x-rewrite-url", "x-real-ip",
                                      "true-client-ip", "x-client-ip", "proxy")


LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str = "info"
    access_log: bool = True  # one JSON line per request on stdout


@dataclass(frozen=True, slots=True)
class AdminToken:
    """A labelled admin token, kept as its SHA-256 so config files hold no secret. The label
    names the actor in the audit trail."""

    label: str
    sha256: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class AdminConfig:
    host: str = "127.0.0.1"
    port: int = 9090
    # `token` (or GATEWAY_ADMIN_TOKEN) is the token labelled "admin"; `tokens` adds labelled
    # ones by hash. With none at all, the admin API is off.
    token: str | None = field(default=None, repr=False)
    tokens: tuple[AdminToken, ...] = ()

    def all_tokens(self) -> tuple[AdminToken, ...]:
        if self.token is None:
            return self.tokens
        digest = hashlib.sha256(self.token.encode()).hexdigest()
        return (AdminToken("admin", digest), *self.tokens)


@dataclass(frozen=True, slots=True)
class StatusConfig:
    """The status listener (issue 19): /healthz, /readyz and /metrics alone, no token, so
    probes and scrapers reach the pod IP while the admin API stays on loopback. Off unless the
    `status` section is given."""

    host: str = "0.0.0.0"  # meant to be reachable, as the proxy listener is
    port: int = 8100  # Kong's status_listen port


@dataclass(frozen=True, slots=True)
class ShutdownConfig:
    # On SIGTERM (or SIGINT), how long to keep serving, with /readyz at 503, before the
    # listener closes and requests drain: the time a load balancer or Kubernetes takes to stop
    # sending new connections. 0 (the default): close at once, as outside a cluster one wants.
    delay: float = 0.0


@dataclass(frozen=True, slots=True)
class RedisConfig:
    url: str = "embedded"
    timeout: float = 1.0  # bound on every store call; past it the store counts as unavailable
    # Store commands in flight at once per process; past it callers wait up to `timeout`.
    pool_size: int = 64
    idle_timeout: float = 60.0  # pooled connections unused this long are closed
    # Writes that must not be lost (revocations, reissues, disables, creations, nonce claims)
    # are answered only once this many replicas hold them (Redis WAIT). None: 1 for a
    # Sentinel URL (its old master takes writes it will lose during a failover), else 0.
    confirm_replicas: int | None = None

    @property
    def replicas_to_confirm(self) -> int:
        if self.confirm_replicas is not None:
            return self.confirm_replicas
        return 1 if self.url.lower().startswith(("redis+sentinel:", "rediss+sentinel:")) else 0


@dataclass(frozen=True, slots=True)
class KeysConfig:
    default_scopes: tuple[str, ...] = ()
    cache_ttl: float = 30.0
    negative_cache_ttl: float = 2.0
    stale_if_error: float = 300.0
    last_used_flush: float = 1.0
    # Where routes read an API key unless they say (route `key_locations`; auth/locations.py).
    locations: tuple[KeyLocation, ...] = DEFAULT_LOCATIONS
    # Look up secrets that are not in the gateway's gwk_ format (keys imported from Kong and
    # the like). Off by default: then a made-up key is refused without a store lookup, by its
    # checksum; on, any 8-512 visible ASCII characters cost a (negative-cached, brute-force
    # counted) lookup.
    accept_imported: bool = False


@dataclass(frozen=True, slots=True)
class HmacConfig:
    clock_skew: float = 300.0
    max_body_bytes: int = 10 * 2**20
    # Signed bodies a worker holds at once, all requests together; past it, 503 server_busy.
    max_buffered_bytes: int = 64 * 2**20


QUOTA_PERIODS = ("day", "month", "total")


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """Rate limits and quotas (SPEC §11; gateway/limits)."""

    # Quotas of these periods admit while the store is unreachable (counted, and added to the
    # store's count when it answers); the others refuse with 503. A total never refills, so
    # overshooting it is not undone: closed by default.
    fail_open: tuple[str, ...] = ("day", "month")


@dataclass(frozen=True, slots=True)
class BruteForceConfig:
    """Failed authentications counted per client address, shared by every worker and instance:
    past `max_failures` within `window`, the address gets 429 for `block_for`. 0 turns it off."""

    max_failures: int = 30
    window: float = 60.0
    block_for: float = 60.0

    @property
    def enabled(self) -> bool:
        return self.max_failures > 0


@dataclass(frozen=True, slots=True)
class RouteConfig:
    name: str
    prefix: str  # normalised: no trailing slash, "/" for the root
    upstream: str  # scheme://host[:port][/base], no trailing slash
    strip_prefix: bool = False
    scopes: tuple[str, ...] = ()
    auth: tuple[str, ...] = AUTH_METHODS
    public: bool = False
    timeout: float = 30.0  # waiting for upstream bytes: the response head, then between reads
    connect_timeout: float = 5.0
    key_locations: tuple[KeyLocation, ...] = DEFAULT_LOCATIONS  # default: keys.locations
    # Defaults for keys that set no rate or quota of their own (SPEC §11; gateway/limits),
    # counted per key and route.
    rate: str | None = None
    burst: int | None = None
    quota: str | None = None
    # An https:// upstream: its certificate is verified against the system's CAs, or against
    # `ca_file` (PEM, absolute); `tls_verify: false` (explicit only) turns verification off.
    ca_file: Path | None = None
    tls_verify: bool = True


@dataclass(frozen=True, slots=True)
class Config:
    source: str = "<defaults>"
    listen: ListenConfig = ListenConfig()
    admin: AdminConfig = AdminConfig()
    status: StatusConfig | None = None  # None: no status listener
    shutdown: ShutdownConfig = ShutdownConfig()
    redis: RedisConfig = RedisConfig()
    keys: KeysConfig = KeysConfig()
    hmac: HmacConfig = HmacConfig()
    brute_force: BruteForceConfig = BruteForceConfig()
    limits: LimitsConfig = LimitsConfig()
    routes: tuple[RouteConfig, ...] = ()
    data_dir: Path = Path(".gateway")
    # How load_config placed data_dir (gateway/discovery.py); "given": as build_config read it.
    data_dir_origin: str = "given"
    # GATEWAY_MASTER_KEY or GATEWAY_MASTER_KEY_FILE (see keys/masterkeys.py); None: the
    # embedded store's master.key, or no HMAC keys.
    master_key: MasterKeys | None = field(default=None, repr=False)
    log: LogConfig = LogConfig()
    # SHA-256 (first 16 hex digits) of the file as loaded: which config is running.
    digest: str = "defaults"

    def restart_needed_for(self, new: Config) -> list[str]:
        """Settings a reload cannot change in a running process."""
        fixed = [("listen.host", self.listen.host, new.listen.host),
                 ("listen.port", self.listen.port, new.listen.port),
                 # On or off needs a new socket; files and settings are reloaded (proxy/tls.py).
                 ("listen.tls", self.listen.tls is None, new.listen.tls is None),
                 ("admin.host", self.admin.host, new.admin.host),
                 ("admin.port", self.admin.port, new.admin.port),
                 ("status", self.status, new.status),
                 ("redis.url", self.redis.url, new.redis.url),
                 ("data_dir", self.data_dir, new.data_dir)]
        return [name for name, old, now in fixed if old != now]


class _Reader:
    """Walks the parsed YAML, collecting every problem with its field path."""

    def __init__(self) -> None:
        self.problems: list[ConfigProblem] = []

    def problem(self, path: str, reason: str) -> None:
        self.problems.append(ConfigProblem(path, reason))

    def section(self, data: Mapping[str, Any], key: str, allowed: set[str]) -> dict[str, Any]:
        value = data.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.problem(key, "expected a mapping")
            return {}
        self.unknown(value, key, allowed)
        return value

    def unknown(self, data: Mapping[str, Any], path: str, allowed: set[str]) -> None:
        for key in data:
            if key not in allowed:
                where = f"{path}.{key}" if path else str(key)
                expected = ", ".join(sorted(allowed))
                self.problem(where, f"unknown field (expected one of: {expected})")

    def get(self, data: Mapping[str, Any], key: str, path: str, convert: Callable[[Any], T],
            default: T) -> T:
        if key not in data or data[key] is None:
            return default
        try:
            return convert(data[key])
        except (ValueError, TypeError) as exc:
            self.problem(path, str(exc))
            return default


def _string(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("expected a non-empty string")
    return value


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError("expected true or false")
    return value


def _port(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ValueError("expected a port number between 0 and 65535")
    return value


def _env_port(value: str) -> int:
    # ASCII digits only: int() would also take ' 80', '+80', '8_0' and other scripts' digits.
    if not (value.isascii() and value.isdigit()) or int(value) > 65535:
        raise ValueError(f"{value!r} is not a port number (expected 0 to 65535)")
    return int(value)


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("expected a whole number, 0 or more")
    return value


def _positive_duration(value: object) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError("must be greater than zero")
    return seconds


def _scopes(value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ValueError("expected a list of scopes")
    for scope in value:
        if not is_scope_name(scope):
            raise ValueError(f"{scope!r} is not a scope name such as yc.ai.vision.execute")
    return tuple(dict.fromkeys(value))


_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def _header_names(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and _TOKEN.fullmatch(v)
                                              for v in value):
        raise ValueError("expected a list of header names")
    # As the proxy compares them: `X_Real_IP` is `X-Real-IP` to a CGI-style upstream.
    return tuple(dict.fromkeys(v.lower().replace("_", "-") for v in value))


def _networks(value: object) -> tuple[IPNetwork, ...]:
    if not isinstance(value, list):
        raise ValueError("expected a list of addresses or CIDR networks")
    try:
        return tuple(ipaddress.ip_network(str(item), strict=False) for item in value)
    except ValueError as exc:
        raise ValueError(f"not an address or network: {exc}") from None


_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _admin_tokens(value: object) -> tuple[AdminToken, ...]:
    if not isinstance(value, list):
        raise ValueError("expected a list of {label, sha256} entries")
    tokens: list[AdminToken] = []
    for index, item in enumerate(value):
        if not isinstance(item, dict) or set(item) != {"label", "sha256"}:
            raise ValueError(f"entry {index}: expected exactly the fields label and sha256")
        label, digest = item["label"], item["sha256"]
        if not isinstance(label, str) or not _LABEL.fullmatch(label):
            raise ValueError(f"entry {index}: label must be letters, digits, '.', '_' or '-'")
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest.lower()):
            raise ValueError(f"entry {index}: sha256 must be 64 hex digits (sha256sum of the "
                             "token)")
        if label in {t.label for t in tokens}:
            raise ValueError(f"entry {index}: duplicate label {label!r}")
        tokens.append(AdminToken(label, digest.lower()))
    return tuple(tokens)


def _redis_url(value: object) -> str:
    url = _string(value)
    if url != "embedded":
        parse_store_url(url)  # raises ValueError naming what is wrong
    return url


def _replica_count(value: object) -> int:
    count = _count(value)
    if count > 16:
        raise ValueError("must be between 0 and 16")
    return count


def _pool_size(value: object) -> int:
    size = _count(value)
    if not 1 <= size <= 10_000:
        raise ValueError("must be between 1 and 10000")
    return size


def _upstream(value: object) -> str:
    url = _string(value)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected an http:// or https:// URL with a host")
    if parts.query or parts.fragment:
        raise ValueError("must not carry a query or fragment")
    try:
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise ValueError("has an invalid port") from None
    return url.rstrip("/")


def _prefix(value: object) -> str:
    prefix = _string(value)
    if not _PREFIX.fullmatch(prefix) or any(s in (".", "..") for s in prefix.split("/")):
        raise ValueError("expected an absolute path such as /vision/ (no '..', '%', '//', ';' "
                         "or '?')")
    return normalise_prefix(prefix)


def _auth(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"expected a non-empty list drawn from {list(AUTH_METHODS)}")
    for method in value:
        if method not in AUTH_METHODS:
            raise ValueError(f"{method!r} is not one of {list(AUTH_METHODS)}")
    return tuple(dict.fromkeys(value))


_ROUTE_FIELDS = {"name", "prefix", "upstream", "strip_prefix", "scopes", "auth", "public",
                 "timeout", "connect_timeout", "key_locations", "rate", "burst", "quota",
                 "ca_file", "tls_verify"}


def _periods(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(v in QUOTA_PERIODS for v in value):
        raise ValueError(f"expected a list drawn from {list(QUOTA_PERIODS)}")
    return tuple(dict.fromkeys(value))


def _rate(value: object) -> str:
    try:
        return str(parse_rate(value))  # type: ignore[arg-type]
    except PolicyError as exc:
        raise ValueError(str(exc)) from None


def _burst(value: object) -> int:
    try:
        return rate_of(1, 1.0, value).burst  # type: ignore[arg-type]
    except PolicyError as exc:
        raise ValueError(str(exc)) from None


def _quota(value: object) -> str:
    # YAML reads `quota: 10000` (a total) as a number.
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    try:
        return str(parse_quota(text))  # type: ignore[arg-type]
    except PolicyError as exc:
        raise ValueError(str(exc)) from None


def _file(base: Path | None) -> Callable[[object], Path]:
    """A path as written, made absolute from `base` (the config file's directory)."""
    def convert(value: object) -> Path:
        path = Path(_string(value))
        return path if base is None else base / path
    return convert


def _one_of(choices: tuple[str, ...]) -> Callable[[object], str]:
    def convert(value: object) -> str:
        if not isinstance(value, str) or value not in choices:
            raise ValueError(f"expected one of: {', '.join(repr(c) for c in choices)}")
        return value
    return convert


_TLS_FIELDS = {"cert", "key", "min_version", "client_ca", "client_cert"}


def _listen_tls(reader: _Reader, raw: object, base: Path | None) -> TlsConfig | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        reader.problem("listen.tls", "expected a mapping with cert and key")
        return None
    reader.unknown(raw, "listen.tls", _TLS_FIELDS)
    before = len(reader.problems)
    for required in ("cert", "key"):
        if raw.get(required) is None:
            reader.problem(f"listen.tls.{required}", "is required (a PEM file)")
    tls = TlsConfig(
        cert=reader.get(raw, "cert", "listen.tls.cert", _file(base), Path()),
        key=reader.get(raw, "key", "listen.tls.key", _file(base), Path()),
        min_version=reader.get(raw, "min_version", "listen.tls.min_version",
                               _one_of(TLS_MIN_VERSIONS), "1.2"),
        client_ca=reader.get(raw, "client_ca", "listen.tls.client_ca", _file(base), None),
        client_cert=reader.get(raw, "client_cert", "listen.tls.client_cert",
                               _one_of(CLIENT_CERT_MODES), "required"),
    )
    if "client_cert" in raw and tls.client_ca is None:
        reader.problem("listen.tls.client_cert", "needs listen.tls.client_ca")
    if len(reader.problems) > before:
        return None
    try:
        server_context(tls)  # the files as they are now: a bad one is a config error
    except TlsLoadError as exc:
        reader.problem(f"listen.tls.{exc.setting}", str(exc))
        return None
    return tls


def _route(reader: _Reader, raw: object, path: str, base: Path | None = None,
           locations: tuple[KeyLocation, ...] = DEFAULT_LOCATIONS) -> RouteConfig | None:
    if not isinstance(raw, dict):
        reader.problem(path, "expected a mapping with name, prefix and upstream")
        return None
    reader.unknown(raw, path, _ROUTE_FIELDS)
    before = len(reader.problems)
    for required in ("name", "prefix", "upstream"):
        if raw.get(required) is None:
            reader.problem(f"{path}.{required}", "is required")
    name = reader.get(raw, "name", f"{path}.name", _string, "")
    if name and not _ROUTE_NAME.fullmatch(name):
        reader.problem(f"{path}.name", "expected letters, digits, '.', '_' or '-'")
    public = reader.get(raw, "public", f"{path}.public", _boolean, False)
    no_scopes: tuple[str, ...] = ()
    scopes = reader.get(raw, "scopes", f"{path}.scopes", _scopes, no_scopes)
    if public and scopes:
        reader.problem(f"{path}.scopes", "a public route takes no scopes")
    route = RouteConfig(
        name=name,
        prefix=reader.get(raw, "prefix", f"{path}.prefix", _prefix, "/"),
        upstream=reader.get(raw, "upstream", f"{path}.upstream", _upstream, ""),
        strip_prefix=reader.get(raw, "strip_prefix", f"{path}.strip_prefix", _boolean, False),
        scopes=scopes,
        auth=reader.get(raw, "auth", f"{path}.auth", _auth, AUTH_METHODS),
        public=public,
        timeout=reader.get(raw, "timeout", f"{path}.timeout", _positive_duration, 30.0),
        connect_timeout=reader.get(raw, "connect_timeout", f"{path}.connect_timeout",
                                   _positive_duration, 5.0),
        key_locations=reader.get(raw, "key_locations", f"{path}.key_locations",
                                 parse_locations, locations),
        rate=reader.get(raw, "rate", f"{path}.rate", _rate, None),
        burst=reader.get(raw, "burst", f"{path}.burst", _burst, None),
        quota=reader.get(raw, "quota", f"{path}.quota", _quota, None),
        ca_file=reader.get(raw, "ca_file", f"{path}.ca_file", _file(base), None),
        tls_verify=reader.get(raw, "tls_verify", f"{path}.tls_verify", _boolean, True),
    )
    if (route.ca_file is not None or not route.tls_verify) and route.upstream \
            and not route.upstream.startswith("https://"):
        field_ = "ca_file" if route.ca_file is not None else "tls_verify"
        reader.problem(f"{path}.{field_}", "applies to an https:// upstream only")
    elif route.ca_file is not None and not route.tls_verify:
        reader.problem(f"{path}.ca_file", "means nothing with tls_verify: false")
    elif route.ca_file is not None:
        try:
            upstream_context(UpstreamTls(route.ca_file))
        except TlsLoadError as exc:
            reader.problem(f"{path}.ca_file", str(exc))
    return route if len(reader.problems) == before else None


def _routes(reader: _Reader, raw: object, base: Path | None,
            locations: tuple[KeyLocation, ...] = DEFAULT_LOCATIONS) -> tuple[RouteConfig, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        reader.problem("routes", "expected a list of routes")
        return ()
    routes: list[RouteConfig] = []
    names: dict[str, int] = {}
    prefixes: dict[str, int] = {}  # by prefix in lower case: the router refuses a path
    # whose case-folded reading lands elsewhere, so two prefixes apart only in case clash
    for index, item in enumerate(raw):
        path = f"routes[{index}]"
        route = _route(reader, item, path, base, locations)
        if route is None:
            continue
        if route.name in names:
            reader.problem(f"{path}.name", f"duplicates routes[{names[route.name]}].name")
        folded = route.prefix.lower()
        if folded in prefixes:
            reader.problem(f"{path}.prefix", f"duplicates routes[{prefixes[folded]}].prefix "
                           "(letter case aside)")
        names.setdefault(route.name, index)
        prefixes.setdefault(folded, index)
        routes.append(route)
    return tuple(routes)


def _master_keys(value: str) -> MasterKeys:
    return MasterKeys(parse_key_list(value), ORIGIN_ENV)


def _master_key_file(value: str) -> MasterKeys:
    try:
        return read_key_file(Path(value), ORIGIN_FILE)
    except MasterKeyError as exc:
        raise ValueError(str(exc)) from None


# Instances holding each section's defaults (a slotted dataclass's class attribute is a slot
# descriptor, not the default value).
_STATUS = StatusConfig()
_LISTEN, _ADMIN, _REDIS, _KEYS, _HMAC = (ListenConfig(), AdminConfig(), RedisConfig(),
                                         KeysConfig(), HmacConfig())
_BRUTE_FORCE = BruteForceConfig()


def _log_level(value: object) -> str:
    if value not in LOG_LEVELS:
        raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}")
    return str(value)


def build_config(data: object, source: str, env: Mapping[str, str] | None = None,
                 digest: str = "defaults", base: Path | None = None) -> Config:
    """Validate parsed YAML (plus environment overrides) into a Config, or raise ConfigError.
    `base`: the directory relative file names (TLS certificates, keys, CAs) are read from."""
    env = env or {}
    reader = _Reader()
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, [ConfigProblem("", "expected a mapping at the top level")])
    reader.unknown(data, "", {"listen", "admin", "redis", "keys", "hmac", "brute_force",
                              "limits", "routes", "data_dir", "log", "status", "shutdown"})

    raw = reader.section(data, "listen", {"host", "port", "trusted_proxies", "drain_timeout",
                                          "strip_headers", "tls"})
    listen = ListenConfig(
        host=reader.get(raw, "host", "listen.host", _string, _LISTEN.host),
        port=reader.get(raw, "port", "listen.port", _port, _LISTEN.port),
        trusted_proxies=reader.get(raw, "trusted_proxies", "listen.trusted_proxies",
                                   _networks, ()),
        drain_timeout=reader.get(raw, "drain_timeout", "listen.drain_timeout",
                                 parse_duration, _LISTEN.drain_timeout),
        strip_headers=reader.get(raw, "strip_headers", "listen.strip_headers", _header_names,
                                 _LISTEN.strip_headers),
        tls=_listen_tls(reader, raw.get("tls"), base),
    )
    raw = reader.section(data, "log", {"level", "access_log"})
    log = LogConfig(
        level=reader.get(raw, "level", "log.level", _log_level, "info"),
        access_log=reader.get(raw, "access_log", "log.access_log", _boolean, True),
    )
    raw = reader.section(data, "admin", {"host", "port", "token", "tokens"})
    admin = AdminConfig(
        host=reader.get(raw, "host", "admin.host", _string, _ADMIN.host),
        port=reader.get(raw, "port", "admin.port", _port, _ADMIN.port),
        token=reader.get(raw, "token", "admin.token", _string, None),
        tokens=reader.get(raw, "tokens", "admin.tokens", _admin_tokens, ()),
    )
    status = None
    if data.get("status") is not None:
        raw = reader.section(data, "status", {"host", "port"})
        status = StatusConfig(
            host=reader.get(raw, "host", "status.host", _string, _STATUS.host),
            port=reader.get(raw, "port", "status.port", _port, _STATUS.port),
        )
        if status.port != 0 and status.port in (admin.port, listen.port):
            reader.problem("status.port", "must differ from listen.port and admin.port")
    raw = reader.section(data, "shutdown", {"delay"})
    shutdown = ShutdownConfig(
        delay=reader.get(raw, "delay", "shutdown.delay", parse_duration, 0.0))
    raw = reader.section(data, "redis", {"url", "timeout", "pool_size", "idle_timeout",
                                         "confirm_replicas"})
    redis = RedisConfig(
        url=reader.get(raw, "url", "redis.url", _redis_url, _REDIS.url),
        timeout=reader.get(raw, "timeout", "redis.timeout", _positive_duration,
                           _REDIS.timeout),
        pool_size=reader.get(raw, "pool_size", "redis.pool_size", _pool_size,
                             _REDIS.pool_size),
        idle_timeout=reader.get(raw, "idle_timeout", "redis.idle_timeout", _positive_duration,
                                _REDIS.idle_timeout),
        confirm_replicas=reader.get(raw, "confirm_replicas", "redis.confirm_replicas",
                                    _replica_count, None),
    )
    if redis.confirm_replicas and "+cluster:" in redis.url.lower():
        reader.problem("redis.confirm_replicas", "not available on a Redis Cluster (its "
                       "manual failovers lose nothing; see README, Running a fleet)")
    raw = reader.section(data, "keys", {"default_scopes", "cache_ttl", "negative_cache_ttl",
                                        "stale_if_error", "last_used_flush", "locations",
                                        "accept_imported"})
    keys = KeysConfig(
        default_scopes=reader.get(raw, "default_scopes", "keys.default_scopes", _scopes,
                                  _KEYS.default_scopes),
        cache_ttl=reader.get(raw, "cache_ttl", "keys.cache_ttl", parse_duration,
                             _KEYS.cache_ttl),
        negative_cache_ttl=reader.get(raw, "negative_cache_ttl", "keys.negative_cache_ttl",
                                      parse_duration, _KEYS.negative_cache_ttl),
        stale_if_error=reader.get(raw, "stale_if_error", "keys.stale_if_error",
                                  parse_duration, _KEYS.stale_if_error),
        last_used_flush=reader.get(raw, "last_used_flush", "keys.last_used_flush",
                                   _positive_duration, _KEYS.last_used_flush),
        locations=reader.get(raw, "locations", "keys.locations", parse_locations,
                             _KEYS.locations),
        accept_imported=reader.get(raw, "accept_imported", "keys.accept_imported", _boolean,
                                   _KEYS.accept_imported),
    )
    raw = reader.section(data, "limits", {"fail_open"})
    limits = LimitsConfig(fail_open=reader.get(raw, "fail_open", "limits.fail_open",
                                               _periods, LimitsConfig().fail_open))
    raw = reader.section(data, "hmac", {"clock_skew", "max_body_bytes", "max_buffered_bytes"})
    hmac = HmacConfig(
        clock_skew=reader.get(raw, "clock_skew", "hmac.clock_skew", _positive_duration,
                              _HMAC.clock_skew),
        max_body_bytes=reader.get(raw, "max_body_bytes", "hmac.max_body_bytes", parse_size,
                                  _HMAC.max_body_bytes),
        max_buffered_bytes=reader.get(raw, "max_buffered_bytes", "hmac.max_buffered_bytes",
                                      parse_size, _HMAC.max_buffered_bytes),
    )
    if hmac.max_buffered_bytes < hmac.max_body_bytes:
        reader.problem("hmac.max_buffered_bytes", "must be at least hmac.max_body_bytes "
                       f"({hmac.max_body_bytes} bytes), or no signed body that large could pass")
    raw = reader.section(data, "brute_force", {"max_failures", "window", "block_for"})
    brute_force = BruteForceConfig(
        max_failures=reader.get(raw, "max_failures", "brute_force.max_failures", _count,
                                _BRUTE_FORCE.max_failures),
        window=reader.get(raw, "window", "brute_force.window", _positive_duration,
                          _BRUTE_FORCE.window),
        block_for=reader.get(raw, "block_for", "brute_force.block_for", _positive_duration,
                             _BRUTE_FORCE.block_for),
    )
    routes = _routes(reader, data.get("routes"), base, keys.locations)
    data_dir = Path(reader.get(data, "data_dir", "data_dir", _string, ".gateway"))

    # Environment overrides (SPEC §10) win over the file.
    if "GATEWAY_REDIS_URL" in env:
        redis = replace(redis, url=reader.get(env, "GATEWAY_REDIS_URL", "GATEWAY_REDIS_URL",
                                              _redis_url, redis.url))
    if env.get("GATEWAY_ADMIN_TOKEN"):
        admin = replace(admin, token=env["GATEWAY_ADMIN_TOKEN"])
    if env.get("GATEWAY_DATA_DIR"):
        data_dir = Path(env["GATEWAY_DATA_DIR"])
    # `gateway run --port/--admin-port` arrive here too, as these variables.
    if env.get("GATEWAY_PORT"):
        listen = replace(listen, port=reader.get(env, "GATEWAY_PORT", "GATEWAY_PORT",
                                                 _env_port, listen.port))
    if env.get("GATEWAY_ADMIN_PORT"):
        admin = replace(admin, port=reader.get(env, "GATEWAY_ADMIN_PORT", "GATEWAY_ADMIN_PORT",
                                               _env_port, admin.port))
    master_key = None
    if env.get("GATEWAY_MASTER_KEY") and env.get("GATEWAY_MASTER_KEY_FILE"):
        reader.problem("GATEWAY_MASTER_KEY_FILE", "set it or GATEWAY_MASTER_KEY, not both")
    elif env.get("GATEWAY_MASTER_KEY"):
        master_key = reader.get(env, "GATEWAY_MASTER_KEY", "GATEWAY_MASTER_KEY", _master_keys,
                                None)
    elif env.get("GATEWAY_MASTER_KEY_FILE"):
        master_key = reader.get(env, "GATEWAY_MASTER_KEY_FILE", "GATEWAY_MASTER_KEY_FILE",
                                _master_key_file, None)

    if reader.problems:
        raise ConfigError(source, reader.problems)
    return Config(source=source, listen=listen, admin=admin, status=status,
                  shutdown=shutdown, redis=redis,
                  keys=keys, hmac=hmac, brute_force=brute_force, limits=limits, routes=routes,
                  data_dir=data_dir,
                  master_key=master_key, log=log, digest=digest)


def load_config(path: str | Path | None, env: Mapping[str, str] | None = None,
                cwd: Path | None = None) -> Config:
    """Load the file named by `path` (else GATEWAY_CONFIG; else built-in defaults), with the
    data directory placed as gateway/discovery.py says, from `cwd` (default: the current
    directory)."""
    env = env or {}
    cwd = cwd or Path.cwd()
    if path is None:
        path = env.get("GATEWAY_CONFIG") or None
    if path is None:
        return _place_data_dir(build_config({}, "<defaults>", env), env, None, None, cwd)
    source = str(path)
    try:
        text = (cwd / path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(source, [ConfigProblem("", f"cannot read: {exc.strerror}")]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(source, [ConfigProblem(
            "", f"not UTF-8 text (byte {exc.start}: {exc.object[exc.start:exc.start + 1]!r})",
        )]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        reason = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(source, [ConfigProblem("", f"{where}invalid YAML: {reason}")]) from None
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    # Relative certificate and CA files are read from the config file's directory, as data_dir.
    config = build_config(data, source, env, digest, base=cwd / Path(path).parent)
    return _place_data_dir(config, env, (data or {}).get("data_dir"), Path(path), cwd)


def _place_data_dir(config: Config, env: Mapping[str, str], file_value: str | None,
                    config_file: Path | None, cwd: Path) -> Config:
    # build_config took data_dir as written (GATEWAY_DATA_DIR first); this anchors it.
    choice = choose_data_dir(env.get("GATEWAY_DATA_DIR") or None, file_value, config_file, cwd)
    return replace(config, data_dir=choice.path, data_dir_origin=choice.origin)
