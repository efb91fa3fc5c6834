"""The configuration's types (SPEC §10): one frozen dataclass per section, and the rules for
values that other layers share (durations, sizes, scope names, route prefixes)."""

from __future__ import annotations

import hashlib
import ipaddress
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from gateway.auth.locations import DEFAULT_LOCATIONS, KeyLocation
from gateway.keys.masterkeys import (
    MasterKeys,
)

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

