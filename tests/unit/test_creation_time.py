"""Creation stamps: records made within one millisecond still list in creation order."""

from __future__ import annotations

from typing import Any, cast

from gateway.keys.service import KeyService
from gateway.keys.store import index_member, ms


def service_at(now: float) -> KeyService:
    # _creation_time reads only the clock: no store is needed.
    return KeyService(cast(Any, None), clock=lambda: now)


def test_stamps_within_one_millisecond_still_increase() -> None:
    service = service_at(1_900_000_000.1234)
    stamps = [service._creation_time() for _ in range(50)]
    assert [ms(s) for s in stamps] == sorted({ms(s) for s in stamps})  # strictly increasing
    members = [index_member(s, "id_" + str(50 - i)) for i, s in enumerate(stamps)]
    assert members == sorted(members)  # the index orders them as they were made


def test_a_clock_far_from_the_last_stamp_is_taken_as_it_is() -> None:
    service_at(1_900_000_000.0)._creation_time()
    assert service_at(1_000.0)._creation_time() == 1_000.0  # a test's fixed clock
    assert service_at(1_900_000_100.0)._creation_time() == 1_900_000_100.0
