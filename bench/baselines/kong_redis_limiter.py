"""The baseline for bench/limits_fleet.py: a rate limiter that pays one Redis round trip per
request, the way Kong's `redis` policy does: INCR of a per-window counter key (fixed windows
named by their start), EXPIRE so old windows go away, admit while the count is within the
limit. Exact across a fleet by construction, and two commands per request."""

from __future__ import annotations

import math
import time

import redis.asyncio as aioredis


class KongStyleLimiter:
    def __init__(self, redis: aioredis.Redis, limit: int, window: float = 1.0) -> None:
        self.redis = redis
        self.limit = limit
        self.window = window
        self.commands_sent = 0

    async def admit(self, identifier: str) -> bool:
        start = math.floor(time.time() / self.window) * self.window
        key = f"ratelimit:{identifier}:{int(start)}"
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.incr(key)
            pipe.expire(key, math.ceil(self.window) + 1)
            count, _ = await pipe.execute()
        self.commands_sent += 2
        return int(count) <= self.limit
