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
    # Six base-62 digits of the CRC32, most significant first (a CRC32 is below 62**6);
    # written out rather than looped: this runs on every request that carries an API key.
    value = zlib.crc32(random_part.encode("ascii"))
    digits = BASE62
    return (digits[value // 916_132_832 % 62] + digits[value // 14_776_336 % 62]
            + digits[value // 238_328 % 62] + digits[value // 3_844 % 62]
            + digits[value // 62 % 62] + digits[value % 62])


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


# Imported secrets (issue 19: keys moved from Kong and the like) keep whatever format they
# had. They are looked up like any other, so they must be what a header can carry unchanged:
# visible ASCII, no spaces. The gateway's own prefixes stay reserved: a `gwk_` value that
# fails the checksum is a mistyped gateway key, refused without a lookup as before.
FOREIGN_MIN = 8
FOREIGN_MAX = 512
_RESERVED_PREFIXES = (PREFIX, "gwh_")


def is_foreign(secret: str) -> bool:
    """An imported secret's shape: 8 to 512 visible ASCII characters, not a gateway prefix."""
    return (FOREIGN_MIN <= len(secret) <= FOREIGN_MAX and secret.isascii()
            and secret.isprintable() and " " not in secret
            and not secret.startswith(_RESERVED_PREFIXES))


def is_acceptable(secret: str) -> bool:
    """Worth a lookup: a well-formed gateway key, or the shape of an imported one."""
    return is_well_formed(secret) or is_foreign(secret)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def tail(secret: str) -> str:
    return secret[-TAIL_LENGTH:]
