"""Config reload (SPEC §9) on SIGHUP or `POST /admin/reload`: validate first, then apply.

An invalid file is refused with the reason (log line, API answer, and
`gateway_config_reloads_total{result="error"}`) and the running config stays. Requests in flight
finish on the config they started on (see ProxyHandler.reload). Listener addresses, the store and
the data directory cannot change in a running process: such a file is refused too, saying so.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from gateway.config import Config, load_config
from gateway.errors import ConfigError
from gateway.observability.metrics import CONFIG_RELOADS

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ReloadResult:
    ok: bool
    digest: str  # of the config running after the attempt
    message: str


class ConfigReloader:
    def __init__(self, current: Callable[[], Config],
                 apply: Callable[[Config], Awaitable[None]], env: Mapping[str, str]) -> None:
        self.current = current
        self.apply = apply
        self.env = dict(env)
        self._lock = asyncio.Lock()
        # Both series exist from the start, at 0 (SPEC §9): a rate or an alert on errors
        # must not wait for the first reload. In multiprocess mode this writes them to this
        # process's file, so /metrics shows them with --workers N too.
        for result in ("ok", "error"):
            CONFIG_RELOADS.labels(result)

    async def reload(self) -> ReloadResult:
        async with self._lock:  # one reload at a time; a second waits and re-reads the file
            old = self.current()
            if old.source == "<defaults>":
                return self._refuse(old, "the gateway runs on built-in defaults: no config file "
                                    "to reload")
            try:
                new = await asyncio.to_thread(load_config, old.source, self.env)
            except ConfigError as exc:
                return self._refuse(old, str(exc))
            fixed = old.restart_needed_for(new)
            if fixed:
                return self._refuse(old, f"{old.source}: changing {', '.join(fixed)} needs a "
                                    "restart")
            await self.apply(new)
            CONFIG_RELOADS.labels("ok").inc()
            log.info("config reloaded from %s (%s, %d routes)", new.source, new.digest,
                     len(new.routes))
            return ReloadResult(True, new.digest, f"reloaded {len(new.routes)} routes")

    def _refuse(self, old: Config, reason: str) -> ReloadResult:
        CONFIG_RELOADS.labels("error").inc()
        log.error("config reload refused, keeping %s: %s", old.digest, reason)
        return ReloadResult(False, old.digest, reason)
