"""Reads of keys already moved during a slot migration (`-ASK`): redis-py 8.1's cluster client
sent ASKING and the command on two pooled connections, so once a node had two idle connections
every such read ran out of redirections (503). gateway/store/cluster_asking.py keeps the two on
one connection."""

from __future__ import annotations

import asyncio

import pytest

from gateway.store.client import connect
from tests.support.redis_topology import ClusterTopology, topology_binaries_missing

MISSING = topology_binaries_missing()

pytestmark = [pytest.mark.slow, pytest.mark.skipif(MISSING is not None, reason=MISSING or "")]


async def test_moved_keys_are_read_through_ask_by_many_concurrent_callers() -> None:
    with ClusterTopology() as cluster:
        slot = cluster.key_slot("{moving}a")
        source = cluster.slot_owner(slot)
        target = next(address for address in cluster.masters() if address != source)
        client = connect(cluster.url, 2.0)
        try:
            names = [f"{{moving}}{i}" for i in range(20)]
            for name in names:
                await client.set(name, name)
            # Several idle connections on every node: what made ASKING and the command part.
            await asyncio.gather(*(client.get(names[0]) for _ in range(50)))
            cluster.begin_slot_migration(slot, target)
            assert cluster.move_slot_keys(slot) == len(names)
            await asyncio.gather(*(client.set(f"other{i}", i) for i in range(200)))

            one = await client.get(names[3])
            assert one == b"{moving}3"
            answers = await asyncio.gather(*(client.get(names[i % len(names)])
                                             for i in range(300)))
            assert answers == [names[i % len(names)].encode() for i in range(300)]
            # A write of a new key in the migrating slot goes to the target through ASK too.
            await asyncio.gather(*(client.set(f"{{moving}}new{i}", i) for i in range(100)))
            cluster.finish_slot_migration(slot)
            assert await client.get("{moving}new7") == b"7"
            assert await client.get(names[5]) == names[5].encode()
        finally:
            await client.aclose()
