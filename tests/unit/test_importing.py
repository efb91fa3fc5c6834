"""The import parser: a table of lines and what each becomes, or the error naming its line."""

from __future__ import annotations

import hashlib

import orjson
import pytest

from gateway.auth import apikey
from gateway.keys.importing import BadImport, parse_expiry, parse_line, parse_lines

NOW = 1_800_000_000.0  # 2027-01-15
HEX = "ab" * 32


def line(**fields: object) -> bytes:
    return orjson.dumps({"account": "acme", **fields})


@pytest.mark.parametrize(("fields", "expected"), [
    ({"secret": "kong-key-1"}, {"secret_hash": hashlib.sha256(b"kong-key-1").hexdigest(),
                                "secret_tail": "-key-1"}),
    ({"secret_sha256": HEX.upper()}, {"secret_hash": HEX, "secret_tail": ""}),
    ({"secret": "x" * 40, "scopes": ["yc.ai.*", "yc.ai.*", "a.b"]},
     {"scopes": ("yc.ai.*", "a.b")}),
    ({"secret": "s3cret!!", "expires_at": "2027-06-01T00:00:00Z"},
     {"expires_at": 1811808000.0}),
    ({"secret": "s3cret!!", "expires_at": "2027-06-01T02:00:00+02:00"},
     {"expires_at": 1811808000.0}),
    ({"secret": "s3cret!!", "expires_at": 1811808000}, {"expires_at": 1811808000.0}),
    ({"secret": "s3cret!!", "expires_at": None}, {"expires_at": None}),
    ({"secret": "s3cret!!", "description": "from Kong"}, {"description": "from Kong"}),
])
def test_good_lines(fields: dict[str, object], expected: dict[str, object]) -> None:
    parsed = parse_line(line(**fields), 3, now=NOW)
    assert parsed.line == 3 and parsed.account == "acme"
    for name, value in expected.items():
        assert getattr(parsed, name) == value


def test_the_stored_hash_is_what_the_proxy_computes_for_the_secret() -> None:
    secret = apikey.new_secret()
    assert parse_line(line(secret=secret), 1, now=NOW).secret_hash == apikey.hash_secret(secret)


def test_missing_scopes_take_the_default() -> None:
    assert parse_line(line(secret="abcdefgh"), 1, now=NOW,
                      default_scopes=("a.b",)).scopes == ("a.b",)
    assert parse_line(line(secret="abcdefgh", scopes=[]), 1, now=NOW,
                      default_scopes=("a.b",)).scopes == ()


@pytest.mark.parametrize(("text", "needle"), [
    (b"{not json", "not JSON"),
    (b"[1, 2]", "not a JSON object"),
    (line(secret="abcdefgh", colour="red"), "unknown field(s) colour"),
    (orjson.dumps({"secret": "abcdefgh"}), "account: must be"),
    (line(), "give exactly one of secret and secret_sha256"),
    (line(secret="abcdefgh", secret_sha256=HEX), "give exactly one"),
    (line(secret_sha256="abc"), "secret_sha256: not 64 hex digits"),
    (line(secret_sha256="g" * 64), "secret_sha256: not 64 hex digits"),
    (line(secret=""), "secret: must be a string of 8 to 512"),
    (line(secret="short"), "secret: must be a string of 8 to 512"),
    (line(secret="gwh_" + "a" * 36), "secret: starts with a gateway prefix"),
    (line(secret=12345), "secret: must be a string"),
    (line(secret="has spaces"), "secret: must be visible ASCII"),
    (line(secret="caf\u00e9-latte"), "secret: must be visible ASCII"),
    (line(secret="gwk_" + "a" * 36), "secret: starts with a gateway prefix"),
    (line(secret="abcdefgh", scopes="a.b"), "scopes: must be a list"),
    (line(secret="abcdefgh", scopes=["not a scope"]), "scopes: 'not a scope' is not a scope"),
    (line(secret="abcdefgh", expires_at="tomorrow"), "expires_at: 'tomorrow' is not an ISO 8601"),
    (line(secret="abcdefgh", expires_at="2027-06-01T00:00:00"), "expires_at: '2027-06-01T00:00:00' "
                                                           "has no time zone"),
    (line(secret="abcdefgh", expires_at="2020-01-01T00:00:00Z"), "expires_at: is in the past"),
    (line(secret="abcdefgh", expires_at=True), "expires_at: not a time"),
    (line(secret="abcdefgh", expires_at=1e15), "expires_at: epoch seconds out of range"),
    (line(secret="abcdefgh", description=7), "description: must be a string"),
    (line(secret="abcdefgh", description="a\x1b[31m"), "description: must not contain control"),
    (orjson.dumps({"account": "a\u202e", "secret": "abcdefgh"}), "account: must not contain"),
])
def test_bad_lines_name_line_and_field(text: bytes, needle: str) -> None:
    with pytest.raises(BadImport) as caught:
        parse_lines([line(secret="good-one"), b"", text], now=NOW)
    assert caught.value.problems == [caught.value.problems[0]]
    assert caught.value.problems[0].startswith("line 3: ")
    assert needle in caught.value.problems[0]


def test_every_bad_line_is_reported_and_duplicates_name_the_first() -> None:
    lines = [line(secret="one-secret"), line(secret_sha256="z"), b"  ",
             line(secret_sha256=hashlib.sha256(b"one-secret").hexdigest()), b"{"]
    with pytest.raises(BadImport) as caught:
        parse_lines(lines, now=NOW)
    assert caught.value.problems == [
        "line 2: secret_sha256: not 64 hex digits",
        "line 4: the same secret as line 1",
        caught.value.problems[2]]
    assert caught.value.problems[2].startswith("line 5: not JSON")
    assert "3 line(s) cannot be imported, nothing was written" in str(caught.value)


def test_many_bad_lines_are_counted_past_the_first_hundred() -> None:
    with pytest.raises(BadImport) as caught:
        parse_lines([b"{"] * 250, now=NOW)
    assert len(caught.value.problems) == 100 and caught.value.total == 250
    assert str(caught.value).endswith("... and 150 more")


def test_blank_lines_are_skipped_and_numbers_kept() -> None:
    parsed = parse_lines([b"\n", line(secret="abcdefgh") + b"\n", "   "], now=NOW)
    assert [p.line for p in parsed] == [2]


def test_expiry_formats() -> None:
    assert parse_expiry("2027-06-01T00:00:00.500Z", NOW) == 1811808000.5
    assert parse_expiry(1811808000.25, NOW) == 1811808000.25
