"""Kong declarative files as import rows: what maps, and a note for everything that does not."""

from __future__ import annotations

import yaml

from gateway.keys.kong import convert

NOW = 1_800_000_000.0

DECK_DUMP = """
_format_version: "3.0"
consumers:
- username: alice
  keyauth_credentials:
  - key: alice-key-000001
  - key: alice-key-000002
  acls:
  - group: vision
  - group: admins
- custom_id: bob-42
  keyauth_credentials:
  - key: bob-key-0000001
  basicauth_credentials:
  - username: bob
    password: x
- username: carol
services:
- name: s
  url: http://example.com
"""

DB_EXPORT = """
_format_version: "3.0"
consumers:
- id: 11111111-1111-1111-1111-111111111111
  username: dave
keyauth_credentials:
- consumer: 11111111-1111-1111-1111-111111111111
  key: dave-key-0000001
  created_at: 1799990000
  ttl: 86400
- consumer: {id: 11111111-1111-1111-1111-111111111111}
  key: dave-key-expired
  created_at: 1700000000
  ttl: 60
- consumer: 99999999-0000-0000-0000-000000000000
  key: orphan-key-00001
acls:
- consumer: {id: 11111111-1111-1111-1111-111111111111}
  group: vision
"""


def test_a_deck_dump_maps_consumers_keys_and_groups() -> None:
    out = convert(yaml.safe_load(DECK_DUMP), {"vision": ("yc.ai.vision.execute",)}, now=NOW)
    assert [(r["account"], r["secret"], r["scopes"]) for r in out.rows] == [
        ("alice", "alice-key-000001", ["yc.ai.vision.execute"]),
        ("alice", "alice-key-000002", ["yc.ai.vision.execute"]),
        ("bob-42", "bob-key-0000001", []),
    ]
    assert "expires_at" not in out.rows[0]
    assert out.notes == [
        "consumer alice: ACL group 'admins' has no scope mapping (--acl-scope GROUP=SCOPE): "
        "not carried over",
        "consumer bob-42: 1 basicauth_credentials not imported (only key-auth keys are)",
        "consumer carol: no key-auth key: no account made",
        "services: 1 not imported (configure routes in the gateway's config file)",
    ]


def test_a_db_export_joins_by_consumer_id_and_keeps_ttls() -> None:
    out = convert(yaml.safe_load(DB_EXPORT), {"vision": ("a.b", "c.*")}, now=NOW)
    assert out.rows == [{"account": "dave", "secret": "dave-key-0000001",
                         "scopes": ["a.b", "c.*"], "expires_at": 1800076400.0,
                         "description": "imported from Kong (consumer dave)"}]
    assert out.notes == [
        "keyauth_credentials: an entry for consumer '99999999-0000-0000-0000-000000000000', "
        "which the file does not hold: skipped",
        "consumer dave: a key whose ttl has run out: skipped",
    ]


def test_not_a_document() -> None:
    assert convert(["a"], {}, now=NOW).notes == [
        "the file is not a Kong declarative document (a mapping)"]
