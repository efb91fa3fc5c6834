"""Table-driven tests for gateway.auth.credentials.credential_from (SPEC §2, §3, §4, §5)."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.auth.credentials import ApiKeyCredential, SignatureCredential, credential_from
from gateway.errors import RequestRefused
from tests.support.keyformat import make_secret

make = make_secret


KEY = make("0123456789ABCDEFGHIJabcdefghij")
KEY2 = make("Z" * 30)
BAD_CHECKSUM = KEY[:-1] + ("1" if KEY[-1] != "1" else "2")
SIG_INPUT = 'sig1=("@method" "@authority" "@path");created=1700000000;nonce="n";keyid="gwh_x"'
SIG = "sig1=:dGVzdA==:"


def headers(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


# ---------------------------------------------------------------------------------------------
# No credential
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pairs",
    [
        (),
        (("Host", "example.com"),),
        (("X-Api-Key", KEY),),
        (("Proxy-Authorization", f"Api-Key {KEY}"),),
        (("Content-Type", "application/json"), ("Accept", "*/*")),
    ],
)
def test_no_credential(pairs: tuple[tuple[str, str], ...]) -> None:
    assert credential_from(headers(*pairs)) is None


# ---------------------------------------------------------------------------------------------
# API keys
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "secret"),
    [
        ("Authorization", f"Api-Key {KEY}", KEY),
        ("Authorization", f"Api-Key {KEY2}", KEY2),
        ("Authorization", f"api-key {KEY}", KEY),
        ("Authorization", f"API-KEY {KEY}", KEY),
        ("Authorization", f"aPi-KeY {KEY}", KEY),
        ("authorization", f"Api-Key {KEY}", KEY),
        ("AUTHORIZATION", f"Api-Key {KEY}", KEY),
        ("Authorization", f"  Api-Key {KEY}", KEY),
        ("Authorization", f"Api-Key {KEY}  ", KEY),
        ("Authorization", f"Api-Key   {KEY}", KEY),
        ("Authorization", f" \tApi-Key {KEY}\t ", KEY),
    ],
)
def test_api_key(name: str, value: str, secret: str) -> None:
    cred = credential_from(headers((name, value), ("Host", "example.com")))
    assert isinstance(cred, ApiKeyCredential)
    assert cred.secret == secret
    assert cred.method == "api_key"


@pytest.mark.parametrize(
    ("label", "value"),
    [
        ("Bearer scheme", f"Bearer {KEY}"),
        ("Bearer token", "Bearer eyJhbGciOiJIUzI1NiJ9.e30.x"),
        ("Basic scheme", "Basic dXNlcjpwYXNz"),
        ("Basic scheme with key", f"Basic {KEY}"),
        ("Digest scheme", 'Digest username="a"'),
        ("ApiKey without dash", f"ApiKey {KEY}"),
        ("Api_Key underscore", f"Api_Key {KEY}"),
        ("bare key, no scheme", KEY),
        ("empty value", ""),
        ("whitespace only", "   "),
        ("scheme only", "Api-Key"),
        ("scheme and space only", "Api-Key "),
        ("malformed key: garbage", "Api-Key nokey"),
        ("too short for an imported key", "Api-Key 1234567"),
        ("imported key with a space", "Api-Key abcd efgh"),
        ("imported key too long", "Api-Key " + "a" * 513),
        ("malformed key: short", f"Api-Key {KEY[:-1]}"),
        ("malformed key: long", f"Api-Key {KEY}0"),
        ("malformed key: wrong prefix", f"Api-Key gwh_{KEY[4:]}"),
        ("malformed key: bad char", f"Api-Key {KEY[:10]}-{KEY[11:]}"),
        ("bad checksum", f"Api-Key {BAD_CHECKSUM}"),
        ("changed random char", f"Api-Key {KEY[:12]}{'1' if KEY[12] != '1' else '2'}{KEY[13:]}"),
        ("two keys", f"Api-Key {KEY} {KEY2}"),
        ("key with trailing junk", f"Api-Key {KEY} x"),
        ("unicode lookalike", f"Api-Key {KEY[:10]}\u0430{KEY[11:]}"),
    ],
)
def test_invalid_credentials(label: str, value: str) -> None:
    with pytest.raises(RequestRefused) as info:
        credential_from(headers(("Authorization", value)))
    assert info.value.code == "invalid_credentials", label
    assert info.value.status == 401
    # SPEC §2: secrets never appear in errors.
    assert KEY not in info.value.message
    assert KEY2 not in info.value.message
    assert BAD_CHECKSUM not in info.value.message


# ---------------------------------------------------------------------------------------------
# Ambiguous requests: bad_request
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("label", "pairs"),
    [
        ("two identical Authorization", (("Authorization", f"Api-Key {KEY}"),
                                         ("Authorization", f"Api-Key {KEY}"))),
        ("two different Authorization", (("Authorization", f"Api-Key {KEY}"),
                                         ("Authorization", f"Api-Key {KEY2}"))),
        ("Authorization in two cases", (("Authorization", f"Api-Key {KEY}"),
                                        ("authorization", f"Api-Key {KEY2}"))),
        ("two invalid Authorization", (("Authorization", "Bearer x"),
                                       ("Authorization", "Basic y"))),
        ("Authorization + Signature", (("Authorization", f"Api-Key {KEY}"),
                                       ("Signature", SIG))),
        ("Authorization + Signature-Input", (("Authorization", f"Api-Key {KEY}"),
                                             ("Signature-Input", SIG_INPUT))),
        ("Authorization + both", (("Authorization", f"Api-Key {KEY}"),
                                  ("Signature-Input", SIG_INPUT), ("Signature", SIG))),
        ("Signature first, then Authorization", (("Signature", SIG),
                                                 ("Authorization", f"Api-Key {KEY}"))),
        ("invalid Authorization + Signature", (("Authorization", "Bearer x"),
                                               ("Signature", SIG))),
    ],
)
def test_bad_request(label: str, pairs: tuple[tuple[str, str], ...]) -> None:
    with pytest.raises(RequestRefused) as info:
        credential_from(headers(*pairs))
    assert info.value.code == "bad_request", label
    assert info.value.status == 400
    assert KEY not in info.value.message
    assert KEY2 not in info.value.message


# ---------------------------------------------------------------------------------------------
# Signatures
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pairs", "signature_input", "signature"),
    [
        ((("Signature-Input", SIG_INPUT), ("Signature", SIG)), SIG_INPUT, SIG),
        ((("signature-input", SIG_INPUT), ("SIGNATURE", SIG)), SIG_INPUT, SIG),
        ((("Signature", SIG),), "", SIG),
        ((("Signature-Input", SIG_INPUT),), SIG_INPUT, ""),
        ((("Signature-Input", SIG_INPUT), ("Signature", SIG), ("Host", "h")), SIG_INPUT, SIG),
    ],
)
def test_signature_credential(
    pairs: tuple[tuple[str, str], ...], signature_input: str, signature: str
) -> None:
    cred = credential_from(headers(*pairs))
    assert isinstance(cred, SignatureCredential)
    assert cred.signature_input == signature_input
    assert cred.signature == signature
    assert cred.method == "hmac"


def test_repeated_signature_headers_are_combined() -> None:
    # RFC 9110 §5.3: repeated fields are one list, joined with ", " in order.
    cred = credential_from(headers(
        ("Signature-Input", 'a=("@method")'), ("Signature-Input", 'b=("@path")'),
        ("Signature", "a=:AA==:"), ("Signature", "b=:BB==:"),
    ))
    assert isinstance(cred, SignatureCredential)
    assert cred.signature_input == 'a=("@method"), b=("@path")'
    assert cred.signature == "a=:AA==:, b=:BB==:"
