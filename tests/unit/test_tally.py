"""Batched metrics (gateway/observability/tally.py) must write exactly what prometheus-client's
own calls would have written: compared sample by sample on private registries."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from gateway.observability.metrics import LATENCY_BUCKETS
from gateway.observability.tally import Tally

VALUES = [0.0, 0.0001, 0.0005, 0.00050001, 0.001, 0.003, 0.01, 0.2, 0.5, 1.0, 2.4999, 7.0,
          30.0, 60.0, 60.0001, 1e9, 0.0025, 0.0025]


def samples(registry: CollectorRegistry) -> list[str]:
    # `_created` is the time the series was made: the two registries differ there only.
    return [line for line in generate_latest(registry).decode().splitlines()
            if "_created" not in line]


def _pair(kind: type, *labels: str) -> tuple[CollectorRegistry, object, CollectorRegistry,
                                              object]:
    direct, batched = CollectorRegistry(), CollectorRegistry()
    extra = {"buckets": LATENCY_BUCKETS} if kind is Histogram else {}
    return (direct, kind("m", "help", list(labels), registry=direct, **extra),
            batched, kind("m", "help", list(labels), registry=batched, **extra))


def test_a_batched_histogram_writes_what_observe_would() -> None:
    direct_reg, direct, batched_reg, batched = _pair(Histogram, "route")
    tally = Tally()
    for value in VALUES:
        direct.labels("r").observe(value)  # type: ignore[attr-defined]
        tally.histogram(batched, "r").observe(value)  # type: ignore[arg-type]
    assert samples(batched_reg) != samples(direct_reg)  # nothing written yet
    tally.flush()
    assert samples(batched_reg) == samples(direct_reg)
    tally.flush()  # a second flush adds nothing
    assert samples(batched_reg) == samples(direct_reg)


@pytest.mark.parametrize("amounts", [[1.0] * 40, [1.0, 2.5, 0.5], []])
def test_a_batched_counter_writes_the_sum(amounts: list[float]) -> None:
    direct_reg, direct, batched_reg, batched = _pair(Counter, "route", "status")
    tally = Tally()
    for amount in amounts:
        direct.labels("r", "200").inc(amount)  # type: ignore[attr-defined]
        tally.counter(batched, "r", "200").inc(amount)  # type: ignore[arg-type]
    tally.flush()
    assert samples(batched_reg) == samples(direct_reg)


def test_nan_is_not_counted() -> None:
    _, _, batched_reg, batched = _pair(Histogram, "route")
    tally = Tally()
    tally.histogram(batched, "r").observe(math.nan)  # type: ignore[arg-type]
    tally.flush()
    assert 'm_count{route="r"} 0.0' in samples(batched_reg)
    assert 'm_sum{route="r"} 0.0' in samples(batched_reg)


def test_the_same_labels_give_the_same_series() -> None:
    _, _, _, batched = _pair(Counter, "route")
    tally = Tally()
    assert tally.counter(batched, "a") is tally.counter(batched, "a")  # type: ignore[arg-type]
    assert tally.counter(batched, "a") is not tally.counter(batched, "b")  # type: ignore[arg-type]
