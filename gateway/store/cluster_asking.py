"""ASKING on the same connection as the command it allows (a fix to redis-py's cluster client).

While a slot migrates, a key already moved is answered `-ASK <target>` by the source node; the
client must send `ASKING` and then the command to the target *on one connection*, since ASKING
only allows the next command of its own connection. redis-py 8.1's asyncio cluster client sends
the two through `ClusterNode.execute_command` separately, and each call takes a connection from
the node's free list (a FIFO: `popleft` to take, `append` to give back). Once a node holds two
idle connections, ASKING goes out on one and the command on the other, every time: each read of a
moved key ran out of redirections ("TTL exhausted") and was answered 503 until the migration
ended.

The fix keeps redis-py's redirection logic and changes only where ASKING goes: an ASKING sent to
a node is held back (per task, so concurrent callers never see each other's) and written in
front of the next command this task sends to the same node, on that command's connection.
"""

from __future__ import annotations

import contextvars
from typing import Any

from redis.asyncio.cluster import ClusterNode

_pending_asking: contextvars.ContextVar[ClusterNode | None] = contextvars.ContextVar(
    "gateway_pending_asking", default=None)

_execute_command = ClusterNode.execute_command


async def _execute_with_asking(self: ClusterNode, *args: Any, **kwargs: Any) -> Any:
    if args and args[0] == "ASKING" and not kwargs:
        _pending_asking.set(self)
        return True
    if _pending_asking.get() is None:
        return await _execute_command(self, *args, **kwargs)
    asking_here = _pending_asking.get() is self
    _pending_asking.set(None)  # never left behind to allow a later, unrelated command
    if not asking_here or kwargs.get("asking"):
        return await _execute_command(self, *args, **kwargs)
    connection = self.acquire_connection()
    try:
        await self.disconnect_if_needed(connection)
        try:
            await connection.send_packed_command(connection.pack_commands([("ASKING",), args]))
            await self.parse_response(connection, "ASKING")
        except BaseException:
            # The command's answer may still be on its way: this connection is out of step.
            await connection.disconnect()
            raise
        return await self.parse_response(connection, args[0], **kwargs)
    finally:
        try:
            await self.disconnect_if_needed(connection)
        finally:
            self.release(connection)


def install() -> None:
    """Route ASKING through `_execute_with_asking` (idempotent)."""
    ClusterNode.execute_command = _execute_with_asking  # type: ignore[method-assign]
