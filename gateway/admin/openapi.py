"""`/admin/openapi.json`: the admin API, described (OpenAPI 3.1). A test validates this document
and drives the API from it with schemathesis, so it cannot drift from `api.py` unnoticed."""

from __future__ import annotations

from typing import Any

_TIME = {"type": "string", "format": "date-time"}
_NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}
_ID = {"type": "string", "pattern": "^[A-Za-z0-9_]{1,64}$"}
_SCOPE = {"type": "string", "pattern": r"^([A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*(\.\*)?|\*)$",
          "maxLength": 200}
_DURATION = {"type": "string", "pattern": r"^[0-9]{1,7}(ms|s|m|h|d)$"}
_PLAIN_TEXT = ("No control characters (U+0000-U+001F, U+007F-U+009F), line or paragraph "
               "separators or bidi controls (such as U+202E): 422 naming the field")


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json_body(schema: dict[str, Any], required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


def _response(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description}
    if schema is not None:
        out["content"] = {"application/json": {"schema": schema}}
    return out


_ERRORS = {
    "400": _response("The body is not a JSON object", _ref("Error")),
    "401": _response("Missing or wrong admin token", _ref("Error")),
    "404": _response("No such account or key, or the admin API is off", _ref("Error")),
    "409": _response("The change contradicts the current state", _ref("Error")),
    "422": _response("Invalid input; the message names the field", _ref("Error")),
    "429": _response("Too many failed token checks from this address; see Retry-After",
                     _ref("Error")),
    "503": _response("The key store is unavailable", _ref("Error")),
}


def _op(summary: str, ok: str, schema: dict[str, Any], *, status: str = "200",
        params: list[dict[str, Any]] | None = None,
        body: dict[str, Any] | None = None, errors: tuple[str, ...] = ("401", "404", "422",
                                                                       "503")) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        # Every operation that checks the token may answer 429 (gateway/admin/guard.py).
        "responses": {status: _response(ok, schema), **{e: _ERRORS[e] for e in errors},
                      **({"429": _ERRORS["429"]} if "401" in errors else {})},
    }
    if params:
        op["parameters"] = params
    if body is not None:
        op["requestBody"] = body
    return op


def _path_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": _ID}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}


_PAGING = [
    _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000},
           "Page size (default 100)"),
    _query("cursor", {"type": "string", "pattern": r"^[0-9]{13}:[A-Za-z0-9_]{1,64}$"},
           "next_cursor of the previous page"),
]


def _page_of(item: str) -> dict[str, Any]:
    return {"type": "object", "required": ["items", "next_cursor"],
            "additionalProperties": False,
            "properties": {"items": {"type": "array", "items": _ref(item)},
                           "next_cursor": {"type": ["string", "null"]}}}


_LIMITS_SHOWN: dict[str, Any] = {
    "rate": {"type": ["string", "null"], "description": "Requests per second, minute or hour "
                                                       "(100/s, 6000/min, 1000/h); null: none"},
    "burst": {"type": ["integer", "null"], "description": "The rate's bucket size; null: the "
                                                          "rate's count"},
    "quota": {"type": ["string", "null"], "description": "Requests per UTC day or month, or in "
                                                        "all (10000/day, 10000/month, 10000)"},
}
_LIMITS_SET: dict[str, Any] = {
    "rate": {"type": ["string", "null"], "pattern": r"^[1-9][0-9]{0,11}/(s|min|h)$",
             "description": "100/s, 6000/min or 1000/h; null removes it"},
    "burst": {"type": ["integer", "null"], "minimum": 1, "maximum": 10**12,
              "description": "null: the rate's count"},
    "quota": {"type": ["string", "null"], "pattern": r"^[1-9][0-9]{0,11}(/(day|month))?$",
              "description": "10000/day, 10000/month or 10000 (a total); null removes it"},
}
SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object", "required": ["error"], "additionalProperties": False,
        "properties": {"error": {
            "type": "object", "required": ["code", "message", "request_id"],
            "additionalProperties": False,
            "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                           "request_id": {"type": "string"},
                           "lines": {"type": "array", "items": {"type": "string"},
                                     "description": "An import's bad lines, by number (the "
                                                    "first 100)"}}}},
    },
    "Account": {
        "type": "object", "additionalProperties": False,
        "required": ["id", "name", "enabled", "api_access", "created_at", "key_count",
                     "rate", "burst", "quota"],
        "properties": {"id": {"type": "string"}, "name": {"type": "string"},
                       "enabled": {"type": "boolean"}, "api_access": {"type": "boolean"},
                       "created_at": _TIME, "key_count": {"type": "integer", "minimum": 0},
                       **_LIMITS_SHOWN},
    },
    "AccountCreate": {
        "type": "object", "additionalProperties": False, "required": ["name"],
        "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 200,
                                "pattern": r"\S", "description": _PLAIN_TEXT},
                       "enabled": {"type": "boolean"}, "api_access": {"type": "boolean"}},
    },
    "AccountUpdate": {
        "type": "object", "additionalProperties": False, "minProperties": 1,
        "properties": {"enabled": {"type": "boolean"}, "api_access": {"type": "boolean"},
                       **_LIMITS_SET},
    },
    "AccountDeleted": {
        "type": "object", "additionalProperties": False,
        "required": ["deleted_account", "deleted_keys"],
        "properties": {"deleted_account": {"type": "string"},
                       "deleted_keys": {"type": "array", "items": {"type": "string"}}},
    },
    "Key": {
        "type": "object", "additionalProperties": False,
        "required": ["id", "type", "account_id", "scopes", "description", "created_at",
                     "expires_at", "last_used_at", "masked_secret",
                     "previous_secret_valid_until", "rate", "burst", "quota"],
        "properties": {
            **_LIMITS_SHOWN,
            "id": {"type": "string"}, "type": {"type": "string", "enum": ["api_key", "hmac"]},
            "account_id": {"type": "string"},
            "scopes": {"type": "array", "items": {"type": "string"}},
            "description": {"type": "string"}, "created_at": _TIME,
            "expires_at": _NULLABLE_TIME, "last_used_at": _NULLABLE_TIME,
            "masked_secret": {"type": "string"},
            "previous_secret_valid_until": _NULLABLE_TIME,
            "quotas": {"type": "array", "description": "Shown for one key (not in listings): "
                                                      "its quotas and its account's, used "
                                                      "and remaining this period",
                       "items": {"type": "object", "additionalProperties": False,
                                 "required": ["policy", "quota", "used", "remaining",
                                              "resets_at"],
                                 "properties": {"policy": {"type": "string"},
                                                "quota": {"type": "string"},
                                                "used": {"type": "integer", "minimum": 0},
                                                "remaining": {"type": "integer",
                                                              "minimum": 0},
                                                "resets_at": _NULLABLE_TIME}}},
        },
    },
    "KeyCreate": {
        "type": "object", "additionalProperties": False, "required": ["account_id"],
        "properties": {
            "account_id": _ID,
            "type": {"type": "string", "enum": ["api_key", "hmac"],
                     "description": "hmac keys need an expiry and a master key"},
            "scopes": {"type": "array", "items": _SCOPE, "maxItems": 50},
            "expires_at": {"type": "string", "format": "date-time",
                           "description": "Must lie in the future"},
            "expires_in": {**_DURATION, "description": "Lifetime such as 30d"},
            "description": {"type": "string", "maxLength": 1000,
                            "description": _PLAIN_TEXT},
            **_LIMITS_SET,
        },
    },
    "KeyUpdate": {
        "type": "object", "additionalProperties": False, "minProperties": 1,
        "description": "Only the expiry, the description and the limits of a key can change; "
                       "any other field is refused with 422 naming it.",
        "properties": {
            "expires_at": {**_NULLABLE_TIME,
                           "description": "A future time, or null for no expiry (API keys "
                                          "only: an HMAC key's expiry can move, not go)"},
            "description": {"type": "string", "maxLength": 1000,
                            "description": _PLAIN_TEXT},
            **_LIMITS_SET,
        },
    },
    "KeyIds": {
        "type": "object", "additionalProperties": False, "required": ["ids"],
        "properties": {"ids": {"type": "array", "items": _ID, "minItems": 1,
                               "maxItems": 1000}},
    },
    "Deleted": {
        "type": "object", "additionalProperties": False, "required": ["deleted"],
        "properties": {"deleted": {"type": "array", "items": {"type": "string"}}},
    },
    "ImportReport": {
        "type": "object", "additionalProperties": False,
        "required": ["created", "unchanged", "conflicting", "accounts_created", "conflicts"],
        "properties": {
            "created": {"type": "integer", "minimum": 0},
            "unchanged": {"type": "integer", "minimum": 0},
            "conflicting": {"type": "integer", "minimum": 0},
            "accounts_created": {"type": "integer", "minimum": 0},
            "conflicts": {"type": "array", "items": {"type": "string"},
                          "description": "The first 100 conflicting lines, by line number"},
            "note": {"type": "string",
                     "description": "Present when some secrets are not gateway keys (or were "
                                    "given by hash) and this gateway's config does not set "
                                    "keys.accept_imported: they are stored but do not "
                                    "authenticate until it does"},
        },
    },
    "Reissue": {
        "type": "object", "additionalProperties": False,
        "properties": {"grace": {**_DURATION, "description": "How long the old secret keeps "
                                 "working (never past the key's expiry); default 0"}},
    },
    "AuditEntry": {
        "type": "object", "required": ["id", "at", "actor", "action", "ids"],
        "properties": {"id": {"type": "string"}, "at": _TIME, "actor": {"type": "string"},
                       "action": {"type": "string"},
                       "ids": {"type": "array", "items": {"type": "string"}}},
    },
}

SCHEMAS["Usage"] = {
    "type": "object", "additionalProperties": False, "required": ["key_id", "step", "usage"],
    "properties": {
        "key_id": {"type": "string"}, "step": {"type": "string", "enum": ["minute", "hour"]},
        "usage": {"type": "array", "items": {
            "type": "object", "additionalProperties": False, "required": ["ok", "refused"],
            "properties": {
                "minute": _TIME, "hour": _TIME,
                "ok": {"type": "integer", "minimum": 0},
                "refused": {"type": "object", "additionalProperties": {"type": "integer"},
                            "description": "By reason: rate_limited, quota_exhausted, "
                                           "key_store_unavailable"}}}},
    },
}
SCHEMAS["Route"] = {
    "type": "object", "additionalProperties": False,
    "required": ["name", "prefix", "scopes", "public", "auth"],
    "properties": {"name": {"type": "string"}, "prefix": {"type": "string"},
                   "scopes": {"type": "array", "items": {"type": "string"}},
                   "public": {"type": "boolean"},
                   "auth": {"type": "array", "items": {"type": "string"}}},
}

SCHEMAS["Routes"] = {
    "type": "object", "additionalProperties": False, "required": ["items", "proxy_port"],
    "properties": {"items": {"type": "array", "items": _ref("Route")},
                   "proxy_port": {"type": ["integer", "null"],
                                  "description": "The port the proxy listens on, when known"}},
}

SCHEMAS["Reloaded"] = {
    "type": "object", "additionalProperties": False,
    "required": ["status", "config_hash", "message"],
    "properties": {"status": {"type": "string", "enum": ["reloaded"]},
                   "config_hash": {"type": "string"}, "message": {"type": "string"}},
}

# A created or reissued key: the record plus its secret, shown this once.
SCHEMAS["KeyWithSecret"] = {
    **SCHEMAS["Key"],
    "required": [*SCHEMAS["Key"]["required"], "secret"],
    "properties": {**SCHEMAS["Key"]["properties"],
                   "secret": {"type": "string", "description": "Shown this once; never again"}},
}


def openapi_document() -> dict[str, Any]:
    key_id = [_path_param("key_id")]
    account_id = [_path_param("account_id")]
    paths = {
        "/admin/accounts": {
            "get": _op("List accounts", "A page of accounts", _page_of("Account"),
                       params=_PAGING, errors=("401", "422", "503")),
            "post": _op("Create an account", "The account", _ref("Account"), status="201",
                        body=_json_body(_ref("AccountCreate")),
                        errors=("400", "401", "422", "503")),
        },
        "/admin/accounts/{account_id}": {
            "get": _op("Get an account", "The account", _ref("Account"), params=account_id,
                       errors=("401", "404", "503")),
            "patch": _op("Enable/disable an account or grant/revoke api_access",
                         "The account", _ref("Account"), params=account_id,
                         body=_json_body(_ref("AccountUpdate")),
                         errors=("400", "401", "404", "422", "503")),
            "delete": _op("Delete an account (refused while it has keys unless "
                          "delete_keys=true)", "What was deleted", _ref("AccountDeleted"),
                          params=[*account_id, _query("delete_keys", {
                              "type": "string", "enum": ["true", "false"]},
                              "Also delete the account's keys")],
                          errors=("401", "404", "409", "422", "503")),
        },
        "/admin/keys": {
            "get": _op("List keys (stable order, cursor pagination)", "A page of keys",
                       _page_of("Key"),
                       params=[_query("account_id", _ID, "Only this account's keys"),
                               *_PAGING], errors=("401", "404", "422", "503")),
            "post": _op("Create a key; the response carries its secret, this once",
                        "The key and its secret", _ref("KeyWithSecret"), status="201",
                        body=_json_body(_ref("KeyCreate")),
                        errors=("400", "401", "404", "409", "422", "503")),
        },
        "/admin/keys/delete": {
            "post": _op("Delete several keys (all or none)", "The deleted ids",
                        _ref("Deleted"), body=_json_body(_ref("KeyIds")),
                        errors=("400", "401", "404", "422", "503")),
        },
        "/admin/keys/import": {
            "post": _op("Import existing API keys: JSON lines, one key a line (account, secret "
                        "or secret_sha256, scopes, expires_at, description); every line is "
                        "checked first (422 lists each bad line by number, nothing written); "
                        "accounts are created by name; a repeated import is all unchanged",
                        "What the import did", _ref("ImportReport"),
                        body={"required": True, "content": {
                            "application/x-ndjson": {"schema": {"type": "string"}}}},
                        errors=("400", "401", "404", "422", "503")),
        },
        "/admin/keys/{key_id}": {
            "get": _op("Get a key (never its secret)", "The key", _ref("Key"),
                       params=key_id, errors=("401", "404", "503")),
            "patch": _op("Change a key's expiry or description", "The key", _ref("Key"),
                         params=key_id, body=_json_body(_ref("KeyUpdate")),
                         errors=("400", "401", "404", "422", "503")),
            "delete": _op("Delete a key", "The deleted id", _ref("Deleted"), params=key_id,
                          errors=("401", "404", "422", "503")),
        },
        "/admin/keys/{key_id}/reissue": {
            "post": _op("Reissue a key: a new secret under the same id, scopes and expiry",
                        "The key and its new secret", _ref("KeyWithSecret"),
                        params=key_id, body=_json_body(_ref("Reissue"), required=False),
                        errors=("400", "401", "404", "422", "503")),
        },
        "/admin/keys/{key_id}/usage": {
            "get": _op("A key's requests and refusals per minute (or hour), the last days "
                       "(kept 7 days); minutes without requests are left out",
                       "The usage", _ref("Usage"),
                       params=[*key_id,
                               _query("days", {"type": "integer", "minimum": 1, "maximum": 7},
                                      "UTC days back, today included (default 1)"),
                               _query("step", {"type": "string", "enum": ["minute", "hour"]},
                                      "minute (default) or hour")],
                       errors=("401", "404", "422", "503")),
        },
        "/admin/reload": {
            "post": _op("Reload the config file: validated first; an invalid file is refused "
                        "(422 invalid_config, with the reason) and the running config stays",
                        "The config now running", _ref("Reloaded"),
                        errors=("401", "404", "422", "503")),
        },
        "/admin/routes": {
            "get": _op("List the configured routes with their scopes (to suggest scopes for "
                       "new keys)", "The routes", _ref("Routes"), errors=("401", "404", "503")),
        },
        "/admin/audit": {
            "get": _op("Read the audit trail, oldest first", "A page of audit entries",
                       _page_of("AuditEntry"),
                       params=[_query("since", _TIME, "Entries at or after this time"),
                               _query("limit", {"type": "integer", "minimum": 1,
                                                "maximum": 1000}, "Page size (default 100)"),
                               _query("cursor", {"type": "string",
                                                 "pattern": r"^[0-9]{1,20}-[0-9]{1,20}$"},
                                      "next_cursor of the previous page")],
                       errors=("401", "422", "503")),
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "API authentication gateway: admin API", "version": "1"},
        "servers": [{"url": "/"}],
        "security": [{"adminToken": []}],
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"adminToken": {"type": "http", "scheme": "bearer",
                                               "description": "GATEWAY_ADMIN_TOKEN, or a "
                                               "token listed in admin.tokens"}},
        },
    }
