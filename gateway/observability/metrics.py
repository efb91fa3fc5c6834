"""Prometheus metrics (SPEC §9), all prefixed `gateway_`.

One process: the default registry. Several workers: each writes its samples to files in the
multiprocess directory (prometheus-client's multiprocess mode, chosen by the environment the
supervisor gives its workers), and `/metrics` aggregates them into one view.
"""

from __future__ import annotations

from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

# From sub-millisecond (a cached key check answered by the gateway itself) to tens of seconds
# (a slow upstream or a large upload).
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0, 30.0, 60.0)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

REQUESTS = Counter("gateway_requests", "Requests answered, by route, method and status",
                   ["route", "method", "status"])
REQUEST_DURATION = Histogram("gateway_request_duration_seconds",
                             "Time from request to the end of the response, by route",
                             ["route"], buckets=LATENCY_BUCKETS)
UPSTREAM_DURATION = Histogram("gateway_upstream_duration_seconds",
                              "Time spent on the upstream exchange, by route", ["route"],
                              buckets=LATENCY_BUCKETS)
AUTH_RESULTS = Counter("gateway_auth_results",
                       "Authentication results, by method and outcome (ok or the error code)",
                       ["method", "outcome"])
KEY_CACHE = Counter("gateway_key_cache", "Key cache lookups: hit, miss, negative_hit, stale",
                    ["result"])
STORE_ERRORS = Counter("gateway_store_errors", "Key store calls that failed or timed out")
STORE_POOL_EXHAUSTED = Counter("gateway_store_pool_exhausted",
                               "Store calls refused because every pooled connection stayed "
                               "busy for redis.timeout (not an outage of the store)")
STORE_UP = Gauge("gateway_store_up", "1 while the key store answers and can take writes, else 0",
                 multiprocess_mode="min")
STORE_WARNINGS = Gauge("gateway_store_config_warnings",
                       "Settings of the external Redis that put the gateway's data at risk "
                       "(eviction policy, no persistence), by setting",
                       ["setting"], multiprocess_mode="max")
CONFIG_RELOADS = Counter("gateway_config_reloads", "Config reloads, by result (ok, error)",
                         ["result"])
ADMIN_AUTH_FAILURES = Counter("gateway_admin_auth_failures",
                              "Admin API requests refused for their token, by reason "
                              "(missing, invalid)", ["reason"])
IN_FLIGHT = Gauge("gateway_requests_in_flight", "Requests being handled now",
                  multiprocess_mode="livesum")


def method_label(method: str) -> str:
    # Bounded label values: an arbitrary method token must not mint a new time series.
    return method if method in METHODS else "OTHER"


def render(multiprocess_dir: Path | None) -> tuple[bytes, str]:
    """The text exposition: this process's registry, or every worker's files aggregated."""
    if multiprocess_dir is None:
        from gateway.observability.tally import TALLY  # here: tally imports this module
        TALLY.flush()  # this process's batched counts, so a scrape sees every request
        return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(multiprocess_dir))  # type: ignore[no-untyped-call]
    return generate_latest(registry), CONTENT_TYPE_LATEST

# Brute-force protection (gateway.auth.throttle): requests refused with 429 because their client
# address failed to authenticate too often.
AUTH_THROTTLED = Counter("gateway_auth_throttled",
                         "Requests refused with 429: their client address is blocked after too "
                         "many failed authentications")
