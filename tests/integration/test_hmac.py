"""Signed requests end to end (SPEC §4, §5): RFC 9421 `hmac-sha256` through a real gateway,
with secrets encrypted at rest, replay protection in the real Redis, and a request signed by an
independent RFC 9421 implementation."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import time
from datetime import datetime
from typing import Any

import aiohttp
import orjson
import pytest
import requests
from multidict import CIMultiDict

from gateway.client import sign_request, signing_middleware
from gateway.keys.secrets import SecretBox
from gateway.keys.service import KeyService
from gateway.keys.store import KeyStore
from gateway.store.client import connect
from tests.support.processes import GatewayProcess, write_config

VISION = "yc.ai.vision.execute"
MASTER_KEY = os.urandom(32)
MASTER_ENV = {"GATEWAY_MASTER_KEY": base64.b64encode(MASTER_KEY).decode()}


def routes(upstream: Any) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{upstream.port}"
    return [{"name": "vision", "prefix": "/vision/", "upstream": url, "scopes": [VISION]},
            {"name": "ydb", "prefix": "/ydb/", "upstream": url,
             "scopes": ["yc.ydb.tables.manage"]},
            {"name": "keys-only", "prefix": "/keys-only/", "upstream": url,
             "auth": ["api_key"]}]


@pytest.fixture
async def hmac_service(redis_clean):  # type: ignore[no-untyped-def]
    redis = connect(redis_clean.url, 2.0)
    yield KeyService(KeyStore(redis), secret_box=SecretBox(MASTER_KEY))
    await redis.aclose()


@pytest.fixture
async def signed_key(hmac_service):  # type: ignore[no-untyped-def]
    account = await hmac_service.create_account("signer")
    key, secret = await hmac_service.create_key(account_id=account.id, key_type="hmac",
                                                scopes=[VISION], expires_at=time.time() + 3600)
    return key, secret, account


@pytest.fixture
async def gateway(redis_clean, upstream, start_gateway):  # type: ignore[no-untyped-def]
    from gateway.config import build_config

    data = {"listen": {"host": "127.0.0.1", "port": 0},
            "admin": {"host": "127.0.0.1", "port": 0},
            "redis": {"url": redis_clean.url}, "routes": routes(upstream),
            "keys": {"last_used_flush": "0.2s"}, "hmac": {"max_body_bytes": "64KiB"}}
    return await start_gateway(build_config(data, "<test>", MASTER_ENV))


async def send(http: aiohttp.ClientSession, method: str, url: str, headers: dict[str, str],
               body: bytes | None = None) -> tuple[int, dict[str, Any]]:
    async with http.request(method, url, headers=headers, data=body) as response:
        return response.status, orjson.loads(await response.read())


def signed(method: str, url: str, key: Any, secret: str, body: bytes | None = None,
           **options: Any) -> dict[str, str]:
    return sign_request(method, url, key_id=key.id, secret=secret, body=body, **options)


async def test_a_signed_get_passes_with_hmac_identity(gateway, signed_key, http) -> None:
    key, secret, account = signed_key
    assert key.id.startswith("gwh_") and len(secret) == 43
    url = gateway.url + "/vision/detect?lang=en&x=1"
    status, echo = await send(http, "GET", url, signed("GET", url, key, secret))
    assert status == 200, echo
    seen = CIMultiDict(echo["headers"])
    assert seen["X-Auth-Method"] == "hmac"
    assert seen["X-Auth-Key-Id"] == key.id and seen["X-Auth-Account-Id"] == account.id
    for gone in ("Signature", "Signature-Input"):
        assert gone not in seen


async def test_a_signed_post_with_a_body_passes_and_the_body_arrives(gateway, signed_key,
                                                                     http) -> None:
    key, secret, _ = signed_key
    body = orjson.dumps({"image": "x" * 4000})
    url = gateway.url + "/vision/detect"
    status, echo = await send(http, "POST", url, signed("POST", url, key, secret, body), body)
    assert status == 200, echo
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()


async def test_the_aiohttp_client_middleware_signs_requests(gateway, signed_key) -> None:
    key, secret, _ = signed_key
    async with aiohttp.ClientSession(middlewares=(signing_middleware(key.id, secret),)) as http:
        async with http.post(gateway.url + "/vision/m?q=1", data=b'{"a": 1}') as response:
            assert response.status == 200, await response.text()
        async with http.get(gateway.url + "/vision/m") as response:
            assert response.status == 200, await response.text()


# URLs `requests` (and aiohttp) rewrite before sending: unreserved escapes decoded, dot
# segments removed, spaces and non-ASCII encoded, lower-case escapes upper-cased.
REWRITTEN_PATHS = ["/vision/%7Euser/x", "/vision/%7euser?q=%7E&r=a b", "/vision/a/../b c/./d",
                   "/vision/caf\u00e9/%41%2c?x=%3a", "/vision/x?"]


async def test_sign_request_signs_the_url_requests_sends(gateway, signed_key) -> None:
    """Issue 17, item 15: sign_request + a real `requests` call, through a real gateway. The
    signer used to sign the URL as given, while `requests` sent `/~user` for `/%7Euser`."""
    key, secret, _ = signed_key
    for path in REWRITTEN_PATHS:
        url = gateway.url + path
        for method, body in (("GET", None), ("POST", b'{"a": 1}')):
            headers = signed(method, url, key, secret, body=body)
            response = await asyncio.to_thread(requests.request, method, url, headers=headers,
                                               data=body, timeout=10)
            assert response.status_code == 200, (path, method, response.text)


async def test_the_aiohttp_middleware_signs_the_url_aiohttp_sends(gateway, signed_key) -> None:
    key, secret, _ = signed_key
    async with aiohttp.ClientSession(middlewares=(signing_middleware(key.id, secret),)) as http:
        for path in REWRITTEN_PATHS:
            async with http.get(gateway.url + path) as response:
                assert response.status == 200, (path, await response.text())


def _tamper(headers: dict[str, str], **changes: str) -> dict[str, str]:
    return {**headers, **changes}


async def test_each_tampering_fails_with_its_code(gateway, signed_key, http) -> None:
    key, secret, _ = signed_key
    base = gateway.url + "/vision/detect?x=1"
    body = b'{"n": 1}'

    def fresh(method: str = "POST", url: str = base, payload: bytes | None = body,
              **options: Any) -> dict[str, str]:
        return signed(method, url, key, secret, payload, **options)

    cases: list[tuple[str, str, dict[str, str], bytes | None, int, str]] = [
        ("method", "PUT", fresh(), body, 401, "invalid_signature"),
        ("path", "POST", fresh(), body, 401, "invalid_signature"),  # sent to another path
        ("query", "POST", fresh(), body, 401, "invalid_signature"),
        ("authority", "POST", _tamper(fresh(), Host="evil.example"), body, 401,
         "invalid_signature"),
        ("body", "POST", fresh(), b'{"n": 2}', 401, "invalid_signature"),
        ("stale", "POST", fresh(created=int(time.time()) - 1000), body, 401,
         "signature_expired"),
        ("future", "POST", fresh(created=int(time.time()) + 1000), body, 401,
         "signature_expired"),
    ]
    targets = {"path": gateway.url + "/vision/other?x=1", "query": gateway.url
               + "/vision/detect?x=2"}
    for name, method, headers, payload, status, code in cases:
        got, answer = await send(http, method, targets.get(name, base), headers, payload)
        assert (got, answer["error"]["code"]) == (status, code), name

    headers = fresh()
    assert (await send(http, "POST", base, headers, body))[0] == 200
    got, answer = await send(http, "POST", base, headers, body)
    assert (got, answer["error"]["code"]) == (401, "replayed_request")


async def test_wrong_secret_unknown_key_and_expired_key(gateway, signed_key, hmac_service,
                                                        http) -> None:
    key, secret, account = signed_key
    url = gateway.url + "/vision/x"
    other = base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()
    got, answer = await send(http, "GET", url, signed("GET", url, key, other))
    assert (got, answer["error"]["code"]) == (401, "invalid_signature")
    got, answer = await send(http, "GET", url, sign_request("GET", url, key_id="gwh_nope",
                                                            secret=secret))
    assert (got, answer["error"]["code"]) == (401, "invalid_credentials")
    await hmac_service.store.replace_key(key, key.with_changes(expires_at=time.time() - 1))
    await asyncio.sleep(0.1)
    got, answer = await send(http, "GET", url, signed("GET", url, key, secret))
    assert (got, answer["error"]["code"]) == (401, "expired_key")
    await hmac_service.store.replace_key(key, key)
    await hmac_service.update_account(account.id, api_access=False)
    await asyncio.sleep(0.1)
    got, answer = await send(http, "GET", url, signed("GET", url, key, secret))
    assert (got, answer["error"]["code"]) == (403, "api_access_denied")


async def test_scopes_and_route_methods_apply_to_signed_requests(gateway, signed_key,
                                                                 http) -> None:
    key, secret, _ = signed_key
    url = gateway.url + "/ydb/tables"
    got, answer = await send(http, "GET", url, signed("GET", url, key, secret))
    assert (got, answer["error"]["code"]) == (403, "insufficient_scope")
    url = gateway.url + "/keys-only/x"
    got, answer = await send(http, "GET", url, signed("GET", url, key, secret))
    assert (got, answer["error"]["code"]) == (401, "invalid_credentials")


@pytest.mark.parametrize(("signature_input", "signature"), [
    ('sig1=("@method" "@authority" "@path");created=1;nonce="n";keyid="gwh_x";alg="rsa-v1_5"',
     "sig1=:AAAA:"),                                               # unknown algorithm
    ("sig1=(\"@method\" \"@authority\" \"@path\";created=", "sig1=:AAAA:"),  # broken field
    ('sig1=("@method" "@authority" "@path");created=1;keyid="gwh_x"', "sig1=:AAAA:"),  # nonce
    ('sig1=("@method" "@authority" "@path");nonce="n";keyid="gwh_x"', "sig1=:AAAA:"),  # created
    ('sig1=("@method" "@authority" "@path");created=1;nonce="n"', "sig1=:AAAA:"),  # keyid
    ('sig1=("@method" "@authority");created=1;nonce="n";keyid="gwh_x"', "sig1=:AAAA:"),  # @path
    ('sig1=("@method" "@authority" "@path");created=1;nonce="n";keyid="gwh_x"',
     'sig1="not bytes"'),
    ('sig1=("@method" "@authority" "@path");created=1;nonce="n";keyid="gwh_x"',
     "other=:AAAA:"),                                               # labels do not match
    ('sig1=("@method" "@authority" "@path" "@status");created=1;nonce="n";keyid="gwh_x"',
     "sig1=:AAAA:"),                                                # not a request component
])
async def test_malformed_signatures_are_invalid_signature(gateway, http, signature_input,
                                                          signature) -> None:
    got, answer = await send(http, "GET", gateway.url + "/vision/x",
                             {"Signature-Input": signature_input, "Signature": signature})
    assert (got, answer["error"]["code"]) == (401, "invalid_signature")


async def test_unsigned_body_and_digest_problems(gateway, signed_key, http) -> None:
    key, secret, _ = signed_key
    url = gateway.url + "/vision/x"
    headers = signed("POST", url, key, secret, None)  # signed without content-digest
    got, answer = await send(http, "POST", url, headers, b"a body")
    assert (got, answer["error"]["code"]) == (401, "invalid_signature")
    assert "content-digest" in answer["error"]["message"]
    body = b"x" * 10
    headers = signed("POST", url, key, secret, body)
    headers["Content-Digest"] = "md5=:AAAA:"  # covered, so the signature breaks first
    got, answer = await send(http, "POST", url, headers, body)
    assert (got, answer["error"]["code"]) == (401, "invalid_signature")
    sha512 = base64.b64encode(hashlib.sha512(body).digest()).decode()
    headers = signed("POST", url, key, secret, body, headers={
        "Content-Digest": f"sha-512=:{sha512}:"})
    got, _ = await send(http, "POST", url, headers, body)
    assert got == 200


async def test_oversized_signed_bodies_get_413(gateway, signed_key, http) -> None:
    key, secret, _ = signed_key
    url = gateway.url + "/vision/x"
    body = b"y" * (64 * 1024 + 1)
    got, answer = await send(http, "POST", url, signed("POST", url, key, secret, body), body)
    assert (got, answer["error"]["code"]) == (413, "body_too_large")

    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(65):
            yield b"z" * 1024

    headers = signed("POST", url, key, secret, b"z" * 65 * 1024)
    async with http.post(url, headers=headers, data=chunks()) as response:
        assert response.status == 413


async def test_a_request_with_both_an_api_key_and_a_signature_is_refused(gateway, signed_key,
                                                                         http) -> None:
    key, secret, _ = signed_key
    url = gateway.url + "/vision/x"
    headers = {**signed("GET", url, key, secret), "Authorization": "Api-Key gwk_x"}
    got, answer = await send(http, "GET", url, headers)
    assert (got, answer["error"]["code"]) == (400, "bad_request")


async def test_secrets_are_encrypted_at_rest(signed_key, redis_clean) -> None:
    key, secret, _ = signed_key
    client = redis_clean.client()
    dumped = b"".join(client.dump(name) or b"" for name in client.keys("*"))
    assert secret.encode() not in dumped
    record = orjson.loads(client.get(f"gw:key:{key.id}"))
    assert SecretBox(MASTER_KEY).open(key.id, record["extra"]["secret"]) == secret
    with pytest.raises(Exception, match="decrypt"):
        SecretBox(os.urandom(32)).open(key.id, record["extra"]["secret"])


async def test_reissued_hmac_key_keeps_the_old_secret_for_the_grace(gateway, signed_key,
                                                                    hmac_service,
                                                                    http) -> None:
    key, old, _ = signed_key
    url = gateway.url + "/vision/x"
    _, new = await hmac_service.reissue_key(key.id, grace=1.0)
    for secret in (old, new):
        assert (await send(http, "GET", url, signed("GET", url, key, secret)))[0] == 200
    await asyncio.sleep(1.2)
    assert (await send(http, "GET", url, signed("GET", url, key, old)))[0] == 401
    assert (await send(http, "GET", url, signed("GET", url, key, new)))[0] == 200


async def test_an_independent_rfc9421_implementation_is_accepted(gateway, signed_key) -> None:
    from http_message_signatures import (
        ContentDigest,
        HTTPMessageSigner,
        HTTPSignatureKeyResolver,
        algorithms,
    )

    key, secret, _ = signed_key

    class Resolver(HTTPSignatureKeyResolver):
        def resolve_private_key(self, key_id: str) -> bytes:
            assert key_id == key.id
            return secret.encode("ascii")

    body = b'{"text": "hello"}'
    # The library computes Content-Digest itself: nothing of the gateway's is used here.
    prepared = requests.Request("POST", gateway.url + "/vision/translate?to=fr", data=body,
                                headers={"Content-Type": "application/json"}).prepare()
    ContentDigest.add(prepared.headers, body)
    HTTPMessageSigner(signature_algorithm=algorithms.HMAC_SHA256, key_resolver=Resolver()).sign(
        prepared, key_id=key.id, created=datetime.now(),
        nonce=base64.urlsafe_b64encode(os.urandom(12)).decode(),
        covered_component_ids=("@method", "@authority", "@path", "@query", "content-digest"),
        label="sig1", include_alg=True, use_existing_digest=True)
    response = await asyncio.to_thread(requests.Session().send, prepared, timeout=10)
    assert response.status_code == 200, response.text
    assert response.json()["headers"]["X-Auth-Key-Id"] == key.id


async def test_query_params_and_a_digest_member_signed_independently_are_accepted(
        gateway, signed_key) -> None:  # type: ignore[no-untyped-def]
    """Issue 17, item 13: a third-party signer covering `"@query-param";name="..."` for every
    query parameter (RFC 9421 §2.2.8) and `"content-digest";key="sha-256"` (§2.1.2) instead
    of `@query` and the whole `content-digest`; through a real gateway, with `requests`. A
    parameter left unsigned, or a body changed under the signed digest member, is refused."""
    from http_message_signatures import (
        ContentDigest,
        HTTPMessageSigner,
        HTTPSignatureKeyResolver,
        algorithms,
    )

    key, secret, _ = signed_key

    class Resolver(HTTPSignatureKeyResolver):
        def resolve_private_key(self, key_id: str) -> bytes:
            return secret.encode("ascii")

    signer = HTTPMessageSigner(signature_algorithm=algorithms.HMAC_SHA256,
                               key_resolver=Resolver())

    def send(query: str, names: tuple[str, ...], body: bytes = b'{"text": "hello"}',
             sent_body: bytes | None = None) -> requests.Response:
        prepared = requests.Request("POST", f"{gateway.url}/vision/translate?{query}",
                                    data=body).prepare()
        ContentDigest.add(prepared.headers, body)
        signer.sign(prepared, key_id=key.id, created=datetime.now(),
                    nonce=base64.urlsafe_b64encode(os.urandom(12)).decode(), label="sig1",
                    covered_component_ids=(
                        "@method", "@authority", "@path",
                        *[f'"@query-param";name="{n}"' for n in names],
                        '"content-digest";key="sha-256"'),
                    use_existing_digest=True)
        if sent_body is not None:
            prepared.body = sent_body
        return requests.Session().send(prepared, timeout=10)

    response = await asyncio.to_thread(send, "to=fr&text=caf%C3%A9+au+lait", ("to", "text"))
    assert response.status_code == 200, response.text
    echoed = response.json()
    assert echoed["headers"]["X-Auth-Key-Id"] == key.id
    assert echoed["query"] == "to=fr&text=caf%C3%A9+au+lait"

    unsigned = await asyncio.to_thread(send, "to=fr&admin=1", ("to",))
    assert unsigned.status_code == 401
    assert "@query" in unsigned.json()["error"]["message"]
    swapped = await asyncio.to_thread(send, "to=fr", ("to",), b'{"text": "hello"}',
                                      b'{"text": "evil!"}')
    assert swapped.status_code == 401
    assert swapped.json()["error"]["code"] == "invalid_signature"


async def test_a_bad_signature_does_not_hide_a_good_one(gateway, signed_key) -> None:  # type: ignore[no-untyped-def]
    """Issue 17, item 14: a request signed twice by a third-party signer under the key's
    keyid, first with a wrong secret, then with the right one, passes; twice wrong does not."""
    from http_message_signatures import HTTPMessageSigner, HTTPSignatureKeyResolver, algorithms

    key, secret, _ = signed_key

    def signer(secret_bytes: bytes) -> HTTPMessageSigner:
        class Resolver(HTTPSignatureKeyResolver):
            def resolve_private_key(self, key_id: str) -> bytes:
                return secret_bytes

        return HTTPMessageSigner(signature_algorithm=algorithms.HMAC_SHA256,
                                 key_resolver=Resolver())

    def send(*secrets: bytes) -> requests.Response:
        prepared = requests.Request("GET", gateway.url + "/vision/x?a=1").prepare()
        for index, each in enumerate(secrets):
            signer(each).sign(prepared, key_id=key.id, created=datetime.now(),
                              nonce=base64.urlsafe_b64encode(os.urandom(12)).decode(),
                              label=f"sig{index + 1}", append_if_signature_exists=True,
                              covered_component_ids=("@method", "@authority", "@path",
                                                     "@query"))
        assert prepared.headers["Signature-Input"].count("sig") == len(secrets)
        return requests.Session().send(prepared, timeout=10)

    wrong = b"not-the-secret"
    response = await asyncio.to_thread(send, wrong, secret.encode("ascii"))
    assert response.status_code == 200, response.text
    assert response.json()["headers"]["X-Auth-Key-Id"] == key.id
    refused = await asyncio.to_thread(send, wrong, wrong)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_signature"


async def test_a_replay_is_refused_across_two_gateway_processes(tmp_path, redis_clean, upstream,
                                                                signed_key) -> None:
    key, secret, _ = signed_key
    processes = []
    for name in ("a", "b"):
        path, port, admin_port = write_config(tmp_path / f"{name}.yaml", redis_clean.url,
                                              routes(upstream))
        processes.append(GatewayProcess(path, port, admin_port, env=MASTER_ENV).start())
    try:
        first, second = processes
        async with aiohttp.ClientSession() as http:
            # Both gateways see Host 127.0.0.1:<their port>; sign for each authority.
            url_a = first.url + "/vision/x"
            headers = signed("GET", url_a, key, secret)
            assert (await send(http, "GET", url_a, headers))[0] == 200
            # The same nonce, freshly signed for the second gateway's authority: refused.
            nonce = headers["Signature-Input"].split('nonce="')[1].split('"')[0]
            url_b = second.url + "/vision/x"
            replay = signed("GET", url_b, key, secret, nonce=nonce)
            got, answer = await send(http, "GET", url_b, replay)
            assert (got, answer["error"]["code"]) == (401, "replayed_request")
    finally:
        for process in processes:
            assert process.stop() == 0, process.log()


async def test_startup_refuses_hmac_keys_without_a_master_key(tmp_path, redis_clean, upstream,
                                                              signed_key) -> None:
    path, port, admin_port = write_config(tmp_path / "g.yaml", redis_clean.url,
                                          routes(upstream))
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_MASTER_KEY"}
    process = GatewayProcess(path, port, admin_port)
    process.env = env
    with pytest.raises(RuntimeError, match="GATEWAY_MASTER_KEY"):
        process.start(timeout=15)
    process.stop()



async def test_a_client_gone_while_its_signed_body_is_read_breaks_nothing(
        gateway, signed_key, http, caplog) -> None:
    # The gateway buffers a signed body to check its digest; the client leaves half-way. That
    # must end quietly: no error logged, nothing forwarded, the next request served.
    key, secret, _ = signed_key
    url = gateway.url + "/vision/cut"
    body = b"x" * 60_000
    headers = signed("POST", url, key, secret, body)
    host, port = "127.0.0.1", int(gateway.url.rsplit(":", 1)[1])
    _, writer = await asyncio.open_connection(host, port)
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    writer.write(f"POST /vision/cut HTTP/1.1\r\nHost: {host}:{port}\r\n{head}"
                 f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:5_000])
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.close()
    await writer.wait_closed()
    await asyncio.sleep(0.3)
    headers = signed("GET", gateway.url + "/vision/after", key, secret)
    status, _ = await send(http, "GET", gateway.url + "/vision/after", headers)
    assert status == 200
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
