"""Prometheus metrics (SPEC §9), all prefixed `gateway_`.

One process: the default registry. Several workers: each writes its samples to files in the
multiprocess directory (prometheus-client's multiprocess mode, chosen by the environment the
supervisor gives its workers), and `/metrics` aggregates them into one view.
"""

from __future__ import annotations

import importlib.metadata
import platform
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    PLATFORM_COLLECTOR,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
    multiprocess,
)
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

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
LIMIT_REFUSALS = Counter("gateway_limit_refusals",
                         "Requests refused by a rate limit or quota (SPEC §11), by key and "
                         "reason (rate_limited, quota_exhausted, key_store_unavailable)",
                         ["key_id", "reason"])
IN_FLIGHT = Gauge("gateway_requests_in_flight", "Requests being handled now",
                  multiprocess_mode="livesum")


def method_label(method: str) -> str:
    # Bounded label values: an arbitrary method token must not mint a new time series.
    return method if method in METHODS else "OTHER"


def gateway_version() -> str:
    try:
        return importlib.metadata.version("api-auth-gateway")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "unknown"


class BuildInfo(Collector):
    """`gateway_build_info{version, python}` = 1: which build answers, for joins in queries."""

    def __init__(self) -> None:
        self.labels = [gateway_version(), platform.python_version()]

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily("gateway_build_info", "The gateway's version (always 1)",
                                   labels=["version", "python"])
        family.add_metric(self.labels, 1)
        yield family


BUILD_INFO = BuildInfo()
REGISTRY.register(BUILD_INFO)
# One process: the default registry already holds prometheus-client's process_* (CPU, memory,
# open files, start time), python_info and python_gc_* collectors.


class ProcessesCollector(Collector):
    """process_* for each of several processes, told apart by a `process` label (`supervisor`,
    `worker-0` ...). prometheus-client's ProcessCollector reads /proc for one pid and knows
    nothing of multiprocess mode, where a worker's files carry only the metrics it wrote: the
    supervisor reads its workers' /proc entries instead."""

    def __init__(self, processes: Callable[[], Mapping[str, int]]) -> None:
        self.processes = processes

    def collect(self) -> Iterable[Metric]:
        merged: dict[str, Metric] = {}
        for name, pid in self.processes().items():
            reader = ProcessCollector(pid=lambda pid=pid: pid, registry=None)  # type: ignore[misc]
            for family in reader.collect():
                out = merged.get(family.name)
                if out is None:
                    out = merged[family.name] = Metric(family.name, family.documentation,
                                                       family.type)
                for sample in family.samples:
                    out.add_sample(sample.name, {**sample.labels, "process": name},
                                   sample.value)
        yield from merged.values()


def render(multiprocess_dir: Path | None,
           processes: Callable[[], Mapping[str, int]] | None = None) -> tuple[bytes, str]:
    """The text exposition: this process's registry, or every worker's files aggregated (plus,
    read at scrape time: the build, the interpreter, and process_* of every process named by
    `processes`)."""
    if multiprocess_dir is None:
        from gateway.observability.tally import TALLY  # here: tally imports this module
        TALLY.flush()  # this process's batched counts, so a scrape sees every request
        return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(multiprocess_dir))  # type: ignore[no-untyped-call]
    registry.register(BUILD_INFO)
    registry.register(PLATFORM_COLLECTOR)  # python_info: the workers run the same interpreter
    if processes is not None:
        registry.register(ProcessesCollector(processes))
    return generate_latest(registry), CONTENT_TYPE_LATEST

# Brute-force protection (gateway.auth.throttle): requests refused with 429 because their client
# address failed to authenticate too often.
AUTH_THROTTLED = Counter("gateway_auth_throttled",
                         "Requests refused with 429: their client address is blocked after too "
                         "many failed authentications")
