"""Table-driven tests for gateway.auth.signatures (SPEC §4; RFC 9421, RFC 9530).

Expected values come from the RFCs (Appendix B.2.5 of RFC 9421, the examples of RFC 9421 §2.2
and RFC 9530 §2) or are written out by hand, never computed by the code under test.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.auth import signatures as sig
from gateway.auth.signatures import (
    ParsedSignature,
    RequestFacts,
    SignatureError,
    authority_of,
    check_content_digest,
    check_coverage,
    check_time,
    component_value,
    hmac_sha256,
    nonce_ttl,
    parse,
    signature_base,
)


def facts(method: str = "GET", scheme: str = "https", authority: str = "example.com",
          path: str = "/", query: str | None = None,
          headers: Mapping[str, str] | CIMultiDictProxy[str] | None = None) -> RequestFacts:
    return RequestFacts(method=method, scheme=scheme, authority=authority, path=path,
                        query=query, headers=headers if headers is not None else {})


def multi(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


# ---------------------------------------------------------------------------------------------
# RFC 9421 Appendix B.2.5: HMAC-SHA256 with the shared test key
# ---------------------------------------------------------------------------------------------

B25_KEY = base64.b64decode(
    "uzvJfB4u3N0Jy4T7NZ75MDVcr8zSTInedJtkgcu46YW4XByzNJjxBdtjUkdJPBtbmHhIDi6pcl8jsasjlTMtDQ==")
B25_INPUT = ('sig-b25=("date" "@authority" "content-type")'
             ';created=1618884473;keyid="test-shared-secret"')
B25_PARAMS = '("date" "@authority" "content-type");created=1618884473;keyid="test-shared-secret"'
B25_BASE = (
    '"date": Tue, 20 Apr 2021 02:07:55 GMT\n'
    '"@authority": example.com\n'
    '"content-type": application/json\n'
    '"@signature-params": ("date" "@authority" "content-type");created=1618884473'
    ';keyid="test-shared-secret"'
).encode("ascii")
B25_SIGNATURE = "sig-b25=:pxcQw6G3AjtMBQjwo8XzkZf/bws5LelbaMk5rGIGtE8=:"
B25_FACTS = RequestFacts(
    method="POST", scheme="https", authority="example.com", path="/foo",
    query="param=Value&Pet=dog",
    headers=multi(("Host", "example.com"), ("Date", "Tue, 20 Apr 2021 02:07:55 GMT"),
                  ("Content-Type", "application/json"),
                  ("Content-Digest", "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+Ab"
                                     "wAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:"),
                  ("Content-Length", "18")))


def test_b25_key_is_the_rfc_shared_secret() -> None:
    assert len(B25_KEY) == 64


def test_b25_signature_base_is_the_rfc_one() -> None:
    assert signature_base(("date", "@authority", "content-type"), B25_PARAMS, B25_FACTS) \
        == B25_BASE


def test_b25_hmac_is_the_rfc_signature() -> None:
    expected = base64.b64decode(B25_SIGNATURE.split("=:", 1)[1].rstrip(":"))
    assert hmac_sha256(B25_KEY, B25_BASE) == expected
    # The same through the base built by the module, end to end.
    base = signature_base(("date", "@authority", "content-type"), B25_PARAMS, B25_FACTS)
    assert base64.b64encode(hmac_sha256(B25_KEY, base)).decode() \
        == "pxcQw6G3AjtMBQjwo8XzkZf/bws5LelbaMk5rGIGtE8="


def test_b25_params_line_matches_the_serialised_inner_list() -> None:
    # parse() refuses B.2.5 (no nonce), so check the canonical serialisation with a nonce added:
    # everything before ';nonce' is what the RFC shows.
    parsed = parse(B25_INPUT + ';nonce="n"', B25_SIGNATURE)
    assert parsed.params_line == B25_PARAMS + ';nonce="n"'
    assert parsed.components == ("date", "@authority", "content-type")


def test_b25_verifies_with_signature_matches_when_built_as_parsed() -> None:
    parsed = ParsedSignature(
        label="sig-b25", components=("date", "@authority", "content-type"),
        params_line=B25_PARAMS,
        signature=base64.b64decode("pxcQw6G3AjtMBQjwo8XzkZf/bws5LelbaMk5rGIGtE8="),
        keyid="test-shared-secret", created=1618884473, expires=None, nonce="", alg=None)
    assert sig.signature_matches(parsed, B25_FACTS, [b"wrong key", B25_KEY])
    assert not sig.signature_matches(parsed, B25_FACTS, [b"wrong key"])


def test_b25_parse_refuses_it_for_lacking_a_nonce() -> None:
    with pytest.raises(SignatureError) as info:
        parse(B25_INPUT, B25_SIGNATURE)
    assert info.value.code == "invalid_signature"
    assert "nonce" in info.value.message


# ---------------------------------------------------------------------------------------------
# Derived components (RFC 9421 §2.2)
# ---------------------------------------------------------------------------------------------

# RFC 9421 §2.2 example request: POST /path?param=value HTTP/1.1, Host: www.example.com, https.
RFC_FACTS = dict(method="POST", scheme="https", authority="www.example.com", path="/path",
                 query="param=value")

DERIVED_CASES: list[tuple[str, str, dict[str, Any], str]] = [
    # (id, component, facts overrides, expected value)
    ("method-rfc", "@method", RFC_FACTS, "POST"),
    ("method-get", "@method", {"method": "GET"}, "GET"),
    ("method-case-kept", "@method", {"method": "get"}, "get"),  # §2.2.1: no case change
    ("method-extension", "@method", {"method": "PATCH"}, "PATCH"),
    ("authority-rfc", "@authority", RFC_FACTS, "www.example.com"),
    ("authority-port", "@authority", {"authority": "example.com:8443"}, "example.com:8443"),
    ("scheme-https", "@scheme", RFC_FACTS, "https"),
    ("scheme-http", "@scheme", {"scheme": "http"}, "http"),
    ("path-rfc", "@path", RFC_FACTS, "/path"),
    ("path-empty", "@path", {"path": ""}, "/"),
    ("path-root", "@path", {"path": "/"}, "/"),
    ("path-encoded-kept", "@path", {"path": "/a%2Fb/%7Euser/sp%20ace"}, "/a%2Fb/%7Euser/sp%20ace"),
    ("path-trailing-slash", "@path", {"path": "/dir/"}, "/dir/"),
    ("path-dot-segments-kept", "@path", {"path": "/a/./b/../c"}, "/a/./b/../c"),
    ("query-rfc", "@query", RFC_FACTS, "?param=value"),
    ("query-absent", "@query", {"query": None}, "?"),
    ("query-empty", "@query", {"query": ""}, "?"),
    ("query-rfc-2-2-7", "@query", {"query": "param=value&foo=bar&baz=bat%2Dman"},
     "?param=value&foo=bar&baz=bat%2Dman"),
    ("query-encoded-kept", "@query", {"query": "q=a%20b&x=%3F%26"}, "?q=a%20b&x=%3F%26"),
    ("query-plus-kept", "@query", {"query": "q=a+b"}, "?q=a+b"),
    ("query-b25", "@query", {"query": "param=Value&Pet=dog"}, "?param=Value&Pet=dog"),
    ("target-uri-rfc", "@target-uri", RFC_FACTS, "https://www.example.com/path?param=value"),
    ("target-uri-no-query", "@target-uri", {"path": "/x"}, "https://example.com/x"),
    ("target-uri-empty-query", "@target-uri", {"path": "/x", "query": ""},
     "https://example.com/x?"),
    ("target-uri-empty-path", "@target-uri", {"path": ""}, "https://example.com/"),
    ("target-uri-http-port", "@target-uri",
     {"scheme": "http", "authority": "example.com:8080", "path": "/a%20b", "query": "k=v"},
     "http://example.com:8080/a%20b?k=v"),
    ("request-target-rfc", "@request-target", RFC_FACTS, "/path?param=value"),
    ("request-target-no-query", "@request-target", {"path": "/path"}, "/path"),
    ("request-target-empty-query", "@request-target", {"path": "/path", "query": ""}, "/path?"),
    ("request-target-empty-path", "@request-target", {"path": "", "query": "a=1"}, "/?a=1"),
    ("request-target-encoded", "@request-target", {"path": "/a%2Fb", "query": "x=%41"},
     "/a%2Fb?x=%41"),
]


@pytest.mark.parametrize(("component", "overrides", "expected"),
                         [case[1:] for case in DERIVED_CASES],
                         ids=[case[0] for case in DERIVED_CASES])
def test_component_value_derived(component: str, overrides: dict[str, Any],
                                 expected: str) -> None:
    assert component_value(component, facts(**overrides)) == expected


AUTHORITY_CASES = [
    # (host header, scheme, expected @authority) per RFC 9421 §2.2.3 / RFC 9110 §4.2.3
    ("example.com", "https", "example.com"),
    ("Example.COM", "https", "example.com"),
    ("WWW.Example.Com", "http", "www.example.com"),
    ("example.com:443", "https", "example.com"),
    ("EXAMPLE.com:443", "https", "example.com"),
    ("example.com:80", "http", "example.com"),
    ("example.com:80", "https", "example.com:80"),
    ("example.com:443", "http", "example.com:443"),
    ("example.com:8443", "https", "example.com:8443"),
    ("example.com:8080", "http", "example.com:8080"),
    ("example.com:4443", "https", "example.com:4443"),
    ("example.com:180", "http", "example.com:180"),
    ("  example.com  ", "https", "example.com"),
    ("127.0.0.1:8080", "http", "127.0.0.1:8080"),
    ("127.0.0.1:80", "http", "127.0.0.1"),
    ("[::1]:443", "https", "[::1]"),
    ("[::1]:8443", "https", "[::1]:8443"),
]


@pytest.mark.parametrize(("host", "scheme", "expected"), AUTHORITY_CASES)
def test_authority_of_normalises(host: str, scheme: str, expected: str) -> None:
    authority = authority_of(host, scheme)
    assert authority == expected
    assert component_value("@authority", facts(scheme=scheme, authority=authority)) == expected


# ---------------------------------------------------------------------------------------------
# HTTP fields (RFC 9421 §2.1)
# ---------------------------------------------------------------------------------------------

FIELD_CASES: list[tuple[str, str, Mapping[str, str] | CIMultiDictProxy[str], str]] = [
    ("plain", "content-type", {"Content-Type": "application/json"}, "application/json"),
    ("trimmed", "content-type", {"Content-Type": "   application/json \t"}, "application/json"),
    ("inner-space-kept", "x-v", {"X-V": "a  b"}, "a  b"),
    ("case-insensitive-name", "x-custom", {"X-CUSTOM": "v"}, "v"),
    ("empty-value", "x-empty", {"X-Empty": ""}, ""),
    ("repeated-joined", "cache-control",
     multi(("Cache-Control", "max-age=60"), ("Cache-Control", "   must-revalidate")),
     "max-age=60, must-revalidate"),
    ("repeated-three-trimmed", "x-list",
     multi(("X-List", " a "), ("x-list", "b"), ("X-LIST", "c ")), "a, b, c"),
    ("repeated-with-empty", "x-e", multi(("X-E", "a"), ("X-E", "")), "a, "),
    ("multidict-single", "date", multi(("Date", "Tue, 20 Apr 2021 02:07:55 GMT")),
     "Tue, 20 Apr 2021 02:07:55 GMT"),
    ("commas-inside-kept", "x-c", {"X-C": "a,b, c"}, "a,b, c"),
]


@pytest.mark.parametrize(("name", "headers", "expected"), [c[1:] for c in FIELD_CASES],
                         ids=[c[0] for c in FIELD_CASES])
def test_component_value_fields(name: str, headers: Any, expected: str) -> None:
    assert component_value(name, facts(headers=headers)) == expected


def test_repeated_fields_with_plain_cimultidict() -> None:
    # The client signer hands a (non-proxy) CIMultiDict; repeated lines must still be combined.
    headers = CIMultiDict([("X-A", "1"), ("x-a", " 2 ")])
    assert component_value("x-a", facts(headers=headers)) == "1, 2"


@pytest.mark.parametrize("headers", [{}, {"X-Other": "v"}, multi(("X-Other", "v"))],
                         ids=["no-headers", "other-header", "other-multidict"])
def test_missing_covered_field_is_invalid(headers: Any) -> None:
    with pytest.raises(SignatureError) as info:
        component_value("x-wanted", facts(headers=headers))
    assert info.value.code == "invalid_signature"


def test_signature_base_missing_field_is_invalid() -> None:
    with pytest.raises(SignatureError) as info:
        signature_base(("@method", "content-digest"), '("@method" "content-digest")', facts())
    assert info.value.code == "invalid_signature"


def test_signature_base_layout() -> None:
    base = signature_base(("@method", "@authority", "@path", "@query"),
                          '("@method" "@authority" "@path" "@query");created=1;nonce="n"',
                          facts(method="GET", path="/v1/x", query="a=1"))
    assert base == (b'"@method": GET\n"@authority": example.com\n"@path": /v1/x\n'
                    b'"@query": ?a=1\n'
                    b'"@signature-params": ("@method" "@authority" "@path" "@query")'
                    b';created=1;nonce="n"')


@pytest.mark.parametrize("value", ["caf\u00e9", "a\x01b", "a\x7fb", "a\rb", "a\tb\x01",
                                   "a\t\nb"],
                         ids=["non-ascii", "ctl", "del", "cr", "tab-and-ctl", "tab-and-lf"])
def test_signature_base_refuses_unprintable_values(value: str) -> None:
    with pytest.raises(SignatureError) as info:
        signature_base(("x-v",), '("x-v")', facts(headers={"X-V": value}))
    assert info.value.code == "invalid_signature"


def test_signature_base_keeps_a_tab_inside_a_value() -> None:
    """Issue 17, item 12: RFC 9110 §5.5 allows HTAB inside a field value and RFC 9421 §2.5
    forbids only non-ASCII; the tabs at the ends are trimmed as OWS (§2.1)."""
    base = signature_base(("x-v",), '("x-v")', facts(headers={"X-V": "\ta\tb\t\tc \t"}))
    assert base == b'"x-v": a\tb\t\tc\n"@signature-params": ("x-v")'


# ---------------------------------------------------------------------------------------------
# parse
# ---------------------------------------------------------------------------------------------

GOOD_PARAMS = ';created=1700000000;nonce="abc";keyid="gwh_k";alg="hmac-sha256"'
GOOD_INPUT = 'sig1=("@method" "@authority" "@path")' + GOOD_PARAMS
GOOD_SIG = "sig1=:dGVzdA==:"  # b"test"
LIMIT_HEAD = 'sig1=("@method");created=1;keyid="gwh_k";nonce="'

MALFORMED: list[tuple[str, str, str]] = [
    # (id, Signature-Input, Signature)
    ("empty-input", "", GOOD_SIG),
    ("empty-signature", GOOD_INPUT, ""),
    ("unclosed-inner-list", 'sig1=("@method" "@path"' + GOOD_PARAMS, GOOD_SIG),
    ("bare-at-token", "sig1=(@method)" + GOOD_PARAMS, GOOD_SIG),
    ("unterminated-string", 'sig1=("@method)' + GOOD_PARAMS, GOOD_SIG),
    ("bad-key", 'Sig1=("@method")' + GOOD_PARAMS, GOOD_SIG),
    ("trailing-comma", GOOD_INPUT + ",", GOOD_SIG),
    ("signature-bad-base64-delim", GOOD_INPUT, "sig1=:dGVzdA=="),
    ("signature-bad-base64-char", GOOD_INPUT, "sig1=:dGV*dA==:"),
    ("non-ascii-input", 'sig1=("@m\u00e9thod")' + GOOD_PARAMS, GOOD_SIG),
    ("non-ascii-param", 'sig1=("@method");created=1;nonce="\u00e9";keyid="gwh_k"', GOOD_SIG),
    ("non-ascii-signature", GOOD_INPUT, "sig1=:dGVzdA==:, x=\u00e9"),
    ("inner-list-missing-string", 'sig1="@method"' + GOOD_PARAMS, GOOD_SIG),
    ("inner-list-missing-int", "sig1=1" + GOOD_PARAMS, GOOD_SIG),
    ("inner-list-missing-bare", "sig1" + GOOD_PARAMS, GOOD_SIG),
    ("signature-string", GOOD_INPUT, 'sig1="dGVzdA=="'),
    ("signature-token", GOOD_INPUT, "sig1=dGVzdA"),
    ("signature-integer", GOOD_INPUT, "sig1=1"),
    ("signature-bare-true", GOOD_INPUT, "sig1"),
    ("signature-inner-list", GOOD_INPUT, "sig1=(:dGVzdA==:)"),
    ("no-matching-label", GOOD_INPUT, "sig2=:dGVzdA==:"),
    ("no-matching-label-many", GOOD_INPUT + ", sig3=(\"@path\")" + GOOD_PARAMS,
     "sig2=:dGVzdA==:, sig4=:dGVzdA==:"),
    ("component-param-sf", 'sig1=("@method" "content-type";sf)' + GOOD_PARAMS, GOOD_SIG),
    ("component-param-key-and-sf", 'sig1=("@method" "example-dict";key="a";sf)' + GOOD_PARAMS,
     GOOD_SIG),
    ("component-param-key-token", 'sig1=("@method" "example-dict";key=a)' + GOOD_PARAMS,
     GOOD_SIG),
    ("component-param-key-empty", 'sig1=("@method" "example-dict";key="")' + GOOD_PARAMS,
     GOOD_SIG),
    ("component-param-key-on-derived", 'sig1=("@path";key="a")' + GOOD_PARAMS, GOOD_SIG),
    ("component-param-req", 'sig1=("@method";req)' + GOOD_PARAMS, GOOD_SIG),
    ("component-param-query-param-token", 'sig1=("@query-param";name=x)' + GOOD_PARAMS,
     GOOD_SIG),
    ("component-param-query-param-two", 'sig1=("@query-param";name="x";y="1")' + GOOD_PARAMS,
     GOOD_SIG),
    ("component-param-query-param-key", 'sig1=("@query-param";key="x")' + GOOD_PARAMS,
     GOOD_SIG),
    ("component-param-query-param-quote", 'sig1=("@query-param";name="a\\"b")' + GOOD_PARAMS,
     GOOD_SIG),
    ("duplicate-query-param", 'sig1=("@query-param";name="x" "@query-param";name="x")'
     + GOOD_PARAMS, GOOD_SIG),
    ("component-not-a-field-name", 'sig1=("@method" "a;b")' + GOOD_PARAMS, GOOD_SIG),
    ("upper-case-field", 'sig1=("@method" "Content-Type")' + GOOD_PARAMS, GOOD_SIG),
    ("upper-case-derived", 'sig1=("@Method")' + GOOD_PARAMS, GOOD_SIG),
    ("unknown-derived-status", 'sig1=("@method" "@status")' + GOOD_PARAMS, GOOD_SIG),
    ("unknown-derived-query-param", 'sig1=("@method" "@query-param")' + GOOD_PARAMS, GOOD_SIG),
    ("unknown-derived-signature-params", 'sig1=("@signature-params")' + GOOD_PARAMS, GOOD_SIG),
    ("unknown-derived-made-up", 'sig1=("@host")' + GOOD_PARAMS, GOOD_SIG),
    ("duplicate-derived", 'sig1=("@method" "@path" "@method")' + GOOD_PARAMS, GOOD_SIG),
    ("duplicate-field", 'sig1=("date" "date")' + GOOD_PARAMS, GOOD_SIG),
    ("component-integer", 'sig1=("@method" 1)' + GOOD_PARAMS, GOOD_SIG),
    ("component-bytes", 'sig1=("@method" :YQ==:)' + GOOD_PARAMS, GOOD_SIG),
    ("component-boolean", 'sig1=("@method" ?1)' + GOOD_PARAMS, GOOD_SIG),
    ("unknown-param", GOOD_INPUT + ";foo=1", GOOD_SIG),
    ("unknown-param-context", GOOD_INPUT + ';context="x"', GOOD_SIG),
    ("missing-keyid", 'sig1=("@method");created=1700000000;nonce="abc"', GOOD_SIG),
    ("empty-keyid", 'sig1=("@method");created=1700000000;nonce="abc";keyid=""', GOOD_SIG),
    ("bytes-keyid", 'sig1=("@method");created=1700000000;nonce="abc";keyid=:YQ==:', GOOD_SIG),
    ("integer-keyid", 'sig1=("@method");created=1700000000;nonce="abc";keyid=5', GOOD_SIG),
    ("missing-created", 'sig1=("@method");nonce="abc";keyid="gwh_k"', GOOD_SIG),
    ("missing-nonce", 'sig1=("@method");created=1700000000;keyid="gwh_k"', GOOD_SIG),
    ("empty-nonce", 'sig1=("@method");created=1700000000;nonce="";keyid="gwh_k"', GOOD_SIG),
    ("bytes-nonce", 'sig1=("@method");created=1700000000;nonce=:YQ==:;keyid="gwh_k"', GOOD_SIG),
    ("created-decimal", 'sig1=("@method");created=1700000000.5;nonce="a";keyid="gwh_k"',
     GOOD_SIG),
    ("created-string", 'sig1=("@method");created="1700000000";nonce="a";keyid="gwh_k"',
     GOOD_SIG),
    ("created-boolean", 'sig1=("@method");created;nonce="a";keyid="gwh_k"', GOOD_SIG),
    ("created-token", 'sig1=("@method");created=now;nonce="a";keyid="gwh_k"', GOOD_SIG),
    ("expires-decimal", GOOD_INPUT + ";expires=1700000300.0", GOOD_SIG),
    ("expires-string", GOOD_INPUT + ';expires="1700000300"', GOOD_SIG),
    ("expires-boolean", GOOD_INPUT + ";expires=?1", GOOD_SIG),
    ("alg-rsa", 'sig1=("@method");created=1;nonce="a";keyid="gwh_k";alg="rsa-pss-sha512"',
     GOOD_SIG),
    ("alg-upper", 'sig1=("@method");created=1;nonce="a";keyid="gwh_k";alg="HMAC-SHA256"',
     GOOD_SIG),
    ("alg-sha512", 'sig1=("@method");created=1;nonce="a";keyid="gwh_k";alg="hmac-sha512"',
     GOOD_SIG),
    ("alg-bytes", 'sig1=("@method");created=1;nonce="a";keyid="gwh_k";alg=:YQ==:', GOOD_SIG),
    ("oversized-input", 'sig1=("@method");created=1;nonce="' + "a" * 8200 + '";keyid="gwh_k"',
     GOOD_SIG),
    ("oversized-signature", GOOD_INPUT, "sig1=:" + "A" * 8200 + ":"),
    ("oversized-by-one", LIMIT_HEAD + "a" * (8193 - len(LIMIT_HEAD) - 1) + '"', GOOD_SIG),
]


@pytest.mark.parametrize(("signature_input", "signature"), [c[1:] for c in MALFORMED],
                         ids=[c[0] for c in MALFORMED])
def test_parse_refuses_malformed(signature_input: str, signature: str) -> None:
    with pytest.raises(SignatureError) as info:
        parse(signature_input, signature)
    assert info.value.code == "invalid_signature"


def test_oversized_by_one_case_is_one_over_the_limit() -> None:
    value = dict((c[0], c[1]) for c in MALFORMED)["oversized-by-one"]
    assert len(value) == 8193


def test_parse_accepts_field_exactly_at_the_limit() -> None:
    value = LIMIT_HEAD + "a" * (8192 - len(LIMIT_HEAD) - 1) + '"'
    assert len(value) == 8192
    assert parse(value, GOOD_SIG).nonce == "a" * (8192 - len(LIMIT_HEAD) - 1)


# RFC 9421 §2 and §2.3: component identifiers, keyid, nonce and alg are sf-strings; a token in
# their place is not a valid Signature-Input.
TOKEN_CASES = [
    ("token-component", 'sig1=("@method" date)' + GOOD_PARAMS),
    ("token-keyid", 'sig1=("@method");created=1;nonce="a";keyid=gwh_k'),
    ("token-nonce", 'sig1=("@method");created=1;nonce=abc;keyid="gwh_k"'),
    ("token-alg", 'sig1=("@method");created=1;nonce="a";keyid="gwh_k";alg=hmac-sha256'),
]


@pytest.mark.parametrize("signature_input", [c[1] for c in TOKEN_CASES],
                         ids=[c[0] for c in TOKEN_CASES])
def test_parse_refuses_tokens_where_strings_are_required(signature_input: str) -> None:
    with pytest.raises(SignatureError) as info:
        parse(signature_input, GOOD_SIG)
    assert info.value.code == "invalid_signature"


VALID: list[tuple[str, str, str, dict[str, Any]]] = [
    ("spec-example",
     'sig1=("@method" "@authority" "@path" "@query" "content-digest");created=1700000000'
     ';nonce="n0nce";keyid="gwh_abc";alg="hmac-sha256"',
     "sig1=:AAECAw==:",
     dict(label="sig1", components=("@method", "@authority", "@path", "@query",
                                    "content-digest"),
          params_line='("@method" "@authority" "@path" "@query" "content-digest")'
                      ';created=1700000000;nonce="n0nce";keyid="gwh_abc";alg="hmac-sha256"',
          signature=b"\x00\x01\x02\x03", keyid="gwh_abc", created=1700000000, expires=None,
          nonce="n0nce", alg="hmac-sha256")),
    ("no-alg-with-expires-and-tag",
     'x=("@method" "@path");created=10;expires=20;nonce="n";keyid="gwh_k";tag="app"',
     "x=:dGVzdA==:",
     dict(label="x", components=("@method", "@path"),
          params_line='("@method" "@path");created=10;expires=20;nonce="n";keyid="gwh_k"'
                      ';tag="app"',
          signature=b"test", keyid="gwh_k", created=10, expires=20, nonce="n", alg=None)),
    ("canonical-whitespace",
     'sig1=( "@method"   "@path" );keyid="gwh_k";created=5;nonce="n"',
     "sig1=:dGVzdA==:",
     dict(label="sig1", components=("@method", "@path"),
          params_line='("@method" "@path");keyid="gwh_k";created=5;nonce="n"',
          signature=b"test", keyid="gwh_k", created=5, expires=None, nonce="n", alg=None)),
    ("empty-component-list",
     'sig1=();created=5;nonce="n";keyid="gwh_k"', "sig1=:dGVzdA==:",
     dict(label="sig1", components=(), params_line='();created=5;nonce="n";keyid="gwh_k"',
          signature=b"test", keyid="gwh_k", created=5, expires=None, nonce="n", alg=None)),
    ("all-derived-and-fields",
     'sig1=("@method" "@target-uri" "@authority" "@scheme" "@request-target" "@path" '
     '"@query" "date" "content-type");created=5;nonce="n";keyid="k"', "sig1=:dGVzdA==:",
     dict(label="sig1",
          components=("@method", "@target-uri", "@authority", "@scheme", "@request-target",
                      "@path", "@query", "date", "content-type"),
          params_line='("@method" "@target-uri" "@authority" "@scheme" "@request-target" '
                      '"@path" "@query" "date" "content-type");created=5;nonce="n";keyid="k"',
          signature=b"test", keyid="k", created=5, expires=None, nonce="n", alg=None)),
    ("gwh-picked-second",
     'other=("@method");created=1;nonce="a";keyid="third-party", '
     'mine=("@path");created=2;nonce="b";keyid="gwh_me"',
     "other=:AA==:, mine=:AQ==:",
     dict(label="mine", components=("@path",), params_line='("@path");created=2;nonce="b"'
          ';keyid="gwh_me"', signature=b"\x01", keyid="gwh_me", created=2, expires=None,
          nonce="b", alg=None)),
    ("gwh-picked-first",
     'mine=("@path");created=2;nonce="b";keyid="gwh_me", '
     'other=("@method");created=1;nonce="a";keyid="third-party"',
     "other=:AA==:, mine=:AQ==:",
     dict(label="mine", components=("@path",), params_line='("@path");created=2;nonce="b"'
          ';keyid="gwh_me"', signature=b"\x01", keyid="gwh_me", created=2, expires=None,
          nonce="b", alg=None)),
    ("first-gwh-among-two",
     'a=("@path");created=1;nonce="a";keyid="x", b=("@path");created=2;nonce="b";keyid="gwh_1"'
     ', c=("@path");created=3;nonce="c";keyid="gwh_2"',
     "c=:Ag==:, b=:AQ==:, a=:AA==:",
     dict(label="b", keyid="gwh_1", created=2, signature=b"\x01")),
    ("no-gwh-first-matching",
     'a=("@path");created=1;nonce="a";keyid="x", b=("@path");created=2;nonce="b";keyid="y"',
     "b=:AQ==:, a=:AA==:",
     dict(label="a", keyid="x", created=1, signature=b"\x00")),
    ("gwh-without-signature-skipped",
     'a=("@path");created=1;nonce="a";keyid="gwh_1", b=("@path");created=2;nonce="b";keyid="x"',
     "b=:AQ==:",
     dict(label="b", keyid="x", created=2, signature=b"\x01")),
    ("gwh-prefix-is-case-sensitive",
     'a=("@path");created=1;nonce="a";keyid="x", b=("@path");created=2;nonce="b";keyid="GWH_1"',
     "a=:AA==:, b=:AQ==:",
     dict(label="a", keyid="x")),
]


@pytest.mark.parametrize(("signature_input", "signature", "expected"),
                         [c[1:] for c in VALID], ids=[c[0] for c in VALID])
def test_parse_valid(signature_input: str, signature: str, expected: dict[str, Any]) -> None:
    parsed = parse(signature_input, signature)
    for field, value in expected.items():
        assert getattr(parsed, field) == value, field


# ---------------------------------------------------------------------------------------------
# check_coverage
# ---------------------------------------------------------------------------------------------

def parsed_with(components: tuple[str, ...] = (), created: int = 1000,
                expires: int | None = None) -> ParsedSignature:
    return ParsedSignature(label="sig1", components=components, params_line="()",
                           signature=b"", keyid="gwh_k", created=created, expires=expires,
                           nonce="n", alg=None)


M, A, P, Q, D = "@method", "@authority", "@path", "@query", "content-digest"

COVERAGE_OK = [
    ((M, A, P), False, False),
    ((P, A, M), False, False),
    ((M, A, P, "date"), False, False),
    ((M, A, P, Q), False, False),
    ((M, A, P, Q), True, False),
    ((M, A, P, D), False, True),
    ((Q, D, M, A, P), True, True),
    ((M, A, P, Q, D, "content-type", "@target-uri"), True, True),
]

COVERAGE_REFUSED = [
    ((), False, False),
    ((A, P), False, False),
    ((M, P), False, False),
    ((M, A), False, False),
    ((M, "@target-uri"), False, False),  # @target-uri does not stand in for the parts
    ((M, A, "@request-target"), False, False),
    ((M, A, P), True, False),
    ((M, A, "@request-target"), True, False),
    ((M, A, P), False, True),
    ((M, A, P, Q), True, True),
    ((M, A, P, D), True, True),
    ((M, A, P, "content-type"), False, True),
    ((M, A, P, "digest"), False, True),
]


@pytest.mark.parametrize(("components", "has_query", "has_body"), COVERAGE_OK)
def test_coverage_ok(components: tuple[str, ...], has_query: bool, has_body: bool) -> None:
    check_coverage(parsed_with(components), has_query=has_query, has_body=has_body)


@pytest.mark.parametrize(("components", "has_query", "has_body"), COVERAGE_REFUSED)
def test_coverage_refused(components: tuple[str, ...], has_query: bool, has_body: bool) -> None:
    with pytest.raises(SignatureError) as info:
        check_coverage(parsed_with(components), has_query=has_query, has_body=has_body)
    assert info.value.code == "invalid_signature"


# ---------------------------------------------------------------------------------------------
# check_time and nonce_ttl
# ---------------------------------------------------------------------------------------------

TIME_OK = [
    # (created, expires, now, skew)
    (1000, None, 1000, 300),
    (1000, None, 1299.5, 300),
    (1000, None, 1300, 300),  # exactly skew old: still inside
    (1000, None, 700, 300),  # exactly skew in the future
    (1000, None, 1000.9, 1),
    (1000, None, 1000, 0),
    (1000, 1100, 1050, 300),
    (1000, 1100, 1100, 300),  # at expires: not yet past it
    (1000, 5000, 1300, 300),  # far expires does not extend the skew window, but ok at edge
]

TIME_REFUSED = [
    (1000, None, 1300.001, 300),  # too old
    (1000, None, 1301, 300),
    (1000, None, 5000, 300),
    (1000, None, 699.999, 300),  # too far in the future
    (1000, None, 0, 300),
    (1000, None, 1001, 0),
    (1000, 1100, 1100.001, 300),  # past expires
    (1000, 1100, 1200, 300),
    (1000, 5000, 1301, 300),  # expires later than the window: the window still applies
    (1000, 900, 1000, 300),  # expires before created
]


@pytest.mark.parametrize(("created", "expires", "now", "skew"), TIME_OK)
def test_check_time_ok(created: int, expires: int | None, now: float, skew: float) -> None:
    check_time(parsed_with(created=created, expires=expires), now, skew)


@pytest.mark.parametrize(("created", "expires", "now", "skew"), TIME_REFUSED)
def test_check_time_refused(created: int, expires: int | None, now: float,
                            skew: float) -> None:
    with pytest.raises(SignatureError) as info:
        check_time(parsed_with(created=created, expires=expires), now, skew)
    assert info.value.code == "signature_expired"


NONCE_TTL = [
    # (created, expires, now, skew, expected): remembered while acceptable, plus 1 s
    (1000, None, 1000, 300, 301.0),
    (1000, None, 900, 300, 401.0),
    (1000, None, 1299, 300, 2.0),
    (1000, None, 1300, 300, 1.0),
    (1000, None, 1400, 300, 1.0),
    (1000, 1100, 1000, 300, 101.0),
    (1000, 1100, 1200, 300, 1.0),
    (1000, 5000, 1000, 300, 301.0),
    (1000, 1300, 1000, 300, 301.0),
    (1000, None, 1000.5, 300, 300.5),
]


@pytest.mark.parametrize(("created", "expires", "now", "skew", "expected"), NONCE_TTL)
def test_nonce_ttl(created: int, expires: int | None, now: float, skew: float,
                   expected: float) -> None:
    assert nonce_ttl(parsed_with(created=created, expires=expires), now, skew) \
        == pytest.approx(expected)


# ---------------------------------------------------------------------------------------------
# Content-Digest (RFC 9530)
# ---------------------------------------------------------------------------------------------

# RFC 9530 §2 / RFC 9421 Appendix B.2: the body {"hello": "world"}.
HELLO = b'{"hello": "world"}'
HELLO_256 = "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:"
HELLO_512 = ("sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVL"
             "vRwEmTHWXvJwew==:")
EMPTY_256 = "sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:"

DIGEST_OK = [
    ("sha-256", HELLO_256, HELLO),
    ("sha-512", HELLO_512, HELLO),
    ("both", f"{HELLO_256}, {HELLO_512}", HELLO),
    ("both-reversed", f"{HELLO_512},{HELLO_256}", HELLO),
    ("known-plus-unknown", f"{HELLO_256}, md5=:Sd/dVLAcvNLSq16eXua5uQ==:", HELLO),
    ("unknown-first", f"sha=:AAAA:, {HELLO_512}", HELLO),
    ("known-with-parameter", f"{HELLO_256};x=1", HELLO),
    ("empty-body", EMPTY_256, b""),
]

DIGEST_REFUSED = [
    ("missing-header", None, HELLO),
    ("sha-256-mismatch", HELLO_256, HELLO + b" "),
    ("sha-512-mismatch", HELLO_512, b"{}"),
    ("sha-256-of-other-body", EMPTY_256, HELLO),
    ("sha-256-truncated", "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9D:", HELLO),
    ("unknown-only", "md5=:Sd/dVLAcvNLSq16eXua5uQ==:", HELLO),
    ("unknown-only-two", "sha=:AAAA:, unixsum=:AAAA:", HELLO),
    ("upper-case-algorithm", "SHA-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:", HELLO),
    ("empty-field", "", HELLO),
    ("malformed-no-colons", "sha-256=X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=", HELLO),
    ("malformed-syntax", "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=", HELLO),
    ("string-value", '"sha-256"', HELLO),
    ("known-as-string", 'sha-256="X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE="', HELLO),
    ("known-as-inner-list", "sha-256=(:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:)", HELLO),
    ("non-ascii", "sha-256=:\u00e9:", HELLO),
    ("two-known-second-mismatch", f"{HELLO_256}, sha-512=:AAAA:", HELLO),
    ("two-known-first-mismatch", f"sha-256=:AAAA:, {HELLO_512}", HELLO),
]


@pytest.mark.parametrize(("value", "body"), [c[1:] for c in DIGEST_OK],
                         ids=[c[0] for c in DIGEST_OK])
def test_content_digest_ok(value: str, body: bytes) -> None:
    check_content_digest(value, body)


@pytest.mark.parametrize(("value", "body"), [c[1:] for c in DIGEST_REFUSED],
                         ids=[c[0] for c in DIGEST_REFUSED])
def test_content_digest_refused(value: str | None, body: bytes) -> None:
    with pytest.raises(SignatureError) as info:
        check_content_digest(value, body)
    assert info.value.code == "invalid_signature"


def test_rfc9530_examples_are_the_hashes() -> None:
    # Guards the constants above against typos: they are the RFC's published values.
    assert base64.b64encode(hashlib.sha256(HELLO).digest()).decode() in HELLO_256
    assert base64.b64encode(hashlib.sha512(HELLO).digest()).decode() in HELLO_512


@pytest.mark.parametrize(("algorithm", "expected"), [("sha-256", HELLO_256),
                                                     ("sha-512", HELLO_512)])
def test_content_digest_serialisation(algorithm: str, expected: str) -> None:
    assert sig.content_digest(HELLO, algorithm) == expected


def test_hmac_sha256_is_rfc2104() -> None:
    # RFC 4231 test case 2.
    assert hmac_sha256(b"Jefe", b"what do ya want for nothing?").hex() == (
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
    assert hmac.compare_digest(hmac_sha256(b"k", b"m"), hmac.new(b"k", b"m", "sha256").digest())


def test_signature_matches_uses_every_key() -> None:
    f = facts(path="/x")
    params = '("@method" "@path");created=1;nonce="n";keyid="gwh_k"'
    base = b'"@method": GET\n"@path": /x\n"@signature-params": ' + params.encode()
    good = hmac.new(b"secret-2", base, hashlib.sha256).digest()
    parsed = replace(parsed_with(("@method", "@path")), params_line=params, signature=good)
    assert sig.signature_matches(parsed, f, [b"secret-1", b"secret-2"])
    assert sig.signature_matches(parsed, f, [b"secret-2"])
    assert not sig.signature_matches(parsed, f, [b"secret-1"])
    assert not sig.signature_matches(parsed, f, [])
    assert not sig.signature_matches(replace(parsed, signature=good[:-1]), f, [b"secret-2"])


# The component lists of the common shape are checked once per distinct list.

_SIG = "sig1=:" + base64.b64encode(b"x" * 32).decode() + ":"


def _input(names: str) -> str:
    return f'sig1=({names});created=1;nonce="n";keyid="gwh_k"'


@pytest.mark.parametrize("names", [
    '"@method" "@Path"', '"@method" "@bogus"', '"@method" "@method"',
])
def test_a_refused_component_list_stays_refused(names: str) -> None:
    for _ in range(3):  # never remembered as checked
        with pytest.raises(SignatureError):
            sig.parse(_input(names), _SIG)
    assert names not in sig._COMPONENTS_SEEN


def test_a_remembered_component_list_answers_as_the_first_reading() -> None:
    first = sig.parse(_input('"@method" "@authority" "content-type"'), _SIG)
    again = sig.parse(_input('"@method" "@authority" "content-type"'), _SIG)
    assert first.components == again.components == ("@method", "@authority", "content-type")


def test_the_component_memo_is_bounded() -> None:
    for index in range(sig.MAX_COMPONENTS_SEEN + 5):
        sig.parse(_input(f'"@method" "x-field-{index}"'), _SIG)
    assert len(sig._COMPONENTS_SEEN) <= sig.MAX_COMPONENTS_SEEN


# ---------------------------------------------------------------------------------------------
# Issue 17, item 13: "@query-param";name="..." (RFC 9421 §2.2.8) and a dictionary member
# "<field>";key="..." (§2.1.2), the values taken from the RFC's own examples
# ---------------------------------------------------------------------------------------------

RFC_QUERY = "param=value&foo=bar&baz=batman&qux="  # §2.2.8, first example
RFC_QUERY_ENCODED = ("var=this%20is%20a%20big%0Avalue&bar=with+plus+whitespace"
                     "&fa%C3%A7ade%22%3A%20=something")  # §2.2.8, second example
RFC_DICT = "  a=1,    b=2;x=1;y=2,   c=(a   b   c)"  # §2.1.2 (Example-Dict)


def parsed_components(inner: str) -> tuple[str, ...]:
    return parse(f"sig1={inner}" + GOOD_PARAMS, GOOD_SIG).components


@pytest.mark.parametrize(("inner", "query", "headers", "expected_lines"), [
    ('("@query-param";name="baz")', RFC_QUERY, {}, ['"@query-param";name="baz": batman']),
    ('("@query-param";name="qux")', RFC_QUERY, {}, ['"@query-param";name="qux": ']),
    ('("@query-param";name="param")', RFC_QUERY, {}, ['"@query-param";name="param": value']),
    ('("@query-param";name="var")', RFC_QUERY_ENCODED, {},
     ['"@query-param";name="var": this%20is%20a%20big%0Avalue']),
    ('("@query-param";name="bar")', RFC_QUERY_ENCODED, {},
     ['"@query-param";name="bar": with%20plus%20whitespace']),
    ('("@query-param";name="fa%C3%A7ade%22%3A%20")', RFC_QUERY_ENCODED, {},
     ['"@query-param";name="fa%C3%A7ade%22%3A%20": something']),
    ('("example-dict";key="a")', None, {"Example-Dict": RFC_DICT},
     ['"example-dict";key="a": 1']),
    ('("example-dict";key="b")', None, {"Example-Dict": RFC_DICT},
     ['"example-dict";key="b": 2;x=1;y=2']),
    ('("example-dict";key="c")', None, {"Example-Dict": RFC_DICT},
     ['"example-dict";key="c": (a b c)']),
    ('("@method" "content-digest";key="sha-512" "@query-param";name="Pet")',
     "param=Value&Pet=dog", {"Content-Digest": "sha-256=:AAAA:, sha-512=:BBBB:;x=1"},
     ['"@method": GET', '"content-digest";key="sha-512": :BBBB:;x=1',
      '"@query-param";name="Pet": dog']),
])
def test_parameterised_components_give_the_rfc_lines(inner: str, query: str | None,
                                                     headers: dict[str, str],
                                                     expected_lines: list[str]) -> None:
    components = parsed_components(inner)
    base = signature_base(components, inner, facts(query=query, headers=headers))
    assert base.decode().split("\n") == [*expected_lines, f'"@signature-params": {inner}']


@pytest.mark.parametrize(("inner", "query", "headers"), [
    ('("example-dict";key="d")', None, {"Example-Dict": RFC_DICT}),  # §2.1.2: no such member
    ('("example-dict";key="a")', None, {"Example-Dict": "a=(1"}),  # not a dictionary
    ('("example-dict";key="a")', None, {}),  # no such field
    ('("@query-param";name="nope")', RFC_QUERY, {}),
    ('("@query-param";name="a")', "a=1&a=2", {}),  # §2.2.8: a repeated name is not covered
    ('("@query-param";name="a")', None, {}),
])
def test_parameterised_components_that_name_nothing_are_invalid(
        inner: str, query: str | None, headers: dict[str, str]) -> None:
    with pytest.raises(SignatureError) as info:
        signature_base(parsed_components(inner), inner, facts(query=query, headers=headers))
    assert info.value.code == "invalid_signature"


QP = '@query-param;name="{}"'.format
SHA256_MEMBER, SHA512_MEMBER = 'content-digest;key="sha-256"', 'content-digest;key="sha-512"'


@pytest.mark.parametrize(("components", "query", "has_body"), [
    ((M, A, P, QP("a"), QP("b")), "a=1&b=2", False),  # every parameter, one by one
    ((M, A, P, QP("b"), QP("a")), "a=1&&b=&", False),
    ((M, A, P, QP("a%20b")), "a+b=1", False),
    ((M, A, P, SHA256_MEMBER), None, True),
    ((M, A, P, SHA512_MEMBER), None, True),
])
def test_coverage_by_query_params_and_digest_members(components: tuple[str, ...],
                                                     query: str | None, has_body: bool) -> None:
    check_coverage(parsed_with(components), has_query=query is not None, has_body=has_body,
                   query=query)


@pytest.mark.parametrize(("components", "query", "has_body"), [
    ((M, A, P, QP("a")), "a=1&b=2", False),  # b is not signed
    ((M, A, P, QP("a")), "a=1&a=2", False),  # a repeated name cannot be covered one by one
    ((M, A, P), "", False),  # a bare '?' has nothing to cover by name
    ((M, A, P, QP("a")), "", False),
    ((M, A, P, 'content-digest;key="md5"'), None, True),  # binds no digest the gateway checks
    ((M, A, P, 'x-digest;key="sha-256"'), None, True),
])
def test_coverage_by_parts_that_leave_something_unsigned_is_refused(
        components: tuple[str, ...], query: str | None, has_body: bool) -> None:
    with pytest.raises(SignatureError) as info:
        check_coverage(parsed_with(components), has_query=query is not None,
                       has_body=has_body, query=query)
    assert info.value.code == "invalid_signature"


def test_a_third_party_signature_over_query_params_and_a_digest_member_verifies() -> None:
    """http-message-signatures (an independent RFC 9421 implementation) signs; the gateway's
    parse, coverage and base must verify it."""
    import requests
    from http_message_signatures import (
        ContentDigest,
        HTTPMessageSigner,
        HTTPSignatureKeyResolver,
        algorithms,
    )

    secret = b"a-shared-secret"

    class Resolver(HTTPSignatureKeyResolver):
        def resolve_private_key(self, key_id: str) -> bytes:
            return secret

    body = b'{"text": "hello"}'
    url = "https://api.example.com/v1/x?to=fr&text=caf%C3%A9+au+lait&q=%7E"
    prepared = requests.Request("POST", url, data=body).prepare()
    ContentDigest.add(prepared.headers, body)
    HTTPMessageSigner(signature_algorithm=algorithms.HMAC_SHA256, key_resolver=Resolver()).sign(
        prepared, key_id="gwh_k", created=None, nonce="n-1", label="sig1",
        covered_component_ids=('@method', '@authority', '@path', '"@query-param";name="to"',
                               '"@query-param";name="text"', '"@query-param";name="q"',
                               '"content-digest";key="sha-256"'),
        use_existing_digest=True)
    headers = multi(*prepared.headers.items())
    parsed = parse(headers["Signature-Input"], headers["Signature"])
    query = url.partition("?")[2]
    check_coverage(parsed, has_query=True, has_body=True, query=query)
    request = facts(method="POST", authority="api.example.com", path="/v1/x", query=query,
                    headers=headers)
    assert sig.signature_matches(parsed, request, [secret])
    with pytest.raises(SignatureError):  # `to` twice: no longer one parameter to read
        sig.signature_matches(parsed, replace(request, query=query + "&to=de"), [secret])
    other = replace(request, query="to=de&text=caf%C3%A9+au+lait&q=%7E")
    assert not sig.signature_matches(parsed, other, [secret])


# Issue 17, item 14: which signatures are checked when there are several


def _member(label: str, keyid: str) -> tuple[str, str]:
    return (f'{label}=("@method" "@authority" "@path");created=1;nonce="n-{label}"'
            f';keyid="{keyid}"', f"{label}=:dGVzdA==:")


def _fields(*members: tuple[str, str]) -> tuple[str, str]:
    return ", ".join(m[0] for m in members), ", ".join(m[1] for m in members)


def test_every_gateway_keyid_is_a_candidate_in_order_at_most_four() -> None:
    members = [_member("other", "rsa-key"), *[_member(f"s{i}", f"gwh_{i}") for i in range(6)]]
    found = sig.parse_candidates(*_fields(*members))
    assert [c.label for c in found if isinstance(c, ParsedSignature)] == ["s0", "s1", "s2", "s3"]
    assert sig.MAX_CANDIDATES == 4


def test_without_a_gateway_keyid_the_first_signature_is_the_one() -> None:
    found = sig.parse_candidates(*_fields(_member("a", "k1"), _member("b", "k2")))
    assert [c.keyid for c in found if isinstance(c, ParsedSignature)] == ["k1"]


def test_a_malformed_candidate_is_kept_as_its_reason_beside_good_ones() -> None:
    bad = ('s0=("@method");created="x";nonce="n";keyid="gwh_0"', "s0=:dGVzdA==:")
    found = sig.parse_candidates(*_fields(bad, _member("s1", "gwh_1")))
    assert isinstance(found[0], SignatureError) and found[0].code == "invalid_signature"
    assert isinstance(found[1], ParsedSignature) and found[1].label == "s1"
    with pytest.raises(SignatureError):
        parse(*_fields(bad, _member("s1", "gwh_1")))  # parse() is the first candidate's
