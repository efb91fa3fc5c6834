"""The one typed, frozen configuration, loaded from YAML (SPEC §10) and validated once.

Every problem is reported with the file, the field path and the reason, all at once, so an
operator fixes a broken file in one pass. Nothing else in the package reads `os.environ`: the
environment overrides are applied here, from the mapping the caller passes in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import yaml

from gateway.auth.locations import DEFAULT_LOCATIONS, KeyLocation, parse_locations
from gateway.config.fields import (
    _admin_tokens,
    _auth,
    _boolean,
    _burst,
    _count,
    _env_port,
    _file,
    _header_names,
    _networks,
    _one_of,
    _periods,
    _pool_size,
    _port,
    _positive_duration,
    _prefix,
    _quota,
    _rate,
    _Reader,
    _redis_url,
    _replica_count,
    _scopes,
    _string,
    _upstream,
)
from gateway.config.model import (
    _ROUTE_NAME,
    AUTH_METHODS,
    CLIENT_CERT_MODES,
    LOG_LEVELS,
    TLS_MIN_VERSIONS,
    AdminConfig,
    BruteForceConfig,
    Config,
    HmacConfig,
    KeysConfig,
    LimitsConfig,
    ListenConfig,
    LogConfig,
    RedisConfig,
    RouteConfig,
    ShutdownConfig,
    StatusConfig,
    TlsConfig,
    parse_duration,
    parse_size,
)
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
from gateway.proxy.tls import TlsLoadError, UpstreamTls, server_context, upstream_context

_ROUTE_FIELDS = {"name", "prefix", "upstream", "strip_prefix", "scopes", "auth", "public",
                 "timeout", "connect_timeout", "key_locations", "rate", "burst", "quota",
                 "ca_file", "tls_verify"}
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

