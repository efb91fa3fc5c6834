"""Failed admin-token checks, slowed per client address (issue 17, item 5).

Past MAX_FAILURES wrong or missing tokens from one address within WINDOW, every admin API
request from it gets 429 with Retry-After for BLOCK_FOR, whatever token it carries (a correct
token answered differently would tell a guesser it had found one). In memory, per admin
listener (one per gateway instance; the supervisor's with `--workers N`): the admin listener
binds the loopback by default, and a guesser that reaches it from several instances' listeners
is slowed on each. At most MAX_TRACKED addresses are remembered, the least recently failed
forgotten first.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

MAX_FAILURES = 10
WINDOW = 60.0
BLOCK_FOR = 60.0
MAX_TRACKED = 10_000


class _Failures:
    __slots__ = ("blocked_until", "count", "since")

    def __init__(self, now: float) -> None:
        self.since = now  # start of the window being counted
        self.count = 0
        self.blocked_until = 0.0


class AdminFailures:
    def __init__(self, *, max_failures: int = MAX_FAILURES, window: float = WINDOW,
                 block_for: float = BLOCK_FOR, max_tracked: int = MAX_TRACKED,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_failures = max_failures
        self.window = window
        self.block_for = block_for
        self.max_tracked = max_tracked
        self.clock = clock
        self._clients: OrderedDict[str, _Failures] = OrderedDict()

    def retry_after(self, client: str) -> float | None:
        """Seconds left while `client` is blocked, else None."""
        entry = self._clients.get(client)
        if entry is None:
            return None
        left = entry.blocked_until - self.clock()
        return left if left > 0 else None

    def record_failure(self, client: str) -> None:
        now = self.clock()
        entry = self._clients.get(client)
        if entry is None or now - entry.since >= self.window:
            entry = _Failures(now)
        self._clients[client] = entry
        self._clients.move_to_end(client)
        while len(self._clients) > self.max_tracked:
            self._clients.popitem(last=False)
        entry.count += 1
        if entry.count >= self.max_failures:
            entry.blocked_until = now + self.block_for
            entry.since, entry.count = now + self.block_for, 0  # counted afresh after the block
