"""Every change to a record is atomic (SPEC §7): a concurrent edit can never undo a delete, a
reissue or a disable. Conflicting management calls race for real (asyncio.gather) against a
real Redis, each side through its own KeyService and client, as separate admin callers would;
then the same lifecycle on a real 3-master Redis Cluster."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis

from gateway.auth.apikey import hash_secret
from gateway.auth.decide import secret_matches
from gateway.errors import Conflict, NotFound
from gateway.keys.layout import last_used_key
from gateway.keys.model import KeyRecord
from gateway.keys.service import KeyService
from gateway.keys.store import KeyStore, Swap, index_member
from gateway.keys.usage import UsageRecorder
from gateway.store.client import GatedCluster
from tests.conftest import service_for
from tests.support.redis_server import RedisServer
from tests.support.redis_topology import ClusterTopology, topology_binaries_missing

TRIALS = 300
AT_ONCE = 25  # trials raced side by side: more interleavings per second, same checks
CALLERS = 4
CLUSTER_TRIALS = 60
CLUSTER_KEYS = 1000


@pytest.fixture
async def callers(redis_clean: RedisServer) -> AsyncIterator[list[KeyService]]:
    """Separate admin callers: a KeyService and a client connection pool each."""
    made = [await service_for(redis_clean.url) for _ in range(CALLERS)]
    yield [service for service, _ in made]
    for _, client in made:
        await client.aclose()


async def authenticates(store: KeyStore, secret: str) -> bool:
    """What the proxy decides for this secret: pointer -> record -> the record's own hashes
    (gateway.auth.decide), account not considered."""
    presented = hash_secret(secret)
    key_id = await store.key_id_for_secret(presented)
    if key_id is None:
        return False
    key = await store.get_key(key_id)
    return key is not None and secret_matches(key, presented, time.time())


async def outcome(call: Awaitable[Any]) -> Any:
    """The call's result, or the NotFound it raised (anything else fails the test)."""
    try:
        return await call
    except NotFound as exc:
        return exc


async def later(turns: int, call: Awaitable[Any]) -> Any:
    """`outcome(call)`, started `turns` event-loop turns late: the trials vary which side of
    a race goes first and by how much, so that every order of the two calls' steps occurs."""
    for _ in range(turns):
        await asyncio.sleep(0)
    return await outcome(call)


def head_starts(n: int) -> tuple[int, int]:
    """Turns of delay for the first and the second call of trial `n`."""
    delay = (n // 2) % 8
    return (delay, 0) if n % 2 else (0, delay)


async def run_trials(trial: Callable[[int], Awaitable[str]], trials: int, what: str) -> None:
    """Run the trials; print how the races went (each trial names its order of events), so a
    run shows that both orders were exercised."""
    orders: Counter[str] = Counter()
    for start in range(0, trials, AT_ONCE):
        orders.update(await asyncio.gather(*(trial(n) for n in
                                             range(start, min(start + AT_ONCE, trials)))))
    print(f"\n{what}: {dict(orders)}")


def pair(callers: list[KeyService], n: int) -> tuple[KeyService, KeyService]:
    return callers[n % len(callers)], callers[(n + 1) % len(callers)]


def leftover_pointers(store: KeyStore, *secrets: str) -> Awaitable[int]:
    return store.redis.exists(*(f"gw:secret:{hash_secret(s)}" for s in secrets))


# -- races on one Redis --------------------------------------------------------------------------


async def delete_with_patch(callers: list[KeyService], trials: int) -> None:
    first = callers[0]
    account = await first.create_account("race")

    async def trial(n: int) -> str:
        deleter, patcher = pair(callers, n)
        key, secret = await first.create_key(account_id=account.id, description="before")
        one, two = head_starts(n)
        gone, patched = await asyncio.gather(
            later(one, deleter.delete_key(key.id)),
            later(two, patcher.update_key(key.id, description=f"patched {n}")))
        assert not isinstance(gone, NotFound), "the only delete was refused"
        assert await first.store.get_key(key.id) is None, "a PATCH resurrected a deleted key"
        assert not await authenticates(first.store, secret), "a deleted key authenticates"
        assert await leftover_pointers(first.store, secret) == 0
        if isinstance(patched, NotFound):
            assert gone.description == "before"
            return "delete first, PATCH 404"
        # The PATCH landed first: the record the delete removed holds it.
        assert gone.description == f"patched {n}", "a PATCH answered 200 and was lost"
        return "PATCH first"

    await run_trials(trial, trials, "delete + PATCH")


async def reissue_with_patch(callers: list[KeyService], trials: int) -> None:
    first = callers[0]
    account = await first.create_account("race")

    async def trial(n: int) -> str:
        reissuer, patcher = pair(callers, n)
        key, old_secret = await first.create_key(account_id=account.id)
        one, two = head_starts(n)
        (_, new_secret), patched = await asyncio.gather(
            later(one, reissuer.reissue_key(key.id)),
            later(two, patcher.update_key(key.id, description=f"p{n}")))
        assert patched.description == f"p{n}"
        stored = await first.get_key(key.id)
        assert stored.description == f"p{n}", "the PATCH was lost"
        assert stored.secret_hash == hash_secret(new_secret), "the reissue was undone"
        assert not await authenticates(first.store, old_secret), "the old secret works again"
        assert await authenticates(first.store, new_secret), "the new secret does not work"
        assert await leftover_pointers(first.store, old_secret) == 0
        return "both landed"

    await run_trials(trial, trials, "reissue + PATCH")


async def disable_with_grant(callers: list[KeyService], trials: int) -> None:
    first = callers[0]

    async def trial(n: int) -> str:
        disabler, granter = pair(callers, n)
        account = await first.create_account(f"race {n}", api_access=False)
        one, two = head_starts(n)
        await asyncio.gather(later(one, disabler.update_account(account.id, enabled=False)),
                             later(two, granter.update_account(account.id, api_access=True)))
        stored = await first.get_account(account.id)
        assert not stored.enabled, "a grant of api_access enabled a disabled account again"
        assert stored.api_access, "the grant was lost"
        return "both landed"

    await run_trials(trial, trials, "disable + grant api_access")


async def delete_with_reissue(callers: list[KeyService], trials: int) -> None:
    first = callers[0]
    account = await first.create_account("race")

    async def trial(n: int) -> str:
        deleter, reissuer = pair(callers, n)
        key, old_secret = await first.create_key(account_id=account.id)
        one, two = head_starts(n)
        gone, reissued = await asyncio.gather(later(one, deleter.delete_key(key.id)),
                                              later(two, reissuer.reissue_key(key.id)))
        assert not isinstance(gone, NotFound), "the only delete was refused"
        secrets = [old_secret]
        if not isinstance(reissued, NotFound):
            secrets.append(reissued[1])
        assert await first.store.get_key(key.id) is None, "a reissue resurrected a deleted key"
        for secret in secrets:
            assert not await authenticates(first.store, secret), "a deleted key authenticates"
        assert await leftover_pointers(first.store, *secrets) == 0, "a secret pointer is left"
        if isinstance(reissued, NotFound):
            return "delete first, reissue 404"
        # The reissue landed first: the delete removed the reissued record.
        assert gone.secret_hash == hash_secret(reissued[1]), "a reissue answered 200 late"
        return "reissue first"

    await run_trials(trial, trials, "delete + reissue")


async def delete_account_with_create_key(callers: list[KeyService], trials: int) -> None:
    first = callers[0]

    async def trial(n: int) -> str:
        account_deleter, creator = pair(callers, n)
        account = await first.create_account(f"race {n}")
        one, two = head_starts(n)
        _, created = await asyncio.gather(
            later(one, account_deleter.delete_account(account.id, delete_keys=True)),
            later(two, creator.create_key(account_id=account.id)))
        assert await first.store.count_keys(account.id) == 0
        if isinstance(created, NotFound):
            return "key create 404"
        key, secret = created
        assert await first.store.get_key(key.id) is None, "a key outlived its account"
        assert not await authenticates(first.store, secret)
        return "key created, then deleted with the account"

    await run_trials(trial, trials, "account delete + key create")


async def test_delete_and_patch_race(callers) -> None:
    await delete_with_patch(callers, TRIALS)


async def test_reissue_and_patch_race(callers) -> None:
    await reissue_with_patch(callers, TRIALS)


async def test_disable_and_grant_race(callers) -> None:
    await disable_with_grant(callers, TRIALS)


async def test_delete_and_reissue_race(callers) -> None:
    await delete_with_reissue(callers, TRIALS)


async def test_account_delete_and_key_create_race(callers) -> None:
    await delete_account_with_create_key(callers, TRIALS)


async def test_many_concurrent_edits_of_one_key_all_land(key_service) -> None:
    """Many callers on one record: each lost race is retried on the winner's record, so every
    one of them lands (none is silently dropped)."""
    account = await key_service.create_account("busy")
    key, _ = await key_service.create_key(account_id=account.id)
    words = [f"w{n}" for n in range(30)]
    await asyncio.gather(*(key_service.update_key(key.id, description=w) for w in words))
    entries = (await key_service.audit(limit=1000)).items
    assert sum(1 for e in entries if e["action"] == "key.update") == len(words)
    assert (await key_service.get_key(key.id)).description in words


class MeddledStore(KeyStore):
    """The real store, except that another writer changes the record in Redis between each
    read and its compare-and-set: every attempt of a change loses its race."""

    async def swap_key(self, expected: bytes, old: KeyRecord, new: KeyRecord) -> Swap:
        meddled = old.with_changes(description=f"meddled {time.monotonic()}")
        await self.redis.set(f"gw:key:{old.id}", meddled.to_json())
        return await super().swap_key(expected, old, new)


async def test_a_change_that_keeps_losing_its_race_gives_up_with_a_conflict(
        redis_clean, key_service) -> None:
    account = await key_service.create_account("busy")
    key, secret = await key_service.create_key(account_id=account.id)
    _, client = await service_for(redis_clean.url)
    try:
        meddled = KeyService(MeddledStore(client))
        with pytest.raises(Conflict, match="changed by concurrent calls"):
            await meddled.update_key(key.id, description="mine")
        with pytest.raises(Conflict, match="changed by concurrent calls"):
            await meddled.reissue_key(key.id)
    finally:
        await client.aclose()
    stored = await key_service.get_key(key.id)
    assert stored.description.startswith("meddled")  # the losing change never landed
    assert await authenticates(key_service.store, secret)  # nor did the losing reissue


# -- Redis Cluster ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[ClusterTopology]:
    missing = topology_binaries_missing()
    if missing:
        pytest.skip(missing)
    topology = ClusterTopology().start()
    yield topology
    topology.close()


@pytest.fixture
async def cluster_callers(cluster: ClusterTopology) -> AsyncIterator[list[KeyService]]:
    cluster.flush()
    clients = []
    for _ in range(CALLERS):
        host, _, port = cluster.masters()[0].rpartition(":")
        # A redis.asyncio.cluster.RedisCluster (the gateway's subclass: its nonce guard
        # recognises it), without the gate: nothing else to set up.
        client = GatedCluster(host=host, port=int(port), socket_timeout=5)
        # Discover the cluster before the first burst of concurrent commands: redis-py 8.1's
        # async cluster client, used by many tasks at once before it has initialized, fails
        # some of those first commands (a connection closed under another task's feet).
        await client.initialize()
        clients.append(client)
    yield [KeyService(KeyStore(client)) for client in clients]
    for client in clients:
        await client.aclose()


def records_per_master(cluster: ClusterTopology) -> dict[str, int]:
    counts = {}
    for address in cluster.masters():
        client: redis.Redis = cluster.client_for(address)
        with client:
            counts[address] = sum(1 for _ in client.scan_iter("gw:key:*", count=1000))
    return counts


async def test_the_lifecycle_on_a_redis_cluster(cluster, cluster_callers) -> None:
    service = cluster_callers[0]
    account = await service.create_account("cluster")
    semaphore = asyncio.Semaphore(50)

    async def create(n: int) -> tuple[Any, str]:
        async with semaphore:
            return await service.create_key(account_id=account.id, description=f"k{n}")

    created = await asyncio.gather(*(create(n) for n in range(CLUSTER_KEYS)))
    counts = records_per_master(cluster)
    assert sum(counts.values()) == CLUSTER_KEYS
    for address, count in counts.items():
        assert count >= CLUSTER_KEYS * 0.2, f"{address} holds only {count} of the records"

    # Listings page through every key, in creation order, across all slots.
    listed = [item async for item in service.iterate_keys(account_id=account.id,
                                                          page_size=300)]
    in_order = sorted(created, key=lambda made: index_member(made[0].created_at, made[0].id))
    assert [item["id"] for item in listed] == [key.id for key, _ in in_order]
    accounts = await service.list_accounts()
    assert [a["id"] for a in accounts.items] == [account.id]
    assert accounts.items[0]["key_count"] == CLUSTER_KEYS
    assert len(await service.get_keys([key.id for key, _ in created[:500]])) == 500

    key, secret = created[0]
    assert (await service.get_key(key.id)).description == "k0"
    assert await authenticates(service.store, secret)
    updated = await service.update_key(key.id, description="changed",
                                       expires_at=time.time() + 3600)
    assert (await service.get_key(key.id)) == updated
    reissued, new_secret = await service.reissue_key(key.id, grace=60)
    assert await authenticates(service.store, new_secret)
    assert await authenticates(service.store, secret)  # its grace period
    assert reissued.previous_until is not None

    # Last use: batched through the recorder, read back singly and by the page.
    recorder = UsageRecorder(service.store, interval=60)
    now = time.time()
    for n, (k, _) in enumerate(created):
        recorder.record(k.id, now + n / 1000)
    await recorder.flush()
    assert recorder.pending == 0
    used = await service.store.last_used_many([k.id for k, _ in created])
    assert used == {k.id: pytest.approx(now + n / 1000, abs=0.002)
                    for n, (k, _) in enumerate(created)}
    assert await service.last_used(key.id) == pytest.approx(now, abs=0.002)
    page = await service.list_keys(account_id=account.id, limit=10)
    assert all(item["last_used_at"] is not None for item in page.items)

    await service.delete_key(key.id)
    assert await service.store.get_key(key.id) is None
    assert not await authenticates(service.store, secret)
    assert not await authenticates(service.store, new_secret)
    assert await service.store.redis.exists(last_used_key(key.id)) == 0
    await service.update_account(account.id, enabled=False)
    assert not (await service.get_account(account.id)).enabled
    deleted = await service.delete_account(account.id, delete_keys=True)
    assert len(deleted) == CLUSTER_KEYS - 1
    assert sum(records_per_master(cluster).values()) == 0
    with pytest.raises(NotFound):
        await service.get_account(account.id)


async def test_the_races_on_a_redis_cluster(cluster_callers) -> None:
    await delete_with_patch(cluster_callers, CLUSTER_TRIALS)
    await reissue_with_patch(cluster_callers, CLUSTER_TRIALS)
    await disable_with_grant(cluster_callers, CLUSTER_TRIALS)
    await delete_with_reissue(cluster_callers, CLUSTER_TRIALS)
    await delete_account_with_create_key(cluster_callers, CLUSTER_TRIALS)
