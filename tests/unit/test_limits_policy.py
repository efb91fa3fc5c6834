"""Rates, quotas, UTC periods and the RateLimit header fields (gateway/limits/policy.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gateway.limits.policy import (
    TOTAL_RETRY_AFTER,
    PolicyError,
    PolicyState,
    Quota,
    Rate,
    closest,
    header_fields,
    next_reset,
    parse_quota,
    parse_rate,
    period_label,
    period_seconds,
    policy_field,
    quota_retry_after,
    rate_of,
    rate_retry_after,
    ratelimit_field,
    retry_after,
)


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


@pytest.mark.parametrize(("text", "burst", "expected"), [
    ("100/s", None, Rate(100, 1.0, 100)),
    ("100/1s", None, Rate(100, 1.0, 100)),
    ("6000/min", None, Rate(6000, 60.0, 6000)),
    ("6000/m", None, Rate(6000, 60.0, 6000)),
    ("1000/h", 50, Rate(1000, 3600.0, 50)),
    (" 1_000/hour ", "20", Rate(1000, 3600.0, 20)),
    ("100/second", None, Rate(100, 1.0, 100)),
])
def test_rates_parse(text: str, burst: int | str | None, expected: Rate) -> None:
    assert parse_rate(text, burst) == expected


@pytest.mark.parametrize(("text", "burst", "words"), [
    ("100", None, "written like 100/s"),
    ("100/d", None, "unit is s, min or h"),
    ("0/s", None, "at least 1"),
    ("-5/s", None, "whole number"),
    ("1.5/s", None, "whole number"),
    ("abc/s", None, "whole number"),
    ("100/s", 0, "at least 1"),
    ("100/s", "x", "whole number"),
    ("10000000000000/s", None, "at most"),
])
def test_bad_rates_say_why(text: str, burst: int | str | None, words: str) -> None:
    with pytest.raises(PolicyError, match=words):
        parse_rate(text, burst)


def test_rate_from_parts_refuses_odd_windows() -> None:
    assert rate_of(100, 1.0, 20) == Rate(100, 1.0, 20)
    with pytest.raises(PolicyError, match="one second, one minute or one hour"):
        rate_of(100, 2.0)
    with pytest.raises(PolicyError, match="whole number"):
        rate_of(True, 1.0)  # type: ignore[arg-type]


@pytest.mark.parametrize(("text", "expected"), [
    ("10000/day", Quota(10000, "day")),
    ("10000/month", Quota(10000, "month")),
    ("10000", Quota(10000, "total")),
    ("10000/total", Quota(10000, "total")),
])
def test_quotas_parse(text: str, expected: Quota) -> None:
    assert parse_quota(text) == expected
    assert parse_quota(str(expected)) == expected


@pytest.mark.parametrize(("text", "words"), [
    ("", "written like"),
    ("10/week", "day, month or total"),
    ("0/day", "at least 1"),
])
def test_bad_quotas_say_why(text: str, words: str) -> None:
    with pytest.raises(PolicyError, match=words):
        parse_quota(text)


@pytest.mark.parametrize(("period", "now", "label", "reset", "length"), [
    ("day", "2026-12-03T13:22:00", "2026-12-03", "2026-12-04T00:00:00", 86400),
    ("day", "2026-12-31T23:59:59", "2026-12-31", "2027-01-01T00:00:00", 86400),
    ("month", "2026-12-03T13:22:00", "2026-12", "2027-01-01T00:00:00", 31 * 86400),
    ("month", "2028-02-29T10:00:00", "2028-02", "2028-03-01T00:00:00", 29 * 86400),
    ("month", "2026-04-30T23:59:59", "2026-04", "2026-05-01T00:00:00", 30 * 86400),
])
def test_periods_in_utc(period: str, now: str, label: str, reset: str, length: int) -> None:
    moment = at(now)
    assert period_label(period, moment) == label  # type: ignore[arg-type]
    assert next_reset(period, moment) == at(reset)  # type: ignore[arg-type]
    assert period_seconds(period, moment) == length  # type: ignore[arg-type]


def test_a_total_has_no_period() -> None:
    assert period_label("total", 0) == "total"
    assert next_reset("total", 0) is None
    assert period_seconds("total", 0) is None


def test_header_fields_name_every_policy_and_the_closest_one() -> None:
    rate = PolicyState("key", 100, 1, 42, 0.6)
    quota = PolicyState("key-quota", 10000, 86400, 9000, 3600)
    assert header_fields([rate, quota]) == [
        ("RateLimit-Policy", '"key";q=100;w=1, "key-quota";q=10000;w=86400'),
        ("RateLimit", '"key";r=42;t=1'),
    ]
    total = PolicyState("total", 10, None, 0, 0)
    assert policy_field([total]) == '"total";q=10'
    assert closest([rate, quota, total]) == total
    assert header_fields([]) == []


def test_closest_breaks_ties_by_the_later_reset() -> None:
    a = PolicyState("a", 10, 1, 5, 1)
    b = PolicyState("b", 100, 60, 50, 30)
    assert closest([a, b]) == b


def test_ratelimit_field_never_goes_negative_and_quotes_names() -> None:
    assert ratelimit_field(PolicyState('we"ird', 10, 1, -3, -1)) == '"we\\"ird";r=0;t=0'
    with pytest.raises(PolicyError, match="printable ASCII"):
        policy_field([PolicyState("é", 1, 1, 1, 1)])


@pytest.mark.parametrize(("seconds", "expected"), [
    (0, 1), (0.01, 1), (1.0, 1), (1.2, 2), (59.9, 60), (float("inf"), TOTAL_RETRY_AFTER),
])
def test_retry_after_is_a_whole_second_at_least_one(seconds: float, expected: int) -> None:
    assert retry_after(seconds) == expected


def test_retry_after_of_rates_and_quotas() -> None:
    assert rate_retry_after(parse_rate("100/s")) == 1
    assert rate_retry_after(parse_rate("60/h")) == 60
    now = at("2026-12-03T23:00:00")
    assert quota_retry_after(parse_quota("5/day"), now) == 3600
    assert quota_retry_after(parse_quota("5"), now) == TOTAL_RETRY_AFTER


def test_rate_text_round_trips() -> None:
    for text in ("100/s", "6000/min", "1000/h burst 5"):
        rate, _, burst = text.partition(" burst ")
        assert str(parse_rate(rate, burst or None)) == text
