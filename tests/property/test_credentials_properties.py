"""Properties of gateway.auth.credentials.credential_from (SPEC §2, §3, §4, §5).

What the code promises: the credential or None, and `RequestRefused` for anything malformed
(`bad_request` for an ambiguous set of credential headers, `invalid_credentials` for a bad
scheme or key), never any other exception. The scheme is `Api-Key`, compared without regard to
(ASCII) case, separated from the key by spaces; surrounding whitespace is ignored.
"""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.auth import apikey
from gateway.auth.credentials import ApiKeyCredential, SignatureCredential, credential_from
from gateway.errors import RequestRefused
from tests.property.strategies import PROPERTY, api_keys
from tests.support.keyformat import make_secret

CREDENTIAL_HEADERS = ("authorization", "signature", "signature-input")


def headers(pairs: list[tuple[str, str]]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


def case_variants(word: str) -> st.SearchStrategy[str]:
    return st.lists(st.booleans(), min_size=len(word), max_size=len(word)).map(
        lambda flags: "".join(c.upper() if up else c.lower() for c, up in zip(word, flags,
                                                                               strict=True)))


schemes = case_variants("api-key")
spaces = st.text(alphabet=" ", min_size=1, max_size=4)
outer = st.text(alphabet=" \t", max_size=3)


@PROPERTY
@given(key=api_keys, scheme=schemes, sep=spaces, before=outer, after=outer,
       name=case_variants("authorization"))
def test_a_well_formed_key_is_accepted_in_any_case_and_spacing(
        key: str, scheme: str, sep: str, before: str, after: str, name: str) -> None:
    credential = credential_from(headers([(name, before + scheme + sep + key + after)]))
    assert credential == ApiKeyCredential(key)
    assert credential.method == "api_key"


@PROPERTY
@given(key=api_keys,
       scheme=st.text(max_size=12).filter(lambda s: s.strip().lower() != "api-key"))
def test_any_other_scheme_is_invalid_credentials(key: str, scheme: str) -> None:
    with pytest.raises(RequestRefused) as refused:
        credential_from(headers([("Authorization", f"{scheme} {key}")]))
    assert refused.value.code == "invalid_credentials"


@PROPERTY
@given(key=api_keys, sep=st.sampled_from(["\t", "", ":", "=", "\u00a0", "_"]))
def test_the_scheme_is_separated_by_a_space_only(key: str, sep: str) -> None:
    with pytest.raises(RequestRefused) as refused:
        credential_from(headers([("Authorization", f"Api-Key{sep}{key}")]))
    assert refused.value.code == "invalid_credentials"


@PROPERTY
@given(key=api_keys, index=st.integers(0, 39), replacement=st.characters())
def test_a_mutated_key_is_refused_before_any_lookup(key: str, index: int,
                                                    replacement: str) -> None:
    assume(replacement != key[index])
    mutated = key[:index] + replacement + key[index + 1:]
    with pytest.raises(RequestRefused) as refused:
        credential_from(headers([("Authorization", f"Api-Key {mutated}")]))
    assert refused.value.code == "invalid_credentials"


header_names = st.one_of(
    st.sampled_from(["Authorization", "AUTHORIZATION", "Signature", "signature",
                     "Signature-Input", "SIGNATURE-INPUT", "X-Api-Key", "Proxy-Authorization",
                     "Host", "X-Auth-Key-Id"]),
    st.text(max_size=10),
)
header_values = st.one_of(
    st.text(),
    api_keys.map(lambda k: "Api-Key " + k),
    st.sampled_from(["Api-Key", "Api-Key ", "Bearer x", 'sig1=("@method");created=1',
                     "sig1=:AAAA:", "\udcff", ""]),
)


@PROPERTY
@given(pairs=st.lists(st.tuples(header_names, header_values), max_size=6))
def test_arbitrary_headers_give_a_credential_none_or_a_documented_refusal(
        pairs: list[tuple[str, str]]) -> None:
    fields = headers(pairs)
    counts = {n: len(fields.getall(n, [])) for n in CREDENTIAL_HEADERS}
    try:
        credential = credential_from(fields)
    except RequestRefused as refused:
        if counts["authorization"] > 1 or (counts["authorization"]
                                           and (counts["signature"] or counts["signature-input"])):
            assert refused.code == "bad_request"
        else:
            assert counts["authorization"] == 1
            assert refused.code == "invalid_credentials"
        return
    if credential is None:
        assert not any(counts.values())
    elif isinstance(credential, ApiKeyCredential):
        assert counts == {"authorization": 1, "signature": 0, "signature-input": 0}
        assert apikey.is_well_formed(credential.secret)
        assert credential.secret in fields["Authorization"]
    else:
        assert counts["authorization"] == 0
        assert credential == SignatureCredential(
            ", ".join(fields.getall("Signature-Input", [])),
            ", ".join(fields.getall("Signature", [])))
        assert credential.method == "hmac"


@PROPERTY
@given(pairs=st.lists(st.tuples(header_names, header_values), max_size=6))
def test_header_name_case_does_not_matter(pairs: list[tuple[str, str]]) -> None:
    def outcome(fields: list[tuple[str, str]]) -> object:
        try:
            return credential_from(headers(fields))
        except RequestRefused as refused:
            return refused.code

    assert outcome(pairs) == outcome([(ascii_swapcase(n), v) for n, v in pairs])


def ascii_swapcase(text: str) -> str:
    return "".join(c.swapcase() if c.isascii() else c for c in text)


# ---------------------------------------------------------------------------------------------
# Found by these tests (gateway/auth/credentials.py, _api_key): the scheme is compared after
# Unicode lower-casing and Unicode whitespace stripping, so a non-ASCII scheme passes. aiohttp
# hands header bytes over decoded as UTF-8, so these reach credential_from as written here.
# RFC 9110 §11.1: the auth-scheme is a token, case-insensitive in ASCII only.
# ---------------------------------------------------------------------------------------------


NON_ASCII_SCHEMES = [
    "Api-\u212aey {key}",  # KELVIN SIGN: "\u212a".lower() == "k"
    "\u00a0Api-Key {key}",  # NO-BREAK SPACE before the scheme
    "\u2028Api-Key {key}",  # LINE SEPARATOR before the scheme
    "\u0130Api-Key {key}",  # not whitespace, refused today: a control case
]


def test_only_the_ascii_scheme_is_accepted() -> None:
    key = make_secret("Z" * 30)
    accepted = []
    for value in NON_ASCII_SCHEMES:
        try:
            credential_from(headers([("Authorization", value.format(key=key))]))
        except RequestRefused as refused:
            assert refused.code == "invalid_credentials"
        else:
            accepted.append(value)
    assert accepted == []
