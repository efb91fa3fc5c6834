"""Header rewriting for both directions of the proxy (SPEC §6): pure functions.

Inbound to the upstream: hop-by-hop headers (and any the client's `Connection` names) go, the
credential goes, every `X-Auth-*` goes (the gateway alone speaks for the identity), the
`X-Forwarded-*` set is rewritten, `Content-Length` is the forwarder's to set, and from an
untrusted peer the headers upstreams read as a path or client override (`listen.strip_headers`)
go. Outbound to the client: hop-by-hop headers go.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterable, Mapping

from multidict import CIMultiDictProxy

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
    "te", "trailer", "transfer-encoding", "upgrade",
})
CREDENTIAL_HEADERS = frozenset({"authorization", "signature", "signature-input"})
# Rewritten by the gateway, so the client's copies never pass as they are. `Expect` is answered
# by the gateway itself; `Host` becomes the upstream's own.
_REWRITTEN = frozenset({
    "host", "expect", "x-request-id", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host",
    "forwarded",
})
# The body's framing is the forwarder's own: it sends the body as it has it (whole, streamed as
# received, or chunked). Transfer-Encoding is hop-by-hop already.
_FRAMING = frozenset({"content-length"})
DROP_INBOUND = HOP_BY_HOP | CREDENTIAL_HEADERS | _REWRITTEN | _FRAMING


def untrusted_drop(strip_headers: Iterable[str]) -> frozenset[str]:
    """What goes from an untrusted peer's request: DROP_INBOUND and `listen.strip_headers`
    (lower case, as config gives them). Built once per config, not per request."""
    return DROP_INBOUND | frozenset(strip_headers)


# RFC 3986 §3.2.2 host and §3.2.3 port, as RFC 9110 §7.2 takes them for `Host`: a reg-name
# (which an IPv4 address also is) or an IP literal in brackets, then an optional port; never
# userinfo, a path, a backslash or a space (`evil.example/..@x`). Percent-encoding, though the
# reg-name grammar allows it, is refused: no real host name needs it, and an upstream that
# decodes X-Forwarded-Host would read `%2F` as the slash refused here.
_HOST = re.compile(r"(?:[A-Za-z0-9._~!$&'()*+,;=-]+|\[([0-9A-Fa-f:.]+)\])(?::[0-9]{0,5})?")
_ACCEPTED_HOSTS: set[str] = set()  # valid values seen: a client sends the same one each time
_MAX_ACCEPTED_HOSTS = 1024


def valid_host(value: str) -> bool:
    """Whether a `Host` field value is a valid authority (host and optional port)."""
    if value in _ACCEPTED_HOSTS:
        return True
    match = _HOST.fullmatch(value)
    if match is None:
        return False
    if match.group(1) is not None:
        try:
            ipaddress.IPv6Address(match.group(1))
        except ValueError:
            return False
    if len(_ACCEPTED_HOSTS) >= _MAX_ACCEPTED_HOSTS:
        _ACCEPTED_HOSTS.clear()  # a flood of distinct hosts costs a check, not memory
    _ACCEPTED_HOSTS.add(value)
    return True

_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._~+/=:@-]{1,128}")


class _RequestIds:
    """Fresh request ids: 16 random bytes as hex, as `secrets.token_hex(16)` gives, but read
    from the OS 256 at a time (one getrandom call per request was a measurable share of the
    hot path). A forked child starts with an empty pool, never its parent's."""

    HEX_PER_ID = 32
    IDS_PER_READ = 256

    def __init__(self) -> None:
        self._pool = ""
        self._at = 0
        os.register_at_fork(after_in_child=self.reset)

    def reset(self) -> None:
        self._pool, self._at = "", 0

    def next(self) -> str:
        at = self._at
        if at >= len(self._pool):
            self._pool = os.urandom(self.HEX_PER_ID // 2 * self.IDS_PER_READ).hex()
            at = 0
        self._at = at + self.HEX_PER_ID
        return self._pool[at:at + self.HEX_PER_ID]


_REQUEST_IDS = _RequestIds()


def request_id_from(client_value: str | None) -> str:
    """The client's X-Request-Id when it is a sane token, else a fresh one."""
    if client_value is not None and _SANE_REQUEST_ID.fullmatch(client_value):
        return client_value
    return _REQUEST_IDS.next()


def connection_tokens(headers: CIMultiDictProxy[str]) -> frozenset[str]:
    """Header names listed in `Connection`, which are hop-by-hop for this one message."""
    values = headers.getall("Connection", ())
    return frozenset(token.strip().lower() for value in values for token in value.split(","))


def upstream_request_fields(
    incoming: CIMultiDictProxy[str],
    *,
    peer: str | None,
    trusted_peer: bool,
    scheme: str,
    request_id: str,
    identity: Mapping[str, str] | None = None,
    drop: frozenset[str] = DROP_INBOUND,
) -> str:
    """The header fields to send upstream for one request, as lines of its head
    (`Name: value` and CRLF each; the forwarder adds Host and the framing). Written as text in
    the one pass that filters them: the head is built once, not gathered and then formatted.
    `drop` is the set of (lower-case) names removed: `untrusted_drop(...)` for an untrusted
    peer."""
    if "Connection" in incoming:
        drop = drop | connection_tokens(incoming)
    lines: list[str] = []
    for name, value in incoming.items():
        lower = name.lower()
        if "_" in lower:
            # CGI-style upstreams read `X_Auth_Key_Id` as `X-Auth-Key-Id`: a look-alike of a
            # header the gateway removes or sets goes too (nginx drops every such name).
            lower = lower.replace("_", "-")
        if lower in drop or lower.startswith("x-auth-"):
            continue
        lines.append(f"{name}: {value}\r\n")

    host = incoming.get("Host", "")
    # Repeated X-Forwarded-For fields form one list (RFC 9110 §5.3): keep every hop.
    client_for = ", ".join(incoming.getall("X-Forwarded-For", ())) if trusted_peer else None
    forwarded_for = f"{client_for}, {peer}" if client_for and peer else (peer or "")
    proto = (trusted_peer and incoming.get("X-Forwarded-Proto")) or scheme
    forwarded_host = (trusted_peer and incoming.get("X-Forwarded-Host")) or host
    lines.append(f"X-Forwarded-For: {forwarded_for}\r\nX-Forwarded-Proto: {proto}\r\n"
                 f"X-Forwarded-Host: {forwarded_host}\r\nX-Request-Id: {request_id}\r\n")
    if identity:
        lines.extend([f"{name}: {value}\r\n" for name, value in identity.items()])
    return "".join(lines)


_HOP_BY_HOP_BYTES = frozenset(name.encode("ascii") for name in HOP_BY_HOP)
_LENGTH = b"content-length"
_REQUEST_ID = b"x-request-id"  # the gateway's own goes back, never the upstream's


def client_response_pairs(incoming: list[tuple[bytes, bytes]], request_id: str, *,
                          keep_length: bool = False) -> list[tuple[bytes, bytes]]:
    """Headers to send back to the client from an upstream answer, as raw name/value pairs
    (the framing is the listener's: Content-Length is kept only when `keep_length`, for
    answers that state a length without a body)."""
    drop = _HOP_BY_HOP_BYTES
    out: list[tuple[bytes, bytes]] = []
    tokens: set[bytes] = set()
    for name, value in incoming:
        lower = name.lower()
        if lower == b"connection":
            tokens.update(token.strip().lower() for token in value.split(b","))
        if lower in drop or lower == _REQUEST_ID or (lower == _LENGTH and not keep_length):
            continue
        out.append((name, value))
    if tokens:
        out = [(name, value) for name, value in out if name.lower() not in tokens]
    out.append((b"X-Request-Id", request_id.encode("ascii")))
    return out
