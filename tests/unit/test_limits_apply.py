"""Which limits apply to a request, from key, account and route (gateway/limits/apply.py)."""

from __future__ import annotations

import pytest

from gateway.limits.apply import LimitSpec, limits_for
from gateway.limits.policy import PolicyError, parse_quota, parse_rate

ROUTE_RATE = parse_rate("10/s")


@pytest.mark.parametrize(("key", "account", "route_rate", "names"), [
    (LimitSpec(), LimitSpec(), None, []),
    (LimitSpec(), LimitSpec(), ROUTE_RATE, ["route"]),
    (LimitSpec(parse_rate("100/s")), LimitSpec(), ROUTE_RATE, ["key"]),
    (LimitSpec(None, parse_quota("5/day")), LimitSpec(), ROUTE_RATE, ["route", "key-quota"]),
    (LimitSpec(parse_rate("1/s"), parse_quota("5")),
     LimitSpec(parse_rate("2/s"), parse_quota("9/month")), None,
     ["key", "key-quota", "account", "account-quota"]),
])
def test_the_limits_of_a_request(key: LimitSpec, account: LimitSpec, route_rate: object,
                                 names: list[str]) -> None:
    limits = limits_for("k1", "a1", key, account, "vision", route_rate)  # type: ignore[arg-type]
    assert [limit.name for limit in limits] == names
    for limit in limits:
        expected = "gw:account:a1" if limit.name.startswith("account") else "gw:key:k1"
        assert limit.scope == expected


def test_a_route_default_is_a_bucket_per_key_and_route() -> None:
    (a,) = limits_for("k1", "a1", route="vision", route_rate=ROUTE_RATE)
    (b,) = limits_for("k1", "a1", route="speech", route_rate=ROUTE_RATE)
    (c,) = limits_for("k2", "a1", route="vision", route_rate=ROUTE_RATE)
    assert len({a.bucket, b.bucket, c.bucket}) == 3


def test_the_same_request_gets_the_same_limit_objects() -> None:
    spec = LimitSpec(parse_rate("100/s"))
    assert limits_for("k1", "a1", spec)[0] is limits_for("k1", "a1", spec)[0]


@pytest.mark.parametrize("data", [
    {"rate": "100/s"}, {"rate": "100/s", "burst": 20}, {"quota": "10000/month"},
    {"rate": "6000/min", "quota": "10000"}, {},
])
def test_records_round_trip(data: dict[str, object]) -> None:
    assert LimitSpec.from_record(data).to_record() == data


def test_a_bad_record_names_its_field() -> None:
    with pytest.raises(PolicyError, match=r"^rate: "):
        LimitSpec.from_record({"rate": "100/week"})
    with pytest.raises(PolicyError, match=r"^quota: "):
        LimitSpec.from_record({"quota": "lots"})
