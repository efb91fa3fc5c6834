"""The one typed, frozen configuration, loaded from YAML (SPEC §10) and validated once.

`model` holds the types, `fields` reads values field by field, `load` builds a Config from a
file and the environment. Everything else imports from here.
"""

from gateway.config.load import build_config, load_config
from gateway.config.model import (
    AUTH_METHODS,
    CLIENT_CERT_MODES,
    LOG_LEVELS,
    QUOTA_PERIODS,
    TLS_MIN_VERSIONS,
    AdminConfig,
    AdminToken,
    BruteForceConfig,
    Config,
    HmacConfig,
    IPNetwork,
    KeysConfig,
    LimitsConfig,
    ListenConfig,
    LogConfig,
    RedisConfig,
    RouteConfig,
    ShutdownConfig,
    StatusConfig,
    TlsConfig,
    is_scope_name,
    normalise_prefix,
    parse_duration,
    parse_size,
)

__all__ = [
    "AUTH_METHODS", "CLIENT_CERT_MODES", "LOG_LEVELS", "QUOTA_PERIODS", "TLS_MIN_VERSIONS",
    "AdminConfig", "AdminToken", "BruteForceConfig", "Config", "HmacConfig", "IPNetwork",
    "KeysConfig", "LimitsConfig", "ListenConfig", "LogConfig", "RedisConfig", "RouteConfig",
    "ShutdownConfig", "StatusConfig", "TlsConfig", "build_config", "is_scope_name",
    "load_config", "normalise_prefix", "parse_duration", "parse_size",
]
