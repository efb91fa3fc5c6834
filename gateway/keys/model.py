"""Account and key records, as stored in Redis (orjson) and as shown to operators."""

from __future__ import annotations

import secrets
import string
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Final

import orjson


class _Unset(Enum):
    UNSET = "unset"


UNSET: Final = _Unset.UNSET  # "leave as it is", where None already means "none"
Unset = _Unset

API_KEY = "api_key"
HMAC_KEY = "hmac"
KEY_TYPES = (API_KEY, HMAC_KEY)
BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase

ACCOUNT_ID_PREFIX = "acc_"
API_KEY_ID_PREFIX = "ak_"
HMAC_KEY_ID_PREFIX = "gwh_"  # SPEC §2: the HMAC token is the key id


def random_base62(length: int) -> str:
    return "".join(secrets.choice(BASE62) for _ in range(length))


def new_account_id() -> str:
    return ACCOUNT_ID_PREFIX + random_base62(16)


def new_key_id(key_type: str) -> str:
    return (HMAC_KEY_ID_PREFIX if key_type == HMAC_KEY else API_KEY_ID_PREFIX) + random_base62(20)


def iso(timestamp: float | None) -> str | None:
    """Epoch seconds -> RFC 3339 UTC ('2026-11-23T05:00:00Z'); None stays None."""
    if timestamp is None:
        return None
    text = datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")
    return text.replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Account:
    id: str
    name: str
    enabled: bool = True
    api_access: bool = True  # the "API calls" right of the source system
    created_at: float = 0.0
    # Shared by the account's keys (SPEC §11; gateway/limits): canonical text, None for none.
    rate: str | None = None  # "100/s", "6000/min", "1000/h"
    burst: int | None = None  # the bucket's size; None: the rate's count
    quota: str | None = None  # "10000/day", "10000/month", "10000" (a total)

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, data: bytes | str) -> Account:
        return cls(**orjson.loads(data))

    def public(self) -> dict[str, Any]:
        out = asdict(self)
        out["created_at"] = iso(self.created_at)
        return out

    def with_changes(self, **changes: Any) -> Account:
        return replace(self, **changes)


@dataclass(frozen=True, slots=True)
class KeyRecord:
    id: str
    type: str
    account_id: str
    scopes: tuple[str, ...]
    created_at: float
    expires_at: float | None = None
    description: str = ""
    # API keys: SHA-256 (hex) of the secret and its last 6 characters, for leak matching.
    secret_hash: str = ""
    secret_tail: str = ""
    # After a reissue with a grace period, the old secret's hash and when it stops working.
    previous_hash: str | None = None
    previous_until: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # Limits of this key alone (SPEC §11; gateway/limits), as on Account.
    rate: str | None = None
    burst: int | None = None
    quota: str | None = None

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, data: bytes | str) -> KeyRecord:
        raw = orjson.loads(data)
        raw["scopes"] = tuple(raw["scopes"])
        return cls(**raw)

    def with_changes(self, **changes: Any) -> KeyRecord:
        return replace(self, **changes)

    def masked_secret(self) -> str:
        return f"gwk_…{self.secret_tail}" if self.type == API_KEY else f"…{self.secret_tail}"

    def public(self, last_used_at: float | None = None) -> dict[str, Any]:
        """What operators may see: never the secret, its hash, or anything to derive them."""
        return {
            "id": self.id,
            "type": self.type,
            "account_id": self.account_id,
            "scopes": list(self.scopes),
            "description": self.description,
            "created_at": iso(self.created_at),
            "expires_at": iso(self.expires_at),
            "last_used_at": iso(last_used_at),
            "masked_secret": self.masked_secret(),
            "previous_secret_valid_until": iso(self.previous_until),
            "rate": self.rate,
            "burst": self.burst,
            "quota": self.quota,
        }
