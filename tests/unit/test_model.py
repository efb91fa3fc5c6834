"""Table-driven tests for gateway.keys.model (SPEC §1, §2, §8): records, ids, public views."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import pytest

from gateway.keys.model import (
    Account,
    KeyRecord,
    iso,
    new_account_id,
    new_key_id,
)

SECRET = "gwk_" + "q" * 30 + "Xy12Zw"
HASH = hashlib.sha256(SECRET.encode()).hexdigest()
OLD_HASH = hashlib.sha256(b"gwk_old").hexdigest()

# ---------------------------------------------------------------------------------------------
# iso
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [
        (None, None),
        (0, "1970-01-01T00:00:00Z"),
        (0.0, "1970-01-01T00:00:00Z"),
        (1, "1970-01-01T00:00:01Z"),
        (1_700_000_000, "2023-11-14T22:13:20Z"),
        (1_700_000_000.9, "2023-11-14T22:13:20Z"),  # whole seconds
        (951_782_400, "2000-02-29T00:00:00Z"),
        (1_798_761_599, "2026-12-31T23:59:59Z"),
        (1_795_410_000, "2026-11-23T05:00:00Z"),  # the docstring's example
        (4_102_444_800, "2100-01-01T00:00:00Z"),
    ],
)
def test_iso(timestamp: float | None, expected: str | None) -> None:
    assert iso(timestamp) == expected


@pytest.mark.parametrize("timestamp", [0, 1_700_000_000, 1_795_410_000.5])
def test_iso_is_rfc3339_utc_z(timestamp: float) -> None:
    text = iso(timestamp)
    assert text is not None
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", text)
    assert "+00:00" not in text


# ---------------------------------------------------------------------------------------------
# ids
# ---------------------------------------------------------------------------------------------

SAFE_ID = r"[0-9A-Za-z]+"


@pytest.mark.parametrize(
    ("make", "prefix"),
    [
        (lambda: new_key_id("api_key"), "ak_"),
        (lambda: new_key_id("hmac"), "gwh_"),
        (new_account_id, "acc_"),
    ],
    ids=["api_key", "hmac", "account"],
)
def test_id_prefixes_and_uniqueness(make: Any, prefix: str) -> None:
    ids = [make() for _ in range(500)]
    for value in ids:
        assert value.startswith(prefix)
        rest = value[len(prefix):]
        # Opaque, safe to log (SPEC §2): no separators, quotes or whitespace; enough entropy.
        assert re.fullmatch(SAFE_ID, rest), value
        assert len(rest) >= 12
    assert len(set(ids)) == len(ids)


@pytest.mark.parametrize(
    ("key_type", "prefix", "not_prefix"),
    [("api_key", "ak_", "gwh_"), ("hmac", "gwh_", "ak_")],
)
def test_key_id_prefix_depends_on_type(key_type: str, prefix: str, not_prefix: str) -> None:
    value = new_key_id(key_type)
    assert value.startswith(prefix)
    assert not value.startswith(not_prefix)


# ---------------------------------------------------------------------------------------------
# JSON round trips
# ---------------------------------------------------------------------------------------------

ACCOUNTS = [
    Account(id="acc_1", name="svc"),
    Account(id="acc_2", name="disabled", enabled=False, api_access=True, created_at=1.5),
    Account(id="acc_3", name="no access", enabled=True, api_access=False,
            created_at=1_700_000_000.123456),
    Account(id="acc_4", name="Сервисный аккаунт \u2603 \"quoted\"", enabled=False,
            api_access=False, created_at=1_800_000_000.0),
]

KEYS = [
    KeyRecord(id="ak_1", type="api_key", account_id="acc_1", scopes=(), created_at=0.0),
    KeyRecord(id="ak_2", type="api_key", account_id="acc_1",
              scopes=("yc.ai.vision.execute", "yc.ai.*"), created_at=1_700_000_000.25,
              expires_at=1_800_000_000.0, description="vision key \u00e9\n\"x\"",
              secret_hash=HASH, secret_tail=SECRET[-6:]),
    KeyRecord(id="ak_3", type="api_key", account_id="acc_2", scopes=("*",),
              created_at=1_700_000_000.0, secret_hash=HASH, secret_tail=SECRET[-6:],
              previous_hash=OLD_HASH, previous_until=1_700_000_600.0),
    KeyRecord(id="gwh_4", type="hmac", account_id="acc_3", scopes=("yc.ydb.tables.manage",),
              created_at=1_700_000_000.0, expires_at=1_731_536_000.0,
              extra={"ciphertext": "AAAA", "nonce": "BBBB", "n": 1, "nested": {"a": [1, 2]}}),
]


@pytest.mark.parametrize("account", ACCOUNTS, ids=[a.id for a in ACCOUNTS])
def test_account_json_round_trip(account: Account) -> None:
    data = account.to_json()
    assert isinstance(data, bytes)
    back = Account.from_json(data)
    assert back == account
    assert Account.from_json(data.decode()) == account
    # It is plain JSON holding the fields.
    raw = json.loads(data)
    assert raw["id"] == account.id
    assert raw["name"] == account.name
    assert raw["enabled"] is account.enabled
    assert raw["api_access"] is account.api_access


@pytest.mark.parametrize("key", KEYS, ids=[k.id for k in KEYS])
def test_key_json_round_trip(key: KeyRecord) -> None:
    data = key.to_json()
    assert isinstance(data, bytes)
    back = KeyRecord.from_json(data)
    assert back == key
    assert isinstance(back.scopes, tuple)
    assert KeyRecord.from_json(data.decode()) == key
    raw = json.loads(data)
    assert raw["id"] == key.id
    assert raw["scopes"] == list(key.scopes)
    assert raw["expires_at"] == key.expires_at


# ---------------------------------------------------------------------------------------------
# public views
# ---------------------------------------------------------------------------------------------


def _walk(value: Any) -> list[tuple[str, Any]]:
    """Every (key, value) pair in a nested structure, and every leaf under key ''."""
    out: list[tuple[str, Any]] = []
    if isinstance(value, dict):
        for k, v in value.items():
            out.append((str(k), v))
            out.extend(_walk(v))
    elif isinstance(value, list | tuple):
        for item in value:
            out.extend(_walk(item))
    else:
        out.append(("", value))
    return out


@pytest.mark.parametrize("key", KEYS, ids=[k.id for k in KEYS])
@pytest.mark.parametrize("last_used_at", [None, 1_700_000_100.0])
def test_key_public_never_reveals_secret_material(key: KeyRecord,
                                                  last_used_at: float | None) -> None:
    view = key.public(last_used_at)
    text = json.dumps(view)
    for forbidden in (HASH, OLD_HASH, SECRET, "AAAA", "BBBB"):
        assert forbidden not in text
    for name, _ in _walk(view):
        assert "hash" not in name.lower(), name
        assert "ciphertext" not in name.lower(), name
    assert "extra" not in view
    assert "secret_hash" not in view
    assert "previous_hash" not in view


@pytest.mark.parametrize(
    ("key", "last_used_at", "expected"),
    [
        (KEYS[0], None, {"id": "ak_1", "type": "api_key", "account_id": "acc_1", "scopes": [],
                         "description": "", "created_at": "1970-01-01T00:00:00Z",
                         "expires_at": None, "last_used_at": None}),
        (KEYS[1], 1_700_000_100.0,
         {"id": "ak_2", "type": "api_key", "account_id": "acc_1",
          "scopes": ["yc.ai.vision.execute", "yc.ai.*"], "description": "vision key \u00e9\n\"x\"",
          "created_at": "2023-11-14T22:13:20Z", "expires_at": "2027-01-15T08:00:00Z",
          "last_used_at": "2023-11-14T22:15:00Z"}),
        (KEYS[3], None,
         {"id": "gwh_4", "type": "hmac", "account_id": "acc_3",
          "scopes": ["yc.ydb.tables.manage"], "expires_at": "2024-11-13T22:13:20Z"}),
    ],
)
def test_key_public_fields(key: KeyRecord, last_used_at: float | None,
                           expected: dict[str, Any]) -> None:
    view = key.public(last_used_at)
    for name, value in expected.items():
        assert view[name] == value, name
    # JSON-serialisable as it stands (admin API, `keys show --json`).
    json.dumps(view)


@pytest.mark.parametrize(
    ("key", "masked_contains", "tail"),
    [
        (KEYS[1], "gwk_", SECRET[-6:]),
        (KEYS[2], "gwk_", SECRET[-6:]),
    ],
)
def test_api_key_public_mask_shows_only_the_tail(key: KeyRecord, masked_contains: str,
                                                 tail: str) -> None:
    masked = key.public()["masked_secret"]
    assert masked.startswith(masked_contains)
    assert masked.endswith(tail)
    # Only the prefix and the last 6 characters of the secret (SPEC §1: "masked").
    assert SECRET[4:34] not in masked
    assert SECRET[-7:] not in masked


@pytest.mark.parametrize("account", ACCOUNTS, ids=[a.id for a in ACCOUNTS])
def test_account_public(account: Account) -> None:
    view = account.public()
    assert view["id"] == account.id
    assert view["name"] == account.name
    assert view["enabled"] is account.enabled
    assert view["api_access"] is account.api_access
    assert view["created_at"] == iso(account.created_at)
    for name, _ in _walk(view):
        assert "hash" not in name.lower()
    json.dumps(view)


@pytest.mark.parametrize(
    ("created_at", "expected"),
    [(0.0, "1970-01-01T00:00:00Z"), (1_700_000_000.0, "2023-11-14T22:13:20Z")],
)
def test_account_public_created_at_is_iso(created_at: float, expected: str) -> None:
    assert Account(id="acc_x", name="x", created_at=created_at).public()["created_at"] == expected
