"""Path normalisation and route matching (SPEC §6): pure functions, no I/O.

A path is routed on its normalised form: percent-encoded unreserved characters decoded,
consecutive slashes merged, dot segments removed. A path that could be read two ways is refused
rather than guessed at: an upstream or a naive matcher might read it differently from us. That
covers encoded slashes and backslashes, NUL and control characters, and a `..` that climbs out of
the prefix the request ends up routed to (`/vision/../functions/x`).

Two readings of a path by common upstreams are checked as well, because a nested prefix is
usually a stricter route on the same upstream (`/api/` public, `/api/admin/` protected):

- Servlet containers (Tomcat, Jetty, Spring on them) drop `;` parameters from every segment
  before they match, so `/api/admin;x/users` is their `/api/admin/users`.
- Case-insensitive frameworks (Express's default, ASP.NET) match `/api/ADMIN/users` to
  `/api/admin/*`.

Routing on either reading alone would be wrong for the other kind of upstream: on the bare name,
a plain upstream reads `/api/public;x/secret` as outside a public `/api/public/` route; on the
letters as sent, a servlet upstream serves its admin handler. So the gateway does neither: a path
whose bare or case-folded reading lands on another route than the path as sent is refused with
400, like every other path that can be read two ways. A path whose readings agree (the common
`;jsessionid=...` inside one route, `/api/Users` under `/api/`) routes as before.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from gateway.config import RouteConfig
from gateway.errors import RequestRefused

_HEX = "0123456789abcdefABCDEF"
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# RFC 3986 pchar minus '%' (handled apart) plus '/' as the separator.
_PATH_CHARS = _UNRESERVED | frozenset("!$&'()*+,;=:@/")
# Query characters we pass through verbatim; anything else (controls, space, non-ASCII,
# '#', '"', '<', '>', '\\', ...) would need a second reading, so it is refused.
_QUERY_CHARS = _PATH_CHARS | frozenset("?%[]")
_PATH_OR_PERCENT = _PATH_CHARS | frozenset("%")
# Encodings that would change the path's structure once an upstream decodes them.
_FORBIDDEN_ENCODED = {
    "2F": "an encoded slash", "5C": "an encoded backslash", "00": "an encoded NUL",
}
MAX_TARGET_LENGTH = 8190
MAX_RESOLVED = 4096  # raw paths whose route RouteTable.resolve remembers


def _refuse(reason: str) -> RequestRefused:
    return RequestRefused("bad_request", reason)


@dataclass(frozen=True, slots=True)
class Target:
    path: str  # normalised, still percent-encoded where it must be
    query: str  # verbatim, without the '?'; "" when absent
    # Depth the path was cut back to by the deepest-reaching `..`; None when it had none.
    lowest_pop: int | None


def _decode_unreserved(segment: str) -> str:
    """Decode %XX where XX is unreserved; upper-case the rest; refuse structural encodings."""
    if "%" not in segment:
        return segment
    out: list[str] = []
    i = 0
    n = len(segment)
    while i < n:
        ch = segment[i]
        if ch != "%":
            out.append(ch)
            i += 1
            continue
        hex_pair = segment[i + 1:i + 3]
        if len(hex_pair) != 2 or hex_pair[0] not in _HEX or hex_pair[1] not in _HEX:
            raise _refuse("the path has a malformed percent-encoding")
        upper = hex_pair.upper()
        if upper in _FORBIDDEN_ENCODED:
            raise _refuse(f"the path contains {_FORBIDDEN_ENCODED[upper]}")
        decoded = chr(int(upper, 16))
        if decoded in _UNRESERVED:
            out.append(decoded)
        elif int(upper, 16) < 0x20 or upper == "7F":
            raise _refuse("the path contains an encoded control character")
        else:
            out.append("%" + upper)
        i += 3
    return "".join(out)


def normalise_path(raw_path: str) -> tuple[str, int | None]:
    """Return the normalised path and the lowest depth a `..` cut it back to (None if never)."""
    if not raw_path.startswith("/"):
        raise _refuse("the path must start with '/'")
    # The set test runs at C speed; the loop only finds which character to name.
    for ch in () if _PATH_OR_PERCENT.issuperset(raw_path) else raw_path:
        if ch not in _PATH_OR_PERCENT:
            if ch == "\\":
                raise _refuse("the path contains a backslash")
            raise _refuse("the path contains a character that is not allowed in a URL path")
    stack: list[str] = []
    lowest_pop: int | None = None
    segments = [_decode_unreserved(s) for s in raw_path.split("/")]
    # RFC 3986 §5.2.4: a path ending in a dot segment keeps its final slash.
    trailing_slash = segments[-1] in ("", ".", "..")
    for segment in segments[1:]:
        if ";" in segment and segment.partition(";")[0] in (".", ".."):
            # Tomcat, Jetty and Spring drop path parameters first and read `..;` as `..`.
            raise _refuse("the path has a dot segment with parameters ('..;')")
        if segment in ("", "."):
            continue  # empty segments merge ("//" -> "/"), as upstreams like nginx would
        if segment == "..":
            if not stack:
                raise _refuse("the path climbs above the root with '..'")
            if stack[-1][0] == ";":
                # `/a/;x/../b`: a servlet container drops the parameters, merges the empty
                # segment, and its `..` removes `a` where ours removes `;x`.
                raise _refuse("the path has '..' after a segment of parameters only")
            stack.pop()
            depth = len(stack)
            lowest_pop = depth if lowest_pop is None else min(lowest_pop, depth)
            continue
        stack.append(segment)
    path = "/" + "/".join(stack)
    if trailing_slash and stack:
        path += "/"
    return path, lowest_pop


def split_target(raw_target: str) -> tuple[str, str]:
    """The raw path and the query of an origin-form target, once the target as a whole (its
    length, a fragment, the query's characters) is acceptable."""
    if len(raw_target) > MAX_TARGET_LENGTH:
        raise _refuse("the request target is too long")
    raw_path, sep, query = raw_target.partition("?")
    if "#" in raw_target:
        raise _refuse("the request target contains a fragment")
    if sep and not _QUERY_CHARS.issuperset(query):
        raise _refuse("the query contains a character that is not allowed in a URL")
    return raw_path, query


def parse_target(raw_target: str) -> Target:
    """Split an origin-form request target into its normalised path and its query."""
    return _target(*split_target(raw_target))


def _target(raw_path: str, query: str) -> Target:
    path, lowest_pop = normalise_path(raw_path)
    return Target(path=path, query=query, lowest_pop=lowest_pop)


def _without_parameters(path: str) -> str:
    """The path as a servlet container matches it: `;...` dropped from every segment, and the
    segments left empty merged (trailing slashes do not matter to a prefix match)."""
    return "/" + "/".join(bare for s in path.split("/") if (bare := s.partition(";")[0]))


# Percent-encoded (upper-case hex, as normalise_path leaves them, then lowered with the path)
# non-ASCII letters that some case-insensitive comparisons equate with an ASCII letter:
# dotted and dotless I, long s, Kelvin sign.
_FOLDED_TO_ASCII = (("%c4%b0", "i"), ("%c4%b1", "i"), ("%c5%bf", "s"), ("%e2%84%aa", "k"))


def _fold(path: str) -> str:
    """The path as a case-insensitive matcher compares it."""
    folded = path.lower()
    if "%" in folded:
        for encoded, letter in _FOLDED_TO_ASCII:
            folded = folded.replace(encoded, letter)
    return folded


_Prefixes = list[tuple[str, str, RouteConfig]]  # prefix, prefix + "/", route; longest first


def _find(path: str, prefixes: _Prefixes) -> RouteConfig | None:
    for prefix, below, route in prefixes:
        if prefix == "/" or path == prefix or path.startswith(below):
            return route
    return None


def _depth(prefix: str) -> int:
    return 0 if prefix == "/" else prefix.count("/")


@dataclass(frozen=True, slots=True)
class Match:
    route: RouteConfig
    upstream_path: str  # the path to request from the upstream (prefix stripped, base joined)


class RouteTable:
    """Longest-prefix match over the configured routes, on segment boundaries."""

    def __init__(self, routes: Iterable[RouteConfig]) -> None:
        # Longest prefix first, so the first hit is the most specific route.
        self._routes = sorted(routes, key=lambda r: len(r.prefix), reverse=True)
        self._prefixes: _Prefixes = [(r.prefix, r.prefix + "/", r) for r in self._routes]
        self._folded: _Prefixes = [(_fold(p), _fold(b), r) for p, b, r in self._prefixes]
        self._upstream_base = {r.name: _upstream_base(r.upstream) for r in self._routes}
        self._resolved: dict[str, Match] = {}  # raw path -> its match (see resolve)

    def resolve(self, raw_target: str) -> tuple[Match, str]:
        """The route of a request target and its query: `match(parse_target(raw_target))`,
        remembered per raw path. A service's clients ask for the same few paths again and
        again, and normalising and matching them was a tenth of a proxied request's Python
        time; the table is rebuilt with the routes on every reload, so a memo never outlives
        the routes it was made from. Refusals are not remembered."""
        raw_path, query = split_target(raw_target)
        found = self._resolved.get(raw_path)
        if found is None:
            found = self.match(_target(raw_path, query))
            if len(self._resolved) >= MAX_RESOLVED:
                self._resolved.clear()  # a flood of distinct paths costs a miss, not memory
            self._resolved[raw_path] = found
        return found, query

    def match(self, target: Target) -> Match:
        path = target.path
        route = _find(path, self._prefixes)
        if route is None:
            raise RequestRefused("no_route", "no route matches this path")
        prefix = route.prefix
        if target.lowest_pop is not None and target.lowest_pop < _depth(prefix):
            raise _refuse(f"the path uses '..' to reach route {route.name!r} from outside "
                          "its prefix")
        # The other readings (see the module's docstring) must land on the same route.
        bare = _without_parameters(path) if ";" in path else path
        if bare is not path and _find(bare, self._prefixes) is not route:
            raise _refuse("the path's ';' parameters would route it elsewhere on a server "
                          "that drops them (Tomcat, Jetty, Spring)")
        folded = self._folded
        if _find(_fold(path), folded) is not route or (
                bare is not path and _find(_fold(bare), folded) is not route):
            raise _refuse("the path in other letter case belongs to another route, as a "
                          "case-insensitive upstream would read it")
        rest = path
        if route.strip_prefix and prefix != "/":
            rest = path[len(prefix):] or "/"
        base = self._upstream_base[route.name]
        return Match(route=route, upstream_path=base + rest if base else rest)


def _upstream_base(upstream: str) -> str:
    """The path part of an upstream URL, without a trailing slash ('' for none)."""
    after_scheme = upstream.split("://", 1)[1]
    slash = after_scheme.find("/")
    return "" if slash < 0 else after_scheme[slash:].rstrip("/")


def upstream_origin(upstream: str) -> str:
    """scheme://host:port of an upstream URL."""
    scheme, after_scheme = upstream.split("://", 1)
    slash = after_scheme.find("/")
    return f"{scheme}://{after_scheme if slash < 0 else after_scheme[:slash]}"
