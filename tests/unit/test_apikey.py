"""Table-driven tests for gateway.auth.apikey (SPEC §2: the API key secret format).

Expected values are computed here independently of the module under test: our own base62
alphabet, our own big-endian base62 encoding of zlib.crc32, hashlib for SHA-256.
"""

from __future__ import annotations

import hashlib
import re
import zlib

import pytest

from gateway.auth import apikey
from tests.support.keyformat import ALPHABET, b62, checksum

SECRET_RE = re.compile(r"^gwk_[0-9A-Za-z]{36}$")


def make(random_part: str) -> str:
    """A correctly formed secret for a given 30-character random part."""
    assert len(random_part) == 30
    return "gwk_" + random_part + checksum(random_part)


def swap(ch: str) -> str:
    """A different base62 character."""
    return "1" if ch != "1" else "2"


def replace_at(text: str, index: int, ch: str) -> str:
    return text[:index] + ch + text[index + 1:]


# Fixed random parts: the checksums below are computed by our own helpers, not by the module.
R1 = "A" * 30
R2 = "0123456789ABCDEFGHIJabcdefghij"
R3 = "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzz"
R4 = "0" * 30
GOOD = make(R2)


# ---------------------------------------------------------------------------------------------
# Our own helpers (so a wrong expectation cannot hide behind them)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, "000000"),
        (1, "000001"),
        (61, "00000z"),
        (62, "000010"),
        (62 * 62 - 1, "0000zz"),
        (2**32 - 1, "4gfFC3"),  # the largest CRC32 still fits in 6 base62 digits
    ],
)
def test_reference_base62(value: int, expected: str) -> None:
    assert b62(value) == expected


def test_reference_crc32_known_vector() -> None:
    # CRC-32 (IEEE) check value of "123456789" is 0xCBF43926.
    assert zlib.crc32(b"123456789") == 0xCBF43926


# ---------------------------------------------------------------------------------------------
# new_secret
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("attempt", range(25))
def test_new_secret_format(attempt: int) -> None:
    secret = apikey.new_secret()
    assert len(secret) == 40
    assert SECRET_RE.match(secret), secret
    assert secret.startswith("gwk_")
    random_part, check = secret[4:34], secret[34:]
    assert len(random_part) == 30
    assert check == checksum(random_part)
    assert apikey.is_well_formed(secret)


def test_new_secrets_are_unique() -> None:
    secrets = [apikey.new_secret() for _ in range(2000)]
    assert len(set(secrets)) == len(secrets)
    # The random parts themselves differ too (not just, say, a counter in the checksum).
    assert len({s[4:34] for s in secrets}) == len(secrets)


def test_new_secret_uses_the_whole_alphabet() -> None:
    # 2000 * 30 characters drawn from 62: every character appears (probability of missing one is
    # astronomically small); a generator using only hex or only lowercase would fail.
    seen = set("".join(apikey.new_secret()[4:34] for _ in range(2000)))
    assert seen == set(ALPHABET)


# ---------------------------------------------------------------------------------------------
# is_well_formed
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("secret", [make(R1), make(R2), make(R3), make(R4)])
def test_well_formed_fixed_secrets(secret: str) -> None:
    assert len(secret) == 40
    assert apikey.is_well_formed(secret)


@pytest.mark.parametrize(
    ("label", "secret"),
    [
        ("empty", ""),
        ("prefix only", "gwk_"),
        ("no prefix", GOOD[4:]),
        ("wrong prefix gwh_", "gwh_" + GOOD[4:]),
        ("wrong prefix GWK_", "GWK_" + GOOD[4:]),
        ("wrong prefix gwk-", "gwk-" + GOOD[4:]),
        ("wrong prefix sk__", "sk__" + GOOD[4:]),
        ("length 39: last char dropped", GOOD[:-1]),
        ("length 39: random char dropped", GOOD[:10] + GOOD[11:]),
        ("length 41: char appended", GOOD + "0"),
        ("length 41: char inserted", GOOD[:10] + "A" + GOOD[10:]),
        ("length 80: doubled", GOOD + GOOD),
        ("non-base62 '-' in random part", replace_at(GOOD, 10, "-")),
        ("non-base62 '_' in random part", replace_at(GOOD, 10, "_")),
        ("non-base62 '+' in random part", replace_at(GOOD, 10, "+")),
        ("non-base62 '/' in checksum", replace_at(GOOD, 38, "/")),
        ("non-base62 '=' at end", replace_at(GOOD, 39, "=")),
        ("first random char changed", replace_at(GOOD, 4, swap(GOOD[4]))),
        ("middle random char changed", replace_at(GOOD, 20, swap(GOOD[20]))),
        ("last random char changed", replace_at(GOOD, 33, swap(GOOD[33]))),
        ("case of a random char flipped", replace_at(GOOD, 14, GOOD[14].swapcase())),
        ("two random chars transposed", GOOD[:5] + GOOD[6] + GOOD[5] + GOOD[7:]),
        ("first checksum char changed", replace_at(GOOD, 34, swap(GOOD[34]))),
        ("last checksum char changed", replace_at(GOOD, 39, swap(GOOD[39]))),
        ("checksum of another random part", "gwk_" + R2 + checksum(R1)),
        ("checksum all zeros", "gwk_" + R2 + "000000"),
        ("leading space", " " + GOOD),
        ("trailing space", GOOD + " "),
        ("trailing newline", GOOD + "\n"),
        ("space replacing a char", replace_at(GOOD, 20, " ")),
        ("tab replacing a char", replace_at(GOOD, 20, "\t")),
        ("NUL replacing a char", replace_at(GOOD, 20, "\x00")),
        ("Cyrillic a lookalike", replace_at(make("a" * 30), 10, "\u0430")),
        ("Cyrillic A lookalike", replace_at(make("A" * 30), 10, "\u0410")),
        ("Greek O lookalike", replace_at(make("O" * 30), 10, "\u039f")),
        ("fullwidth digit", replace_at(make("1" * 30), 10, "\uff11")),
        ("superscript two", replace_at(make("2" * 30), 10, "\u00b2")),
        ("Arabic-Indic digit", replace_at(make("5" * 30), 10, "\u0665")),
        ("Cyrillic in prefix", "g\u0445k_" + GOOD[4:]),
    ],
)
def test_not_well_formed(label: str, secret: str) -> None:
    assert not apikey.is_well_formed(secret), label


def test_every_single_char_change_in_random_part_is_rejected() -> None:
    # CRC32 detects every single-character substitution.
    for index in range(4, 34):
        for ch in ("0", "z", "Q"):
            if GOOD[index] == ch:
                continue
            assert not apikey.is_well_formed(replace_at(GOOD, index, ch)), (index, ch)


# ---------------------------------------------------------------------------------------------
# hash_secret and tail
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("secret", [make(R1), make(R2), make(R3), make(R4)])
def test_hash_secret_is_sha256_hex(secret: str) -> None:
    expected = hashlib.sha256(secret.encode("ascii")).hexdigest()
    got = apikey.hash_secret(secret)
    assert got == expected
    assert re.fullmatch(r"[0-9a-f]{64}", got)
    assert secret not in got


@pytest.mark.parametrize(
    ("secret", "expected"),
    [
        # SHA-256 known-answer vectors (FIPS 180-2).
        ("", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
        ("abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
    ],
)
def test_hash_secret_known_vectors(secret: str, expected: str) -> None:
    assert apikey.hash_secret(secret) == expected


def test_hash_secret_distinguishes_secrets() -> None:
    assert apikey.hash_secret(make(R1)) != apikey.hash_secret(make(R2))


@pytest.mark.parametrize(
    ("secret", "expected"),
    [
        (make(R2), checksum(R2)),
        ("gwk_" + R1 + "abcdef", "abcdef"),
        ("gwk_" + R3 + "012345", "012345"),
        ("xyz123456", "123456"),
    ],
)
def test_tail_is_last_six(secret: str, expected: str) -> None:
    got = apikey.tail(secret)
    assert got == expected
    assert len(got) == 6
