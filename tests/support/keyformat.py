"""An independent reference for the API key format of SPEC §2, for tests to check the product
against (written from the SPEC, not from gateway/auth/apikey.py)."""

from __future__ import annotations

import zlib

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def b62(value: int, width: int = 6) -> str:
    """Big-endian base62 of `value`, zero-padded (with '0') to `width` digits."""
    digits = ""
    while value:
        value, digit = divmod(value, 62)
        digits = ALPHABET[digit] + digits
    return digits.rjust(width, "0")


def checksum(random_part: str) -> str:
    return b62(zlib.crc32(random_part.encode("ascii")))


def make_secret(random_part: str) -> str:
    """A well-formed secret around the given 30-character random part."""
    return "gwk_" + random_part + checksum(random_part)
