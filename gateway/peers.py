"""Client addresses as the gateway meets them (a socket's peer, an X-Forwarded-For entry): pure
functions for the proxy's header rewriting and the brute-force counts, which both ask whether a
peer is a trusted proxy."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from gateway.config import IPNetwork

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _unmapped(address: IPAddress) -> IPAddress:
    # A dual-stack listener reports IPv4 peers as ::ffff:a.b.c.d.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def parse_address(text: str) -> IPAddress | None:
    """An address as found in a peer or X-Forwarded-For entry: bare, `a.b.c.d:port` or
    `[v6]:port`. IPv4-mapped IPv6 addresses become IPv4 (a dual-stack listener's view)."""
    try:
        address: IPAddress = ipaddress.ip_address(text)
    except ValueError:
        host = None
        if text.startswith("["):
            host = text[1:].partition("]")[0]
        elif text.count(":") == 1:
            host = text.partition(":")[0]
        if host is None:
            return None
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return None
    return _unmapped(address)


def is_trusted(peer: str | None, trusted: Iterable[IPNetwork]) -> bool:
    """`peer` (a bare address, as a socket reports it) is in one of the `trusted` networks."""
    if not peer:
        return False
    try:
        address = _unmapped(ipaddress.ip_address(peer))
    except ValueError:
        return False
    return any(address in network for network in trusted)
