"""Properties of the API key format (SPEC §2), checked against the independent reference in
tests/support/keyformat.py: `gwk_` + 30 base62 + 6 base62 digits of CRC32(random part)."""

from __future__ import annotations

import hashlib
import string

from hypothesis import assume, given
from hypothesis import strategies as st

from gateway.auth import apikey
from tests.property.strategies import BASE62, PROPERTY, api_keys, random_parts
from tests.support.keyformat import checksum, make_secret

# Characters a mutation may put in: base62, the other printable ASCII, look-alikes and a
# few non-ASCII digits/letters that a careless `isalnum()` check would let through.
REPLACEMENTS = st.one_of(
    st.sampled_from(BASE62),
    st.sampled_from(string.punctuation + " \t\n\x00\x7f"),
    st.sampled_from("\u0660\u0661\uff10\uff21\u0430\u03bf\u212a\u00e9\u00df"),
    st.characters(),
)


def reference_is_well_formed(text: str) -> bool:
    """SPEC §2 read literally, independently of gateway/auth/apikey.py."""
    return (len(text) == 40 and text.startswith("gwk_")
            and all(ch in BASE62 for ch in text[4:])
            and text[34:] == checksum(text[4:34]))


@PROPERTY
@given(random_part=random_parts)
def test_every_reference_key_is_well_formed(random_part: str) -> None:
    key = make_secret(random_part)
    assert len(key) == apikey.LENGTH == 40
    assert apikey.is_well_formed(key)
    assert apikey.tail(key) == key[-6:] == checksum(random_part)
    assert apikey.hash_secret(key) == hashlib.sha256(key.encode("ascii")).hexdigest()


def test_generated_secrets_are_reference_keys() -> None:
    # new_secret() draws from `secrets`, not from hypothesis: sample it plainly.
    for _ in range(300):
        key = apikey.new_secret()
        assert key == make_secret(key[4:34])
        assert apikey.is_well_formed(key)


@PROPERTY
@given(key=api_keys, index=st.integers(0, 39), replacement=REPLACEMENTS)
def test_any_single_substitution_is_rejected(key: str, index: int, replacement: str) -> None:
    assume(key[index] != replacement)
    mutated = key[:index] + replacement + key[index + 1:]
    assert not apikey.is_well_formed(mutated)


@PROPERTY
@given(key=api_keys, index=st.integers(0, 40), extra=REPLACEMENTS)
def test_any_insertion_is_rejected(key: str, index: int, extra: str) -> None:
    assert not apikey.is_well_formed(key[:index] + extra + key[index:])


@PROPERTY
@given(key=api_keys, index=st.integers(0, 39))
def test_any_deletion_is_rejected(key: str, index: int) -> None:
    assert not apikey.is_well_formed(key[:index] + key[index + 1:])


@PROPERTY
@given(key=api_keys, i=st.integers(0, 39), j=st.integers(0, 39))
def test_any_transposition_is_rejected(key: str, i: int, j: int) -> None:
    chars = list(key)
    chars[i], chars[j] = chars[j], chars[i]
    swapped = "".join(chars)
    assume(swapped != key)
    assert not apikey.is_well_formed(swapped)


@PROPERTY
@given(key=api_keys)
def test_case_is_significant(key: str) -> None:
    for changed in (key.upper(), key.lower(), key.swapcase()):
        assert apikey.is_well_formed(changed) == (changed == key)


@PROPERTY
@given(text=st.one_of(
    st.text(),
    st.text(alphabet=BASE62, min_size=36, max_size=36).map(lambda body: "gwk_" + body),
    api_keys,
    api_keys.map(lambda k: k[:-1] + "0"),
))
def test_is_well_formed_agrees_with_the_reference_and_never_raises(text: str) -> None:
    assert apikey.is_well_formed(text) is reference_is_well_formed(text)


@PROPERTY
@given(one=api_keys, other=api_keys)
def test_hash_tells_keys_apart(one: str, other: str) -> None:
    assert (apikey.hash_secret(one) == apikey.hash_secret(other)) == (one == other)
