"""The Sentinel and Cluster topologies of tests/support/redis_topology.py, checked with redis-py's
own Sentinel and Cluster clients: they start, serve, fail over and reshard as they claim."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.exceptions import AskError, MovedError
from redis.sentinel import Sentinel

from tests.support.redis_topology import (
    SLOTS,
    ClusterTopology,
    SentinelTopology,
    port_of,
    topology_binaries_missing,
)

MISSING = topology_binaries_missing()

# Each test starts 3 to 6 Redis processes, and the failover tests kill and restart them.
pytestmark = [pytest.mark.slow, pytest.mark.skipif(MISSING is not None, reason=MISSING or "")]


@pytest.fixture
def sentinel_topology() -> Iterator[SentinelTopology]:
    with SentinelTopology() as topology:
        yield topology


@pytest.fixture
def cluster() -> Iterator[ClusterTopology]:
    with ClusterTopology() as topology:
        yield topology


# redis-py leaves these untyped.
_ClusterNode: Callable[..., Any] = ClusterNode
_Sentinel: Callable[..., Any] = Sentinel


def cluster_client(topology: ClusterTopology) -> RedisCluster:
    return RedisCluster(startup_nodes=[_ClusterNode(host, port)
                                       for host, port in topology.startup_nodes],
                        decode_responses=True)


def master_client(topology: SentinelTopology) -> redis.Redis:
    sentinel = _Sentinel(topology.sentinel_addresses, socket_timeout=2.0)
    client: redis.Redis = sentinel.master_for(topology.master_name, socket_timeout=2.0,
                                              decode_responses=True)
    return client


def role(topology: SentinelTopology, address: str) -> str:
    return topology.node(address).info("replication")["role"]


def test_sentinel_topology_serves_fails_over_and_survives_a_crash(
        sentinel_topology: SentinelTopology) -> None:
    topology = sentinel_topology
    ports = ",".join(f"127.0.0.1:{port}" for _, port in topology.sentinel_addresses)
    assert topology.url == f"redis+sentinel://{ports}/gwmaster"
    assert topology.url_with_db(3) == f"redis+sentinel://{ports}/gwmaster/3"
    old = topology.master_address()
    assert old == topology.nodes[0].address
    assert role(topology, old) == "master"

    client = master_client(topology)
    try:
        client.set("before", "1")
        assert client.get("before") == "1"
        # The replica has it too once replication has caught up.
        assert client.wait(1, 2000) == 1
        with topology.replicas()[0].client(decode_responses=True) as replica:
            assert replica.get("before") == "1"

        started = time.monotonic()
        new = topology.failover()
        assert time.monotonic() - started < 15
        assert new != old
        assert topology.master_address() == new
        assert role(topology, new) == "master"
        assert role(topology, old) == "slave"
        # The Sentinel client finds the new master by itself (the old one dropped its
        # connections when it was demoted).
        client.set("after", "2")
        assert client.get("before") == "1"
        with topology.node(new).client(decode_responses=True) as direct:
            assert direct.get("after") == "2"

        # A crash: the sentinels notice (down-after-milliseconds 1000) and fail over.
        # Replication is asynchronous: without WAIT, a write just before the crash can be lost.
        assert client.wait(1, 2000) == 1
        killed = topology.kill_master()
        assert killed == new
        promoted = topology.wait_for_new_master(timeout=30)
        assert promoted == old
        client.set("after-crash", "3")
        assert client.get("after") == "2"

        # Back, as a replica of the new master, resynchronised.
        topology.restart(killed)
        assert role(topology, killed) == "slave"
        assert client.wait(1, 2000) == 1
        with topology.node(killed).client(decode_responses=True) as replica:
            assert replica.get("after-crash") == "3"
    finally:
        client.close()


def test_a_topology_that_cannot_start_says_why_and_leaves_nothing_behind() -> None:
    topology = SentinelTopology()
    primary = topology.nodes[0]
    dirs = [node.dir for node in topology.by_port.values()]
    with socket.socket() as squatter:  # the primary's port is taken
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", primary.port))
        squatter.listen()
        with pytest.raises(RuntimeError, match="exited at start") as failure:
            topology.start()
    assert "Address already in use" in str(failure.value)  # the node's log tail
    assert all(not node.alive for node in topology.by_port.values())
    assert not any(Path(d).exists() for d in dirs)


def test_cluster_covers_every_slot_and_reshards_a_slot_live(cluster: ClusterTopology) -> None:
    masters = cluster.masters()
    assert len(masters) == 3
    assert cluster.url.startswith("redis+cluster://")
    assert set(cluster.url.removeprefix("redis+cluster://").split(",")) == set(masters)
    served: set[int] = set()
    for view in cluster.view():
        assert view.is_master
        served |= view.slots
    assert served == set(range(SLOTS))

    client = cluster_client(cluster)
    try:
        for index in range(30):
            client.set(f"key:{index}", str(index))
        assert sum(cluster.key_counts().values()) == 30
        assert all(count > 0 for count in cluster.key_counts().values())

        key = "key:7"
        slot = cluster.key_slot(key)
        assert slot == key_slot(key.encode())
        source = cluster.slot_owner(slot)
        target = next(address for address in masters if address != source)
        cluster.migrate_slot(slot, target)
        assert cluster.slot_owner(slot) == target
        with cluster.client_for(target, decode_responses=True) as owner:
            assert owner.get(key) == "7"
        with (cluster.client_for(source, decode_responses=True) as old_owner,
              pytest.raises(MovedError, match=f"^{slot} {target}$")):
            old_owner.get(key)
        # redis-py's client still maps the slot to the old owner: it follows the MOVED.
        assert client.get(key) == "7"
        client.set(key, "seven")
        with cluster.client_for(target, decode_responses=True) as owner:
            assert owner.get(key) == "seven"

        cluster.flush()
        assert sum(cluster.key_counts().values()) == 0
    finally:
        client.close()


def test_cluster_slot_in_migration_answers_ask(cluster: ClusterTopology) -> None:
    slot = cluster.key_slot("{tag}present")
    source = cluster.slot_owner(slot)
    target = next(address for address in cluster.masters() if address != source)
    with cluster.client_for(source, decode_responses=True) as owner:
        owner.set("{tag}present", "here")
        cluster.begin_slot_migration(slot, target)
        assert owner.get("{tag}present") == "here"  # still on the source
        with pytest.raises(AskError, match=f"^{slot} {target}$") as asked:
            owner.get("{tag}absent")
        assert type(asked.value) is AskError  # not its subclass MovedError
        assert cluster.move_slot_keys(slot) == 1
        with pytest.raises(AskError, match=f"^{slot} {target}$"):
            owner.get("{tag}present")
    cluster.finish_slot_migration(slot)
    assert cluster.slot_owner(slot) == target
    with cluster.client_for(target, decode_responses=True) as owner:
        assert owner.get("{tag}present") == "here"


def test_cluster_with_replicas_fails_a_master_over() -> None:
    with ClusterTopology(replicas=1) as cluster:
        assert len(cluster.nodes) == 6
        assert len(cluster.masters()) == 3
        old = cluster.masters()[0]
        (replica,) = cluster.replicas_of(old)
        client = cluster_client(cluster)
        try:
            key = next(f"k{i}" for i in range(1000)
                       if cluster.slot_owner(cluster.key_slot(f"k{i}")) == old)
            client.set(key, "v")
            new = cluster.failover_master(old)
            assert new == replica
            assert new in cluster.masters() and old not in cluster.masters()
            assert cluster.replicas_of(new) == [old]
            assert client.get(key) == "v"  # MOVED to the promoted replica
            client.set(key, "w")
            with cluster.client_for(new, decode_responses=True) as owner:
                assert owner.get(key) == "w"
            assert port_of(new) in cluster.by_port
        finally:
            client.close()
