"""Reading a store URL (SPEC §7) into what the client needs: which topology, where, and how.

    redis://[user:pass@]host[:port][/db]            one Redis (TLS: rediss://)
    unix://[user:pass@]/path/to/redis.sock[?db=N]   one Redis on a unix socket
    redis+sentinel://[user:pass@]host:port[,host:port...]/MASTER[/DB]    (TLS: rediss+sentinel://)
    redis+cluster://[user:pass@]host:port[,host:port...]                 (TLS: rediss+cluster://)

A pure function with no I/O, so `gateway config check` refuses a URL the client could not use,
naming what is wrong, instead of a traceback at the first command. Query options are a closed
list: redis-py would pass an unknown one to its connection class and fail on first use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qsl, unquote, urlsplit

Topology = Literal["single", "sentinel", "cluster"]

SCHEMES: dict[str, tuple[Topology, bool]] = {
    "redis": ("single", False), "rediss": ("single", True), "unix": ("single", False),
    "redis+sentinel": ("sentinel", False), "rediss+sentinel": ("sentinel", True),
    "redis+cluster": ("cluster", False), "rediss+cluster": ("cluster", True),
}
DEFAULT_PORTS = {"single": 6379, "sentinel": 26379, "cluster": 6379}

# Options every topology takes; TLS ones only with a TLS scheme.
TLS_OPTIONS = frozenset({"ssl_cert_reqs", "ssl_ca_certs", "ssl_ca_path", "ssl_certfile",
                         "ssl_keyfile", "ssl_check_hostname"})
# client_name: the prefix of every connection's name (CLIENT LIST), "gateway" by default.
OPTIONS: dict[Topology, frozenset[str]] = {
    "single": frozenset({"db", "client_name"}),
    # The sentinels' own credentials, when they differ from the data nodes' (Sentinel's
    # `requirepass` is separate from the master's).
    "sentinel": frozenset({"sentinel_username", "sentinel_password", "client_name"}),
    "cluster": frozenset({"client_name"}),
}
_CERT_REQS = ("none", "optional", "required")
_BOOLEANS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


@dataclass(frozen=True, slots=True)
class StoreAddress:
    topology: Topology
    tls: bool
    # single: the URL as redis-py reads it (options it does not know removed); else "".
    url: str
    hosts: tuple[tuple[str, int], ...] = ()  # sentinels, or cluster seed nodes
    master: str = ""  # the Sentinel service name
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    options: tuple[tuple[str, str], ...] = ()  # validated query options, in order

    def option(self, name: str) -> str | None:
        return dict(self.options).get(name)

    def tls_kwargs(self) -> dict[str, object]:
        """The URL's TLS options as redis-py's connection keyword arguments."""
        if not self.tls:
            return {}
        out: dict[str, object] = {"ssl": True}
        for name, value in self.options:
            if name == "ssl_check_hostname":
                out[name] = _BOOLEANS[value.lower()]
            elif name in TLS_OPTIONS:
                out[name] = value
        return out

    def describe(self) -> str:
        """Where the store is, without credentials (for logs and /readyz)."""
        if self.topology == "single":
            parts = urlsplit(self.url)
            where = parts.path if parts.scheme == "unix" else (parts.hostname or "")
            if parts.port:
                where += f":{parts.port}"
            return f"{parts.scheme}://{where}"
        hosts = ",".join(f"{h}:{p}" for h, p in self.hosts)
        scheme = ("rediss+" if self.tls else "redis+") + self.topology
        return f"{scheme}://{hosts}" + (f"/{self.master}" if self.master else "")


def parse_store_url(url: str) -> StoreAddress:
    """Raise ValueError naming the problem; the text reads after "redis.url: "."""
    scheme, sep, _ = url.partition("://")
    if not sep or scheme.lower() not in SCHEMES:
        raise ValueError("expected 'embedded' or a redis://, rediss://, unix://, "
                         "redis+sentinel://, rediss+sentinel://, redis+cluster:// or "
                         "rediss+cluster:// URL")
    topology, tls = SCHEMES[scheme.lower()]
    parts = urlsplit(url)
    if parts.fragment:
        raise ValueError("must not carry a #fragment")
    options = _options(parts.query, topology, tls)
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    if topology == "single":
        return _single(url, parts.scheme.lower(), tls, options, username, password)
    hosts = _hosts(parts.netloc.rpartition("@")[2], topology)
    path = [unquote(p) for p in parts.path.split("/")[1:]]
    master, db = "", 0
    if topology == "sentinel":
        if not path or not path[0]:
            raise ValueError("names no master: redis+sentinel://host:port[,...]/MASTER[/DB]")
        master = path[0]
        if len(path) > 2 or (len(path) == 2 and path[1] == ""):
            raise ValueError("expected /MASTER or /MASTER/DB after the sentinels")
        if len(path) == 2:
            db = _db(path[1])
    elif any(path):
        raise ValueError("a cluster URL takes no path: a cluster has only database 0")
    return StoreAddress(topology, tls, "", hosts, master, db, username, password, options)


def _single(url: str, scheme: str, tls: bool, options: tuple[tuple[str, str], ...],
            username: str | None, password: str | None) -> StoreAddress:
    parts = urlsplit(url)
    if scheme == "unix":
        if not parts.path:
            raise ValueError("a unix:// URL needs the socket's path: unix:///path/to/redis.sock")
    else:
        if not parts.hostname:
            raise ValueError("names no host")
        if "," in parts.netloc:
            raise ValueError("lists several hosts: use redis+sentinel:// or redis+cluster://")
        _port(parts)
    db = _db(parts.path.strip("/")) if scheme != "unix" and parts.path.strip("/") else 0
    if (given := dict(options).get("db")) is not None:
        db = _db(given)
    return StoreAddress("single", tls, url, (), "", db, username, password, options)


def _options(query: str, topology: Topology, tls: bool) -> tuple[tuple[str, str], ...]:
    allowed = OPTIONS[topology] | (TLS_OPTIONS if tls else frozenset())
    seen: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True, strict_parsing=False):
        if name in TLS_OPTIONS and not tls:
            raise ValueError(f"option {name!r} needs a TLS URL (rediss://...)")
        if name not in allowed:
            known = ", ".join(sorted(allowed)) or "none"
            raise ValueError(f"unknown option {name!r} (this URL takes: {known})")
        if name in seen:
            raise ValueError(f"option {name!r} given twice")
        if name == "ssl_cert_reqs" and value.lower() not in _CERT_REQS:
            raise ValueError(f"ssl_cert_reqs must be one of {', '.join(_CERT_REQS)}")
        if name == "ssl_check_hostname" and value.lower() not in _BOOLEANS:
            raise ValueError("ssl_check_hostname must be true or false")
        if name == "db":
            _db(value)
        seen[name] = value
    return tuple(seen.items())


def _hosts(netloc: str, topology: Topology) -> tuple[tuple[str, int], ...]:
    if not netloc:
        raise ValueError(f"names no {'sentinel' if topology == 'sentinel' else 'node'}: "
                         "list host:port[,host:port...]")
    hosts = []
    for item in netloc.split(","):
        if not item:
            raise ValueError("has an empty entry in its host list")
        parts = urlsplit(f"//{item}")
        if not parts.hostname:
            raise ValueError(f"host list entry {item!r} names no host")
        hosts.append((parts.hostname, _port(parts) or DEFAULT_PORTS[topology]))
    return tuple(dict.fromkeys(hosts))


def _port(parts: object) -> int | None:
    try:
        return parts.port  # type: ignore[attr-defined, no-any-return]
    except ValueError:
        raise ValueError("has an invalid port") from None


def _db(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) > 2**31:
        raise ValueError(f"database {text!r} is not a number")
    return int(text)
