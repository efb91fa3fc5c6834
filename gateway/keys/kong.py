"""Kong key-auth data as import lines (issue 19): a `deck dump` file (credentials nested under
their consumers) or a `kong config db_export` file (top-level lists that name their consumer
by id) becomes the JSON-line rows of importing.py, plus a note for everything not carried
over. Pure: the caller parses the YAML and writes the rows.

    consumer                 -> account (its username, else custom_id, else id)
    keyauth_credentials.key  -> key by plaintext secret; ttl (seconds after created_at) ->
                                expires_at
    acls.group               -> scopes, through the operator's mapping (group -> scopes)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Other credential kinds Kong keeps per consumer: reported, never imported.
OTHER_CREDENTIALS = ("basicauth_credentials", "hmacauth_credentials", "jwt_secrets",
                     "oauth2_credentials", "mtls_auth_credentials")


@dataclass(slots=True)
class KongImport:
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _consumer_ref(value: object) -> str | None:
    """A credential's consumer: an id or username string, or {"id": ...} / {"username": ...}."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        for name in ("id", "username"):
            if isinstance(value.get(name), str):
                return str(value[name])
    return None


def _name(consumer: Mapping[str, Any]) -> str | None:
    for name in ("username", "custom_id", "id"):
        if isinstance(consumer.get(name), str) and consumer[name].strip():
            return str(consumer[name])
    return None


def _list(value: object) -> list[Any]:
    return list(value) if isinstance(value, list) else []


def convert(document: object, acl_scopes: Mapping[str, tuple[str, ...]], *,
            now: float) -> KongImport:
    """`acl_scopes`: ACL group -> the scopes its members' keys get. A group without a mapping
    adds nothing, and is noted once per consumer."""
    out = KongImport()
    if not isinstance(document, Mapping):
        out.notes.append("the file is not a Kong declarative document (a mapping)")
        return out
    consumers = [c for c in _list(document.get("consumers")) if isinstance(c, Mapping)]
    by_ref: dict[str, Mapping[str, Any]] = {}
    for consumer in consumers:
        for attribute in ("id", "username", "custom_id"):
            if isinstance(consumer.get(attribute), str):
                by_ref.setdefault(consumer[attribute], consumer)
    keys: dict[int, list[Mapping[str, Any]]] = {id(c): _list(c.get("keyauth_credentials"))
                                                for c in consumers}
    groups: dict[int, list[Any]] = {id(c): _list(c.get("acls")) for c in consumers}
    # db_export: top-level lists naming their consumer.
    for kind, into in (("keyauth_credentials", keys), ("acls", groups)):
        for entry in _list(document.get(kind)):
            ref = _consumer_ref(entry.get("consumer")) if isinstance(entry, Mapping) else None
            owner = by_ref.get(ref) if ref is not None else None
            if owner is None:
                out.notes.append(f"{kind}: an entry for consumer {ref!r}, which the file "
                                 "does not hold: skipped")
                continue
            into[id(owner)].append(entry)
    for consumer in consumers:
        name = _name(consumer)
        if name is None:
            out.notes.append("a consumer with no username, custom_id or id: skipped")
            continue
        scopes: list[str] = []
        for acl in groups[id(consumer)]:
            group = acl.get("group") if isinstance(acl, Mapping) else None
            if not isinstance(group, str):
                continue
            if group in acl_scopes:
                scopes.extend(acl_scopes[group])
            else:
                out.notes.append(f"consumer {name}: ACL group {group!r} has no scope mapping "
                                 "(--acl-scope GROUP=SCOPE): not carried over")
        for kind in OTHER_CREDENTIALS:
            count = len(_list(consumer.get(kind)))
            if count:
                out.notes.append(f"consumer {name}: {count} {kind} not imported (only "
                                 "key-auth keys are)")
        credentials = keys[id(consumer)]
        if not credentials:
            out.notes.append(f"consumer {name}: no key-auth key: no account made")
        for credential in credentials:
            key = credential.get("key") if isinstance(credential, Mapping) else None
            if not isinstance(key, str):
                out.notes.append(f"consumer {name}: a key-auth credential without a key: "
                                 "skipped")
                continue
            row: dict[str, Any] = {"account": name, "secret": key,
                                   "scopes": list(dict.fromkeys(scopes)),
                                   "description": f"imported from Kong (consumer {name})"}
            ttl, created = credential.get("ttl"), credential.get("created_at")
            if isinstance(ttl, int | float) and ttl > 0:
                if not isinstance(created, int | float):
                    out.notes.append(f"consumer {name}: a key with a ttl but no created_at: "
                                     "imported without an expiry")
                elif created + ttl <= now:
                    out.notes.append(f"consumer {name}: a key whose ttl has run out: skipped")
                    continue
                else:
                    row["expires_at"] = float(created + ttl)
            out.rows.append(row)
    for kind in ("services", "routes", "plugins", "upstreams", "certificates"):
        count = len(_list(document.get(kind)))
        if count:
            out.notes.append(f"{kind}: {count} not imported (configure routes in the gateway's "
                             "config file)")
    return out
