"""Table-driven tests for gateway.auth.decide (SPEC §1, §3, §5): scopes and the decision order."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any

import pytest

from gateway.auth.decide import Allow, Deny, decide, missing_scopes, scope_covers
from gateway.config import RouteConfig
from gateway.keys.model import Account, KeyRecord

# ---------------------------------------------------------------------------------------------
# scope_covers
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("granted", "required", "covers"),
    [
        # Exact match.
        ("yc.ai.vision.execute", "yc.ai.vision.execute", True),
        ("yc.serverless.functions.invoke", "yc.serverless.functions.invoke", True),
        ("yc.ai.vision.execute", "yc.ai.translate.execute", False),
        ("yc.ai.vision.execute", "yc.ai.vision", False),
        ("yc.ai.vision", "yc.ai.vision.execute", False),  # no wildcard: no prefix match
        ("yc.ai.vision.execute", "yc.ai.vision.execute.more", False),
        # Case matters (scope names are identifiers).
        ("yc.ai.speechkitStt.execute", "yc.ai.speechkitStt.execute", True),
        ("yc.ai.speechkitstt.execute", "yc.ai.speechkitStt.execute", False),
        # Prefix wildcards.
        ("yc.ai.*", "yc.ai.vision.execute", True),
        ("yc.ai.*", "yc.ai.speechkitTts.execute", True),
        ("yc.ai.*", "yc.ai.x", True),
        ("yc.*", "yc.ydb.tables.manage", True),
        ("yc.ai.vision.*", "yc.ai.vision.execute", True),
        ("yc.ai.*", "yc.ai", False),  # the prefix itself is not "under" it
        ("yc.ai.*", "yc.aix.foo", False),  # no partial-segment match
        ("yc.ai.*", "yc.aix", False),
        ("yc.ai.*", "yc.ai2.vision.execute", False),
        ("yc.ai.*", "yc.ydb.tables.manage", False),
        ("yc.ai.*", "xyc.ai.vision.execute", False),
        ("yc.ai.vision.*", "yc.ai.translate.execute", False),
        ("yc.ai.vision.*", "yc.ai.visionx.execute", False),
        ("yc.*", "ycx.ai", False),
        ("yc.*", "yc", False),
        # A wildcard only counts at the end, as `.*`.
        ("yc.ai*", "yc.ai.vision.execute", False),
        ("yc.ai*", "yc.aix", False),
        ("yc.ai.", "yc.ai.vision.execute", False),
        # `*` covers everything.
        ("*", "yc.ai.vision.execute", True),
        ("*", "yc.ydb.topics.manage", True),
        ("*", "anything", True),
        # A required scope that is itself a wildcard is covered only by an equal or wider grant.
        ("yc.ai.*", "yc.ai.*", True),
        ("yc.ai.vision.execute", "yc.ai.*", False),
        ("yc.ai.vision.execute", "*", False),
    ],
)
def test_scope_covers(granted: str, required: str, covers: bool) -> None:
    assert scope_covers(granted, required) is covers


@pytest.mark.parametrize(
    ("granted", "required", "missing"),
    [
        ((), (), []),
        (("yc.ai.vision.execute",), (), []),
        ((), ("yc.ai.vision.execute",), ["yc.ai.vision.execute"]),
        (("yc.ai.vision.execute",), ("yc.ai.vision.execute",), []),
        (("yc.ai.translate.execute",), ("yc.ai.vision.execute",), ["yc.ai.vision.execute"]),
        (("yc.ai.*",), ("yc.ai.vision.execute", "yc.ai.translate.execute"), []),
        (("yc.ai.*",), ("yc.ai.vision.execute", "yc.ydb.tables.manage"),
         ["yc.ydb.tables.manage"]),
        (("yc.ai.*",), ("yc.ai",), ["yc.ai"]),
        (("yc.ai.*",), ("yc.aix.foo",), ["yc.aix.foo"]),
        (("*",), ("yc.ai.vision.execute", "yc.ydb.topics.manage"), []),
        # Every required scope must be held; the missing ones keep the route's order.
        (("yc.ai.vision.execute",),
         ("yc.ydb.topics.manage", "yc.ai.vision.execute", "yc.ydb.tables.manage"),
         ["yc.ydb.topics.manage", "yc.ydb.tables.manage"]),
        (("yc.ydb.tables.manage", "yc.ai.vision.execute"),
         ("yc.ai.vision.execute", "yc.ydb.tables.manage"), []),
        (("yc.ai.vision", "yc.ai"), ("yc.ai.vision.execute",), ["yc.ai.vision.execute"]),
    ],
)
def test_missing_scopes(
    granted: tuple[str, ...], required: tuple[str, ...], missing: list[str]
) -> None:
    assert list(missing_scopes(granted, required)) == missing


def test_missing_scopes_accepts_one_shot_iterables() -> None:
    granted = iter(["yc.ai.vision.execute", "yc.ydb.tables.manage"])
    required = ["yc.ydb.tables.manage", "yc.ai.vision.execute", "yc.ydb.topics.manage"]
    assert list(missing_scopes(granted, required)) == ["yc.ydb.topics.manage"]


# ---------------------------------------------------------------------------------------------
# decide
# ---------------------------------------------------------------------------------------------

NOW = 1_800_000_000.0
SECRET = "gwk_" + "A" * 36  # the decision only ever sees hashes; the format is not its concern
OLD_SECRET = "gwk_" + "B" * 36
OTHER_SECRET = "gwk_" + "C" * 36


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("ascii")).hexdigest()


HASH, OLD_HASH, OTHER_HASH = sha(SECRET), sha(OLD_SECRET), sha(OTHER_SECRET)

ROUTE = RouteConfig(name="vision", prefix="/vision", upstream="http://127.0.0.1:9103",
                    scopes=("yc.ai.vision.execute",))
ROUTE_TWO_SCOPES = replace(ROUTE, name="multi",
                           scopes=("yc.ai.vision.execute", "yc.ydb.tables.manage",
                                   "yc.ydb.topics.manage"))
ROUTE_NO_SCOPES = replace(ROUTE, name="open", scopes=())
ROUTE_HMAC_ONLY = replace(ROUTE, name="hmac-only", auth=("hmac",))
ROUTE_APIKEY_ONLY = replace(ROUTE, name="apikey-only", auth=("api_key",))

ACCOUNT = Account(id="acc_test", name="svc", enabled=True, api_access=True, created_at=NOW - 1e5)
DISABLED = replace(ACCOUNT, enabled=False)
NO_ACCESS = replace(ACCOUNT, api_access=False)
DISABLED_NO_ACCESS = replace(ACCOUNT, enabled=False, api_access=False)

API_KEY = KeyRecord(id="ak_test", type="api_key", account_id="acc_test",
                    scopes=("yc.ai.vision.execute",), created_at=NOW - 1000,
                    secret_hash=HASH, secret_tail=SECRET[-6:])
HMAC_KEY = KeyRecord(id="gwh_test", type="hmac", account_id="acc_test",
                     scopes=("yc.ai.vision.execute",), created_at=NOW - 1000)
EXPIRED = replace(API_KEY, expires_at=NOW - 1)
EXPIRES_NOW = replace(API_KEY, expires_at=NOW)
EXPIRES_SOON = replace(API_KEY, expires_at=NOW + 0.001)
REISSUED = replace(API_KEY, secret_hash=HASH, previous_hash=OLD_HASH, previous_until=NOW + 60)
GRACE_OVER = replace(REISSUED, previous_until=NOW - 1)
GRACE_ENDS_NOW = replace(REISSUED, previous_until=NOW)
NO_SCOPES = replace(API_KEY, scopes=())
WRONG_SCOPE = replace(API_KEY, scopes=("yc.ai.translate.execute",))

# Expected outcome per row: "allow" or the SPEC §5 error code.
ALLOW = "allow"

DECIDE_CASES: list[tuple[str, dict[str, Any], str]] = [
    # -- everything good -----------------------------------------------------------------------
    ("api key, all good", dict(key=API_KEY), ALLOW),
    ("hmac key, all good", dict(method="hmac", key=HMAC_KEY, presented_hash=None), ALLOW),
    ("api key on api-key-only route", dict(route=ROUTE_APIKEY_ONLY), ALLOW),
    ("hmac key on hmac-only route",
     dict(method="hmac", route=ROUTE_HMAC_ONLY, key=HMAC_KEY, presented_hash=None), ALLOW),
    ("route without scopes, key without scopes", dict(route=ROUTE_NO_SCOPES, key=NO_SCOPES),
     ALLOW),
    ("not yet expired", dict(key=EXPIRES_SOON), ALLOW),
    ("wildcard scope", dict(key=replace(API_KEY, scopes=("yc.ai.*",))), ALLOW),
    ("star scope", dict(route=ROUTE_TWO_SCOPES, key=replace(API_KEY, scopes=("*",))), ALLOW),
    ("several scopes, all held",
     dict(route=ROUTE_TWO_SCOPES,
          key=replace(API_KEY, scopes=("yc.ydb.*", "yc.ai.vision.execute"))), ALLOW),
    ("current secret after reissue", dict(key=REISSUED), ALLOW),
    ("previous secret within grace", dict(key=REISSUED, presented_hash=OLD_HASH), ALLOW),
    # -- 1. the route must accept the credential kind --------------------------------------------
    ("api key on hmac-only route", dict(route=ROUTE_HMAC_ONLY), "invalid_credentials"),
    ("hmac key on api-key-only route",
     dict(method="hmac", route=ROUTE_APIKEY_ONLY, key=HMAC_KEY, presented_hash=None),
     "invalid_credentials"),
    ("method check first: hmac-only route, unknown key",
     dict(route=ROUTE_HMAC_ONLY, key=None, account=None), "invalid_credentials"),
    # -- 2. the key must exist, be of the presented kind, and match the secret -----------------
    ("unknown key", dict(key=None), "invalid_credentials"),
    ("unknown hmac key", dict(method="hmac", key=None, presented_hash=None),
     "invalid_credentials"),
    ("api key secret, record is hmac", dict(key=replace(HMAC_KEY, secret_hash=HASH)),
     "invalid_credentials"),
    ("signature, record is api key", dict(method="hmac", key=API_KEY, presented_hash=None),
     "invalid_credentials"),
    ("presented hash does not match", dict(presented_hash=OTHER_HASH), "invalid_credentials"),
    ("presented hash is empty", dict(presented_hash=""), "invalid_credentials"),
    ("presented hash upper-cased", dict(presented_hash=HASH.upper()), "invalid_credentials"),
    ("record has empty hash, presented non-empty",
     dict(key=replace(API_KEY, secret_hash="")), "invalid_credentials"),
    ("previous secret after grace", dict(key=GRACE_OVER, presented_hash=OLD_HASH),
     "invalid_credentials"),
    ("previous secret exactly at previous_until",
     dict(key=GRACE_ENDS_NOW, presented_hash=OLD_HASH), "invalid_credentials"),
    ("previous hash without previous_until",
     dict(key=replace(REISSUED, previous_until=None), presented_hash=OLD_HASH),
     "invalid_credentials"),
    ("current secret still works after grace", dict(key=GRACE_OVER), ALLOW),
    ("wrong secret beats expiry", dict(key=EXPIRED, presented_hash=OTHER_HASH),
     "invalid_credentials"),
    ("wrong secret beats disabled account",
     dict(presented_hash=OTHER_HASH, account=DISABLED), "invalid_credentials"),
    ("unknown key beats everything",
     dict(key=None, account=DISABLED_NO_ACCESS), "invalid_credentials"),
    # -- 3. not expired --------------------------------------------------------------------------
    ("expired", dict(key=EXPIRED), "expired_key"),
    ("expires exactly now", dict(key=EXPIRES_NOW), "expired_key"),
    ("expired hmac key",
     dict(method="hmac", key=replace(HMAC_KEY, expires_at=NOW - 1), presented_hash=None),
     "expired_key"),
    ("expired with previous secret in grace",
     dict(key=replace(REISSUED, expires_at=NOW - 1), presented_hash=OLD_HASH), "expired_key"),
    ("expired beats disabled account", dict(key=EXPIRED, account=DISABLED), "expired_key"),
    ("expired beats no api_access", dict(key=EXPIRED, account=NO_ACCESS), "expired_key"),
    ("expired beats both", dict(key=EXPIRED, account=DISABLED_NO_ACCESS), "expired_key"),
    ("expired beats missing account", dict(key=EXPIRED, account=None), "expired_key"),
    ("expired beats missing scope", dict(key=replace(EXPIRED, scopes=())), "expired_key"),
    # -- 4. account exists, is enabled, holds api_access ----------------------------------------
    ("account gone", dict(account=None), "invalid_credentials"),
    ("account gone, hmac", dict(method="hmac", key=HMAC_KEY, presented_hash=None, account=None),
     "invalid_credentials"),
    ("account disabled", dict(account=DISABLED), "account_disabled"),
    ("account disabled, hmac",
     dict(method="hmac", key=HMAC_KEY, presented_hash=None, account=DISABLED),
     "account_disabled"),
    ("disabled beats no api_access", dict(account=DISABLED_NO_ACCESS), "account_disabled"),
    ("disabled beats missing scope", dict(account=DISABLED, key=NO_SCOPES), "account_disabled"),
    ("no api_access", dict(account=NO_ACCESS), "api_access_denied"),
    ("no api_access, hmac",
     dict(method="hmac", key=HMAC_KEY, presented_hash=None, account=NO_ACCESS),
     "api_access_denied"),
    ("no api_access beats missing scope", dict(account=NO_ACCESS, key=NO_SCOPES),
     "api_access_denied"),
    ("no api_access on a route without scopes",
     dict(route=ROUTE_NO_SCOPES, account=NO_ACCESS), "api_access_denied"),
    # -- 5. scopes -------------------------------------------------------------------------------
    ("key without scopes", dict(key=NO_SCOPES), "insufficient_scope"),
    ("key with another scope", dict(key=WRONG_SCOPE), "insufficient_scope"),
    ("hmac key with another scope",
     dict(method="hmac", key=replace(HMAC_KEY, scopes=("yc.ai.translate.execute",)),
          presented_hash=None), "insufficient_scope"),
    ("wildcard of a sibling", dict(key=replace(API_KEY, scopes=("yc.ydb.*",))),
     "insufficient_scope"),
    ("partial segment wildcard", dict(key=replace(API_KEY, scopes=("yc.ai.vis.*",))),
     "insufficient_scope"),
    ("one of three held", dict(route=ROUTE_TWO_SCOPES), "insufficient_scope"),
]


def run(**overrides: Any) -> Allow | Deny:
    args: dict[str, Any] = dict(method="api_key", route=ROUTE, key=API_KEY, account=ACCOUNT,
                                now=NOW, presented_hash=HASH)
    args.update(overrides)
    return decide(**args)


@pytest.mark.parametrize(("label", "overrides", "expected"), DECIDE_CASES,
                         ids=[case[0] for case in DECIDE_CASES])
def test_decide(label: str, overrides: dict[str, Any], expected: str) -> None:
    decision = run(**overrides)
    if expected == ALLOW:
        assert isinstance(decision, Allow), decision
        assert decision.key == overrides.get("key", API_KEY)
        assert decision.account == overrides.get("account", ACCOUNT)
    else:
        assert isinstance(decision, Deny), decision
        assert decision.code == expected
        assert decision.message


def test_every_outcome_is_in_the_table() -> None:
    outcomes = {expected for _, _, expected in DECIDE_CASES}
    assert outcomes == {ALLOW, "invalid_credentials", "expired_key", "account_disabled",
                        "api_access_denied", "insufficient_scope"}


@pytest.mark.parametrize(
    ("route", "scopes", "named", "not_named"),
    [
        (ROUTE, (), ["yc.ai.vision.execute"], []),
        (ROUTE_TWO_SCOPES, ("yc.ai.vision.execute",),
         ["yc.ydb.tables.manage", "yc.ydb.topics.manage"], ["yc.ai.vision.execute"]),
        (ROUTE_TWO_SCOPES, ("yc.ydb.tables.manage",),
         ["yc.ai.vision.execute", "yc.ydb.topics.manage"], ["yc.ydb.tables.manage"]),
        (ROUTE_TWO_SCOPES, ("yc.ydb.*",), ["yc.ai.vision.execute"], ["yc.ydb."]),
    ],
)
def test_insufficient_scope_message_names_missing_scopes(
    route: RouteConfig, scopes: tuple[str, ...], named: list[str], not_named: list[str]
) -> None:
    decision = run(route=route, key=replace(API_KEY, scopes=scopes))
    assert isinstance(decision, Deny)
    assert decision.code == "insufficient_scope"
    for scope in named:
        assert scope in decision.message
    for scope in not_named:
        assert scope not in decision.message


@pytest.mark.parametrize(
    "overrides",
    [
        dict(presented_hash=OTHER_HASH),
        dict(key=EXPIRED),
        dict(account=DISABLED),
        dict(key=NO_SCOPES),
        dict(key=GRACE_OVER, presented_hash=OLD_HASH),
    ],
)
def test_deny_messages_never_carry_secrets_or_hashes(overrides: dict[str, Any]) -> None:
    decision = run(**overrides)
    assert isinstance(decision, Deny)
    for secret in (SECRET, OLD_SECRET, OTHER_SECRET, HASH, OLD_HASH, OTHER_HASH):
        assert secret not in decision.message
