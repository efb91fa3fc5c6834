"""Hot-path metrics, counted in plain Python and written to prometheus-client in batches.

In multiprocess mode every prometheus-client write is a locked store into a memory-mapped file
plus a check of the process id; a proxied request made seven of them, about a tenth of a
worker's CPU. Here a request only adds to Python numbers, and `flush()` (every
FLUSH_INTERVAL, before an in-process scrape, and at shutdown) writes the sums. A scrape of a
multi-worker gateway can therefore be up to FLUSH_INTERVAL behind.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left
from typing import Any

from prometheus_client import Counter, Histogram

from gateway.observability.metrics import IN_FLIGHT

FLUSH_INTERVAL = 0.1
MAX_SERIES = 10_000  # labelled children kept; past it, writes go straight to prometheus


class BatchedCounter:
    __slots__ = ("_child", "pending")

    def __init__(self, child: Any) -> None:
        self._child = child
        self.pending = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.pending += amount

    def flush(self) -> None:
        if self.pending:
            pending, self.pending = self.pending, 0.0
            self._child.inc(pending)


class BatchedHistogram:
    """Counts per bucket, as prometheus-client's own Histogram child keeps them (each
    observation in the first bucket whose upper bound is >= the value), written as sums."""

    __slots__ = ("_bounds", "_child", "_counts", "_sum")

    def __init__(self, child: Any) -> None:
        self._child = child
        self._bounds: list[float] = list(child._upper_bounds)
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0

    def observe(self, value: float) -> None:
        if value != value:  # NaN: no bucket holds it, and it would poison the sum
            return
        self._counts[bisect_left(self._bounds, value)] += 1  # the last bound is +Inf
        self._sum += value

    def flush(self) -> None:
        counts = self._counts
        if not any(counts):
            return
        self._counts = [0] * len(counts)
        total, self._sum = self._sum, 0.0
        self._child._sum.inc(total)
        for index, count in enumerate(counts):
            if count:
                self._child._buckets[index].inc(count)


class Tally:
    """The process's batched view of its hot-path metrics."""

    def __init__(self) -> None:
        self._series: dict[tuple[Any, ...], BatchedCounter | BatchedHistogram] = {}
        self.in_flight = 0
        self._in_flight_written = 0

    def counter(self, metric: Counter, *labels: str) -> BatchedCounter:
        key = (metric, *labels)
        found = self._series.get(key)
        if found is None:
            found = BatchedCounter(metric.labels(*labels) if labels else metric)
            if len(self._series) < MAX_SERIES:
                self._series[key] = found
            else:
                self.flush_one(found)  # not kept: its count must not be lost
        assert isinstance(found, BatchedCounter)
        return found

    def histogram(self, metric: Histogram, *labels: str) -> BatchedHistogram:
        key = (metric, *labels)
        found = self._series.get(key)
        if found is None:
            found = BatchedHistogram(metric.labels(*labels) if labels else metric)
            if len(self._series) < MAX_SERIES:
                self._series[key] = found
            else:
                self.flush_one(found)
        assert isinstance(found, BatchedHistogram)
        return found

    @staticmethod
    def flush_one(item: BatchedCounter | BatchedHistogram) -> None:
        # Called before the caller adds to it: flush right after, in the same loop turn.
        asyncio.get_running_loop().call_soon(item.flush)

    def flush(self) -> None:
        for item in list(self._series.values()):
            item.flush()
        if self.in_flight != self._in_flight_written:
            self._in_flight_written = self.in_flight
            IN_FLIGHT.set(self.in_flight)

    async def run(self) -> None:
        """Flush every FLUSH_INTERVAL until cancelled, then once more."""
        try:
            while True:
                await asyncio.sleep(FLUSH_INTERVAL)
                self.flush()
        finally:
            self.flush()


TALLY = Tally()
