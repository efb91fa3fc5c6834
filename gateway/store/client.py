"""Opening the Redis connection pool and translating Redis errors at this boundary."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.backoff import NoBackoff
from redis.retry import Retry

from gateway.config import Config
from gateway.errors import StoreError, StoreUnavailable
from gateway.store.embedded import EmbeddedRedis

Redis = aioredis.Redis


def connect(url: str, timeout: float) -> Redis:
    """One pool per process. No retries inside redis-py: every store call is bounded by
    `timeout`, and the callers decide what an unavailable store means (stale cache, or 503)."""
    return aioredis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        decode_responses=False,
        health_check_interval=30,
    )


@contextmanager
def store_errors() -> Iterator[None]:
    """Translate redis-py's exceptions into the gateway's tree."""
    try:
        yield
    except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError,
            TimeoutError) as exc:
        raise StoreUnavailable(f"key store unavailable: {exc.__class__.__name__}") from exc
    except redis_errors.RedisError as exc:
        raise StoreError(f"key store error: {exc.__class__.__name__}: {exc}") from exc


@asynccontextmanager
async def open_redis(config: Config) -> AsyncIterator[tuple[Redis, str]]:
    """The configured store, for as long as the block runs: the embedded server is started (or
    joined, when a gateway already runs it) first and stopped after, if this process started it.
    Yields the client and the URL it reached."""
    embedded = None
    url = config.redis.url
    if url == "embedded":
        embedded = EmbeddedRedis(config.data_dir)
        url = await asyncio.to_thread(embedded.start)
    redis = connect(url, config.redis.timeout)
    try:
        yield redis, url
    finally:
        await redis.aclose()
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
