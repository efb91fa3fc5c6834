"""Reading the parsed YAML field by field: a reader that collects every problem with its field
path, and one converter per kind of value (each raises ValueError saying what was expected).
Package-private: gateway.config.load uses them."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from gateway.config.model import (
    _PREFIX,
    AUTH_METHODS,
    QUOTA_PERIODS,
    AdminToken,
    IPNetwork,
    is_scope_name,
    normalise_prefix,
    parse_duration,
)
from gateway.errors import ConfigProblem
from gateway.limits.policy import PolicyError, parse_quota, parse_rate, rate_of
from gateway.store.urls import parse_store_url

T = TypeVar("T")


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



