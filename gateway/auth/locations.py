"""Where a route takes its API key from (issue 19): pure, no I/O.

Clients moved from Kong, Tyk or APISIX send their key where those gateways read it: Kong's
key-auth reads an `apikey` header, many APIs read `X-API-Key` or `Authorization: Bearer`. A
route lists the places it accepts (`key_locations`, default `keys.locations`, default
`Authorization: Api-Key` alone), spelled in the config as:

    api-key          Authorization: Api-Key <key>
    bearer           Authorization: Bearer <key>
    header:<name>    <name>: <key>            (the whole value is the key)
    query:<name>     ?<name>=<key>            (opt-in: URLs end up in browser histories,
                                               proxy logs and Referer headers)

Every listed place is removed before the request goes upstream, whatever the request carried,
so an upstream never sees a key; a key found in two places at once is refused (400) rather than
one of them being picked, because the gateway and an upstream could then read different keys.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote_plus

KINDS = ("api-key", "bearer", "header", "query")
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an HTTP field name (RFC 9110 §5.1)
_PARAMETER = re.compile(r"^[A-Za-z0-9_.~-]{1,64}$")
# Headers a key may not be read from: the gateway reads, rewrites or sets them itself.
_RESERVED_HEADERS = frozenset({
    "authorization", "signature", "signature-input", "host", "content-length",
    "transfer-encoding", "connection", "te", "upgrade", "expect", "x-request-id", "forwarded",
})
_RESERVED_PREFIXES = ("x-auth-", "x-forwarded-")


@dataclass(frozen=True, slots=True)
class KeyLocation:
    kind: str  # one of KINDS
    name: str = ""  # the header (lower case) or the query parameter (as written)

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}" if self.name else self.kind

    def describe(self) -> str:
        """How a client sends a key there, for error messages and docs."""
        if self.kind == "api-key":
            return "Authorization: Api-Key <key>"
        if self.kind == "bearer":
            return "Authorization: Bearer <key>"
        if self.kind == "header":
            return f"{self.name}: <key>"
        return f"?{self.name}=<key>"


API_KEY = KeyLocation("api-key")
DEFAULT_LOCATIONS: tuple[KeyLocation, ...] = (API_KEY,)


def parse_location(text: object) -> KeyLocation:
    """One config spelling; ValueError in plain words."""
    if not isinstance(text, str):
        raise ValueError("expected a string such as api-key, bearer, header:X-API-Key or "
                         "query:apikey")
    kind, colon, name = text.partition(":")
    kind = kind.strip().lower()
    name = name.strip()
    if kind in ("api-key", "bearer"):
        if colon:
            raise ValueError(f"{text!r}: {kind} takes no name")
        return KeyLocation(kind)
    if kind == "header":
        if not _TOKEN.fullmatch(name):
            raise ValueError(f"{text!r}: expected header:<name>, a header name such as "
                             "X-API-Key")
        lower = name.lower().replace("_", "-")
        if lower in _RESERVED_HEADERS or lower.startswith(_RESERVED_PREFIXES):
            raise ValueError(f"{text!r}: the gateway reads or sets {name} itself; use "
                             "api-key or bearer for Authorization")
        return KeyLocation("header", lower)
    if kind == "query":
        if not _PARAMETER.fullmatch(name):
            raise ValueError(f"{text!r}: expected query:<name>, a parameter name of letters, "
                             "digits, '_', '.', '~' or '-'")
        return KeyLocation("query", name)
    raise ValueError(f"{text!r} is not a key location: use api-key, bearer, header:<name> or "
                     "query:<name>")


def parse_locations(value: object) -> tuple[KeyLocation, ...]:
    if not isinstance(value, list) or not value:
        raise ValueError("expected a non-empty list such as [api-key, bearer, header:X-API-Key]")
    locations = tuple(dict.fromkeys(parse_location(item) for item in value))
    # The default itself, so the request path's `is DEFAULT_LOCATIONS` fast path applies.
    return DEFAULT_LOCATIONS if locations == DEFAULT_LOCATIONS else locations


def describe(locations: tuple[KeyLocation, ...]) -> str:
    return " or ".join(location.describe() for location in locations)


def schemes(locations: tuple[KeyLocation, ...]) -> frozenset[str]:
    """The Authorization schemes a route reads a key from, lower case."""
    return frozenset(loc.kind for loc in locations if loc.kind in ("api-key", "bearer"))


def header_names(locations: tuple[KeyLocation, ...]) -> frozenset[str]:
    return frozenset(loc.name for loc in locations if loc.kind == "header")


def query_names(locations: tuple[KeyLocation, ...]) -> frozenset[str]:
    return frozenset(loc.name for loc in locations if loc.kind == "query")


def query_values(query: str, name: str) -> list[str]:
    """Every value of the parameter `name` in a raw query string, decoded as a form (as Kong's
    nginx reads them: `+` is a space)."""
    values = []
    for pair in query.split("&"):
        key, _, value = pair.partition("=")
        if key == name or (("%" in key or "+" in key) and unquote_plus(key) == name):
            values.append(unquote_plus(value))
    return values


def without_parameters(query: str, names: frozenset[str]) -> str:
    """The raw query with every pair named in `names` removed; the rest kept byte for byte."""
    kept = []
    for pair in query.split("&"):
        key = pair.partition("=")[0]
        if key in names or (("%" in key or "+" in key) and unquote_plus(key) in names):
            continue
        kept.append(pair)
    return "&".join(kept)
