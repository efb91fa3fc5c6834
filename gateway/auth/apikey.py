"""API key secrets (SPEC §2): `gwk_` + 30 random base62 + 6 base62 of CRC32(random part).

The checksum lets the gateway refuse a mistyped or made-up key without touching the store; the
prefix lets secret scanners find leaked keys. Only the SHA-256 of a secret is ever stored.
"""

from __future__ import annotations

import hashlib
import zlib

from gateway.keys.model import BASE62, random_base62

PREFIX = "gwk_"
RANDOM_LENGTH = 30
CHECKSUM_LENGTH = 6
LENGTH = len(PREFIX) + RANDOM_LENGTH + CHECKSUM_LENGTH  # 40
TAIL_LENGTH = 6
_BASE62_SET = frozenset(BASE62)


def _checksum(random_part: str) -> str:
    value = zlib.crc32(random_part.encode("ascii"))
    digits = []
    for _ in range(CHECKSUM_LENGTH):
        value, digit = divmod(value, 62)
        digits.append(BASE62[digit])
    return "".join(reversed(digits))


def new_secret() -> str:
    random_part = random_base62(RANDOM_LENGTH)
    return PREFIX + random_part + _checksum(random_part)


def is_well_formed(secret: str) -> bool:
    """Prefix, length, alphabet and checksum; no store lookup needed."""
    if len(secret) != LENGTH or not secret.startswith(PREFIX):
        return False
    body = secret[len(PREFIX):]
    if not _BASE62_SET.issuperset(body):
        return False
    return _checksum(body[:RANDOM_LENGTH]) == body[RANDOM_LENGTH:]


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def tail(secret: str) -> str:
    return secret[-TAIL_LENGTH:]
