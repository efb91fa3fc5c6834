"""Where a route reads its API key (issue 19): gateway.auth.locations and credential_from with
locations, as tables of cases."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.auth.credentials import ApiKeyCredential, SignatureCredential, credential_from
from gateway.auth.locations import (
    DEFAULT_LOCATIONS,
    KeyLocation,
    parse_location,
    parse_locations,
    query_values,
    without_parameters,
)
from gateway.config import build_config
from gateway.errors import ConfigError, RequestRefused
from tests.support.keyformat import make_secret

KEY = make_secret("0123456789ABCDEFGHIJabcdefghij")
KONG = "kong-7f3a9c1e5b2d4f6a8c0e"
ALL = parse_locations(["api-key", "bearer", "header:apikey", "header:X-API-Key",
                       "query:apikey"])


def headers(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


@pytest.mark.parametrize(("text", "expected"), [
    ("api-key", KeyLocation("api-key")),
    ("API-Key", KeyLocation("api-key")),
    ("bearer", KeyLocation("bearer")),
    ("header:X-API-Key", KeyLocation("header", "x-api-key")),
    ("header:X_Api_Key", KeyLocation("header", "x-api-key")),  # as the proxy compares names
    ("header: apikey", KeyLocation("header", "apikey")),
    ("query:apikey", KeyLocation("query", "apikey")),
    ("query:api_key", KeyLocation("query", "api_key")),
])
def test_spellings(text: str, expected: KeyLocation) -> None:
    assert parse_location(text) == expected


@pytest.mark.parametrize(("value", "needle"), [
    ("cookie", "is not a key location"),
    ("bearer:x", "bearer takes no name"),
    ("header:", "expected header:<name>"),
    ("header:a b", "expected header:<name>"),
    ("header:Authorization", "the gateway reads or sets Authorization itself"),
    ("header:X-Auth-Key-Id", "reads or sets"),
    ("header:X-Forwarded-For", "reads or sets"),
    ("header:Host", "reads or sets"),
    ("query:", "expected query:<name>"),
    ("query:a&b", "expected query:<name>"),
    (7, "expected a string"),
])
def test_bad_spellings(value: object, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        parse_location(value)


def test_the_default_spelled_out_is_the_default_itself() -> None:
    # The request path takes a shorter way for the default, recognised by identity.
    assert parse_locations(["api-key"]) is DEFAULT_LOCATIONS
    assert parse_locations(["api-key", "api-key"]) is DEFAULT_LOCATIONS


def test_config_route_and_default_locations() -> None:
    route = {"name": "a", "prefix": "/a/", "upstream": "http://127.0.0.1:1"}
    config = build_config({"keys": {"locations": ["bearer"]},
                           "routes": [route, {**route, "name": "b", "prefix": "/b/",
                                              "key_locations": ["header:apikey"]}]}, "<t>")
    assert [r.key_locations for r in config.routes] == [
        (KeyLocation("bearer"),), (KeyLocation("header", "apikey"),)]
    assert build_config({"routes": [route]}, "<t>").routes[0].key_locations is DEFAULT_LOCATIONS
    assert not build_config({}, "<t>").keys.accept_imported
    for bad, field in [({"keys": {"locations": []}}, "keys.locations"),
                       ({"routes": [{**route, "key_locations": ["cookie:x"]}]},
                        "routes[0].key_locations"),
                       ({"keys": {"accept_imported": "yes please"}}, "keys.accept_imported")]:
        with pytest.raises(ConfigError, match=field.replace("[", r"\[").replace("]", r"\]")):
            build_config(bad, "<t>")


@pytest.mark.parametrize(("query", "name", "values", "stripped"), [
    ("apikey=abc", "apikey", ["abc"], ""),
    ("a=1&apikey=abc&b=2", "apikey", ["abc"], "a=1&b=2"),
    ("a=1&b=2", "apikey", [], "a=1&b=2"),
    ("apikeyx=1&xapikey=2", "apikey", [], "apikeyx=1&xapikey=2"),
    ("apikey=a%2Bb&apikey=c", "apikey", ["a+b", "c"], ""),
    ("api%6Bey=abc&z=%41", "apikey", ["abc"], "z=%41"),  # an encoded name is still the name
    ("apikey", "apikey", [""], ""),
    ("a=1&&apikey=x&", "apikey", ["x"], "a=1&&"),  # the rest kept byte for byte
])
def test_query_parameters(query: str, name: str, values: list[str], stripped: str) -> None:
    assert query_values(query, name) == values
    assert without_parameters(query, frozenset({name})) == stripped


@pytest.mark.parametrize(("pairs", "query", "secret"), [
    ((("Authorization", f"Api-Key {KEY}"),), "", KEY),
    ((("Authorization", f"Bearer {KEY}"),), "", KEY),
    ((("Authorization", f"bearer  {KEY} "),), "", KEY),
    ((("apikey", KEY),), "", KEY),
    ((("X-Api-Key", f" {KEY}\t"),), "", KEY),
    ((), f"x=1&apikey={KEY}", KEY),
    ((("X-Other", "1"),), "apikeys=1", None),
    ((), "", None),
])
def test_every_location_is_read(pairs: tuple[tuple[str, str], ...], query: str,
                                secret: str | None) -> None:
    credential = credential_from(headers(*pairs), ALL, query)
    assert credential == (ApiKeyCredential(secret) if secret else None)


@pytest.mark.parametrize(("locations", "pairs", "query", "code", "needle"), [
    (ALL, (("Authorization", f"Api-Key {KEY}"), ("apikey", KEY)), "", "bad_request",
     "an API key in more than one place (Authorization, apikey): send it once"),
    (ALL, (("apikey", KEY),), f"apikey={KEY}", "bad_request",
     "more than one place (apikey, the apikey query parameter)"),
    (ALL, (("apikey", KEY), ("apikey", KEY)), "", "bad_request", "more than one apikey header"),
    (ALL, (), f"apikey={KEY}&apikey={KEY}", "bad_request", "more than one apikey query"),
    (ALL, (("X-API-Key", KEY), ("Signature-Input", "sig1=()"), ("Signature", "sig1=:AA==:")),
     "", "bad_request", "either an API key or a signature, not both (a key in x-api-key)"),
    (ALL, (("Authorization", f"Basic {KEY}"),), "", "invalid_credentials",
     "use Authorization: Api-Key <key> or Authorization: Bearer <key> or a signature"),
    (DEFAULT_LOCATIONS, (("Authorization", f"Bearer {KEY}"),), "", "invalid_credentials",
     "unsupported Authorization scheme: use Authorization: Api-Key <key> or a signature"),
    (parse_locations(["header:apikey"]), (("Authorization", f"Api-Key {KEY}"),), "",
     "invalid_credentials", "use apikey: <key> or a signature"),
    (ALL, (("apikey", "not-a-gateway-key"),), "", "invalid_credentials", "malformed API key"),
    (ALL, (("apikey", KEY[:-1] + "!"),), "", "invalid_credentials", "malformed API key"),
])
def test_refusals(locations: tuple[KeyLocation, ...], pairs: tuple[tuple[str, str], ...],
                  query: str, code: str, needle: str) -> None:
    with pytest.raises(RequestRefused) as refused:
        credential_from(headers(*pairs), locations, query)
    assert refused.value.code == code
    assert needle in refused.value.message


def test_a_header_not_listed_is_not_read() -> None:
    # The default route reads Authorization alone: an apikey header is the upstream's business.
    assert credential_from(headers(("apikey", KEY)), DEFAULT_LOCATIONS, f"apikey={KEY}") is None
    assert isinstance(credential_from(headers(("apikey", KEY), ("Signature-Input", "s=()"),
                                              ("Signature", "s=:AA==:"))),
                      SignatureCredential)


@pytest.mark.parametrize("locations", [DEFAULT_LOCATIONS, ALL])
@pytest.mark.parametrize(("secret", "accepted"), [
    (KONG, True),
    ("12345678", True),
    ("1234567", False),  # too short to be anyone's key
    ("a" * 513, False),
    ("gwk_" + "a" * 36, False),  # a gateway prefix with a bad checksum: mistyped, no lookup
    ("gwh_" + "a" * 36, False),
    ("caf\u00e9-latte-1", False),
])
def test_imported_secrets_only_when_accepted(locations: tuple[KeyLocation, ...], secret: str,
                                             accepted: bool) -> None:
    request = headers(("Authorization", f"Api-Key {secret}"), ("apikey", "")) \
        if locations is DEFAULT_LOCATIONS else headers(("X-API-Key", secret))
    with pytest.raises(RequestRefused, match="malformed API key"):
        credential_from(request, locations)  # off by default: refused by its shape
    if accepted:
        assert credential_from(request, locations,
                               accept_imported=True) == ApiKeyCredential(secret)
    else:
        with pytest.raises(RequestRefused, match="malformed API key"):
            credential_from(request, locations, accept_imported=True)
