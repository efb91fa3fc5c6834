"""Table-driven tests for gateway.proxy.headers (SPEC §6; RFC 9110 §7.6.1 hop-by-hop fields)."""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.config import IPNetwork
from gateway.peers import is_trusted
from gateway.proxy.headers import (
    client_response_pairs,
    request_id_from,
    untrusted_drop,
    upstream_request_fields,
    valid_host,
)

FRESH_ID = re.compile(r"^[0-9a-f]{32}$")
PEER = "203.0.113.7"
RID = "req-0001"


def _h(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(list(pairs)))


def _pairs(headers: CIMultiDict[str]) -> list[tuple[str, str]]:
    return sorted((name.lower(), value) for name, value in headers.items())


def _upstream(*pairs: tuple[str, str], peer: str | None = PEER, trusted: bool = False,
              scheme: str = "http", identity: Mapping[str, str] | None = None,
              ) -> CIMultiDict[str]:
    """The fields sent upstream, read back from the head lines they are written as."""
    lines = upstream_request_fields(_h(*pairs), peer=peer, trusted_peer=trusted, scheme=scheme,
                                    request_id=RID, identity=identity)
    assert lines.endswith("\r\n")
    fields: CIMultiDict[str] = CIMultiDict()
    for line in lines.removesuffix("\r\n").split("\r\n"):
        name, separator, value = line.partition(": ")
        assert separator and name and "\n" not in value, line
        fields.add(name, value)
    return fields


# ---------------------------------------------------------------------------------------------
# request_id_from
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "abc",
        "a",
        "0123456789abcdef0123456789abcdef",
        "550e8400-e29b-41d4-a716-446655440000",
        "Root=1-5759e988-bd862e3fe1be46a994272793",
        "req.1~x+y/z=:@",
        "A" * 128,
    ],
)
def test_request_id_sane_kept(value: str) -> None:
    assert request_id_from(value) == value


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "A" * 129,
        "x" * 10000,
        "a b",
        " abc",
        "abc ",
        "a\tb",
        "a\r\nX-Injected: 1",
        "a\nb",
        "a\x00b",
        "a\x7fb",
        "réq",
        "<script>",
        "a,b",
        "a;b",
        '"quoted"',
        "a\\b",
        "{id}",
    ],
)
def test_request_id_insane_replaced(value: str | None) -> None:
    fresh = request_id_from(value)
    assert FRESH_ID.match(fresh)
    assert fresh != value


@pytest.mark.parametrize("value", ["abc\n", "A" * 128 + "\n"])
def test_request_id_trailing_newline_replaced(value: str) -> None:
    assert FRESH_ID.match(request_id_from(value))


def test_request_id_fresh_ids_differ() -> None:
    ids = {request_id_from(None) for _ in range(50)}
    assert len(ids) == 50
    assert all(FRESH_ID.match(i) for i in ids)


# ---------------------------------------------------------------------------------------------
# upstream_request_fields: what is removed
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        # Hop-by-hop (RFC 9110 §7.6.1) and the usual extras.
        "Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate",
        "Proxy-Authorization", "TE", "Trailer", "Transfer-Encoding", "Upgrade",
        "transfer-encoding", "UPGRADE",
        # The credential.
        "Authorization", "authorization", "AUTHORIZATION", "Signature", "signature",
        "Signature-Input", "SIGNATURE-INPUT",
        # Every X-Auth-*, whatever the case.
        "X-Auth-Account-Id", "X-Auth-Key-Id", "X-Auth-Method", "X-Auth-Scopes",
        "x-auth-account-id", "X-AUTH-KEY-ID", "x-Auth-Whatever", "X-Auth-", "X-Auth-Is-Admin",
        # Rewritten by the gateway; the framing is the forwarder's own.
        "Host", "host", "Expect", "Forwarded", "forwarded", "Content-Length", "content-length",
        # Underscore look-alikes, which CGI-style upstreams read as the dashed names.
        "X_Auth_Key_Id", "x_auth-account_id", "X_Forwarded_For", "X_Request_Id",
        "Proxy_Authorization",
    ],
)
def test_upstream_headers_removed(name: str) -> None:
    value = "100-continue" if name.lower() == "expect" else "spoofed-value"
    out = _upstream((name, value), ("Accept", "*/*"))
    assert out.getall("Accept") == ["*/*"]
    assert name not in out
    if name.lower() == "host":
        # The client's Host survives only as X-Forwarded-Host.
        assert [v for v in out.values() if v == value] == [out["X-Forwarded-Host"]]
    else:
        assert value not in out.values()


@pytest.mark.parametrize(
    ("connection", "named"),
    [
        ("close, X-Custom-Hop", ["X-Custom-Hop"]),
        ("X-Custom-Hop", ["x-custom-hop"]),
        ("keep-alive, X-A ,  x-b", ["X-A", "X-B"]),
        ("Upgrade, X-Foo", ["X-Foo"]),
        ("x-a,x-b,x-c", ["X-A", "X-B", "X-C"]),
    ],
)
def test_upstream_headers_connection_named_removed(connection: str, named: list[str]) -> None:
    incoming = [("Connection", connection), ("Accept", "text/plain")]
    incoming += [(n, f"value-of-{n}") for n in named]
    out = _upstream(*incoming)
    for n in named:
        assert n not in out
    assert "Connection" not in out
    assert out["Accept"] == "text/plain"


def test_upstream_headers_several_connection_fields() -> None:
    out = _upstream(("Connection", "X-One"), ("Connection", "X-Two"),
                    ("X-One", "1"), ("X-Two", "2"), ("X-Three", "3"))
    assert "X-One" not in out
    assert "X-Two" not in out
    assert out["X-Three"] == "3"


def test_upstream_headers_connection_naming_nothing_else_keeps_others() -> None:
    out = _upstream(("Connection", "keep-alive"), ("Keep-Alive", "timeout=5"),
                    ("X-Custom", "kept"))
    assert out["X-Custom"] == "kept"
    assert "Keep-Alive" not in out


def test_upstream_headers_other_underscore_names_pass() -> None:
    out = _upstream(("X_Custom_Thing", "kept"), ("My_Header", "also"))
    assert out["X_Custom_Thing"] == "kept"
    assert out["My_Header"] == "also"


# ---------------------------------------------------------------------------------------------
# upstream_request_fields: what passes and what is added
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("Content-Type", "application/json"),
        ("Accept", "*/*"),
        ("User-Agent", "curl/8.5.0"),
        ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        ("tracestate", "congo=t61rcWkgMzE"),
        ("Cookie", "a=1; b=2"),
        ("Content-Digest", "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:"),
        ("If-None-Match", '"abc"'),
        ("X-Authority", "not-an-x-auth-dash-header"),
        ("X-Custom-Thing", "value with spaces"),
    ],
)
def test_upstream_headers_ordinary_pass_unchanged(name: str, value: str) -> None:
    out = _upstream((name, value))
    assert out.getall(name) == [value]


def test_upstream_headers_repeated_ordinary_headers_kept_in_order() -> None:
    out = _upstream(("Accept", "text/html"), ("X-Tag", "a"), ("Accept", "application/json"),
                    ("X-Tag", "b"), ("x-tag", "c"))
    assert out.getall("Accept") == ["text/html", "application/json"]
    assert out.getall("X-Tag") == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("incoming", "trusted", "scheme", "peer", "expected"),
    [
        # Untrusted peer: every client-supplied X-Forwarded-* is replaced.
        ([("Host", "api.example.com")], False, "http", PEER,
         {"x-forwarded-for": PEER, "x-forwarded-proto": "http",
          "x-forwarded-host": "api.example.com"}),
        ([("Host", "api.example.com"), ("X-Forwarded-For", "6.6.6.6"),
          ("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "evil.example")],
         False, "http", PEER,
         {"x-forwarded-for": PEER, "x-forwarded-proto": "http",
          "x-forwarded-host": "api.example.com"}),
        ([("Host", "api.example.com:8443"), ("x-forwarded-for", "6.6.6.6, 7.7.7.7")],
         False, "https", "2001:db8::1",
         {"x-forwarded-for": "2001:db8::1", "x-forwarded-proto": "https",
          "x-forwarded-host": "api.example.com:8443"}),
        # Trusted peer: the chain is extended, proto and host kept.
        ([("Host", "internal:8080"), ("X-Forwarded-For", "198.51.100.9"),
          ("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "api.example.com")],
         True, "http", "10.0.0.2",
         {"x-forwarded-for": "198.51.100.9, 10.0.0.2", "x-forwarded-proto": "https",
          "x-forwarded-host": "api.example.com"}),
        ([("Host", "internal:8080"), ("X-Forwarded-For", "198.51.100.9, 10.0.0.1")],
         True, "http", "10.0.0.2",
         {"x-forwarded-for": "198.51.100.9, 10.0.0.1, 10.0.0.2", "x-forwarded-proto": "http",
          "x-forwarded-host": "internal:8080"}),
        # Trusted peer that sent none: the gateway's own values.
        ([("Host", "internal:8080")], True, "https", "10.0.0.2",
         {"x-forwarded-for": "10.0.0.2", "x-forwarded-proto": "https",
          "x-forwarded-host": "internal:8080"}),
    ],
)
def test_upstream_headers_forwarded_set(incoming: list[tuple[str, str]], trusted: bool,
                                        scheme: str, peer: str,
                                        expected: dict[str, str]) -> None:
    out = _upstream(*incoming, peer=peer, trusted=trusted, scheme=scheme)
    for name, value in expected.items():
        assert out.getall(name) == [value]
    assert "Forwarded" not in out
    assert "Host" not in out


def test_upstream_headers_trusted_multiple_forwarded_for_fields() -> None:
    out = _upstream(("X-Forwarded-For", "198.51.100.9"), ("X-Forwarded-For", "10.0.0.1"),
                    peer="10.0.0.2", trusted=True)
    assert out.getall("X-Forwarded-For") == ["198.51.100.9, 10.0.0.1, 10.0.0.2"]


@pytest.mark.parametrize("client_id", [None, "client-supplied-id", "x" * 500])
def test_upstream_headers_request_id_set(client_id: str | None) -> None:
    incoming = [("X-Request-Id", client_id)] if client_id is not None else []
    out = _upstream(*incoming)
    assert out.getall("X-Request-Id") == [RID]


IDENTITY = {
    "X-Auth-Account-Id": "acc_123",
    "X-Auth-Key-Id": "key_456",
    "X-Auth-Method": "api-key",
    "X-Auth-Scopes": "yc.ai.vision.execute yc.ai.*",
}


@pytest.mark.parametrize(
    "spoofed",
    [
        [],
        [("X-Auth-Account-Id", "acc_admin")],
        [("x-auth-key-id", "key_evil"), ("X-AUTH-METHOD", "hmac"), ("X-Auth-Scopes", "*")],
        [("X-Auth-Account-Id", "a"), ("X-Auth-Account-Id", "b")],
    ],
)
def test_upstream_headers_identity_added_once(spoofed: list[tuple[str, str]]) -> None:
    out = _upstream(*spoofed, ("Authorization", "Api-Key gwk_secret"), identity=IDENTITY)
    for name, value in IDENTITY.items():
        assert out.getall(name) == [value]
    auth_headers = [n.lower() for n in out if n.lower().startswith("x-auth-")]
    assert sorted(auth_headers) == sorted(n.lower() for n in IDENTITY)
    assert "Authorization" not in out


@pytest.mark.parametrize("identity", [None, {}])
def test_upstream_headers_no_identity_for_public_routes(identity: dict[str, str] | None) -> None:
    out = _upstream(("X-Auth-Account-Id", "acc_admin"), ("Authorization", "Bearer x"),
                    identity=identity)
    assert not [n for n in out if n.lower().startswith("x-auth-")]
    assert "Authorization" not in out


def test_upstream_headers_full_example() -> None:
    incoming = [
        ("Host", "gw.example.com"),
        ("Connection", "keep-alive, X-Hop"),
        ("Keep-Alive", "timeout=5"),
        ("X-Hop", "1"),
        ("Authorization", "Api-Key gwk_secret"),
        ("Signature", "sig1=:abc:"),
        ("Signature-Input", 'sig1=("@method")'),
        ("X-Auth-Account-Id", "spoof"),
        ("X-Request-Id", "client-id"),
        ("Expect", "100-continue"),
        ("Forwarded", "for=6.6.6.6"),
        ("X-Forwarded-For", "6.6.6.6"),
        ("Accept", "a"),
        ("Accept", "b"),
        ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        ("Content-Length", "5"),
    ]
    out = _upstream(*incoming, identity={"X-Auth-Account-Id": "acc_1"})
    assert _pairs(out) == sorted([
        ("accept", "a"),
        ("accept", "b"),
        ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        ("x-forwarded-for", PEER),
        ("x-forwarded-proto", "http"),
        ("x-forwarded-host", "gw.example.com"),
        ("x-request-id", RID),
        ("x-auth-account-id", "acc_1"),
    ])


def test_upstream_headers_do_not_modify_input() -> None:
    source = CIMultiDict([("Authorization", "x"), ("Accept", "y")])
    proxy = CIMultiDictProxy(source)
    upstream_request_fields(proxy, peer=PEER, trusted_peer=False, scheme="http",
                            request_id=RID, identity=IDENTITY)
    assert list(source.items()) == [("Authorization", "x"), ("Accept", "y")]


# ---------------------------------------------------------------------------------------------
# client_response_pairs
# ---------------------------------------------------------------------------------------------


def _raw(*pairs: tuple[str, str]) -> list[tuple[bytes, bytes]]:
    return [(n.encode(), v.encode()) for n, v in pairs]


@pytest.mark.parametrize(
    ("incoming", "keep_length", "expected"),
    [
        ([("Content-Type", "application/json"), ("Content-Length", "2")], False,
         [("Content-Type", "application/json")]),
        # HEAD, 204 and 304 state a length they do not send: it passes as it is.
        ([("Content-Type", "application/json"), ("Content-Length", "2")], True,
         [("Content-Type", "application/json"), ("Content-Length", "2")]),
        ([("Connection", "keep-alive"), ("Keep-Alive", "timeout=5"),
          ("Transfer-Encoding", "chunked"), ("Trailer", "X-Checksum"), ("Upgrade", "h2c"),
          ("Proxy-Authenticate", "Basic"), ("TE", "trailers"), ("Content-Type", "text/plain")],
         True, [("Content-Type", "text/plain")]),
        ([("Connection", "close, X-Upstream-Hop"), ("X-Upstream-Hop", "1"),
          ("X-Other", "2")], False,
         [("X-Other", "2")]),
        ([("connection", "X-UPSTREAM-HOP"), ("x-upstream-hop", "1")], False, []),
        ([("Set-Cookie", "a=1"), ("Vary", "Accept"), ("Set-Cookie", "b=2")], False,
         [("Set-Cookie", "a=1"), ("Vary", "Accept"), ("Set-Cookie", "b=2")]),
        ([("X-Request-Id", "upstream-own-id"), ("ETag", '"v1"')], False,
         [("ETag", '"v1"')]),
        ([("WWW-Authenticate", "Bearer"), ("Location", "/vision/x")], False,
         [("WWW-Authenticate", "Bearer"), ("Location", "/vision/x")]),
        ([], False, []),
    ],
)
def test_client_response_pairs(incoming: list[tuple[str, str]], keep_length: bool,
                               expected: list[tuple[str, str]]) -> None:
    out = client_response_pairs(_raw(*incoming), RID, keep_length=keep_length)
    assert out == _raw(*expected, ("X-Request-Id", RID))


# ---------------------------------------------------------------------------------------------
# is_trusted
# ---------------------------------------------------------------------------------------------


def _nets(*cidrs: str) -> list[IPNetwork]:
    return [ipaddress.ip_network(c) for c in cidrs]


@pytest.mark.parametrize(
    ("peer", "networks", "expected"),
    [
        ("10.1.2.3", _nets("10.0.0.0/8"), True),
        ("10.0.0.0", _nets("10.0.0.0/8"), True),
        ("10.255.255.255", _nets("10.0.0.0/8"), True),
        ("11.0.0.0", _nets("10.0.0.0/8"), False),
        ("9.255.255.255", _nets("10.0.0.0/8"), False),
        ("192.168.1.7", _nets("192.168.1.7/32"), True),
        ("192.168.1.8", _nets("192.168.1.7/32"), False),
        ("127.0.0.1", _nets("10.0.0.0/8", "127.0.0.0/8"), True),
        ("172.16.0.1", _nets("10.0.0.0/8", "127.0.0.0/8"), False),
        ("::1", _nets("::1/128"), True),
        ("2001:db8::5", _nets("2001:db8::/32"), True),
        ("2001:db9::5", _nets("2001:db8::/32"), False),
        # Families never mix, and nothing is trusted by default.
        ("10.0.0.1", _nets("::/0"), False),
        ("::1", _nets("0.0.0.0/0"), False),
        ("10.0.0.1", [], False),
        # Missing or unparsable peers are never trusted.
        (None, _nets("0.0.0.0/0"), False),
        ("", _nets("0.0.0.0/0"), False),
        ("localhost", _nets("0.0.0.0/0"), False),
        ("10.0.0.1:8080", _nets("0.0.0.0/0"), False),
        ("/run/gateway.sock", _nets("0.0.0.0/0"), False),
        ("999.0.0.1", _nets("0.0.0.0/0"), False),
    ],
)
def test_is_trusted(peer: str | None, networks: list[IPNetwork], expected: bool) -> None:
    assert is_trusted(peer, networks) is expected


def test_is_trusted_ipv4_mapped_peer() -> None:
    assert is_trusted("::ffff:10.0.0.1", _nets("10.0.0.0/8")) is True


def test_request_id_fresh_ids_differ_across_pool_refills_and_forks() -> None:
    # Three refills of the pool of random bytes the ids are cut from: none repeats, none is
    # cut short at a refill.
    ids = [request_id_from(None) for _ in range(3 * 256 + 7)]
    assert len(set(ids)) == len(ids)
    assert all(FRESH_ID.fullmatch(i) for i in ids)
    # A forked child must not hand out the ids its parent's pool still holds.
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: writes its next id and leaves at once
        os.write(write, request_id_from(None).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child_id = os.read(read, 64).decode()
    os.close(read)
    assert FRESH_ID.fullmatch(child_id)
    assert child_id != request_id_from(None)


# ---------------------------------------------------------------------------------------------
# Issue 17, item 4: override headers from untrusted peers, and the Host field's syntax
# ---------------------------------------------------------------------------------------------

OVERRIDES = [("X-Original-URL", "/admin"), ("X-Rewrite-URL", "/admin"), ("X-Real-IP", "6.6.6.6"),
             ("True-Client-IP", "6.6.6.6"), ("X-Client-IP", "6.6.6.6"), ("Proxy", "http://e:1"),
             ("X_Real_IP", "6.6.6.6")]
DEFAULT_STRIP = ("x-original-url", "x-rewrite-url", "x-real-ip", "true-client-ip", "x-client-ip",
                 "proxy")


def test_override_headers_go_with_the_untrusted_drop_set_only() -> None:
    lines = upstream_request_fields(_h(*OVERRIDES, ("X-Kept", "1")), peer=PEER,
                                    trusted_peer=False, scheme="http", request_id=RID,
                                    drop=untrusted_drop(DEFAULT_STRIP))
    assert "X-Kept: 1\r\n" in lines
    for name, _ in OVERRIDES:
        assert f"{name}:" not in lines
    # From a trusted proxy (the default drop set), they pass.
    trusted = _upstream(*OVERRIDES, trusted=True)
    assert all(name in trusted for name, _ in OVERRIDES)


@pytest.mark.parametrize("value", [
    "gw.test", "gw.test:8080", "GW.Test", "127.0.0.1", "127.0.0.1:80", "[::1]", "[::1]:8080",
    "[2001:db8::1]:443", "[::ffff:1.2.3.4]", "localhost:", "a_b.example", "xn--bcher-kva.example",
])
def test_valid_hosts(value: str) -> None:
    assert valid_host(value)
    assert valid_host(value)  # remembered


@pytest.mark.parametrize("value", [
    "", "evil.example/..@x", "user@gw.test", "user:pw@gw.test", "gw.test/", "gw.test\\x",
    "gw test", " gw.test", "gw.test?x", "gw.test#x", "gw.test:80x", "gw.test:123456",
    "gw.test:80:81", "::1", "[::1", "::1]", "[::g]", "[v1.x]", "[fe80::1%25eth0]",
    "evil%2Fx", "gw.test\t", "caf\u00e9.example", '"gw.test"', "<gw.test>",
])
def test_invalid_hosts(value: str) -> None:
    assert not valid_host(value)
